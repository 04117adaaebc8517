"""What FF1 and FF3-1 share: the alphabets, the error, and the cipher base class.

:class:`FPECipher` checks the key, the alphabet and the length domain, and caches one plan per
(length, tweak); :mod:`udfs.ff1` and :mod:`udfs.ff3_1` add the rounds. No Flink dependency.
"""

from __future__ import annotations

import string
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["ALPHABETS", "DOMAIN_MIN", "Alphabet", "FPECipher", "FPEError", "min_length"]

#: radix**length must reach this (SP 800-38G Rev. 1, section 5.2)
DOMAIN_MIN = 1_000_000

_CANON36 = string.digits + string.ascii_lowercase

#: named alphabets usable wherever an alphabet is expected
ALPHABETS: dict[str, str] = {
    "digits": string.digits,
    "hex": string.digits + "abcdef",
    "hex_upper": string.digits + "ABCDEF",
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "alphanumeric": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "alphanumeric_lower": string.digits + string.ascii_lowercase,
    "alphanumeric_upper": string.digits + string.ascii_uppercase,
    "base36": _CANON36,
}


class FPEError(ValueError):
    """A value or a parameter does not fit the cipher. Never quotes the value or the key."""


def min_length(radix: int, domain_min: int = DOMAIN_MIN) -> int:
    """Smallest length ``n >= 2`` with ``radix**n >= domain_min``, computed exactly."""
    n, size = 1, radix
    while size < domain_min or n < 2:
        n += 1
        size *= radix
    return n


