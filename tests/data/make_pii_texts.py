"""Generate ``pii-texts.jsonl``: support-ticket bodies with their PII spans labelled by type.

Run: ``.venv/bin/python tests/data/make_pii_texts.py [--count 300] [--seed 9] [--out PATH]``.

Each line is ``{"id": n, "text": "...", "spans": [{"start": s, "end": e, "type": "card"}]}``.
About a third of the texts carry near-misses that a detector must leave alone: 16-digit
numbers failing Luhn, order numbers, dates, times, version strings (``version 1.2.3.4``),
``999.1.1.1``, IBANs with a wrong check, ``user@localhost``, phone-like product codes, SSNs
in never-issued ranges. The output is a pure function of the seed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import string
from pathlib import Path

FIRST = ["anna", "ben", "chloe", "david", "emma", "farid", "grace", "hiro", "ines", "jonas", "kemal", "li", "maria"]
LAST = ["smith", "nguyen", "garcia", "muller", "rossi", "tanaka", "okafor", "dubois", "silva", "kowalski"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "shop-example.io"]

OPENERS = [
    "Hi team,", "Hello,", "Dear support,", "Good morning,", "Hi there,", "Urgent:", "Re: ticket update.",
    "Following up on my last message.",
]
CLOSERS = ["Thanks!", "Regards.", "Please advise.", "Best wishes.", "Any help appreciated.", "Cheers."]

# (template, types): each {} is a slot filled with a value of the listed type
PII_TEMPLATES = [
    ("please reply to {} instead of my old address.", ["email"]),
    ("my contact email is <{}> if you need it.", ["email"]),
    ("You can call me on {} after 5pm.", ["phone"]),
    ("my mobile number changed to {}, update it please.", ["phone"]),
    ("The card ending in my account is {} and it was charged twice.", ["card"]),
    ("I paid with card {} but the order failed.", ["card"]),
    ("my SSN is {} for the tax form.", ["ssn"]),
    ("For verification: SSN {}.", ["ssn"]),
    ("Please refund to IBAN {} as soon as possible.", ["iban"]),
    ("our bank details: {} (business account).", ["iban"]),
    ("The login came from {} which is not me.", ["ipv4"]),
    ("Our server at {} keeps timing out.", ["ipv4"]),
    ("The request came from {} according to the logs.", ["ipv6"]),
    ("We whitelisted {} but it still fails.", ["ipv6"]),
    ("Reach me at {} or {}.", ["email", "phone"]),
    ("Card {} was declined, my phone is {}.", ["card", "phone"]),
    ("Wire it to {}; questions to {}.", ["iban", "email"]),
    ("Blocked IP {} tried to use the account of {}.", ["ipv4", "email"]),
    ("Name on file, SSN {}, callback {}.", ["ssn", "phone"]),
    ("Traffic from {} and {} looks suspicious.", ["ipv4", "ipv6"]),
    # known-hard: a phone without separators and an SSN without dashes (the detectors miss them)
    ("text me at {} please.", ["phone_compact"]),
    ("SSN {} attached.", ["ssn_compact"]),
]

NEAR_MISS_TEMPLATES = [
    "The tracking number {} does not work.",          # 16 digits, Luhn fails
    "Order #{} has not arrived yet.",                  # order number
    "Order ORD-{}-{:06d} was cancelled.",              # order reference
    "It was delivered on {} at {}.",                   # date and time
    "We upgraded to version {} yesterday.",            # dotted version
    "Firmware v{} broke the sync.",                    # v + dotted quad
    "The log shows host 999.{}.{}.{} which is odd.",   # octet out of range
    "The IBAN {} was rejected by the bank.",           # IBAN with a wrong check
    "Sending to user@localhost bounced.",              # no top-level domain
    "Product code SKU-{} is out of stock.",            # phone-shaped product code
    "Part number X{} is missing from the box.",        # phone-shaped part number
    "The ID 000-{:02d}-{:04d} looks wrong.",           # never-issued SSN area
    "Release 2.{}.{} fixed it, see build 20240{}.",    # short versions
    "Invoice total was 1,234.56 for {} items.",        # money
    "Call center hours 09:00-17:30, ref {}:{}:{}.",    # times, colons
    "Twitter handle @{} posted about it.",             # handle, not an email
    "Gift voucher {} is invalid.",                     # 16 digits that happen to pass Luhn (a known false positive)
]


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str(-total % 10)


def luhn_valid(digits: str) -> bool:
    return luhn_complete(digits[:-1]) == digits


def iban_with_check(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def group4(s: str) -> str:
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def email(self) -> str:
        r = self.r
        local = r.choice(FIRST) + r.choice([".", "_", ""]) + r.choice(LAST)
        if r.random() < 0.3:
            local += str(r.randint(1, 99))
        if r.random() < 0.15:
            local += "+support"
        addr = f"{local}@{r.choice(DOMAINS)}"
        return addr.upper() if r.random() < 0.05 else addr

    def phone(self) -> str:
        r = self.r
        a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(0, 9999)
        forms = [
            f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
            f"+1-{a}-{b}-{c:04d}", f"+44 20 {r.randint(7000, 8999)} {c:04d}",
            f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}",
            f"+49 30 {r.randint(100000, 999999)}",
        ]
        return r.choice(forms)

    def ssn(self) -> str:
        r = self.r
        area = r.choice([n for n in range(1, 900) if n != 666][r.randint(0, 700):])
        sep = r.choice(["-", "-", "-", " "])
        return f"{area:03d}{sep}{r.randint(1, 99):02d}{sep}{r.randint(1, 9999):04d}"

    def card(self) -> str:
        r = self.r
        kind = r.choice(["visa", "mc", "amex"])
        if kind == "amex":
            n = luhn_complete(r.choice(["34", "37"]) + self.digits(12))
            sep = r.choice([" ", "-", ""])
            return sep.join([n[:4], n[4:10], n[10:]])
        n = luhn_complete("4" + self.digits(14) if kind == "visa" else str(r.randint(51, 55)) + self.digits(13))
        sep = r.choice([" ", "-", ""])
        return sep.join(n[i:i + 4] for i in range(0, 16, 4))

    def iban(self, valid: bool = True) -> str:
        r = self.r
        country = r.choice(["DE", "GB", "NL", "FR", "ES"])
        bban = {
            "DE": lambda: self.digits(18),
            "GB": lambda: "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + self.digits(14),
            "NL": lambda: "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + self.digits(10),
            "FR": lambda: self.digits(10) + "".join(r.choice(string.ascii_uppercase + string.digits)
                                                    for _ in range(11)) + self.digits(2),
            "ES": lambda: self.digits(20),
        }[country]()
        iban = iban_with_check(country, bban)
        if not valid:
            check = int(iban[2:4])
            iban = f"{iban[:2]}{(check + r.randint(1, 50)) % 97 + 2:02d}{iban[4:]}"
        return group4(iban) if r.random() < 0.6 else iban

    def ipv4(self) -> str:
        r = self.r
        return ".".join(str(r.randint(1 if i == 0 else 0, 254)) for i in range(4))

    def ipv6(self) -> str:
        r = self.r
        if r.random() < 0.5:
            # documentation prefix with zero runs, so the compressed form is common
            addr = ipaddress.IPv6Address((0x20010DB8 << 96) | r.getrandbits(32))
        else:
            addr = ipaddress.IPv6Address(r.getrandbits(128))
        return addr.compressed if r.random() < 0.7 else addr.exploded

    def phone_compact(self) -> str:
        return f"{self.r.randint(201, 989)}{self.r.randint(200, 999)}{self.r.randint(0, 9999):04d}"

    def ssn_compact(self) -> str:
        return self.ssn().replace("-", "").replace(" ", "")

    def value(self, kind: str) -> str:
        return getattr(self, kind)()

    def near_miss(self) -> str:
        r = self.r
        i = r.randrange(len(NEAR_MISS_TEMPLATES))
        t = NEAR_MISS_TEMPLATES[i]
        if i == 0:
            n = self.digits(16)
            while luhn_valid(n):
                n = self.digits(16)
            return t.format(n)
        if i == 1:
            return t.format(self.digits(r.choice([8, 9, 10])))
        if i == 2:
            return t.format(r.randint(2019, 2025), r.randint(1, 999999))
        if i == 3:
            return t.format(f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}")
        if i in (4, 5):
            return t.format(".".join(str(r.randint(0, 20)) for _ in range(4)))
        if i == 6:
            return t.format(r.randint(0, 255), r.randint(0, 255), r.randint(0, 255))
        if i == 7:
            return t.format(self.iban(valid=False))
        if i in (9, 10):
            return t.format(f"{r.randint(200, 999)}-{r.randint(200, 999)}-{r.randint(0, 9999):04d}")
        if i == 11:
            return t.format(r.randint(1, 99), r.randint(1, 9999))
        if i == 12:
            return t.format(r.randint(0, 9), r.randint(0, 20), r.randint(10, 99))
        if i == 13:
            return t.format(r.randint(2, 40))
        if i == 14:
            return t.format(f"{r.randint(0, 99):02d}", f"{r.randint(0, 99):02d}", f"{r.randint(0, 99):02d}")
        if i == 15:
            return t.format(r.choice(FIRST) + r.choice(LAST))
        if i == 16:
            return t.format(luhn_complete("6" + self.digits(14)))
        return t

    def ticket(self, n: int) -> dict:
        r = self.r
        pieces: list[tuple[str, str | None]] = [(r.choice(OPENERS) + " ", None)]
        for _ in range(r.choice([0, 1, 1, 1, 2])):
            template, kinds = r.choice(PII_TEMPLATES)
            chunks = template.split("{}")
            for chunk, kind in zip(chunks, kinds + [None], strict=True):
                pieces.append((chunk, None))
                if kind:
                    pieces.append((self.value(kind), kind.split("_")[0]))
            pieces.append((" ", None))
        for _ in range(r.choice([0, 0, 1, 1, 2])):
            pieces.append((self.near_miss() + " ", None))
        pieces.append((r.choice(CLOSERS), None))
        text, spans = "", []
        for chunk, kind in pieces:
            if kind:
                spans.append({"start": len(text), "end": len(text) + len(chunk), "type": kind})
            text += chunk
        return {"id": n, "text": text, "spans": spans}


def generate(count: int = 300, seed: int = 9) -> list[dict]:
    gen = Gen(seed)
    return [gen.ticket(n) for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("pii-texts.jsonl"))
    args = parser.parse_args()
    with args.out.open("w", encoding="utf-8") as fh:
        for item in generate(args.count, args.seed):
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
