"""Substitution with realistic fake values, chosen by a keyed hash of the original.

The same input under the same key gives the same fake, in every field and topic
of the same domain, so joins on the substituted value still work. The domain
defaults to the kind (``person_name``), so two fields holding names agree.
Fake emails use the reserved ``example.*`` domains (RFC 2606), so no real
mailbox is ever named.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, ClassVar

from udfs.errors import TransformError
from udfs.keyring import derive
from udfs.registry import Transform, transform

FIRST_NAMES = (
    "Aaliyah Aaron Abigail Adrian Aisha Alejandro Alexander Alice Amara Amelia Ana Andre Anna Arjun Ava Benjamin Bianca "
    "Caleb Camila Carlos Charlotte Chen Chloe Daniel David Diego Dmitri Elena Eli Elijah Emily Emma Ethan Fatima Felix "
    "Gabriel Grace Hana Hannah Harper Hiro Ibrahim Isabella Ivan Jack Jamal James Jasmine Javier Jin Jonah Julia Kai "
    "Kenji Layla Leah Leo Liam Lucas Lucia Luna Maya Mei Mia Mohammed Naomi Nadia Noah Nora Olivia Omar Oscar Priya "
    "Rafael Ravi Rosa Ruby Samuel Santiago Sara Sofia Sophia Stella Tariq Theo Thomas Valentina Victor Wei William "
    "Yara Yusuf Zara Zoe"
).split()
LAST_NAMES = (
    "Adams Ahmed Alvarez Anderson Bailey Baker Brooks Brown Campbell Carter Castillo Chen Clark Collins Cooper Cruz "
    "Davis Diaz Edwards Evans Fischer Flores Garcia Gomez Gonzalez Green Gupta Hall Harris Hernandez Hill Hoffmann "
    "Hughes Ito Jackson Jensen Johnson Jones Kaur Kelly Khan Kim King Kowalski Kumar Lee Lewis Li Lopez Martin "
    "Martinez Mendoza Miller Mitchell Moore Morales Morgan Murphy Nakamura Nelson Nguyen Novak Okafor Ortiz Park "
    "Patel Perez Peterson Phillips Ramirez Reed Reyes Rivera Roberts Robinson Rodriguez Rossi Sanchez Sato Schmidt "
    "Scott Silva Singh Smith Suzuki Taylor Thomas Thompson Torres Turner Walker Wang Watson White Williams Wilson "
    "Wright Yamamoto Young Zhang"
).split()
STREET_NAMES = (
    "Oak Maple Cedar Pine Elm Willow Birch Spruce Chestnut Walnut Hickory Magnolia Juniper Aspen Sycamore Laurel "
    "Lake Hill River Park Meadow Forest Spring Sunset Highland Valley Ridge Harbor Garden Orchard Mill Church Market "
    "Union Liberty Washington Lincoln Jefferson Franklin Madison Jackson Adams Monroe Grant Cleveland"
).split()
STREET_SUFFIXES = "St Ave Rd Blvd Ln Dr Ct Pl Way Ter".split()
CITIES = (
    "Springfield", "Riverton", "Fairview", "Georgetown", "Clinton", "Salem", "Madison", "Franklin", "Greenville",
    "Bristol", "Oakland Park", "Ashland", "Burlington", "Clayton", "Dayton", "Dover", "Hudson", "Kingston",
    "Lexington", "Milford", "Newport", "Oxford", "Plymouth", "Richmond", "Shelby", "Troy", "Winchester", "Marion",
    "Arlington", "Centerville",
)
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")


# each pick matches the value with odds of one in len(CITIES) at worst
_MAX_PICKS = 32


class _Substitute(Transform):
    key_purpose = "substitute"
    kind: ClassVar[str] = ""

    def __init__(self, params: Any = None, *, domain: str = "default") -> None:
        # domain defaults to the kind, so every field of names agrees on the fakes
        params = dict(params or {})
        params.setdefault("domain", self.kind)
        super().__init__(params, domain=domain)

    memoize_results = True

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._mac_key = derive(self.key, "substitute", self.domain)

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TransformError(f"{self.name} expected a string, got {type(value).__name__}")
        # case and surrounding space do not make a different person
        own = value.strip().casefold()
        message = own.encode()
        for attempt in range(_MAX_PICKS):
            fake = self.fake(hmac.new(self._mac_key, message, hashlib.sha256).digest())
            # the lists hold real names and towns: never hand a value back as its own fake
            if fake.casefold() != own:
                return fake
            message = own.encode() + b"\x00" + bytes([attempt + 1])
        raise TransformError(f"{self.name} found no fake unlike the value in {_MAX_PICKS} picks")

    def fake(self, digest: bytes) -> str:
        raise NotImplementedError


def _index(digest: bytes, offset: int, size: int) -> int:
    return int.from_bytes(digest[offset:offset + 4], "big") % size


@transform("substitute.person_name")
class PersonName(_Substitute):
    """A realistic first and last name: ``John Doe`` -> ``Maya Okafor``."""

    kind = "person_name"

    def fake(self, d: bytes) -> str:
        return f"{FIRST_NAMES[_index(d, 0, len(FIRST_NAMES))]} {LAST_NAMES[_index(d, 4, len(LAST_NAMES))]}"


@transform("substitute.email")
class Email(_Substitute):
    """A fake address on a reserved domain: ``maya.okafor42@example.net``."""

    kind = "email"

    def fake(self, d: bytes) -> str:
        first = FIRST_NAMES[_index(d, 0, len(FIRST_NAMES))].lower()
        last = LAST_NAMES[_index(d, 4, len(LAST_NAMES))].lower()
        return f"{first}.{last}{_index(d, 8, 1000)}@{EMAIL_DOMAINS[_index(d, 12, len(EMAIL_DOMAINS))]}"


@transform("substitute.street_address")
class StreetAddress(_Substitute):
    """A fake street line: ``4821 Willow Ave``."""

    kind = "street_address"

    def fake(self, d: bytes) -> str:
        number = 1 + _index(d, 0, 9899)
        return f"{number} {STREET_NAMES[_index(d, 4, len(STREET_NAMES))]} {STREET_SUFFIXES[_index(d, 8, len(STREET_SUFFIXES))]}"


@transform("substitute.city")
class City(_Substitute):
    """A fake city name from a list of common US town names."""

    kind = "city"

    def fake(self, d: bytes) -> str:
        return CITIES[_index(d, 0, len(CITIES))]