class Alphabet:
    """Symbols of a radix and fast conversions between strings and integers.

    ``num(s)`` reads ``s`` most significant symbol first (FF1's ``NUM_radix``);
    ``text(x, m)`` writes ``x`` as exactly ``m`` symbols (FF1's ``STR^m_radix``).

    Parameters
    ----------
    chars : str
        The symbols, each once, in order of value (``chars[0]`` is zero).
    """

    __slots__ = (
        "chars", "radix", "_index", "_set", "_to_canon", "_from_canon", "_canon", "_fmt", "_chunk", "_table", "_use_strip",
    )

    def __init__(self, chars: str) -> None:
        radix = len(chars)
        if radix < 2 or radix > 65536:
            raise FPEError(f"an alphabet needs 2 to 65536 symbols, got {radix}")
        if len(set(chars)) != radix:
            raise FPEError("the alphabet repeats a symbol")
        self.chars = chars
        self.radix = radix
        self._index = {ch: i for i, ch in enumerate(chars)}
        self._set = frozenset(chars)
        # str.strip(chars) scans the alphabet per symbol: fine for short alphabets only
        self._use_strip = radix <= 96
        self._canon = radix <= 36
        canon = _CANON36[:radix] if self._canon else ""
        self._to_canon = None if chars == canon or not self._canon else str.maketrans(chars, canon)
        self._from_canon = None if chars == canon or not self._canon else str.maketrans(canon, chars)
        self._fmt = {10: "d", 16: "x", 8: "o", 2: "b"}.get(radix) if self._canon else None
        # generic writer: digits of radix**k at a time, k symbols per table entry
        chunk, size = 1, radix
        while size * radix <= 4096:
            chunk += 1
            size *= radix
        self._chunk = (chunk, size)
        self._table: list[str] | None = None

    @classmethod
    def of(cls, spec: str | Alphabet) -> Alphabet:
        """An :class:`Alphabet` from a named alphabet (``"digits"``), literal symbols, or itself."""
        if isinstance(spec, Alphabet):
            return spec
        return cls(ALPHABETS.get(spec, spec))

    def valid(self, s: str) -> bool:
        """True when every symbol of ``s`` is in the alphabet."""
        if self._fmt == "d" and self._to_canon is None:
            return s.isascii() and s.isdigit()
        if self._use_strip:
            return not s.strip(self.chars)
        return self._set.issuperset(s)

    def num(self, s: str) -> int:
        """``NUM_radix(s)``; ``s`` must be :meth:`valid`."""
        if self._canon:
            if self._to_canon is not None:
                s = s.translate(self._to_canon)
            return int(s, self.radix)
        index, radix, x = self._index, self.radix, 0
        for ch in s:
            x = x * radix + index[ch]
        return x

    def text(self, x: int, m: int) -> str:
        """``STR^m_radix(x)``: ``x`` as exactly ``m`` symbols, zero-padded."""
        if self._fmt is not None:
            s = format(x, f"0{m}{self._fmt}")
            return s if self._from_canon is None else s.translate(self._from_canon)
        chunk, size = self._chunk
        table = self._table
        if table is None:
            table = self._table = self._make_table(chunk)
        parts = []
        for _ in range(-(-m // chunk)):
            x, rem = divmod(x, size)
            parts.append(table[rem])
        parts.reverse()
        return "".join(parts)[-m:]

    def _make_table(self, chunk: int) -> list[str]:
        table = list(self.chars)
        for _ in range(chunk - 1):
            table = [hi + lo for hi in table for lo in self.chars]
        return table

    def __repr__(self) -> str:
        return f"Alphabet(radix={self.radix})"


class FPECipher:
    """What FF1 and FF3-1 share: the key and alphabet checks, the length domain and the plan cache.

    A subclass sets :attr:`name` (as error messages spell the algorithm) and
    implements ``_max_length(radix)`` and ``_make_plan(n, tweak)``; its
    ``_crypt`` starts with :meth:`_plan`, which checks the value and returns the
    cached (length, tweak) plan.
    """

    #: the algorithm as error messages spell it
    name = ""
    #: whether "too long" names the radix (FF3-1's longest value depends on it)
    _long_names_radix = False

    def __init__(self, key: bytes, alphabet: str | Alphabet = "digits", *, plan_cache: int = 1024) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
            raise FPEError("an AES key must be 16, 24 or 32 bytes")
        self.alphabet = Alphabet.of(alphabet)
        self.radix = self.alphabet.radix
        self.min_len = min_length(self.radix)
        self.max_len = self._max_length(self.radix)
        self._ecb = Cipher(algorithms.AES(self._aes_key(bytes(key))), modes.ECB()).encryptor().update
        self._plans: dict[tuple[int, bytes], Any] = {}
        self._plan_cache = max(1, plan_cache)

    def check_length(self, n: int) -> None:
        """Raise :class:`FPEError` when ``n`` symbols are outside this cipher's domain."""
        if n < self.min_len:
            raise FPEError(f"too short for {self.name}: {n} symbols of radix {self.radix}, at least {self.min_len} needed")
        if n > self.max_len:
            radix = f" of radix {self.radix}" if self._long_names_radix else ""
            raise FPEError(f"too long for {self.name}: {n} symbols{radix}, at most {self.max_len}")

    def _plan(self, text: str, tweak: bytes) -> Any:
        """The plan for ``text``'s length and ``tweak``, after checking the length and the symbols."""
        n = len(text)
        plan = self._plans.get((n, tweak))
        if plan is None:
            self.check_length(n)
            tweak = bytes(tweak)
            plan = self._make_plan(n, tweak)
            plans = self._plans
            if len(plans) >= self._plan_cache:
                # tweaks from a record field are unbounded: drop the oldest plan
                del plans[next(iter(plans))]
            plans[(n, tweak)] = plan
        if not self.alphabet.valid(text):
            raise FPEError("symbol outside the alphabet")
        return plan

    @staticmethod
    def _aes_key(key: bytes) -> bytes:
        return key

    def _max_length(self, radix: int) -> int:
        raise NotImplementedError

    def _make_plan(self, n: int, tweak: bytes) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:  # never shows key material
        return f"{type(self).__name__}(radix={self.radix})"

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds a key and is not picklable; build it in open()")
