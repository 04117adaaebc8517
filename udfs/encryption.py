"""Encryption of field values: randomized AES-GCM and deterministic, joinable AES-SIV.

Ciphertexts are text: ``<scheme>.<key id>.<base64url>``. The key id lets
``flink-anonymizer decrypt`` pick the right key after a rotation. The value is
encrypted as its JSON form, so a number decrypts back to a number, and the
field's domain is bound in as associated data, so a ciphertext cannot be moved
to another field.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from udfs.keyring import KeyringError
from udfs.registry import Transform, TransformError, transform


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Encrypt(Transform):
    reversible = True
    scheme = ""

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._keyring = keyring
        self._aad = self.domain.encode()
        self._ciphers: dict[str, Any] = {}

    def cipher(self, key_id: str) -> Any:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            try:
                material = self._keyring.resolve(self.key_purpose, key_id).material
            except KeyringError:
                raise TransformError(f"{self.name}: no '{self.key_purpose}' key {key_id!r} in the keyring") from None
            cipher = self._ciphers[key_id] = self.make_cipher(material)
        return cipher

    def make_cipher(self, material: bytes) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, token: Any) -> tuple[str, bytes]:
        if not isinstance(token, str):
            raise TransformError(f"{self.name}: ciphertext must be a string")
        scheme, _, rest = token.partition(".")
        key_id, _, body = rest.partition(".")
        if scheme != self.scheme or not key_id or not body:
            raise TransformError(f"{self.name}: not a {self.scheme} ciphertext")
        try:
            return key_id, _unb64(body)
        except ValueError:
            raise TransformError(f"{self.name}: ciphertext is not base64url") from None

    @staticmethod
    def plaintext(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@transform("encrypt.aes_gcm")
class AesGcm(_Encrypt):
    """Randomized AES-256-GCM: equal values give different ciphertexts (no joins, no frequency leak)."""

    key_purpose = "encrypt"
    deterministic = False
    scheme = "g1"

    def make_cipher(self, material: bytes) -> AESGCM:
        return AESGCM(material)

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._head = f"{self.scheme}.{self.key_id}."
        self._active = self.cipher(self.key_id)

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        nonce = os.urandom(12)
        return self._head + _b64(nonce + self._active.encrypt(nonce, self.plaintext(value), self._aad))

    def invert(self, token: Any) -> Any:
        if token is None:
            return None
        key_id, blob = self.split(token)
        try:
            if len(blob) < 12 + 16:  # nonce and tag
                raise InvalidTag
            return json.loads(self.cipher(key_id).decrypt(blob[:12], blob[12:], self._aad))
        except InvalidTag:
            raise TransformError(f"{self.name}: ciphertext does not authenticate under key {key_id}") from None


@transform("encrypt.aes_siv")
class AesSiv(_Encrypt):
    """Deterministic AES-256-SIV (RFC 5297): equal values give equal ciphertexts, so streams stay joinable."""

    key_purpose = "siv"
    scheme = "s1"
    memoize_results = True

    def make_cipher(self, material: bytes) -> AESSIV:
        return AESSIV(material)

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._head = f"{self.scheme}.{self.key_id}."
        self._active = self.cipher(self.key_id)

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        return self._head + _b64(self._active.encrypt(self.plaintext(value), [self._aad]))

    def invert(self, token: Any) -> Any:
        if token is None:
            return None
        key_id, blob = self.split(token)
        try:
            if len(blob) < 16:  # the synthetic IV alone
                raise InvalidTag
            return json.loads(self.cipher(key_id).decrypt(blob, [self._aad]))
        except InvalidTag:
            raise TransformError(f"{self.name}: ciphertext does not authenticate under key {key_id}") from None
