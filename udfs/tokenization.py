"""Tokenization through the vault: a random token stands for the value, and only the vault maps it back.

In a policy::

    customerId: {tokenize: vault, format: prefixed, prefix: "cus_", domain: customer_id, subject_field: customerId}
    card:       {tokenize: vault, format: digits, domain: card_number, subject_field: customerId}

A token is found by the field's domain and the HMAC of the value, and created by
insert-if-absent, so every task of every job that tokenizes the same value in the
same domain gets the same token. The original is stored encrypted under the
subject's data key, so ``forget SUBJECT`` makes it unrecoverable. Tokens carry no
information about the value: they are random, not derived.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Mapping
from typing import Any

from udfs.errors import MISSING, ParamError, TransformError
from udfs.registry import Transform, transform
from udfs.vault import TtlLru, Vault, VaultError, check_subject_field, check_vault_reference, subject_of

__all__ = ["VaultToken", "detokenize"]

FORMATS = ("prefixed", "digits")
#: fewest digits a ``digits`` token may have: below a million values, random tokens collide and guess too easily
MIN_DIGITS = 6


@transform("tokenize.vault")
class VaultToken(Transform):
    """A random token per value, kept in the vault; reversible with the keyring and the vault.

    Parameters (policy)
    -------------------
    format : {"prefixed", "digits"}
        ``prefixed`` (default): ``prefix`` plus ``length`` lower-case base32 characters.
        ``digits``: random digits as many as the value's characters (at least 6),
        unique in the domain and never equal to the value.
    prefix : str
        For ``prefixed``; default ``tok_``.
    length : int
        Base32 characters of a ``prefixed`` token, 16 to 52 (default 26, 130 bits).
    subject_field : str
        Dotted path of the field that says whose value it is (the policy's
        ``subject_field``). The original is stored under that subject's data key.
    vault : str
        ``sqlite:PATH`` or ``postgresql://...``; default ``$ANON_VAULT``, else
        ``sqlite:.local/vault.db``.
    cache_size : int
        Tokens kept in a per-task LRU (default 65536; 0 turns it off).
    cache_ttl : int
        Seconds a cached token is served (default 60): a forget reaches running tasks within it.
    """

    key_purpose = "token"
    reversible = True
    needs_record = True
    params = ("format", "prefix", "length", "subject_field", "vault", "cache_size", "cache_ttl")

    def validate(self) -> None:
        self.format = self.choice_option("format", "prefixed", FORMATS)
        self.prefix = self.option("prefix", "tok_")
        if not isinstance(self.prefix, str):
            raise ParamError("prefix", "must be a string", 'a short string such as "tok_"')
        if self.format == "digits" and ("prefix" in self.options or "length" in self.options):
            raise ParamError("prefix" if "prefix" in self.options else "length",
                             "digits tokens have the value's length and no prefix", "format: prefixed")
        self.length = self.int_option("length", 26, minimum=16)
        if self.length > 52:
            raise ParamError("length", "at most 52 base32 characters", "16 to 52")
        self.subject_path = check_subject_field(self)
        self.vault_reference = check_vault_reference(self)
        self.cache_size = self.int_option("cache_size", 65_536, minimum=0)
        self.cache_ttl = self.int_option("cache_ttl", 60, minimum=0)

    # -- worker time ------------------------------------------------------------------------------
    def open(self, keyring: Any | None) -> None:
        super().open(keyring)
        try:
            self._vault = Vault.open(self.vault_reference, keyring, key_ttl=float(self.cache_ttl))
        except VaultError as exc:
            raise ParamError("vault", str(exc), "a reachable vault") from None
        # value -> token; the subject is only read on a miss
        self._cache = TtlLru(self.cache_size, float(self.cache_ttl))
        # tokens found (in the cache or the vault) and tokens minted, for the job's metrics
        self.hits = self.misses = 0

    def close(self) -> None:
        vault = getattr(self, "_vault", None)
        if vault is not None:
            vault.close()
            self._vault = None

    def apply(self, value: Any) -> Any:
        raise TransformError(f"{self.name} needs the whole record, to read its subject")

    def apply_in_record(self, value: Any, record: Mapping[str, Any]) -> Any:
        if value is None or value is MISSING:
            return value
        kind = type(value)
        if kind is not str and kind is not int:
            raise TransformError(f"{self.name} expected a string or an integer, got {kind.__name__}")
        cache_key = (kind, value)
        token = self._cache.get(cache_key)
        if token is not None:
            self.hits += 1
            return token
        subject = subject_of(record, self.subject_path)
        text = value if kind is str else str(value)
        if self.format == "digits":
            if len(text) < MIN_DIGITS:
                raise TransformError(f"{self.name}: a digits token needs a value of {MIN_DIGITS} or more characters")
            new_token = functools.partial(_digits, len(text), text)
        else:
            new_token = functools.partial(_prefixed, self.prefix, self.length)
        plaintext = json.dumps(value, ensure_ascii=False).encode()
        minted: list[int] = []  # the vault asks for a candidate only when the value has no token yet

        def candidate() -> str:
            minted.append(1)
            return new_token()

        token = self._vault.tokenize(self.domain, value, subject, plaintext, candidate)
        if minted:
            self.misses += 1
        else:
            self.hits += 1
        self._cache.put(cache_key, token)
        return token

    def invert(self, value: Any) -> Any:
        if value is None or value is MISSING:
            return value
        if not isinstance(value, str):
            raise TransformError(f"{self.name}: a token is a string, got {type(value).__name__}")
        return detokenize(self._vault, self.domain, value)


def detokenize(vault: Vault, domain: str, token: str) -> Any:
    """The original value behind ``token`` in ``domain``; :class:`~udfs.vault.SubjectForgotten` when gone."""
    return json.loads(vault.detokenize(domain, token))


def _prefixed(prefix: str, length: int) -> str:
    return prefix + base64.b32encode(secrets.token_bytes(33)).decode().lower()[:length]


def _digits(length: int, original: str) -> str:
    while True:
        token = str(secrets.randbelow(10**length)).zfill(length)
        if token != original:  # a token equal to its value would publish the value
            return token
