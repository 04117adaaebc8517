"""FF1 format-preserving encryption (NIST SP 800-38G), over AES-ECB from ``cryptography``.

FF1 enciphers a string of ``n`` symbols from an alphabet of ``radix`` symbols into
another string of ``n`` symbols from the same alphabet, under an AES key and a
tweak. This module is a plain Python core with no Flink dependency.

It is written for speed on short values (card numbers and the like):

* the halves ``A`` and ``B`` stay integers through all ten rounds; they are
  turned into strings only once, at the end;
* the CBC-MAC of the constant block ``P`` and of the constant leading blocks
  of ``Q`` (the tweak and its padding) is computed once per length and tweak,
  so a round usually costs one AES block;
* one ECB encryptor object is made per key and reused.

References
----------
.. [1] M. Dworkin, "Recommendation for Block Cipher Modes of Operation: Methods
   for Format-Preserving Encryption", NIST SP 800-38G, 2016, and Rev. 1 (2019).
"""

from __future__ import annotations

import string
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["ALPHABETS", "DOMAIN_MIN", "FF1", "FF1_MAX_LEN", "Alphabet", "FPECipher", "FPEError", "min_length"]

#: radix**length must reach this (SP 800-38G Rev. 1, section 5.2)
DOMAIN_MIN = 1_000_000

#: longest value this implementation takes. The standard allows up to 2**32 - 1
#: symbols; this bound keeps every half under Python's int/str conversion limit.
FF1_MAX_LEN = 4096

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


class _Plan:
    """Everything about one (length, tweak) pair that does not depend on the value."""

    __slots__ = ("u", "v", "mod_u", "mod_v", "masks", "shift", "fast", "b", "d", "state", "tail_blocks", "tail_len")


