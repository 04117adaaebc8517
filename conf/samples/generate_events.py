"""Reproducible generator of realistic raw customer events, as JSON Lines.

Used as a module (``iter_events``) by tests and benchmarks, and as a script::

    python conf/samples/generate_events.py --n 10000 --seed 7 --malformed 40 --out conf/samples/customer-events.jsonl

Only the standard library is used. The same ``n``, ``seed`` and ``malformed``
always give byte-identical output, and the valid events do not depend on
``malformed``: malformed lines are drawn from a separate random stream and
inserted between them.

Every value is synthetic. Phone numbers use the fictional 555-01xx range and
e-mail domains are under the reserved example.com/.org/.net, but the values are shaped like
real PII on purpose, so that leak scanners have something to find.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CITIES",
    "MALFORMED_KINDS",
    "N_CUSTOMERS",
    "START_EPOCH",
    "iter_events",
    "luhn_ok",
    "malformed_plan",
    "main",
]

#: Number of distinct customers in the pool; events pick among them uniformly.
N_CUSTOMERS = 2000

#: Event time of the first event: 2024-03-15T00:00:00Z.
START_EPOCH = 1710460800

#: Mean spacing of event time between consecutive valid events (20 per second).
_STEP_MS = 50

#: Fraction of events with a nested ``address`` instead of a top-level ``zip``.
P_NESTED_ADDRESS = 0.30
#: Fraction of events with fields that no policy names.
P_UNKNOWN_FIELDS = 0.10
#: Fraction of events with an ``items`` list (split payment).
P_ITEMS = 0.05
#: Fraction of events whose timestamp is moved back by 1 to 5 seconds.
P_OUT_OF_ORDER = 0.005

FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Emily", "Mark", "Ashley", "Steven", "Michelle",
    "Andrew", "Kimberly", "Joshua", "Amanda", "Kevin", "Melissa", "Brian", "Stephanie", "Jose", "Maria",
    "Luis", "Carmen", "Carlos", "Sofia", "Juan", "Valentina", "Miguel", "Camila", "Diego", "Lucia",
    "Wei", "Mei", "Jun", "Xin", "Hiroshi", "Yuki", "Kenji", "Aiko", "Min-jun", "Seo-yeon",
    "Ji-ho", "Hana", "Minh", "Linh", "Thanh", "Anh", "Raj", "Priya", "Arjun", "Ananya",
    "Vikram", "Deepa", "Rahul", "Sunita", "Mohammed", "Fatima", "Omar", "Aisha", "Ali", "Layla",
    "Yusuf", "Zainab", "Kwame", "Amara", "Chinedu", "Ngozi", "Tunde", "Adaeze", "Kofi", "Abena",
    "Olga", "Dmitri", "Ivan", "Svetlana", "Sean", "Siobhan", "Liam", "Aoife", "Noah", "Olivia",
)

LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams",
    "Garcia", "Martinez", "Rodriguez", "Hernandez", "Lopez", "Gonzalez", "Perez", "Sanchez", "Ramirez", "Torres",
    "Flores", "Rivera", "Gomez", "Diaz", "Reyes", "Cruz", "Morales", "Ortiz", "Gutierrez", "Chavez",
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou",
    "Tanaka", "Suzuki", "Takahashi", "Watanabe", "Kim", "Park", "Choi", "Nguyen", "Tran", "Pham",
    "Patel", "Shah", "Singh", "Kumar", "Sharma", "Gupta", "Reddy", "Iyer", "Khan", "Ahmed",
    "Hassan", "Haddad", "Okafor", "Adeyemi", "Mensah", "Okonkwo", "Diallo", "Ivanov", "Petrov", "Kowalski",
    "Novak", "Schmidt", "Muller", "Rossi", "Russo", "O'Brien", "O'Connor", "Murphy", "Kelly", "Silva",
)

EMAIL_DOMAINS = (
    "example.com", "example.com", "example.com", "example.org", "example.net",
    "mail.example.com", "corp.example.com", "inbox.example.org", "students.example.net", "shop.example.org",
)

STREETS = (
    "Main St", "Oak Ave", "Maple St", "Pine St", "Cedar Ave", "Elm St", "Washington Blvd", "Park Ave",
    "2nd St", "3rd Ave", "Lake Dr", "Hill Rd", "Sunset Blvd", "Market St", "Broadway", "Church St",
    "Highland Ave", "River Rd", "Mission St", "Jefferson Ave", "Lincoln Way", "Walnut St", "Spring St",
    "Chestnut St", "Madison Ave", "Willow Ln", "Franklin St", "Ridge Rd", "Valley View Dr", "Harbor Blvd",
)

#: (city, state, region, area code, zips, lat, lon, weight)
CITIES = (
    ("San Francisco", "CA", "us-west", "415", ("94102", "94103", "94110"), 37.7793, -122.4193, 4),
    ("Los Angeles", "CA", "us-west", "213", ("90012", "90017", "90026"), 34.0522, -118.2437, 6),
    ("San Diego", "CA", "us-west", "619", ("92101", "92103"), 32.7157, -117.1611, 3),
    ("San Jose", "CA", "us-west", "408", ("95112", "95113"), 37.3382, -121.8863, 2),
    ("Sacramento", "CA", "us-west", "916", ("95814", "95816"), 38.5816, -121.4944, 2),
    ("Seattle", "WA", "us-west", "206", ("98101", "98104", "98109"), 47.6062, -122.3321, 4),
    ("Portland", "OR", "us-west", "503", ("97201", "97205"), 45.5152, -122.6784, 2),
    ("Las Vegas", "NV", "us-west", "702", ("89101", "89109"), 36.1716, -115.1391, 2),
    ("Phoenix", "AZ", "us-west", "602", ("85004", "85006"), 33.4484, -112.0740, 3),
    ("Denver", "CO", "us-west", "303", ("80202", "80205"), 39.7392, -104.9903, 3),
    ("Salt Lake City", "UT", "us-west", "801", ("84101", "84111"), 40.7608, -111.8910, 1),
    ("New York", "NY", "us-east", "212", ("10001", "10011", "10027"), 40.7128, -74.0060, 8),
    ("Boston", "MA", "us-east", "617", ("02108", "02116", "02134"), 42.3601, -71.0589, 4),
    ("Philadelphia", "PA", "us-east", "215", ("19103", "19107"), 39.9526, -75.1652, 3),
    ("Washington", "DC", "us-east", "202", ("20001", "20009"), 38.9072, -77.0369, 3),
    ("Baltimore", "MD", "us-east", "410", ("21201", "21202"), 39.2904, -76.6122, 2),
    ("Pittsburgh", "PA", "us-east", "412", ("15213", "15222"), 40.4406, -79.9959, 2),
    ("Newark", "NJ", "us-east", "973", ("07102", "07104"), 40.7357, -74.1724, 1),
    ("Hartford", "CT", "us-east", "860", ("06103", "06106"), 41.7658, -72.6734, 1),
    ("Providence", "RI", "us-east", "401", ("02903", "02906"), 41.8240, -71.4128, 1),
    ("Chicago", "IL", "us-central", "312", ("60601", "60614", "60622"), 41.8781, -87.6298, 5),
    ("Minneapolis", "MN", "us-central", "612", ("55401", "55403"), 44.9778, -93.2650, 2),
    ("Detroit", "MI", "us-central", "313", ("48201", "48226"), 42.3314, -83.0458, 2),
    ("Kansas City", "MO", "us-central", "816", ("64105", "64111"), 39.0997, -94.5786, 2),
    ("St. Louis", "MO", "us-central", "314", ("63101", "63104"), 38.6270, -90.1994, 2),
    ("Columbus", "OH", "us-central", "614", ("43201", "43215"), 39.9612, -82.9988, 2),
    ("Milwaukee", "WI", "us-central", "414", ("53202", "53212"), 43.0389, -87.9065, 1),
    ("Houston", "TX", "us-south", "713", ("77002", "77006"), 29.7604, -95.3698, 5),
    ("Dallas", "TX", "us-south", "214", ("75201", "75204"), 32.7767, -96.7970, 4),
    ("Austin", "TX", "us-south", "512", ("78701", "78704"), 30.2672, -97.7431, 3),
    ("Atlanta", "GA", "us-south", "404", ("30303", "30308"), 33.7490, -84.3880, 3),
    ("Miami", "FL", "us-south", "305", ("33130", "33131"), 25.7617, -80.1918, 3),
    ("Nashville", "TN", "us-south", "615", ("37203", "37206"), 36.1627, -86.7816, 2),
    ("Charlotte", "NC", "us-south", "704", ("28202", "28203"), 35.2271, -80.8431, 2),
    ("New Orleans", "LA", "us-south", "504", ("70112", "70116"), 29.9511, -90.0715, 1),
)

LOYALTY_TIERS = ("bronze", "silver", "gold", "platinum")
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/122.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/122.0 Mobile Safari/537.36",
    "ShopApp/4.12.0 (iOS 17.3; iPad13,4)",
)
NOTE_TEMPLATES = (
    "Customer asked to update email to {email}",
    "Called from {phone} about a double charge",
    "Verified identity with last four of SSN {ssn4}",
    "Card ending {card4} declined once, retried OK",
    "Deliver to {street}, {city} - leave at front desk",
    "Gift wrap requested",
    "Prefers contact by email, not phone",
    "{name} asked for a receipt copy",
    "Return authorized, refund to original card",
)

#: Malformed line kinds, in the order they are cycled through.
MALFORMED_KINDS = (
    "broken_json_truncated",
    "broken_json_trailing_garbage",
    "not_object_array",
    "not_object_string",
    "not_object_number",
    "wrong_type_age_string",
    "wrong_type_card_number",
    "wrong_type_purchase_amount_string",
    "wrong_type_ssn_list",
    "missing_customerId",
    "missing_timestamp",
    "too_short_card",
    "too_short_ssn",
    "too_short_email",
)

_ONES = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _words(n: int) -> str:
    """Spell a number below 100 in English words (``42`` -> ``"forty-two"``)."""
    if n < 20:
        return _ONES[n] or "zero"
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("-" + _ONES[ones] if ones else "")


def luhn_ok(number: str) -> bool:
    """Return whether a digit string passes the Luhn check.

    Parameters
    ----------
    number : str
        Digits only.

    Returns
    -------
    bool
        True when the Luhn checksum is 0 mod 10.
    """
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _luhn_complete(partial: str) -> str:
    """Append the Luhn check digit to ``partial``."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    if rng.random() < 0.6:
        prefix = "4"
    else:
        prefix = "5" + str(rng.randint(1, 5))
    body = "".join(str(rng.randrange(10)) for _ in range(15 - len(prefix)))
    return _luhn_complete(prefix + body)


