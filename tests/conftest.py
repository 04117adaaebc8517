"""Shared fixtures for the unit tests."""

from __future__ import annotations

import os

import pytest

from udfs.keyring import Keyring


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # A local process-mode job runs its Python workers in this process (PyFlink's loopback
    # mode), and they set PYFLINK_GATEWAY_DISABLED here. A later `flink-anonymizer` subprocess
    # would inherit it and refuse to start its own gateway. This process is never a UDF worker.
    os.environ.pop("PYFLINK_GATEWAY_DISABLED", None)


@pytest.fixture
def keyring() -> Keyring:
    """A fresh in-memory keyring with one active key per purpose."""
    return Keyring.generate()
