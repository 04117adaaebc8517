"""The DP view on a live Kafka stream: a job left running, never told the input has ended, then cancelled.

Bounded runs flush every window at the end of input, which once hid that no watermark reached
the DP operators on an unbounded source (issue 19). Here the sample is produced once and the job
keeps running: every window of the sample must still be closed and charged, the last ones by the
quiet-input fallback (``idle_timeout``), and released exactly once unless private group selection
rightly suppresses its few subjects; and the watermark Flink's REST API reports for the DP
operators must move.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from flink_jobs.cli.flink_rest import SubmitError
from flink_jobs.cli.startup_watch import local_rest_config
from flink_jobs.cli.submit import job_status
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.policy import compile_policy
from tests.support.dp_expect import event_ms, every_window_decided, single_group_subjects, windows_surely_released

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
WINDOW_S, DELAY_S, IDLE_S = 60, 5, 10
#: window + watermark delay + allowed lateness (0) + the idle timeout, and room for a loaded machine
RELEASE_BOUND_S = WINDOW_S + DELAY_S + IDLE_S + 60


@pytest.mark.timeout(RELEASE_BOUND_S + 300)
@pytest.mark.parametrize("mode", ["thread", "process"])  # the embedded interpreter (default); a process per task
def test_a_running_job_releases_every_window_once_and_its_watermark_moves(kafka_broker, keyring_ref, mode):
    topic = f"live-dp-{mode}"
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = topic
    document["views"] = {"aggregated": document["views"]["aggregated"]}
    document["views"]["aggregated"]["sink"]["topic"] = f"{topic}.aggregated"
    document["views"]["aggregated"]["differential_privacy"]["idle_timeout"] = f"{IDLE_S}s"
    policy = compile_policy(document, file=f"{topic}.yaml")
    ensure_topics(kafka_broker.bootstrap, [topic])
    produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    prepare_topics(kafka_broker.bootstrap, policy, create=True)
    base, rest = local_rest_config()
    env = build_kafka_job(policy, keyring_ref, bootstrap=kafka_broker.bootstrap, delivery="exactly-once",
                          execution_mode=mode, checkpoint_interval_ms=1000, restart_attempts=0, config=rest,
                          group_id=f"live-dp-{mode}-{time.time_ns()}")
    job = env.execute_async(f"live-dp-{mode}")
    job_id = str(job.get_job_id())
    counts = single_group_subjects(SAMPLE.read_text().splitlines(), WINDOW_S * 1000, "region", "customerId")
    wanted = {start for start, _ in counts}
    sure = windows_surely_released(counts, policy.views["aggregated"].differential_privacy)
    charged_micro = round(len(wanted) * policy.views["aggregated"].differential_privacy.window_epsilon * 1e6)
    noisy, gate = "dp-noisy-aggregate[aggregated]", "dp-budget-gate[aggregated]"
    try:
        deadline = time.monotonic() + RELEASE_BOUND_S + 120  # the job start, and a loaded machine, come on top
        released: list = []
        watermarks: list[dict[str, int]] = []
        metrics: dict[str, dict[str, float]] = {}
        while time.monotonic() < deadline:
            time.sleep(5)
            released = consume(kafka_broker.bootstrap, f"{topic}.aggregated", timeout=5)
            try:
                status = job_status(base, job_id)
            except SubmitError:
                continue  # the REST endpoint is not up yet
            watermarks.append(status["watermarks"])
            metrics = status["operators"]
            pairs = {(r.json()["window_start"], r.json()["region"]) for r in released}
            if every_window_decided(metrics, len(pairs), charged_micro, len(counts)):
                break
        assert job.get_job_status().result().name == "RUNNING"  # never told the input ended
    finally:
        job.cancel().result()
    windows = Counter((r.json()["window_start"], r.json()["region"]) for r in released)
    assert sure <= {event_ms(w) for w, _ in windows} <= wanted, "a window of the sample was not released"
    assert max(windows.values()) == 1, "a window and group was released twice"
    # each window charged once, released or suppressed; each (window, group) decided once
    assert metrics[gate]["epsilon spent"] == pytest.approx(charged_micro, abs=1), metrics
    assert metrics[noisy]["groups released"] == len(windows), metrics
    assert metrics[noisy]["groups released"] + metrics[noisy].get("groups suppressed", 0) == len(counts), metrics
    # as `status` shows them: each DP operator's own input watermark, None until one arrives
    moved = [w["dp-bound-contributions[aggregated]"] for w in watermarks
             if w.get("dp-bound-contributions[aggregated]") is not None]
    assert moved, "no watermark reached the DP operators"
    # event time: from the sample's first record on, less the watermark's out-of-orderness
    first = min(wanted) - policy.watermark_delay_ms - 1
    assert all(m >= first for m in moved), (moved, first)
