"""A real PostgreSQL for the vault tests: ``initdb`` and ``pg_ctl`` in a temporary folder, on a free loopback port.

Import the fixtures explicitly in a test module::

    from tests.support.pg_fixture import pg_vault_url, postgres_server  # noqa: F401

The server starts once per session, on first use, and stops at the end. Each test
gets a database of its own. Under root (CI), :mod:`flink_jobs.devtools.pg_local` runs the
server as the ``postgres`` user, so the folder lives under ``/tmp`` (pytest's
``tmp_path`` is private to root). A machine without the server package fails the
tests that need it with the install command, rather than skipping them.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid

import pytest

from flink_jobs.devtools.pg_local import LocalPostgres, PostgresSetupError, find_binary, free_port


@pytest.fixture(scope="session")
def postgres_server():
    try:
        find_binary("initdb")
        find_binary("pg_ctl")
    except PostgresSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    folder = tempfile.mkdtemp(prefix="anon-pg-")
    server = LocalPostgres(folder, free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_vault_url(postgres_server: LocalPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database(f"vault_{uuid.uuid4().hex[:12]}")
