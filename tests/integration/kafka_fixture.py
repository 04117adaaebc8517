"""Session-scoped Kafka broker for the integration tests.

conftest.py imports it (``from tests.integration.kafka_fixture import kafka_broker  # noqa: F401``).
It never skips: the jars are fetched when missing and a broker is started on a free
loopback port in a temporary folder, then stopped at the end of the session.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flink_jobs.devtools.kafka_broker import Broker, start_broker

REPO = Path(__file__).resolve().parents[2]


def fetch_jars() -> None:
    """Run conf/fetch_jars.sh (a no-op when jars/ already matches conf/pom.xml)."""
    subprocess.run(["bash", str(REPO / "conf" / "fetch_jars.sh")], check=True, timeout=900)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Broker:
    fetch_jars()
    data_dir = tmp_path_factory.mktemp("kafka")
    broker = start_broker(data_dir, timeout=90)
    try:
        yield broker
    finally:
        broker.stop()
