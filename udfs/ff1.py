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

from udfs.fpe_cipher import FPECipher, FPEError

__all__ = ["FF1", "FF1_MAX_LEN"]

#: longest value this implementation takes. The standard allows up to 2**32 - 1
#: symbols; this bound keeps every half under Python's int/str conversion limit.
FF1_MAX_LEN = 4096


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