def _ssn(rng: random.Random) -> str:
    area = rng.randint(1, 899)
    while area == 666:
        area = rng.randint(1, 899)
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _email_local(first: str, last: str, rng: random.Random) -> str:
    f = "".join(c for c in first.lower() if c.isalnum())
    last_clean = "".join(c for c in last.lower() if c.isalnum())
    style = rng.randrange(6)
    if style == 0:
        return f"{f}.{last_clean}"
    if style == 1:
        return f"{f[0]}{last_clean}"
    if style == 2:
        return f"{f}{last_clean}{rng.randint(1, 99)}"
    if style == 3:
        return f"{f}_{last_clean}"
    if style == 4:
        return f"{f[0]}.{last_clean}"
    return f"{f}.{last_clean}{rng.randint(1960, 2005)}"


def _make_customers(rng: random.Random) -> list[dict]:
    """Build the customer pool: stable PII per customer."""
    weights = [c[7] for c in CITIES]
    ids = rng.sample(range(10_000, 1_000_000), N_CUSTOMERS)
    seen_emails: set[str] = set()
    customers = []
    for cid in ids:
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        local = _email_local(first, last, rng)
        domain = rng.choice(EMAIL_DOMAINS)
        email = f"{local}@{domain}"
        while email in seen_emails:
            email = f"{local}{rng.randint(2, 999)}@{domain}"
        seen_emails.add(email)
        city, state, region, area_code, zips, lat, lon, _ = rng.choices(CITIES, weights)[0]
        line = f"{rng.randint(100, 199):04d}"
        if rng.random() < 0.5:
            phone = f"+1-{area_code}-555-{line}"
        else:
            phone = f"({area_code}) 555-{line}"
        age = int(rng.triangular(18, 91, 34))
        street = f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"
        zip_code = rng.choice(zips)
        home_lat = lat + rng.uniform(-0.04, 0.04)
        home_lon = lon + rng.uniform(-0.05, 0.05)
        customers.append({
            "customerId": f"CUST{cid}",
            "name": f"{first} {last}",
            "email": email,
            "ssn": _ssn(rng),
            "card": _card(rng),
            "phone": phone,
            "age": age,
            "_zip": zip_code,
            "_address": {"street": street, "city": city, "state": state, "zip": zip_code},
            "_lat": home_lat,
            "_lon": home_lon,
            "_region": region,
            "_card2": _card(rng),
        })
    for c in customers:
        stable = {k: c[k] for k in ("customerId", "name", "email", "ssn", "card", "phone", "age")}
        c["_prefix"] = json.dumps(stable)[:-1] + ", "
        c["_zipfrag"] = '"zip": ' + json.dumps(c["_zip"]) + ", "
        c["_addrfrag"] = '"address": ' + json.dumps(c["_address"]) + ", "
        c["_regionfrag"] = ', "region": ' + json.dumps(c["_region"]) + ', "purchaseAmount": '
    return customers


