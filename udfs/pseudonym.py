"""Keyed pseudonyms: HMAC-SHA256 of the value under a key derived for the field's domain.

The same identifier gets the same pseudonym in every topic that shares the
domain, so streams stay joinable, and nobody without the key can recompute it.

With ``per_subject: true`` (and ``subject_field``) the HMAC key is derived from the
record's subject's own data key in the vault (:mod:`udfs.vault`), as per-subject
encryption does, instead of the keyring. Joins on the pseudonym across topics still
work while the subject exists; once ``forget SUBJECT`` deletes that data key, nobody,
keyring or not, can compute the pseudonym again or link an old one to the subject. A
record of the subject that comes later gets a new data key, so a new, unlinked pseudonym.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from udfs.errors import MISSING, ParamError, TransformError
from udfs.keyring import derive
from udfs.registry import Transform, transform


@transform("pseudonymize.hmac_sha256")
class HmacPseudonym(Transform):
    """``CUST12345`` -> ``cus_4f1c9a...``: a keyed, stable, one-way pseudonym.

    Parameters (policy)
    -------------------
    encoding : ``hex`` (default) or ``base32`` (lower case, no padding)
    length : characters of the digest kept (8 to 64 for hex, 8 to 52 for base32; default 32)
    prefix : prepended as is, so the pseudonym says what it stands for
    embed_key_id : when true the key id is written into the pseudonym, as ``prefix<key_id>:<digest>``
    per_subject : when true the key is the subject's data key in the vault, so ``forget`` breaks the pseudonym
    subject_field, vault : with ``per_subject``: where the subject is (default: the policy's subject_field),
        and the vault (default: ``$ANON_VAULT``, else ``sqlite:.local/vault.db``)
    """

    key_purpose = "pseudonym"
    params = ("encoding", "length", "prefix", "embed_key_id", "per_subject", "subject_field", "vault")
    memoize_results = True

    def validate(self) -> None:
        self.encoding = self.choice_option("encoding", "hex", ("hex", "base32"))
        maximum = 64 if self.encoding == "hex" else 52
        self.length = self.int_option("length", 32, minimum=8)
        if self.length > maximum:
            raise ParamError("length", f"{self.encoding} digests have at most {maximum} characters", f"8 to {maximum}")
        self.prefix = self.option("prefix", "")
        if not isinstance(self.prefix, str):
            raise ParamError("prefix", "must be a string", 'a short string such as "cus_"')
        self.embed_key_id = bool(self.option("embed_key_id", False))
        per_subject = self.option("per_subject", False)
        if not isinstance(per_subject, bool):
            raise ParamError("per_subject", "must be true or false", "true, false")
        self.per_subject = per_subject
        if not per_subject:
            for name in ("subject_field", "vault"):
                if name in self.options:
                    raise ParamError(name, "only applies with per_subject: true", "per_subject: true")
            return
        from udfs.vault import check_subject_field, check_vault_reference  # only per-subject pseudonyms need it

        self.subject_path = check_subject_field(self)
        self.vault_reference = check_vault_reference(self)
        # the key depends on the record's subject: no result cache across records
        self.needs_record = True

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._mac_key = derive(self.key, "pseudonym", self.domain)
        self._head = self.prefix + (f"{self.key_id}:" if self.embed_key_id else "")
        self._vault = None
        if self.per_subject:
            from udfs.vault import TtlLru, Vault, VaultError

            try:
                self._vault = Vault.open(self.vault_reference, keyring)
            except VaultError as exc:
                raise ParamError("vault", str(exc), "a reachable vault") from None
            # data key ref -> HMAC key; expires with the vault's own cache, so a forget reaches this task
            self._subject_keys = TtlLru(4096, 60.0)

    def close(self) -> None:
        if getattr(self, "_vault", None) is not None:
            self._vault.close()
            self._vault = None

    def apply(self, value: Any) -> Any:
        if self.per_subject and value is not None:
            raise TransformError(f"{self.name} with per_subject needs the whole record, to read its subject")
        return self._digest(self._mac_key, value)

    def apply_in_record(self, value: Any, record: Any) -> Any:
        if not self.per_subject:
            return self.apply(value)
        if value is None or value is MISSING:
            return value
        from udfs.vault import subject_of

        key_ref, data_key = self._vault.data_key(subject_of(record, self.subject_path))
        mac_key = self._subject_keys.get(key_ref)
        if mac_key is None:
            mac_key = derive(data_key, "pseudonym", self.domain)
            self._subject_keys.put(key_ref, mac_key)
        return self._digest(mac_key, value)

    def _digest(self, mac_key: bytes, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TransformError(f"{self.name} expected a string or an integer, got {type(value).__name__}")
        digest = hmac.new(mac_key, str(value).encode(), hashlib.sha256).digest()
        if self.encoding == "hex":
            text = digest.hex()
        else:
            text = base64.b32encode(digest).decode().rstrip("=").lower()
        return self._head + text[: self.length]
