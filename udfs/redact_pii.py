"""Free-text PII redaction: ``redact.pii`` finds identifiers inside a text and replaces them.

In a policy::

    body: {redact: pii}                                   # every detector, type tags
    body: {redact: pii, detect: [email, phone]}           # only these detectors
    body: {redact: pii, card: {fpe: ff1, format: card}}   # a card inside the text is FPE-encrypted
    body: {redact: pii, email: {mask: email}, ipv4: {generalize: truncate, keep: 3}}

Detectors (``detect``): ``email``, ``phone``, ``ssn``, ``card`` (Luhn-checked),
``iban`` (ISO 13616 mod-97 checked), ``ipv4``, ``ipv6`` (checked by
:mod:`ipaddress`). A detection becomes its tag (``<EMAIL>``, ``<CARD>``...) or, when
the policy gives a transform spec under the type's name, that transform's output.
A per-type transform is compiled through the registry when the policy is checked and
gets its key in :meth:`RedactPII.open`. Its errors send the record to the dead-letter
output; a detected value is never left in the clear.

The regexes are candidate finders; the checksums and range checks decide. Candidates
are found left to right per detector and the earliest, then longest, wins an overlap.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from udfs import registry
from udfs.errors import MISSING, ParamError, TransformError
from udfs.registry import Transform, transform

__all__ = ["DETECTORS", "TAGS", "Detection", "RedactPII", "detect", "luhn_ok", "iban_ok"]

DETECTORS = ("email", "phone", "ssn", "card", "iban", "ipv4", "ipv6")
TAGS = {name: f"<{name.upper()}>" for name in DETECTORS}


class Detection(NamedTuple):
    """One detected span: ``text[start:end]`` is a value of type ``kind``."""

    start: int
    end: int
    kind: str


# -- candidate patterns (precompiled once per process) ---------------------------------------

# local part and domain as RFC 5321 allows in practice; ``<a@b.com>`` works, ``a@b`` (no TLD) does not
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])"
)
# NANP with separators, optional +1; or E.164-ish with a leading + and grouped digits.
# Letters, digits or dashes glued on either side mean a product code or a longer number.
_PHONE = re.compile(
    r"(?<![\w+-])(?:"
    r"(?:\+1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|\+(?!1[ .-]?\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4})\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}(?:[ .-]\d{2,8}){1,4}"
    r")(?![\w-]|[.]\d)"
)
# dashed or spaced SSN; the SSA never issues area 000, 666 or 9xx, group 00 or serial 0000
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
# 12 to 19 digits, single spaces or dashes between them; Luhn decides
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w]|-\d)")
# country, check digits, up to 30 more alphanumerics, optionally in groups of four; mod 97 decides
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{1,4}){3,8}(?![\w])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# ``v1.2.3.4``, ``999.1.1.1`` and ``1.2.3.4.5`` are not addresses
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|::?)(?:[0-9A-Fa-f]{0,4}:){1,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
# a dotted quad right after one of these words is a version or build number, not a host
_VERSION_WORDS = re.compile(r"(?:version|ver\.?|release|build|firmware|v)\s*$", re.IGNORECASE)

#: ISO 13616 IBAN lengths of the registered countries
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26,
    "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check."""
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        total += _DOUBLED[d] if double else d
        double = not double
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """True when ``compact`` (no spaces) has its country's length and passes ISO 7064 mod 97-10."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _emails(text: str) -> list[Detection]:
    if "@" not in text:
        return []
    return [Detection(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]


def _phones(text: str) -> list[Detection]:
    return [Detection(m.start(), m.end(), "phone") for m in _PHONE.finditer(text)]


def _ssns(text: str) -> list[Detection]:
    return [Detection(m.start(), m.end(), "ssn") for m in _SSN.finditer(text)]


def _cards(text: str) -> list[Detection]:
    out = []
    for m in _CARD.finditer(text):
        raw = m.group()
        # one kind of separator, as printed cards and forms use
        if " " in raw and "-" in raw:
            continue
        digits = raw.replace(" ", "").replace("-", "")
        if luhn_ok(digits):
            out.append(Detection(m.start(), m.end(), "card"))
    return out


def _ibans(text: str) -> list[Detection]:
    out = []
    for m in _IBAN.finditer(text):
        raw = m.group()
        compact = raw.replace(" ", "")
        # the candidate may run into a following word: trim to the country's length
        length = _IBAN_LENGTHS.get(compact[:2])
        if length is None or len(compact) < length:
            continue
        end, seen = m.start(), 0
        while seen < length:
            if text[end] != " ":
                seen += 1
            end += 1
        if end < m.end() and text[end] != " ":
            continue  # the extra characters are glued to it: not an IBAN
        if iban_ok(compact[:length]):
            out.append(Detection(m.start(), end, "iban"))
    return out


def _ipv4s(text: str) -> list[Detection]:
    if "." not in text:
        return []
    out = []
    for m in _IPV4.finditer(text):
        if _VERSION_WORDS.search(text, max(0, m.start() - 12), m.start()):
            continue
        out.append(Detection(m.start(), m.end(), "ipv4"))
    return out


def _ipv6s(text: str) -> list[Detection]:
    if ":" not in text:
        return []
    out = []
    for m in _IPV6.finditer(text):
        try:
            ipaddress.IPv6Address(m.group())
        except ValueError:
            continue  # times (10:30:00), ratios, MAC-like strings
        out.append(Detection(m.start(), m.end(), "ipv6"))
    return out


_FINDERS: dict[str, Callable[[str], list[Detection]]] = {
    "email": _emails,
    "iban": _ibans,
    "card": _cards,
    "ssn": _ssns,
    "phone": _phones,
    "ipv6": _ipv6s,
    "ipv4": _ipv4s,
}


def detect(text: str, kinds: tuple[str, ...] = DETECTORS) -> list[Detection]:
    """Non-overlapping detections in ``text``, in order; earliest then longest wins an overlap."""
    found: list[Detection] = []
    for kind in kinds:
        found.extend(_FINDERS[kind](text))
    if len(found) < 2:
        return found
    found.sort(key=lambda d: (d.start, -(d.end - d.start)))
    kept = [found[0]]
    for d in found[1:]:
        if d.start >= kept[-1].end:
            kept.append(d)
    return kept


def _compile_spec(spec: Any, kind: str) -> Transform:
    """A per-type spec (``{fpe: ff1, format: card}``) as a checked transform, the way a policy field is."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping) and spec:
        known = set(registry.names())
        family = next((k for k, v in spec.items() if isinstance(v, str) and f"{k}.{v}" in known), next(iter(spec)))
        variant = spec[family]
        if not isinstance(variant, str):
            raise ParamError(kind, f"'{family}' needs a variant name", "a registered transform")
        name, params = f"{family}.{variant}", {k: v for k, v in spec.items() if k != family}
    else:
        raise ParamError(kind, "must be 'tag' or a transform spec", "tag, {mask: email}, {fpe: ff1, format: card}")
    try:
        cls = registry.get(name)
    except KeyError:
        raise ParamError(kind, f"unknown transform {name!r}", "a registered transform") from None
    if cls.needs_record or name.startswith("redact.pii"):
        raise ParamError(kind, f"{name} cannot run on a detected span", "a value-to-value transform")
    try:
        # keyed per type, so a card inside a text gets the same FPE output as a card field
        return cls(dict(params), domain=kind)
    except ParamError as exc:
        raise ParamError(f"{kind}.{exc.param}" if exc.param else kind, exc.problem, exc.allowed) from None