_ISO_CACHE: dict[int, str] = {}


def _iso(epoch_s: int) -> str:
    s = _ISO_CACHE.get(epoch_s)
    if s is None:
        if len(_ISO_CACHE) > 100_000:
            _ISO_CACHE.clear()
        s = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))
        _ISO_CACHE[epoch_s] = s
    return s


def _amount(rng: random.Random) -> float:
    """Right-skewed purchase amount in [1.00, 999.99] (median about $45)."""
    x = rng.lognormvariate(3.8, 1.0)
    if x < 1.0:
        x = 1.0 + rng.random()
    elif x > 999.99:
        x = rng.uniform(500.0, 999.99)
    return round(x, 2)


def _ip(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return f"203.0.113.{rng.randint(1, 254)}"
    if r < 0.7:
        return f"198.51.100.{rng.randint(1, 254)}"
    if r < 0.9:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return f"2001:db8::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"


def _unknown_fields(ev: dict, c: dict, rng: random.Random) -> None:
    """Add 1-4 fields that no policy names."""
    k = rng.randint(1, 4)
    for name in rng.sample(("ipAddress", "deviceId", "notes", "loyaltyTier", "userAgent"), k):
        if name == "ipAddress":
            ev[name] = _ip(rng)
        elif name == "deviceId":
            h = f"{rng.getrandbits(128):032x}"
            ev[name] = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
        elif name == "notes":
            addr = c["_address"]
            ev[name] = rng.choice(NOTE_TEMPLATES).format(
                email=c["email"], phone=c["phone"], ssn4=c["ssn"][-4:], card4=c["card"][-4:],
                street=addr["street"], city=addr["city"], name=c["name"],
            )
        elif name == "loyaltyTier":
            ev[name] = rng.choice(LOYALTY_TIERS)
        else:
            ev[name] = rng.choice(USER_AGENTS)


def _items(c: dict, rng: random.Random) -> list[dict]:
    cards = (c["card"], c["_card2"])
    out = []
    for i in range(rng.randint(1, 3)):
        sku = f"SKU-{rng.randint(10000, 99999)}-{rng.choice('ABCDEFGH')}{rng.randint(1, 9)}"
        out.append({"sku": sku, "qty": rng.randint(1, 5), "card": cards[i % 2]})
    return out


def _event(c: dict, epoch_ms: int, rng: random.Random) -> dict:
    """Build one valid event for customer ``c`` at ``epoch_ms``."""
    ev = {
        "customerId": c["customerId"],
        "name": c["name"],
        "email": c["email"],
        "ssn": c["ssn"],
        "card": c["card"],
        "phone": c["phone"],
        "age": c["age"],
    }
    if rng.random() < P_NESTED_ADDRESS:
        ev["address"] = dict(c["_address"])
    else:
        ev["zip"] = c["_zip"]
    ev["lat"] = round(c["_lat"] + rng.uniform(-0.005, 0.005), 6)
    ev["lon"] = round(c["_lon"] + rng.uniform(-0.005, 0.005), 6)
    ev["region"] = c["_region"]
    ev["purchaseAmount"] = _amount(rng)
    ev["timestamp"] = _iso(epoch_ms // 1000)
    if rng.random() < P_UNKNOWN_FIELDS:
        _unknown_fields(ev, c, rng)
    if rng.random() < P_ITEMS:
        ev["items"] = _items(c, rng)
    return ev


def _event_line(c: dict, epoch_ms: int, rng: random.Random) -> str:
    """Return ``json.dumps(_event(c, epoch_ms, rng))``, built faster from pre-encoded fragments.

    It draws exactly the same random numbers as :func:`_event`, in the same order.
    """
    uniform = rng.uniform
    rand = rng.random
    zfrag = c["_addrfrag"] if rand() < P_NESTED_ADDRESS else c["_zipfrag"]
    lat = round(c["_lat"] + uniform(-0.005, 0.005), 6)
    lon = round(c["_lon"] + uniform(-0.005, 0.005), 6)
    amount = _amount(rng)
    head = (f'{c["_prefix"]}{zfrag}"lat": {lat!r}, "lon": {lon!r}{c["_regionfrag"]}{amount!r}, '
            f'"timestamp": "{_iso(epoch_ms // 1000)}"')
    extra: dict = {}
    if rand() < P_UNKNOWN_FIELDS:
        _unknown_fields(extra, c, rng)
    if rand() < P_ITEMS:
        extra["items"] = _items(c, rng)
    if extra:
        return head + ", " + json.dumps(extra)[1:]
    return head + "}"


def _malformed(kind: str, ev: dict, rng: random.Random) -> str:
    """Turn a realistic event into one malformed line of the given kind."""
    if kind == "broken_json_truncated":
        text = json.dumps(ev)
        return text[: rng.randint(len(text) // 5, len(text) * 9 // 10)]
    if kind == "broken_json_trailing_garbage":
        return json.dumps(ev) + rng.choice(("}", " garbage", ',"ssn":', ' {"customerId":'))
    if kind == "not_object_array":
        return json.dumps([ev["customerId"], ev["name"], ev["email"], ev["ssn"], ev["card"]])
    if kind == "not_object_string":
        return json.dumps(f"{ev['name']} <{ev['email']}> ssn {ev['ssn']} card {ev['card']}")
    if kind == "not_object_number":
        return ev["card"]
    ev = dict(ev)
    if kind == "wrong_type_age_string":
        ev["age"] = _words(ev["age"])
    elif kind == "wrong_type_card_number":
        ev["card"] = int(ev["card"])
    elif kind == "wrong_type_purchase_amount_string":
        ev["purchaseAmount"] = f"{ev['purchaseAmount']:.2f}".replace(".", ",")
    elif kind == "wrong_type_ssn_list":
        ev["ssn"] = ev["ssn"].split("-")
    elif kind == "missing_customerId":
        del ev["customerId"]
    elif kind == "missing_timestamp":
        del ev["timestamp"]
    elif kind == "too_short_card":
        ev["card"] = ev["card"][:4]
    elif kind == "too_short_ssn":
        ssn = ev["ssn"]
        ev["ssn"] = f"{ssn[1:3]}-{ssn[4:6]}"
    elif kind == "too_short_email":
        ev["email"] = ev["email"][0]
    else:  # pragma: no cover - guarded by MALFORMED_KINDS
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(ev)


def malformed_plan(n: int, seed: int, malformed: int = 0) -> list[tuple[int, str]]:
    """Return where the malformed lines go and what kind each is.

    Parameters
    ----------
    n : int
        Number of valid events.
    seed : int
        Random seed.
    malformed : int, optional
        Number of malformed lines.

    Returns
    -------
    list of tuple of (int, str)
        ``(line_number, kind)`` pairs sorted by line number; line numbers are
        1-based over the ``n + malformed`` output lines. Kinds cycle through
        ``MALFORMED_KINDS`` so that each kind occurs ``malformed // 14`` or one
        more times.
    """
    if n < 0 or malformed < 0:
        raise ValueError("n and malformed must be >= 0")
    prng = random.Random(seed * 1_000_003 + 17)
    positions = sorted(prng.sample(range(n + malformed), malformed))
    kinds = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(malformed)]
    prng.shuffle(kinds)
    return [(p + 1, k) for p, k in zip(positions, kinds, strict=True)]


def iter_events(n: int, seed: int, malformed: int = 0) -> Iterator[str]:
    """Yield ``n + malformed`` JSON Lines (without trailing newline).

    Parameters
    ----------
    n : int
        Number of valid events.
    seed : int
        Random seed; the same arguments always give the same lines.
    malformed : int, optional
        Number of malformed lines to insert at the positions given by
        :func:`malformed_plan`. The valid lines do not depend on it.

    Yields
    ------
    str
        One JSON Lines record. Valid records are JSON objects with
        ``customerId``, ``name``, ``email``, ``ssn``, ``card``, ``phone``,
        ``age``, either ``zip`` or ``address`` (``street``, ``city``,
        ``state``, ``zip``), ``lat``, ``lon``, ``region``,
        ``purchaseAmount`` and ``timestamp``, sometimes followed by unnamed
        fields (``ipAddress``, ``deviceId``, ``notes``, ``loyaltyTier``,
        ``userAgent``) and ``items`` (``sku``, ``qty``, ``card``).
    """
    plan = dict(malformed_plan(n, seed, malformed))
    rng = random.Random(seed)
    customers = _make_customers(rng)
    mrng = random.Random(seed * 7_919 + 3)
    rand = rng.random
    n_cust = len(customers)
    valid = 0
    epoch_ms = START_EPOCH * 1000
    for line_no in range(1, n + malformed + 1):
        kind = plan.get(line_no)
        if kind is not None:
            c = customers[int(mrng.random() * n_cust)]
            ev = _event(c, epoch_ms + int(mrng.random() * _STEP_MS), mrng)
            yield _malformed(kind, ev, mrng)
            continue
        c = customers[int(rand() * n_cust)]
        epoch_ms = START_EPOCH * 1000 + valid * _STEP_MS + int(rand() * _STEP_MS)
        ts_ms = epoch_ms
        if rand() < P_OUT_OF_ORDER:
            ts_ms = max(START_EPOCH * 1000, ts_ms - 1000 - int(rand() * 3950))
        yield _event_line(c, ts_ms, rng)
        valid += 1


def main(argv: list[str] | None = None) -> int:
    """Run the command-line interface.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        description="Generate reproducible, realistic (synthetic) raw customer events as JSON Lines.",
    )
    parser.add_argument("--n", type=int, default=10_000, help="number of valid events (default 10000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--malformed", type=int, default=0, help="number of malformed lines to insert (default 0)")
    parser.add_argument("--out", default="-", help="output path, or - for stdout (default -)")
    args = parser.parse_args(argv)
    if args.n < 0 or args.malformed < 0:
        parser.error("--n and --malformed must be >= 0")
    lines = iter_events(args.n, args.seed, args.malformed)
    if args.out == "-":
        out = sys.stdout
        for line in lines:
            out.write(line + "\n")
        out.flush()
    else:
        path = Path(args.out)
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line + "\n")
    print(f"generate_events: {args.n} valid, {args.malformed} malformed, {args.n + args.malformed} lines -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
