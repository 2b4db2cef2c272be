"""The ``/_sandbox`` controls: ledger figures, reset, runtime config, logging."""
from __future__ import annotations

import logging

from sandbox_helpers import TOKEN, client_for, messages_path, template_message, text_message


def test_the_same_callback_data_accepted_twice_is_a_duplicate_send(sandbox, client) -> None:
    assert client.post(messages_path(), json=template_message("+4915100000001", callback="outbox-1")).status_code == 200
    assert client.post(messages_path(), json=template_message("+4915100000002", callback="outbox-1")).status_code == 200
    assert client.post(messages_path(), json=template_message("+4915100000003", callback="outbox-3")).status_code == 200
    figures = client.get("/_sandbox/figures").json()
    assert (figures["accepted"], figures["duplicate_sends"], figures["duplicate_callback_data"]) == (3, 1, 1)


def test_the_same_content_to_the_same_recipient_is_a_duplicate_send(make_sandbox) -> None:
    server = make_sandbox(pair_interval=0)
    with client_for(server) as c:
        for params in (["Ana", "A-1"], ["Ana", "A-2"], ["Ana", "A-1"]):
            assert c.post(messages_path(), json=template_message("+4915100000001", params=params)).status_code == 200
    assert server.figures().duplicate_sends == 1


def test_figures_count_outcomes_by_code(sandbox, client) -> None:
    client.post(messages_path(), json=template_message("+4915100000001"))
    client.post(messages_path(), json=template_message("+4915100000001"))  # pair limit
    client.post(messages_path(), json=template_message("+4915100000002", name="nope"))
    client.post(messages_path(), json=text_message("+4915100000003"))  # accepted, outside the window
    figures = client.get("/_sandbox/figures").json()
    assert figures["requests"] == 4 and figures["accepted"] == 2
    assert figures["pair_limit_hits"] == 1 and figures["throttled"] == 0
    assert figures["errors_by_code"] == {"131056": 1, "132001": 1}
    assert figures["window_violations"] == 1
    assert figures["max_in_any_second"] == 4 and figures["max_accepted_in_any_second"] == 2
    assert set(figures) >= {"requests", "accepted", "throttled", "pair_limit_hits", "max_in_any_second",
                            "max_accepted_in_any_second", "window_violations", "duplicate_sends", "errors_by_code"}


def test_the_ledger_endpoint_lists_requests_in_arrival_order(client) -> None:
    client.post(messages_path(), json=template_message("+4915100000001", callback="a"))
    client.post(messages_path(), json=template_message("+4915100000002", name="nope", callback="b"))
    entries = client.get("/_sandbox/ledger").json()["entries"]
    assert [(e["callback_data"], e["outcome"], e["error_code"]) for e in entries] == [
        ("a", "accepted", None), ("b", "error", 132001)]
    assert entries[0]["monotonic"] <= entries[1]["monotonic"]
    later = client.get("/_sandbox/ledger", params={"since": entries[0]["seq"]}).json()["entries"]
    assert [e["callback_data"] for e in later] == ["b"]


def test_reset_clears_the_ledger_and_the_limits(sandbox, client) -> None:
    client.post(messages_path(), json=template_message("+4915100000001"))
    assert client.post("/_sandbox/reset").status_code == 200
    assert client.get("/_sandbox/figures").json()["requests"] == 0
    assert client.post(messages_path(), json=template_message("+4915100000001")).status_code == 200  # pair reset


def test_config_can_be_patched_mid_run_to_inject_faults(sandbox, client) -> None:
    assert client.post(messages_path(), json=template_message("+4915100000001")).status_code == 200
    patched = client.patch("/_sandbox/config", json={"transient_rate": 1.0, "latency_ms": "0-1", "mps": 5})
    assert patched.status_code == 200
    assert (patched.json()["transient_rate"], patched.json()["latency_ms"], patched.json()["mps"]) == (1.0, [0, 1], 5)
    assert client.post(messages_path(), json=template_message("+4915100000002")).status_code in (500, 503)
    client.patch("/_sandbox/config", json={"transient_rate": 0})
    assert client.post(messages_path(), json=template_message("+4915100000003")).status_code == 200


def test_a_bad_config_patch_changes_nothing(client) -> None:
    assert client.patch("/_sandbox/config", json={"transient_rate": 2}).status_code == 400
    assert client.patch("/_sandbox/config", json={"no_such_knob": 1}).status_code == 400
    assert client.get("/_sandbox/config").json()["transient_rate"] == 0.0


def test_the_config_endpoint_never_shows_secrets(client) -> None:
    config = client.get("/_sandbox/config").json()
    assert TOKEN not in str(config)
    assert config["access_token_set"] is True and "access_token" not in config


def test_templates_can_be_added_at_runtime(client) -> None:
    template = {"name": "fresh", "language": "en_US", "category": "UTILITY",
                "components": [{"type": "BODY", "text": "Hi {{1}}"}]}
    assert client.patch("/_sandbox/config", json={"add_templates": [template]}).status_code == 200
    assert client.post(messages_path(), json=template_message("+4915100000001", name="fresh",
                                                              params=["Ana"])).status_code == 200


def test_one_debug_line_per_request_and_never_the_token(sandbox, client, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="campaign.sandbox"):
        client.post(messages_path(), json=template_message("+4915100000001"))
        client.post(messages_path(), json=template_message("+4915100000002", name="nope"))
        with client_for(sandbox, "wrong-secret-token") as other:
            other.post(messages_path(), json=template_message("+4915100000003"))
    lines = [r.getMessage() for r in caplog.records if r.name == "campaign.sandbox" and "/messages" in r.getMessage()]
    assert len(lines) == 3
    assert "-> 200" in lines[0] and "132001" in lines[1] and "190" in lines[2]
    assert not any(TOKEN in r.getMessage() or "wrong-secret-token" in r.getMessage() for r in caplog.records)
