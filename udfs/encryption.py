"""Encryption of field values: randomized AES-GCM and deterministic, joinable AES-SIV.

Ciphertexts are text: ``<scheme>.<key id>.<base64url>``. The key id lets
``flink-anonymizer decrypt`` pick the right key after a rotation. The value is
encrypted as its JSON form, so a number decrypts back to a number, and the
field's domain is bound in as associated data, so a ciphertext cannot be moved
to another field.

With ``per_subject: true`` (and ``subject_field``) a value is encrypted under its
subject's own data key, kept wrapped in the vault (:mod:`udfs.vault`). The
ciphertext then reads ``<scheme>.<data key ref>.<base64url>`` (schemes ``gk1`` and
``sk1``), and once ``forget SUBJECT`` deletes that key it no longer decrypts,
wherever it was copied: the error says "subject forgotten". The data key ref is
the same for all of a subject's values, so use it in views where records of one
subject are linkable anyway (say, beside a pseudonymized id).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from udfs.errors import MISSING, ParamError, TransformError
from udfs.keyring import KeyringError, derive
from udfs.registry import Transform, transform


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Encrypt(Transform):
    reversible = True
    scheme = ""
    #: the scheme of ciphertexts under a subject's data key
    subject_scheme = ""
    params = ("per_subject", "subject_field", "vault")

    def validate(self) -> None:
        per_subject = self.option("per_subject", False)
        if not isinstance(per_subject, bool):
            raise ParamError("per_subject", "must be true or false", "true, false")
        self.per_subject = per_subject
        if not per_subject:
            for name in ("subject_field", "vault"):
                if name in self.options:
                    raise ParamError(name, "only applies with per_subject: true", "per_subject: true")
            return
        from udfs.vault import check_subject_field, check_vault_reference  # only per-subject fields need the vault

        self.subject_path = check_subject_field(self)
        self.vault_reference = check_vault_reference(self)
        # the subject is read from the record; the engine then skips the result cache too
        self.needs_record = True

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._keyring = keyring
        self._aad = self.domain.encode()
        self._ciphers: dict[str, Any] = {}
        self._vault = None
        if self.per_subject:
            from udfs.vault import TtlLru, Vault, VaultError

            try:
                self._vault = Vault.open(self.vault_reference, keyring)
            except VaultError as exc:
                raise ParamError("vault", str(exc), "a reachable vault") from None
            self._subject_ciphers = TtlLru(4096, 60.0)
        self._head = f"{self.scheme}.{self.key_id}."
        self._active = self.cipher(self.key_id)

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        return self._head + _b64(self.seal(self._active, value))

    def close(self) -> None:
        if getattr(self, "_vault", None) is not None:
            self._vault.close()
            self._vault = None

    # -- per-subject keys -------------------------------------------------------------------------
    def subject_cipher(self, key_ref: bytes, data_key: bytes | None = None) -> Any:
        cipher = self._subject_ciphers.get(key_ref)
        if cipher is None:
            if data_key is None:
                data_key = self._vault.data_key_by_ref(key_ref)  # SubjectForgotten once it is deleted
            cipher = self.make_cipher(derive(data_key, self.name, length=64 if self.key_purpose == "siv" else 32))
            self._subject_ciphers.put(key_ref, cipher)
        return cipher

    def apply_in_record(self, value: Any, record: Any) -> Any:
        if not self.per_subject or value is None or value is MISSING:
            return self.apply(value)
        from udfs.vault import subject_of

        key_ref, data_key = self._vault.data_key(subject_of(record, self.subject_path))
        head = f"{self.subject_scheme}.{key_ref.hex()}."
        return head + _b64(self.seal(self.subject_cipher(key_ref, data_key), value))

    def invert(self, token: Any) -> Any:
        if token is None:
            return None
        if isinstance(token, str) and self.subject_scheme and token.startswith(self.subject_scheme + "."):
            if self._vault is None:
                raise TransformError(f"{self.name}: a per-subject ciphertext needs per_subject: true")
            key_ref_hex, blob = self.split(token, self.subject_scheme)
            try:
                key_ref = bytes.fromhex(key_ref_hex)
            except ValueError:
                raise TransformError(f"{self.name}: not a {self.subject_scheme} ciphertext") from None
            return self.unseal(self.subject_cipher(key_ref), blob, f"the subject's data key {key_ref_hex}")
        key_id, blob = self.split(token)
        return self.unseal(self.cipher(key_id), blob, f"key {key_id}")

    def seal(self, cipher: Any, value: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def unseal(self, cipher: Any, blob: bytes, under: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

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

    def split(self, token: Any, expected: str | None = None) -> tuple[str, bytes]:
        expected = expected or self.scheme
        if not isinstance(token, str):
            raise TransformError(f"{self.name}: ciphertext must be a string")
        scheme, _, rest = token.partition(".")
        key_id, _, body = rest.partition(".")
        if scheme != expected or not key_id or not body:
            raise TransformError(f"{self.name}: not a {expected} ciphertext")
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
    subject_scheme = "gk1"

    def make_cipher(self, material: bytes) -> AESGCM:
        return AESGCM(material)

    def seal(self, cipher: Any, value: Any) -> bytes:
        nonce = os.urandom(12)
        return nonce + cipher.encrypt(nonce, self.plaintext(value), self._aad)

    def unseal(self, cipher: Any, blob: bytes, under: str) -> Any:
        try:
            if len(blob) < 12 + 16:  # nonce and tag
                raise InvalidTag
            return json.loads(cipher.decrypt(blob[:12], blob[12:], self._aad))
        except InvalidTag:
            raise TransformError(f"{self.name}: ciphertext does not authenticate under {under}") from None


@transform("encrypt.aes_siv")
class AesSiv(_Encrypt):
    """Deterministic AES-256-SIV (RFC 5297): equal values give equal ciphertexts, so streams stay joinable."""

    key_purpose = "siv"
    scheme = "s1"
    subject_scheme = "sk1"
    memoize_results = True

    def make_cipher(self, material: bytes) -> AESSIV:
        return AESSIV(material)

    def seal(self, cipher: Any, value: Any) -> bytes:
        return cipher.encrypt(self.plaintext(value), [self._aad])

    def unseal(self, cipher: Any, blob: bytes, under: str) -> Any:
        try:
            if len(blob) < 16:  # the synthetic IV alone
                raise InvalidTag
            return json.loads(cipher.decrypt(blob, [self._aad]))
        except InvalidTag:
            raise TransformError(f"{self.name}: ciphertext does not authenticate under {under}") from None
