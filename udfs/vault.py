"""The token vault: tokens, per-subject data keys and an audit trail, in SQLite or PostgreSQL.

One interface, two backends. SQLite is the embedded default (a file under
``.local/``, WAL mode); PostgreSQL (through psycopg 3 and a small connection pool
per task) is for clusters, where every task must see the same tokens. The
project creates and migrates the schema itself (table ``schema_version``).

The vault never stores a plaintext value or subject:

- ``tokens`` holds ``(domain, value_hmac, token, subject_hmac, ciphertext)``. The
  value is found by its HMAC; the original is kept only encrypted under the
  subject's data key.
- ``subject_keys`` holds ``(subject_hmac, key_ref, wrapped_key, kek_id)``. The data
  key is wrapped (AES-256-GCM) by the keyring's ``kek`` key; ``key_ref`` is a
  random id that per-subject ciphertexts carry, so decrypting needs no subject.
- ``audit`` holds ``(at, action, domain, count)``, never a value.

Forgetting a subject deletes its data key and its token rows in one
transaction: every ciphertext under that key, wherever it was copied, is then
unreadable (crypto-shredding).

The vault is named by a reference string: ``sqlite:PATH`` (relative to the
working directory) or a PostgreSQL URL ``postgresql://user@host:port/db``. Where a
transform or command gets no ``vault`` parameter, it reads ``$ANON_VAULT``, and
without that it uses ``sqlite:.local/vault.db``.

The HMAC keys that index values and subjects come from the keyring's ``token``
purpose. The vault remembers which key id it was first indexed with (table
``meta``), so rotating the ``token`` key does not orphan existing rows.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from udfs.errors import ParamError, TransformError
from udfs.keyring import Keyring, KeyringError, derive
from udfs.record import is_plain_path, scalar_at
from udfs.registry import Transform

__all__ = [
    "DEFAULT_VAULT",
    "VAULT_ENV",
    "ForgetResult",
    "SubjectForgotten",
    "TtlLru",
    "Vault",
    "VaultError",
    "check_subject_field",
    "check_vault_reference",
    "open_backend",
    "resolve_reference",
]

VAULT_ENV = "ANON_VAULT"
DEFAULT_VAULT = "sqlite:.local/vault.db"
#: the schema version this code writes; older vaults are migrated on open
SCHEMA_VERSION = 1


class VaultError(RuntimeError):
    """The vault cannot be reached, or is not a vault. Never quotes a value or a key."""


class SubjectForgotten(TransformError):
    """The subject's data key, or the token row, is gone: the subject was forgotten."""

    def __init__(self, what: str = "value") -> None:
        super().__init__(f"subject forgotten: the {what} can no longer be recovered")


def resolve_reference(reference: str | None = None) -> str:
    """The vault reference to use: ``reference``, else ``$ANON_VAULT``, else ``sqlite:.local/vault.db``."""
    ref = reference or os.environ.get(VAULT_ENV) or DEFAULT_VAULT
    if not (ref.startswith("sqlite:") or ref.startswith(("postgresql://", "postgres://"))):
        raise VaultError(f"vault reference must be sqlite:PATH or postgresql://..., got a {ref.split(':')[0]!r} reference")
    return ref


def describe(reference: str) -> str:
    """The reference without a password, for messages."""
    if "://" in reference and "@" in reference:
        scheme, rest = reference.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return reference


# -- backends ---------------------------------------------------------------------------------
#
# A backend only moves bytes: it knows SQL, not keys. Every method is one statement or one
# transaction, safe to call from several processes at once.

