"""Phone normalization: every way people write a number, to one E.164 string."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from campaign.phone import Invalid, Normalized, normalize


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+49 1512 3456789", None, "+4915123456789"),
        ("0049 1512 3456789", None, "+4915123456789"),
        ("+49-1512-3456789", None, "+4915123456789"),
        ("+49.1512.3456789", None, "+4915123456789"),
        ("+49 (1512) 3456789", None, "+4915123456789"),
        ("015123456789", "DE", "+4915123456789"),
        ("0151 2345 6789", "DE", "+4915123456789"),
        ("  +4915123456789  ", None, "+4915123456789"),
        ("(201) 555-0123", "US", "+12015550123"),
        ("07911 123456", "GB", "+447911123456"),
        ("011 44 7911 123456", "US", "+447911123456"),
        ("0044 7911 123456", "US", "+447911123456"),
        ("+33 6 12 34 56 78", "DE", "+33612345678"),
        ("+39 06 6982 1234", None, "+390669821234"),  # Italy keeps its leading zero
    ],
)
def test_formats_normalize_to_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalize(raw, region) == Normalized(expected, phonenumbers.parse(expected).country_code, expected.startswith("+1201"))


def test_digits_with_country_code_are_read_as_international_when_the_national_reading_is_not_mobile() -> None:
    # 4915123456789 with region DE is also a valid German fixed line (+49 4915123456789).
    result = normalize("4915123456789", "DE")
    assert isinstance(result, Normalized) and result.e164 == "+4915123456789"


def test_wa_id_digits_are_international() -> None:
    result = normalize("4915123456789", "DE", digits_are_international=True)
    assert isinstance(result, Normalized) and result.e164 == "+4915123456789"


@pytest.mark.parametrize(
    ("raw", "region", "words"),
    [
        ("4915123456789.0", "DE", "spreadsheet"),
        ("4.91512345678E+12", "DE", "spreadsheet"),
        ("1-800-FLOWERS", "US", "letters"),
        ("+1 201 555 0123 ext. 5", None, "letters"),
        ("12345", "DE", "not a valid"),
        ("+49 000", None, "not a valid"),
        ("", "DE", "empty"),
        ("0151 23456789", None, "--default-region"),
        ("n/a", None, "letters"),
        ("+", None, "not seem to be a phone number"),
        ("#123", None, "not a phone number"),
    ],
)
def test_unusable_values_are_rejected_with_a_reason(raw: str, region: str | None, words: str) -> None:
    result = normalize(raw, region)
    assert isinstance(result, Invalid)
    assert words in result.detail


def test_us_numbers_are_flagged_and_canadian_are_not() -> None:
    us, canada = normalize("+1 201 555 0123"), normalize("+1 416 555 0123")
    assert isinstance(us, Normalized) and us.is_us
    assert isinstance(canada, Normalized) and not canada.is_us


REGIONS = ["DE", "GB", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "ZA", "NG", "US", "CH", "PL", "AR", "JP", "AU"]


@st.composite
def valid_numbers(draw: st.DrawFn) -> tuple[str, phonenumbers.PhoneNumber]:
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]))
    example = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    digits = str(example.national_number)
    tail = draw(st.integers(0, 999)) if len(digits) > 6 else 0
    number = phonenumbers.PhoneNumber(
        country_code=example.country_code,
        national_number=int(digits[:-3] + f"{tail:03d}") if len(digits) > 6 else example.national_number,
        italian_leading_zero=example.italian_leading_zero,
    )
    if not phonenumbers.is_valid_number(number):
        number = example
    return region, number


@settings(max_examples=300, deadline=None)
@given(valid_numbers(), st.sampled_from(["e164", "international", "national", "00", "dashes", "dots", "bare"]))
def test_any_formatting_of_a_valid_number_normalizes_to_the_same_e164(
    case: tuple[str, phonenumbers.PhoneNumber], style: str
) -> None:
    region, number = case
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    raw = {
        "e164": e164,
        "international": international,
        "national": phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL),
        "00": "00" + e164[1:],
        "dashes": international.replace(" ", "-"),
        "dots": international.replace(" ", "."),
        "bare": e164[1:],
    }[style]
    result = normalize(raw, region)
    if style in ("bare", "national") and raw.isdigit() and isinstance(result, Invalid):
        # Bare digits that read validly both ways are refused as ambiguous, never guessed.
        assert "ambiguous" in result.detail
        return
    assert isinstance(result, Normalized), (raw, region, result)
    assert result.e164 == e164
