"""A generated recipients file of any size, with the mess real files have.

Numbers from a dozen countries in mixed formats (E.164, spaced international, `00`
prefixes, national numbers for the default region DE, dashes, dots, parentheses, bare
digits with the country code), plus a sprinkling of invalid values, spreadsheet-mangled
numbers and duplicates. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

REGIONS = ["DE", "GB", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "ZA", "NG", "ID", "US", "AT", "CH", "PL"]
NAMES = ["José", "Zoë", "Ana", "Björn", "Łukasz", "Chloé", "Müller", "Siobhán", "Nguyễn", "Aïcha", "Renée", "Ömer", "Priya", "Kwame"]
CITIES = ["München", "São Paulo", "Zürich", "Kraków", "Lyon", "Sevilla", "Lagos", "Pune", "Jakarta", "Austin"]


def _bases() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    bases = []
    for region in REGIONS:
        example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
        if example is not None:
            bases.append((region, example))
    return bases


def formatted(number: phonenumbers.PhoneNumber, region: str, rng: random.Random) -> str:
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    style = rng.random()
    if style < 0.35:
        return e164
    if style < 0.55:
        return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    if style < 0.65:
        return "00" + e164[1:]
    if style < 0.75 and region == "DE":
        return phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    if style < 0.85:
        return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL).replace(" ", rng.choice("-."))
    if style < 0.92:
        return e164[1:]  # bare digits holding the country code
    cc = str(number.country_code)
    national = e164[1 + len(cc):]
    return f"+{cc} ({national[:3]}) {national[3:6]}-{national[6:]}"


def write(path: Path, rows: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    bases = _bases()
    used: list[str] = []
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["name", "phone", "city", "order_id", "amount"])
        for i in range(rows):
            roll = rng.random()
            if roll < 0.01:
                value = rng.choice(["12345", "n/a", "+49 000", "4915123456789.0", "4.91512345678E+12", ""])
            elif roll < 0.02 and used:
                value = rng.choice(used[-1000:])  # a duplicate, maybe in another format
            else:
                region, base = bases[i % len(bases)]
                national = str(base.national_number)
                tail = f"{(i // len(bases)) % 10 ** 6:06d}"
                number = phonenumbers.PhoneNumber(country_code=base.country_code, national_number=int(national[:-6] + tail))
                value = formatted(number, region, rng)
                if i % 50 == 0:
                    used.append(value)
            out.writerow([rng.choice(NAMES), value, rng.choice(CITIES), f"A{i:08d}", f"{rng.uniform(5, 500):.2f}"])
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    write(args.path, args.rows)
