"""FF3-1 format-preserving encryption (NIST SP 800-38G Rev. 1), byte-equal to the ``ff3`` package.

FF3-1 is kept for data already encrypted that way: NIST's 2025 draft of
SP 800-38G Rev. 1 withdraws it, so new policies use FF1. The output equals
``ff3.FF3Cipher.withCustomAlphabet(key_hex, tweak_hex, alphabet)`` for the same
inputs (the tests check it on random values); this version is several times
faster because the halves stay integers through the eight rounds and each round
is one AES block built with integer operations.

References
----------
.. [1] M. Dworkin, "Recommendation for Block Cipher Modes of Operation: Methods
   for Format-Preserving Encryption", NIST SP 800-38G Rev. 1 (draft), 2019.
"""

from __future__ import annotations

from udfs.fpe_cipher import Alphabet, FPECipher, FPEError

__all__ = ["FF3_1", "max_length"]


def max_length(radix: int) -> int:
    """``2 * floor(log_radix(2**96))``, computed exactly."""
    k, size = 0, radix
    while size <= 2**96:
        k += 1
        size *= radix
    return 2 * k


class FF3_1(FPECipher):  # noqa: N801 - the algorithm's name
    """FF3-1 under one AES key and one alphabet.

    Parameters
    ----------
    key : bytes
        AES key of 16, 24 or 32 bytes, as written in the standard (the key is
        reversed internally, as FF3-1 prescribes).
    alphabet : str or Alphabet
        Symbols or a named alphabet; radix 2 to 65536.

    Notes
    -----
    Tweaks are 7 bytes (56 bits, FF3-1). 8-byte tweaks give the original FF3,
    which is accepted only to read old data. Lengths run from :attr:`min_len`
    (``radix**n >= 10**6``) to :attr:`max_len` (``2 * floor(log_radix(2**96))``).
    """

    name = "ff3-1"
    _long_names_radix = True

    def __init__(self, key: bytes, alphabet: str | Alphabet = "digits", *, plan_cache: int = 1024) -> None:
        super().__init__(key, alphabet, plan_cache=plan_cache)
        if self.max_len < self.min_len:
            raise FPEError(f"radix {self.radix} leaves no valid length for ff3-1")

    @staticmethod
    def _aes_key(key: bytes) -> bytes:
        return key[::-1]

    def _max_length(self, radix: int) -> int:
        return max_length(radix)

    def encrypt(self, text: str, tweak: bytes) -> str:
        """Encipher ``text`` under a 7-byte tweak; the result has the same length and alphabet."""
        return self._crypt(text, tweak, False)

    def decrypt(self, text: str, tweak: bytes) -> str:
        """Decipher ``text`` produced by :meth:`encrypt` with the same tweak."""
        return self._crypt(text, tweak, True)

    def _crypt(self, text: str, tweak: bytes, decrypt: bool) -> str:
        u, v, mod_u, mod_v, masks = self._plan(text, tweak)
        alphabet = self.alphabet
        # FF3-1 reads each half least significant symbol first: NUM_radix(REV(X))
        a = alphabet.num(text[u - 1 :: -1])
        b = alphabet.num(text[:u - 1 : -1])
        ecb, from_bytes = self._ecb, int.from_bytes
        # P = (W xor i) || NUM(REV(B)) as 16 bytes; CIPH runs on REV(P) and y = NUM(REV(S)),
        # so both conversions are little-endian; (a, b) is (A, B) again after each pair of rounds
        if decrypt:
            for i in (7, 5, 3, 1):
                b = (b - from_bytes(ecb((masks[i] | a).to_bytes(16, "little")), "little")) % mod_v
                a = (a - from_bytes(ecb((masks[i - 1] | b).to_bytes(16, "little")), "little")) % mod_u
        else:
            for i in (0, 2, 4, 6):
                a = (a + from_bytes(ecb((masks[i] | b).to_bytes(16, "little")), "little")) % mod_u
                b = (b + from_bytes(ecb((masks[i + 1] | a).to_bytes(16, "little")), "little")) % mod_v
        return alphabet.text(a, u)[::-1] + alphabet.text(b, v)[::-1]

    def _make_plan(self, n: int, tweak: bytes) -> tuple[int, int, int, int, tuple[int, ...]]:
        if len(tweak) == 7:
            # FF3-1: T_L = T[0..27] || 0^4, T_R = T[32..55] || T[28..31] || 0^4
            t_left = int.from_bytes(tweak[:3] + bytes([tweak[3] & 0xF0]), "big")
            t_right = int.from_bytes(tweak[4:7] + bytes([(tweak[3] & 0x0F) << 4]), "big")
        elif len(tweak) == 8:
            t_left, t_right = int.from_bytes(tweak[:4], "big"), int.from_bytes(tweak[4:], "big")
        else:
            raise FPEError("an ff3-1 tweak is 7 bytes (56 bits)")
        u = (n + 1) // 2
        v = n - u
        # even rounds use T_R, odd rounds T_L; the round number is xored into the last byte of W
        masks = tuple(((t_right if i % 2 == 0 else t_left) ^ i) << 96 for i in range(8))
        return (u, v, self.radix**u, self.radix**v, masks)
