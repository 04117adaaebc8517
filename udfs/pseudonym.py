"""Keyed pseudonyms: HMAC-SHA256 of the value under a key derived for the field's domain.

The same identifier gets the same pseudonym in every topic that shares the
domain, so streams stay joinable, and nobody without the key can recompute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from udfs.keyring import derive
from udfs.registry import ParamError, Transform, TransformError, transform


@transform("pseudonymize.hmac_sha256")
class HmacPseudonym(Transform):
    """``CUST12345`` -> ``cus_4f1c9a...``: a keyed, stable, one-way pseudonym.

    Parameters (policy)
    -------------------
    encoding : ``hex`` (default) or ``base32`` (lower case, no padding)
    length : characters of the digest kept (8 to 64 for hex, 8 to 52 for base32; default 32)
    prefix : prepended as is, so the pseudonym says what it stands for
    embed_key_id : when true the key id is written into the pseudonym, as ``prefix<key_id>:<digest>``
    """

    key_purpose = "pseudonym"
    params = ("encoding", "length", "prefix", "embed_key_id")
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

    def open(self, keyring: Any) -> None:
        super().open(keyring)
        self._mac_key = derive(self.key, "pseudonym", self.domain)
        self._head = self.prefix + (f"{self.key_id}:" if self.embed_key_id else "")

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TransformError(f"{self.name} expected a string or an integer, got {type(value).__name__}")
        digest = hmac.new(self._mac_key, str(value).encode(), hashlib.sha256).digest()
        if self.encoding == "hex":
            text = digest.hex()
        else:
            text = base64.b32encode(digest).decode().rstrip("=").lower()
        return self._head + text[: self.length]
