"""Session-scoped schema registry for the integration tests: the real Apicurio Registry, never a fake.

conftest.py imports it (``from tests.integration.registry_fixture import schema_registry  # noqa: F401``).
It builds ``conf/registry`` with Maven when needed (a no-op while it is unchanged), starts the registry
on a free loopback port (storage in memory) and stops it at the end of the session.
"""

from __future__ import annotations

import pytest

from flink_jobs.devtools.registry import Registry, start_registry


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    registry = start_registry(tmp_path_factory.mktemp("registry"), timeout=240)
    try:
        yield registry
    finally:
        registry.stop()