_SQLITE_SCHEMA = {
    1: [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS subject_keys (
               subject_hmac BLOB PRIMARY KEY,
               key_ref BLOB NOT NULL UNIQUE,
               wrapped_key BLOB NOT NULL,
               kek_id TEXT NOT NULL,
               created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))""",
        """CREATE TABLE IF NOT EXISTS tokens (
               domain TEXT NOT NULL,
               value_hmac BLOB NOT NULL,
               token TEXT NOT NULL,
               subject_hmac BLOB NOT NULL,
               ciphertext BLOB NOT NULL,
               created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               PRIMARY KEY (domain, value_hmac),
               UNIQUE (domain, token))""",
        "CREATE INDEX IF NOT EXISTS tokens_by_subject ON tokens (subject_hmac)",
        """CREATE TABLE IF NOT EXISTS audit (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               action TEXT NOT NULL,
               domain TEXT,
               count INTEGER NOT NULL)""",
    ],
}

_PG_SCHEMA = {
    1: [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS subject_keys (
               subject_hmac BYTEA PRIMARY KEY,
               key_ref BYTEA NOT NULL UNIQUE,
               wrapped_key BYTEA NOT NULL,
               kek_id TEXT NOT NULL,
               created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        """CREATE TABLE IF NOT EXISTS tokens (
               domain TEXT NOT NULL,
               value_hmac BYTEA NOT NULL,
               token TEXT NOT NULL,
               subject_hmac BYTEA NOT NULL,
               ciphertext BYTEA NOT NULL,
               created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
               PRIMARY KEY (domain, value_hmac),
               UNIQUE (domain, token))""",
        "CREATE INDEX IF NOT EXISTS tokens_by_subject ON tokens (subject_hmac)",
        """CREATE TABLE IF NOT EXISTS audit (
               id BIGSERIAL PRIMARY KEY,
               at TIMESTAMPTZ NOT NULL DEFAULT now(),
               action TEXT NOT NULL,
               domain TEXT,
               count INTEGER NOT NULL)""",
    ],
}

# statements shared by both backends, written with "?" placeholders
_SQL = {
    "meta_get": "SELECT value FROM meta WHERE name = ?",
    "meta_put": "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
    "token_put": "INSERT INTO tokens (domain, value_hmac, token, subject_hmac, ciphertext) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING",
    "token_by_value": "SELECT token FROM tokens WHERE domain = ? AND value_hmac = ?",
    "token_by_token": "SELECT value_hmac, ciphertext FROM tokens WHERE domain = ? AND token = ?",
    "key_put": "INSERT INTO subject_keys (subject_hmac, key_ref, wrapped_key, kek_id) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING",
    "key_by_subject": "SELECT key_ref, wrapped_key, kek_id FROM subject_keys WHERE subject_hmac = ?",
    "key_by_ref": "SELECT subject_hmac, wrapped_key, kek_id FROM subject_keys WHERE key_ref = ?",
    "forget_keys": "DELETE FROM subject_keys WHERE subject_hmac = ?",
    "forget_tokens": "DELETE FROM tokens WHERE subject_hmac = ?",
    "audit": "INSERT INTO audit (action, domain, count) VALUES (?, ?, ?)",
}


class Backend:
    """The storage interface both backends implement."""

    kind = ""

    def one(self, name: str, *args: Any) -> tuple | None:
        """Run a named select and return its first row (or None)."""
        raise NotImplementedError

    def run(self, name: str, *args: Any) -> int:
        """Run a named insert or delete; return the rows it touched."""
        raise NotImplementedError

    def forget(self, subject_hmac: bytes, audit: bool = True) -> tuple[int, int]:
        """Delete a subject's data key and token rows in one transaction; return both counts."""
        raise NotImplementedError

    def query(self, sql: str, *args: Any) -> list[tuple]:
        """Any select, for tests and tools (``?`` placeholders)."""
        raise NotImplementedError

    def schema_version(self) -> int:
        row = self.query("SELECT max(version) FROM schema_version")
        return int(row[0][0] or 0)

    def close(self) -> None:
        pass


class SqliteBackend(Backend):
    """An SQLite file in WAL mode, so readers never wait for the writer; one connection per task."""

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit (isolation_level=None): each insert-if-absent is its own short transaction
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            # BEGIN IMMEDIATE takes the write lock: two tasks never migrate at once
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                                 "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))")
                current = self._db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
                for version in sorted(v for v in _SQLITE_SCHEMA if v > current):
                    for statement in _SQLITE_SCHEMA[version]:
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def one(self, name: str, *args: Any) -> tuple | None:
        with self._lock:
            return self._db.execute(_SQL[name], args).fetchone()

    def run(self, name: str, *args: Any) -> int:
        with self._lock:
            return self._db.execute(_SQL[name], args).rowcount

    def forget(self, subject_hmac: bytes, audit: bool = True) -> tuple[int, int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                keys = self._db.execute(_SQL["forget_keys"], (subject_hmac,)).rowcount
                tokens = self._db.execute(_SQL["forget_tokens"], (subject_hmac,)).rowcount
                if audit:
                    self._db.execute(_SQL["audit"], ("forget", None, keys + tokens))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return keys, tokens

    def query(self, sql: str, *args: Any) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresBackend(Backend):
    """PostgreSQL through psycopg 3, with a small connection pool per task."""

    kind = "postgresql"
    #: a constant for pg_advisory_xact_lock: tasks that open at once migrate one after the other
    MIGRATION_LOCK = 0x616E6F6E

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 4, connect_timeout: int = 10) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise VaultError("a PostgreSQL vault needs psycopg and psycopg-pool (pip install 'psycopg[binary]' "
                             "psycopg-pool)") from None
        import psycopg

        # one direct attempt first: a pool would retry quietly until its timeout
        try:
            psycopg.connect(conninfo, connect_timeout=connect_timeout).close()
        except psycopg.Error as exc:  # its message quotes the conninfo, which may carry a password
            raise VaultError(f"cannot connect to the PostgreSQL vault at {describe(conninfo)} "
                             f"({type(exc).__name__}); start one with `make vault-up`") from None
        self._pool = ConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=False,
                                    kwargs={"autocommit": True}, name="anon-vault")
        try:
            self._pool.open(wait=True, timeout=30)
        except Exception as exc:
            self._pool.close()
            raise VaultError(f"cannot open a connection pool to {describe(conninfo)} ({type(exc).__name__})") from None
        self._sql = {name: sql.replace("?", "%s") for name, sql in _SQL.items()}
        self._migrate()

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version in sorted(v for v in _PG_SCHEMA if v > current):
                for statement in _PG_SCHEMA[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def one(self, name: str, *args: Any) -> tuple | None:
        with self._pool.connection() as conn:
            row = conn.execute(self._sql[name], args).fetchone()
        return None if row is None else tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def run(self, name: str, *args: Any) -> int:
        with self._pool.connection() as conn:
            return conn.execute(self._sql[name], args).rowcount

    def forget(self, subject_hmac: bytes, audit: bool = True) -> tuple[int, int]:
        with self._pool.connection() as conn, conn.transaction():
            keys = conn.execute(self._sql["forget_keys"], (subject_hmac,)).rowcount
            tokens = conn.execute(self._sql["forget_tokens"], (subject_hmac,)).rowcount
            if audit:
                conn.execute(self._sql["audit"], ("forget", None, keys + tokens))
        return keys, tokens

    def query(self, sql: str, *args: Any) -> list[tuple]:
        with self._pool.connection() as conn:
            rows = conn.execute(sql.replace("?", "%s"), args).fetchall()
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]

    def close(self) -> None:
        self._pool.close()