@transform("redact.pii")
class RedactPII(Transform):
    """Find PII in free text and replace each finding with its tag or its type's transform.

    Parameters (policy keys)
    ------------------------
    detect : list of str
        Detectors to run, default all of ``email, phone, ssn, card, iban, ipv4, ipv6``.
    email, phone, ssn, card, iban, ipv4, ipv6 : str or mapping
        ``tag`` (default: ``<EMAIL>``...) or a transform spec applied to the detected
        text (``{fpe: ff1, format: card}``). The transform's domain is the type's name.
    """

    params = ("detect",) + DETECTORS

    def validate(self) -> None:
        kinds = self.option("detect", list(DETECTORS))
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds or any(k not in DETECTORS for k in kinds):
            raise ParamError("detect", "must be a non-empty list of detectors", ", ".join(DETECTORS))
        # fixed order: overlaps resolve the same whatever the policy's order
        self.kinds = tuple(k for k in DETECTORS if k in kinds)
        self.sub: dict[str, Transform] = {}
        for kind in DETECTORS:
            spec = self.option(kind, "tag")
            if spec == "tag":
                continue
            if kind not in self.kinds:
                raise ParamError(kind, "has a transform but is not detected", f"add {kind} to detect")
            self.sub[kind] = _compile_spec(spec, kind)
        self.deterministic = all(t.deterministic for t in self.sub.values())
        self._replace: dict[str, Callable[[Any], Any]] = {}

    def open(self, keyring: Any | None) -> None:
        super().open(keyring)
        self._replace = {}
        for kind, sub in self.sub.items():
            try:
                sub.open(keyring)
            except ParamError as exc:
                raise ParamError(f"{kind}.{exc.param}" if exc.param else kind, exc.problem, exc.allowed) from None
            self._replace[kind] = sub.cached_apply()

    def apply(self, value: Any) -> Any:
        if value is None or value is MISSING:
            return value
        if not isinstance(value, str):
            raise TransformError(f"{self.name} expected a string, got {type(value).__name__}")
        found = detect(value, self.kinds)
        if not found:
            return value
        parts, last = [], 0
        for d in found:
            parts.append(value[last:d.start])
            parts.append(self._replacement(value[d.start:d.end], d.kind))
            last = d.end
        parts.append(value[last:])
        return "".join(parts)

    def _replacement(self, span: str, kind: str) -> str:
        replace = self._replace.get(kind)
        if replace is None:
            if kind in self.sub:
                raise TransformError(f"{self.name}: {kind} transform used before open()")
            return TAGS[kind]
        try:
            out = replace(span)
        except TransformError as exc:
            # the inner reason never quotes the value; say where it came from
            raise TransformError(f"{self.name} ({kind}): {exc}") from None
        if not isinstance(out, str):
            return TAGS[kind]  # drop, null and the like: the tag is the safe stand-in
        return out