class FF1(FPECipher):
    """FF1 under one AES key and one alphabet.

    Parameters
    ----------
    key : bytes
        AES key of 16, 24 or 32 bytes.
    alphabet : str or Alphabet
        Symbols (``"0123456789"``) or a named alphabet (``"digits"``, ``"hex"``,
        ``"alphanumeric"``, ...); the radix is its length, from 2 to 65536.
    plan_cache : int
        How many (length, tweak) pairs keep their precomputed state.

    Notes
    -----
    Values shorter than :attr:`min_len` (where ``radix**n < 10**6``) or longer
    than :attr:`max_len` raise :class:`FPEError`. The tweak is any byte string.

    Examples
    --------
    >>> key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    >>> FF1(key, "digits").encrypt("0123456789", bytes.fromhex("39383736353433323130"))
    '6124200773'
    """

    name = "ff1"

    def _max_length(self, radix: int) -> int:
        return FF1_MAX_LEN

    # -- public ----------------------------------------------------------------
    def encrypt(self, text: str, tweak: bytes = b"") -> str:
        """Encipher ``text``; the result has the same length and alphabet."""
        return self._crypt(text, tweak, False)

    def decrypt(self, text: str, tweak: bytes = b"") -> str:
        """Decipher ``text`` produced by :meth:`encrypt` with the same tweak."""
        return self._crypt(text, tweak, True)

    # -- core ------------------------------------------------------------------
    def _crypt(self, text: str, tweak: bytes, decrypt: bool) -> str:
        plan = self._plan(text, tweak)
        alphabet = self.alphabet
        u = plan.u
        a = alphabet.num(text[:u])
        b = alphabet.num(text[u:])
        mod_u, mod_v, masks = plan.mod_u, plan.mod_v, plan.masks
        if plan.fast:
            ecb, shift, from_bytes = self._ecb, plan.shift, int.from_bytes
            # one AES block per round; (a, b) is (A, B) again after each pair of rounds
            if decrypt:
                for i in (9, 7, 5, 3, 1):
                    b = (b - (from_bytes(ecb((masks[i] ^ a).to_bytes(16, "big")), "big") >> shift)) % mod_v
                    a = (a - (from_bytes(ecb((masks[i - 1] ^ b).to_bytes(16, "big")), "big") >> shift)) % mod_u
            else:
                for i in (0, 2, 4, 6, 8):
                    a = (a + (from_bytes(ecb((masks[i] ^ b).to_bytes(16, "big")), "big") >> shift)) % mod_u
                    b = (b + (from_bytes(ecb((masks[i + 1] ^ a).to_bytes(16, "big")), "big") >> shift)) % mod_v
        else:
            y = self._round_value
            if decrypt:
                for i in (9, 7, 5, 3, 1):
                    b = (b - y(plan, i, a)) % mod_v
                    a = (a - y(plan, i - 1, b)) % mod_u
            else:
                for i in (0, 2, 4, 6, 8):
                    a = (a + y(plan, i, b)) % mod_u
                    b = (b + y(plan, i + 1, a)) % mod_v
        return alphabet.text(a, u) + alphabet.text(b, plan.v)

    def _round_value(self, plan: _Plan, i: int, num_b: int) -> int:
        """``y`` of round ``i`` for long values: several MAC blocks, or ``d`` over 16 bytes."""
        ecb = self._ecb
        if plan.tail_blocks == 1:
            r = ecb((plan.masks[i] ^ num_b).to_bytes(16, "big"))
        else:
            tail = (plan.masks[i] ^ num_b).to_bytes(plan.tail_len, "big")
            state = plan.state
            for off in range(0, plan.tail_len, 16):
                r = ecb((state ^ int.from_bytes(tail[off : off + 16], "big")).to_bytes(16, "big"))
                state = int.from_bytes(r, "big")
        d = plan.d
        if d <= 16:
            return int.from_bytes(r[:d], "big")
        # S = R || CIPH(R xor [1]^16) || CIPH(R xor [2]^16) ...: ECB does them in one call
        r_int = int.from_bytes(r, "big")
        extra = b"".join((r_int ^ j).to_bytes(16, "big") for j in range(1, -(-d // 16)))
        return int.from_bytes((r + ecb(extra))[:d], "big")

    def _make_plan(self, n: int, tweak: bytes) -> _Plan:
        radix, ecb = self.radix, self._ecb
        t = len(tweak)
        if t >= 2**32:
            raise FPEError("the tweak is too long")
        plan = _Plan()
        u = n // 2
        v = n - u
        plan.u, plan.v = u, v
        plan.mod_u, plan.mod_v = radix**u, radix**v
        # b = ceil(ceil(v * log2(radix)) / 8), exactly: ceil(log2(x)) == (x - 1).bit_length()
        b = ((radix**v - 1).bit_length() + 7) // 8
        d = 4 * (-(-b // 4)) + 4
        plan.b, plan.d = b, d
        p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256]) + n.to_bytes(4, "big") + t.to_bytes(4, "big")
        state = int.from_bytes(ecb(p), "big")
        # Q = T || 0^pad || [i]^1 || [NUM(B)]^b; only its last (1 + b) bytes change per round
        pad = (-t - b - 1) % 16
        prefix = tweak + bytes(pad)
        q_len = len(prefix) + 1 + b
        tail_blocks = -(-(1 + b) // 16)
        tail_len = 16 * tail_blocks
        constant_end = q_len - tail_len
        for off in range(0, constant_end, 16):
            block = int.from_bytes(prefix[off : off + 16], "big")
            state = int.from_bytes(ecb((state ^ block).to_bytes(16, "big")), "big")
        tail_const = int.from_bytes(prefix[constant_end:], "big") << (8 * (1 + b))
        plan.state, plan.tail_blocks, plan.tail_len = state, tail_blocks, tail_len
        if tail_blocks == 1:
            plan.masks = tuple(state ^ tail_const ^ (i << (8 * b)) for i in range(10))
        else:
            plan.masks = tuple(tail_const ^ (i << (8 * b)) for i in range(10))
        plan.fast = tail_blocks == 1 and d <= 16
        plan.shift = 128 - 8 * d
        return plan