def open_backend(reference: str | None = None) -> Backend:
    """Connect to the vault named by ``reference`` (see :func:`resolve_reference`) and migrate it."""
    ref = resolve_reference(reference)
    if ref.startswith("sqlite:"):
        path = ref.removeprefix("sqlite:")
        if not path:
            raise VaultError("sqlite: vault reference needs a path, e.g. sqlite:.local/vault.db")
        try:
            return SqliteBackend(path)
        except sqlite3.Error as exc:
            raise VaultError(f"cannot open the SQLite vault {path} ({exc})") from None
    return PostgresBackend(ref)


# -- the vault: keys and crypto on top of a backend ----------------------------------------------


@dataclass(frozen=True)
class ForgetResult:
    keys: int
    tokens: int


class TtlLru:
    """A bounded LRU whose entries expire, so a running task notices a forget within ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._data: collections.OrderedDict[Any, tuple[float, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit[0] < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic() + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class Vault:
    """Tokens and per-subject data keys over one backend; opened once per task.

    Parameters
    ----------
    backend : Backend
        Storage, from :func:`open_backend`.
    keyring : Keyring
        Gives the ``token`` key (HMAC index of values and subjects) and the ``kek``
        key (wraps data keys).
    key_cache : int
        Data keys kept in memory per task.
    key_ttl : float
        Seconds a cached data key is trusted. A forget reaches a running task after
        at most this long; until then it may still encrypt under the old key.
    """

    def __init__(self, backend: Backend, keyring: Keyring, *, key_cache: int = 4096, key_ttl: float = 60.0) -> None:
        self.backend = backend
        self._keyring = keyring
        index_id = self._index_key_id()
        try:
            index = keyring.resolve("token", index_id).material
        except KeyringError:
            raise VaultError(f"the vault is indexed with token key {index_id!r}, which the keyring lacks") from None
        self.index_key_id = index_id
        self._subject_key = derive(index, "vault-subject")
        self._domain_keys: dict[str, bytes] = {}
        self._index = index
        self._keys = TtlLru(key_cache, key_ttl)
        self._keks: dict[str, AESGCM] = {}

    @classmethod
    def open(cls, reference: str | None, keyring: Keyring, **options: Any) -> Vault:
        return cls(open_backend(reference), keyring, **options)

    def _index_key_id(self) -> str:
        # the first opener fixes the index key; a later rotation of 'token' keeps using it
        try:
            active = self._keyring.resolve("token").id
        except KeyringError as exc:
            raise VaultError(str(exc)) from None
        self.backend.run("meta_put", "index_key_id", active)
        row = self.backend.one("meta_get", "index_key_id")
        return row[0]

    # -- HMAC indexes ---------------------------------------------------------------------------
    def subject_hmac(self, subject: Any) -> bytes:
        """The subject's index: the same for every domain and topic, so forget finds it everywhere."""
        return hmac.new(self._subject_key, _text(subject).encode(), hashlib.sha256).digest()

    def value_hmac(self, domain: str, value: Any) -> bytes:
        key = self._domain_keys.get(domain)
        if key is None:
            key = self._domain_keys[domain] = derive(self._index, "vault-value", domain)
        return hmac.new(key, _text(value).encode(), hashlib.sha256).digest()

    # -- data keys ------------------------------------------------------------------------------
    def _kek(self, kek_id: str | None) -> tuple[str, AESGCM]:
        try:
            key = self._keyring.resolve("kek", kek_id)
        except KeyringError:
            raise TransformError(f"no 'kek' key {kek_id!r} in the keyring" if kek_id else "no active 'kek' key") from None
        cipher = self._keks.get(key.id)
        if cipher is None:
            cipher = self._keks[key.id] = AESGCM(key.material)
        return key.id, cipher

    def data_key(self, subject: Any) -> tuple[bytes, bytes]:
        """``(key_ref, data key)`` of a subject, created if absent (one per subject across all tasks)."""
        subject_hmac = self.subject_hmac(subject)
        cached = self._keys.get(subject_hmac)
        if cached is not None:
            return cached
        row = self.backend.one("key_by_subject", subject_hmac)
        if row is None:
            kek_id, kek = self._kek(None)
            key_ref, material = secrets.token_bytes(8), secrets.token_bytes(32)
            nonce = os.urandom(12)
            wrapped = nonce + kek.encrypt(nonce, material, subject_hmac + key_ref)
            # insert-if-absent, then read back: a task that lost the race uses the winner's key
            self.backend.run("key_put", subject_hmac, key_ref, wrapped, kek_id)
            row = self.backend.one("key_by_subject", subject_hmac)
            if row is None:  # forgotten between the two statements
                raise SubjectForgotten("data key")
        key_ref, wrapped, kek_id = row
        result = (bytes(key_ref), self._unwrap(subject_hmac, bytes(key_ref), bytes(wrapped), kek_id))
        self._keys.put(subject_hmac, result)
        self._keys.put(result[0], result[1])
        return result

    def data_key_by_ref(self, key_ref: bytes) -> bytes:
        """The data key a ciphertext names; :class:`SubjectForgotten` once it was deleted."""
        cached = self._keys.get(key_ref)
        if cached is not None:
            return cached
        row = self.backend.one("key_by_ref", key_ref)
        if row is None:
            raise SubjectForgotten()
        subject_hmac, wrapped, kek_id = row
        material = self._unwrap(bytes(subject_hmac), key_ref, bytes(wrapped), kek_id)
        self._keys.put(key_ref, material)
        return material

    def _unwrap(self, subject_hmac: bytes, key_ref: bytes, wrapped: bytes, kek_id: str) -> bytes:
        _, kek = self._kek(kek_id)
        try:
            return kek.decrypt(wrapped[:12], wrapped[12:], subject_hmac + key_ref)
        except InvalidTag:
            raise TransformError(f"a data key does not unwrap under kek {kek_id}") from None

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, domain: str, value: Any, subject: Any, plaintext: bytes,
                 new_token: Callable[[], str], attempts: int = 16) -> str:
        """The token of ``value`` in ``domain``: found by HMAC, else created by insert-if-absent.

        Parameters
        ----------
        domain : str
            The field's domain; tokens of one domain are unique.
        value : str or int
            The value; only its HMAC is stored.
        subject : Any
            Whose value it is; the original is stored under their data key.
        plaintext : bytes
            The value's serialized form, stored encrypted.
        new_token : callable
            Makes a random candidate token.
        attempts : int
            Candidates to try when a random token is already taken in the domain.
        """
        value_hmac = self.value_hmac(domain, value)
        row = self.backend.one("token_by_value", domain, value_hmac)
        if row is not None:
            return row[0]
        key_ref, data_key = self.data_key(subject)
        subject_hmac = self.subject_hmac(subject)
        nonce = os.urandom(12)
        # the token row's domain and value index are bound in, so a ciphertext cannot move between rows
        ciphertext = key_ref + nonce + AESGCM(data_key).encrypt(nonce, plaintext, domain.encode() + value_hmac)
        for _ in range(attempts):
            candidate = new_token()
            self.backend.run("token_put", domain, value_hmac, candidate, subject_hmac, ciphertext)
            row = self.backend.one("token_by_value", domain, value_hmac)
            if row is not None:
                return row[0]
            # neither our row nor another task's: the candidate token was taken, try another
        raise TransformError(f"no free token in domain {domain} after {attempts} attempts (token space too small)")

    def detokenize(self, domain: str, token: str) -> bytes:
        """The plaintext bytes behind a token; :class:`SubjectForgotten` when it is gone."""
        row = self.backend.one("token_by_token", domain, token)
        if row is None:
            raise SubjectForgotten("token")  # forgotten, or never issued: the vault cannot tell them apart
        value_hmac, blob = bytes(row[0]), bytes(row[1])
        key_ref, nonce, body = blob[:8], blob[8:20], blob[20:]
        data_key = self.data_key_by_ref(key_ref)
        try:
            return AESGCM(data_key).decrypt(nonce, body, domain.encode() + value_hmac)
        except InvalidTag:
            raise TransformError("token row does not authenticate") from None

    # -- forgetting -------------------------------------------------------------------------------
    def forget(self, subject: Any) -> ForgetResult:
        """Delete the subject's data key and token rows in one transaction (idempotent, audited)."""
        subject_hmac = self.subject_hmac(subject)
        keys, tokens = self.backend.forget(subject_hmac)
        self._keys.clear()
        return ForgetResult(keys, tokens)

    def audit(self, action: str, domain: str | None, count: int) -> None:
        self.backend.run("audit", action, domain, count)

    def close(self) -> None:
        self.backend.close()

    @contextmanager
    def closing(self) -> Iterator[Vault]:
        try:
            yield self
        finally:
            self.close()


