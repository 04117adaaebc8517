"""Keyring: key ids, one active key per purpose, old keys kept for old data.

The keyring is a JSON document::

    {"version": 1,
     "keys": [{"id": "fpe-20261127-1a2b", "purpose": "fpe", "material": "<base64>",
               "created": "2026-11-27T18:00:00Z"}],
     "active": {"fpe": "fpe-20261127-1a2b"}}

It is read from a reference, never from a policy: ``env:NAME`` (the variable
holds the JSON) or ``file:PATH``. Key material never appears in ``repr``, logs or
exception messages.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PURPOSES", "Key", "Keyring", "KeyringError", "derive", "load_keyring"]

#: purpose -> key length in bytes
PURPOSES: dict[str, int] = {
    "pseudonym": 32,  # HMAC-SHA256
    "substitute": 32,  # HMAC that picks fake values
    "encrypt": 32,  # AES-256-GCM
    "siv": 64,  # AES-256-SIV (two 256-bit halves)
    "fpe": 32,  # AES-256 under FF1 / FF3-1
    "token": 32,  # HMAC that indexes the token vault
    "kek": 32,  # wraps per-subject data keys
}


class KeyringError(ValueError):
    """The keyring is missing, malformed, or lacks a key. Never quotes key material."""


@dataclass(frozen=True)
class Key:
    id: str
    purpose: str
    material: bytes = field(repr=False)
    created: str = ""

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, purpose={self.purpose!r})"


@dataclass
class Keyring:
    keys: dict[str, Key]
    active: dict[str, str]
    source: str = "<memory>"

    # -- reading -------------------------------------------------------------
    def resolve(self, purpose: str, key_id: str | None = None) -> Key:
        """The key with ``key_id``, or the active key for ``purpose``."""
        if key_id is None:
            key_id = self.active.get(purpose)
            if key_id is None:
                raise KeyringError(
                    f"keyring {self.source} has no active '{purpose}' key; "
                    f"add one with: flink-anonymizer keys rotate --purpose {purpose} --keyring ..."
                )
        key = self.keys.get(key_id)
        if key is None:
            raise KeyringError(f"keyring {self.source} has no key with id {key_id!r}")
        if key.purpose != purpose:
            raise KeyringError(f"key {key_id!r} is for '{key.purpose}', not '{purpose}'")
        return key

    def ids(self, purpose: str | None = None) -> list[str]:
        return [k.id for k in self.keys.values() if purpose is None or k.purpose == purpose]

    # -- writing -------------------------------------------------------------
    def add(self, purpose: str, *, activate: bool = True, material: bytes | None = None) -> Key:
        if purpose not in PURPOSES:
            raise KeyringError(f"unknown purpose {purpose!r}; allowed: {', '.join(PURPOSES)}")
        now = _dt.datetime.now(_dt.UTC)
        key_id = f"{purpose}-{now:%Y%m%d}-{secrets.token_hex(3)}"
        key = Key(key_id, purpose, material or secrets.token_bytes(PURPOSES[purpose]), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.keys[key_id] = key
        if activate:
            self.active[purpose] = key_id
        return key

    @classmethod
    def generate(cls, purposes: Iterable[str] = PURPOSES) -> Keyring:
        ring = cls({}, {})
        for purpose in purposes:
            ring.add(purpose)
        return ring

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "keys": [
                    {
                        "id": k.id,
                        "purpose": k.purpose,
                        "material": base64.b64encode(k.material).decode(),
                        "created": k.created,
                    }
                    for k in self.keys.values()
                ],
                "active": self.active,
            },
            indent=2,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates a new file, 0600 and exclusively: key material is never readable by others
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def from_json(cls, text: str, source: str = "<memory>") -> Keyring:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyringError(f"keyring {source} is not valid JSON (line {exc.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeyringError(f"keyring {source}: expected an object with a 'keys' list")
        keys: dict[str, Key] = {}
        for index, raw in enumerate(doc["keys"]):
            where = f"keyring {source}: keys[{index}]"
            if not isinstance(raw, dict):
                raise KeyringError(f"{where}: expected an object")
            for name in ("id", "purpose", "material"):
                if not isinstance(raw.get(name), str):
                    raise KeyringError(f"{where}: missing string '{name}'")
            purpose = raw["purpose"]
            if purpose not in PURPOSES:
                raise KeyringError(f"{where}: unknown purpose {purpose!r}; allowed: {', '.join(PURPOSES)}")
            try:
                material = base64.b64decode(raw["material"], validate=True)
            except ValueError:
                raise KeyringError(f"{where}: material is not base64") from None
            if len(material) != PURPOSES[purpose]:
                raise KeyringError(f"{where}: a '{purpose}' key must be {PURPOSES[purpose]} bytes, got {len(material)}")
            keys[raw["id"]] = Key(raw["id"], purpose, material, str(raw.get("created", "")))
        active = doc.get("active", {})
        if not isinstance(active, dict):
            raise KeyringError(f"keyring {source}: 'active' must map purpose to key id")
        for purpose, key_id in active.items():
            if key_id not in keys:
                raise KeyringError(f"keyring {source}: active '{purpose}' key {key_id!r} is not in 'keys'")
        return cls(keys, dict(active), source)


def load_keyring(reference: str) -> Keyring:
    """Load a keyring from ``env:NAME`` or ``file:PATH`` (a bare path means ``file:``)."""
    if not reference:
        raise KeyringError("no keyring given; pass --keyring env:NAME or file:PATH (create one with: flink-anonymizer keys new)")
    scheme, _, rest = reference.partition(":")
    if scheme == "env" and rest:
        text = os.environ.get(rest)
        if text is None:
            raise KeyringError(f"keyring variable ${rest} is not set")
        return Keyring.from_json(text, source=f"env:{rest}")
    path = Path(rest if scheme == "file" else reference)
    try:
        text = path.read_text()
    except FileNotFoundError:
        hint = f"create it with: flink-anonymizer keys new --out {path}"
        raise KeyringError(f"keyring file {path} does not exist; {hint}") from None
    return Keyring.from_json(text, source=f"file:{path}")


def derive(material: bytes, *labels: str, length: int = 32) -> bytes:
    """A subkey bound to ``labels`` (say the field's domain), so domains never share a key.

    HKDF-Expand with SHA-256, one block or two, keyed by the parent key.
    """
    import hashlib
    import hmac

    info = "\x1f".join(labels).encode()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(material, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]
