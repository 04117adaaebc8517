"""Shared fixtures for the unit tests."""

from __future__ import annotations

import pytest

from udfs.keyring import Keyring


@pytest.fixture
def keyring() -> Keyring:
    """A fresh in-memory keyring with one active key per purpose."""
    return Keyring.generate()