def check_subject_field(transform: Transform) -> tuple[str, ...]:
    """The ``subject_field`` parameter as a path; :class:`ParamError` when it is missing or not a name."""
    raw = transform.option("subject_field")
    if not is_plain_path(raw):
        raise ParamError("subject_field", f"{transform.name} needs the field that names the record's subject",
                         "the policy's subject_field, e.g. subject_field: customerId")
    return tuple(raw.split("."))


def check_vault_reference(transform: Transform) -> str | None:
    """The ``vault`` parameter (None: ``$ANON_VAULT`` on the worker, else the SQLite default)."""
    raw = transform.option("vault")
    if raw is None:
        return None
    allowed = "sqlite:.local/vault.db or postgresql://user@host:port/db"
    if not isinstance(raw, str) or not raw:
        raise ParamError("vault", "must be a non-empty string", allowed)
    try:
        return resolve_reference(raw)
    except VaultError as exc:
        raise ParamError("vault", str(exc), allowed) from None


def subject_of(record: Any, path: tuple[str, ...]) -> Any:
    """The subject value at a dotted ``path`` of a record; :class:`TransformError` when it is absent."""
    return scalar_at(record, path, "subject")


def _text(value: Any) -> str:
    # strings and integers index alike (CUST1 in one topic, 1 in another stay distinct by text)
    return value if isinstance(value, str) else str(value)
