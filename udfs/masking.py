"""Keep, drop, null, redaction and partial masks.

These need no key: they hide part of a value and keep its shape, as in the
source text's ``j***@example.com`` and ``***-**-6789``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from udfs.errors import MISSING, ParamError, TransformError
from udfs.registry import Transform, transform

DROP = object()
"""Returned by a transform to remove the field from the view."""


@transform("keep")
class Keep(Transform):
    """Pass the value through unchanged (the field is named, so it is allowed)."""

    def apply(self, value: Any) -> Any:
        return value


class _KeepTyped(Transform):
    """Keep a value only when it has the declared JSON type; anything else goes to the dead letters."""

    accepts: ClassVar[tuple[type, ...]] = ()
    label: ClassVar[str] = ""

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, self.accepts):
            raise TransformError(f"{self.name}: expected {self.label}, got {_type_name(value)}")
        return value


@transform("keep.string")
class KeepString(_KeepTyped):
    """Keep a string (``{keep: string}``)."""

    accepts, label = (str,), "a string"


@transform("keep.integer")
class KeepInteger(_KeepTyped):
    """Keep an integer (``{keep: integer}``)."""

    accepts, label = (int,), "an integer"


@transform("keep.number")
class KeepNumber(_KeepTyped):
    """Keep a finite number (``{keep: number}``)."""

    accepts, label = (int, float), "a number"

    def apply(self, value: Any) -> Any:
        value = super().apply(value)
        if value is not None and value != value or value in (float("inf"), float("-inf")):
            raise TransformError(f"{self.name}: expected a finite number")
        return value


@transform("drop")
class Drop(Transform):
    """Remove the field from the view. Same as not naming it, but explicit and not counted."""

    def apply(self, value: Any) -> Any:
        return DROP


@transform("null")
class Null(Transform):
    """Keep the field but replace its value with JSON null."""

    def apply(self, value: Any) -> Any:
        return None


@transform("redact")
class Redact(Transform):
    """Replace the whole value with a fixed mask (``{redact: fixed, mask: "[REDACTED]"}``)."""

    params = ("mask",)

    def validate(self) -> None:
        self.mask = self.option("mask", "[REDACTED]")
        if not isinstance(self.mask, str):
            raise ParamError("mask", "must be a string", 'a fixed string such as "[REDACTED]"')

    def apply(self, value: Any) -> Any:
        return None if value is None else self.mask


@transform("redact.fixed")
class RedactFixed(Redact):
    """The mapping form of :class:`Redact`: ``{redact: fixed, mask: "[CARD]"}``."""


class _StringMask(Transform):
    """Base of the partial masks: they take strings only, and keep separators."""

    params: ClassVar[tuple[str, ...]] = ("char",)
    memoize_results = True
    #: characters kept in place, so ``123-45-6789`` keeps its dashes
    separators: ClassVar[frozenset[str]] = frozenset(" -().+/_")

    def validate(self) -> None:
        self.char = self.option("char", "*")
        if not isinstance(self.char, str) or len(self.char) != 1:
            raise ParamError("char", "must be a single character", 'one character such as "*"')

    def text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TransformError(f"{self.name} expected a string, got {_type_name(value)}")
        return value

    def mask(self, text: str) -> str:
        """Every significant character of ``text`` masked, separators kept (one C-level pass)."""
        return _SIGNIFICANT.sub(self._replacement, text)

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._replacement = self.char.replace("\\", "\\\\")


#: anything but a separator is significant; must match :attr:`_StringMask.separators`
_SIGNIFICANT = re.compile(r"[^ \-().+/_]")
_SEPARATOR_TABLE = str.maketrans("", "", " -().+/_")
_PHONE_TEXT = re.compile(r"[0-9 \-().+/_]*")
_DIGIT = re.compile(r"[0-9]")


def _split_before_last(text: str, n: int, significant: Any) -> int:
    """Index where the last ``n`` significant characters of ``text`` begin."""
    seen = 0
    for index in range(len(text) - 1, -1, -1):
        if significant(text[index]):
            seen += 1
            if seen == n:
                return index
    return 0


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_significant(char: str) -> bool:
    return char not in _StringMask.separators


@transform("mask.keep_last")
class KeepLast(_StringMask):
    """Mask all but the last ``n`` significant characters: ``***-**-6789``."""

    params = ("n", "char", "min_length")

    def validate(self) -> None:
        super().validate()
        self.n = self.int_option("n", 4, minimum=0)
        # keep_last 4 on a 4-character value would reveal it whole; refuse that at policy time
        self.min_length = self.int_option("min_length", self.n + 1, minimum=0)
        if self.min_length <= self.n:
            raise ParamError(
                "n", f"keep_last {self.n} would reveal whole values of length {self.min_length}",
                f"n smaller than min_length ({self.min_length})",
            )

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        text = self.text(value)
        self.check_length(text)
        if not self.n:
            return self.mask(text)
        return self.keep(text)

    def keep(self, text: str) -> str:
        """``text`` masked but for its ``n`` last significant characters (``n`` > 0)."""
        split = _split_before_last(text, self.n, _is_significant)
        return self.mask(text[:split]) + text[split:]

    def check_length(self, text: str) -> None:
        count = len(text.translate(_SEPARATOR_TABLE))
        if count < self.min_length:
            raise TransformError(f"{self.name}: value has {count} characters, needs at least {self.min_length}")


@transform("mask.keep_first")
class KeepFirst(KeepLast):
    """Mask all but the first ``n`` significant characters: ``4111-****-****-****``."""

    def keep(self, text: str) -> str:
        """``text`` masked but for its ``n`` first significant characters (``n`` > 0)."""
        # the first n significant characters end where the remaining ones start
        split = len(text) - _split_before_last(text[::-1], self.n, _is_significant)
        return text[:split] + self.mask(text[split:])


@transform("mask.email")
class MaskEmail(_StringMask):
    """``john.doe@example.com`` becomes ``j***@example.com``: first letter and domain kept."""

    params = ("char", "keep_domain")

    def validate(self) -> None:
        super().validate()
        self.keep_domain = self.option("keep_domain", True)
        if not isinstance(self.keep_domain, bool):
            raise ParamError("keep_domain", "must be true or false", "true, false")

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        text = self.text(value)
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain or "." not in domain:
            raise TransformError(f"{self.name}: not an email address")
        masked_domain = domain if self.keep_domain else self.char * 3 + domain[domain.rfind("."):]
        return f"{local[0]}{self.char * 3}@{masked_domain}"


@transform("mask.phone")
class MaskPhone(_StringMask):
    """Keep the format and the last ``n`` digits of a phone number: ``+*-***-***-0134``."""

    params = ("n", "char")

    def validate(self) -> None:
        super().validate()
        self.n = self.int_option("n", 4, minimum=0)
        if self.n >= 7:
            # the shortest number accepted has 7 digits: it would be published whole
            raise ParamError("n", f"mask.phone n={self.n} would reveal whole numbers of 7 digits", "n smaller than 7")

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        text = self.text(value)
        if not _PHONE_TEXT.fullmatch(text):
            raise TransformError(f"{self.name}: unexpected characters in a phone number")
        digits = len(_DIGIT.findall(text))
        if digits < 7 or digits > 15:
            raise TransformError(f"{self.name}: expected 7 to 15 digits, got {digits}")
        split = _split_before_last(text, self.n, "0123456789".__contains__) if self.n else len(text)
        # separators and the "+" stay; digits before the kept ones become the mask character
        return _DIGIT.sub(self._replacement, text[:split]) + text[split:]


__all__ = ["DROP", "MISSING", "Drop", "Keep", "KeepFirst", "KeepLast", "MaskEmail", "MaskPhone", "Null", "Redact"]
