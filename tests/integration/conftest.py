"""Shared fixtures of the integration tests: each starts the real part it stands for."""

from tests.integration.kafka_fixture import kafka_broker  # noqa: F401
