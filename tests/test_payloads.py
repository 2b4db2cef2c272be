"""Request bodies exactly as Meta's send-message reference describes them."""

from __future__ import annotations

from campaign import binding
from campaign.payloads import MessageSpec, template_payload, text_payload


def spec_of(name: str, *, params: tuple[str, ...] = (), header_type: str | None = None, header_link: str | None = None,
            text: str | None = None) -> MessageSpec:
    bound = binding.from_options((), params, header_type, header_link)
    return MessageSpec(name, "en_US", text, tuple(bound.items()), header_kind=header_type)


def test_a_template_with_a_header_and_body_parameters_in_param_order() -> None:
    spec = spec_of("order_update", params=("first_name", "order_id"), header_type="image", header_link="https://x.test/a.png")
    body = template_payload(spec, "+4915123456789", {"order_id": "A-1", "first_name": "Zoë", "city": "Köln"}, "m42")
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+4915123456789",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Zoë"}, {"type": "text", "text": "A-1"}]},
            ],
        },
        "biz_opaque_callback_data": "m42",
    }


def test_a_template_without_parameters_has_no_components() -> None:
    body = template_payload(MessageSpec("hello_world", "en_US"), "+4915123456789", {}, "m1")
    assert body["template"] == {"name": "hello_world", "language": {"code": "en_US"}}


def test_free_form_text_fills_the_row_placeholders() -> None:
    spec = spec_of("order_update", text="Hi {first_name}, order {order_id} ships today")
    body = text_payload(spec, "+4915123456789", {"first_name": "Zoë", "order_id": "A-1"}, "m7")
    assert body["type"] == "text"
    assert body["text"] == {"body": "Hi Zoë, order A-1 ships today", "preview_url": False}
