"""Shared fixtures of the integration tests: each starts the real part it stands for."""

import pytest

from tests.integration.kafka_fixture import kafka_broker  # noqa: F401
from tests.integration.registry_fixture import schema_registry  # noqa: F401
from udfs.keyring import Keyring


@pytest.fixture(scope="module")
def keyring_ref(tmp_path_factory) -> str:
    """A fresh keyring saved to a file, as ``file:PATH`` for ``--keyring``; one per test module."""
    path = tmp_path_factory.mktemp("keys") / "keyring.json"
    Keyring.generate().save(path)
    return f"file:{path}"
