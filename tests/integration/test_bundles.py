"""The Java bundler before a keyed Python stage [bundles]: what the stage receives, and when it does not bundle.

Each test runs a real MiniCluster in thread mode: numbers become ``Row(key, payload)``, are keyed in
Java by :func:`operators.flink_compat.keyed_by_first_field` with a bundle, and a keyed Python function
says what each call received. Nothing may be lost, repeated, reordered within a key, or given to the
wrong key.
"""

from __future__ import annotations

import logging
import time

import pytest

from operators import flink_compat
from tests.integration import restart

pytestmark = pytest.mark.integration

N, KEYS = 2000, 7


def calls(*, bundle_size: int | None = None, bundle_ms: int | None = None, bundle: str | None = "test-bundle",
          checkpoint_ms: int | None = None, pace_ms: float = 0) -> list[tuple[str, list[int]]]:
    """``(key, payloads)`` of every call of the keyed function, in the order they came."""
    from pyflink.common import Row, Types, WatermarkStrategy
    from pyflink.datastream import KeyedProcessFunction, StreamExecutionEnvironment
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource

    config = restart.thread_mode_config()
    if bundle_size is not None:
        config.set_string("python.fn-execution.bundle.size", str(bundle_size))
    if bundle_ms is not None:
        config.set_string("python.fn-execution.bundle.time", str(bundle_ms))
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    if checkpoint_ms:
        env.enable_checkpointing(checkpoint_ms)
    row_type = Types.ROW([Types.STRING(), Types.STRING()])
    numbers = env.from_source(NumberSequenceSource(0, N - 1), WatermarkStrategy.no_watermarks(), "numbers")

    def row(i):
        if pace_ms:
            time.sleep(pace_ms / 1000)
        return Row(f"k{i % KEYS}", str(i))

    rows = numbers.map(row, output_type=row_type)

    class Say(KeyedProcessFunction):
        def process_element(self, payload, ctx):
            yield f"{ctx.get_current_key()}|{','.join(flink_compat.unbundle(payload))}"

    said = flink_compat.keyed_by_first_field(rows, row_type, bundle=bundle).process(Say(), output_type=Types.STRING())
    with said.execute_and_collect("bundles-test") as results:
        out = []
        for line in results:
            key, payloads = line.split("|")
            out.append((key, [int(p) for p in payloads.split(",")]))
    return out


def assert_every_record_once_in_order(got: list[tuple[str, list[int]]]) -> None:
    seen = [i for _key, payloads in got for i in payloads]
    assert sorted(seen) == list(range(N))
    for key, payloads in got:
        assert all(f"k{i % KEYS}" == key for i in payloads), (key, payloads)  # a call holds its key's only
    for k in range(KEYS):
        mine = [i for key, payloads in got if key == f"k{k}" for i in payloads]
        assert mine == sorted(mine)  # in the order they came


def test_a_keyed_stage_takes_its_records_in_bundles_of_its_key():
    got = calls(bundle_size=70, bundle_ms=60_000)
    assert_every_record_once_in_order(got)
    # 70 records of 7 keys at a time: bundles of 10, the last ones smaller
    assert max(len(payloads) for _key, payloads in got) == 10
    assert len(got) < N / 5


def test_without_settings_bundles_take_pyflinks_own_default_size():
    # python.fn-execution.bundle.size defaults to 1,000 records: at most that many held across the keys
    got = calls()
    assert_every_record_once_in_order(got)
    assert max(len(payloads) for _key, payloads in got) <= 1000 // KEYS + 1
    assert len(got) < N / 5  # and bundled all the same


def test_the_end_of_input_and_each_checkpoint_let_a_bundle_go():
    # bundles that neither size nor time would let go, over an input of about 3 s
    got = calls(bundle_size=1_000_000, bundle_ms=3_600_000, checkpoint_ms=300, pace_ms=1.5)
    assert_every_record_once_in_order(got)
    assert len(got) > KEYS  # a key's records went in more than one bundle: checkpoints let them go


def test_a_bundle_size_of_one_or_no_bundle_name_leaves_records_one_by_one():
    for got in (calls(bundle_size=1), calls(bundle=None)):
        assert_every_record_once_in_order(got)
        assert all(len(payloads) == 1 for _key, payloads in got)


def test_without_the_jar_records_go_one_by_one_and_it_says_so(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(flink_compat, "BUNDLE_JAR", tmp_path / "missing.jar")
    with caplog.at_level(logging.WARNING, logger=flink_compat.__name__):
        got = calls(bundle_size=70)
    assert_every_record_once_in_order(got)
    assert all(len(payloads) == 1 for _key, payloads in got)
    assert "missing.jar is missing (make jars builds it)" in caplog.text
