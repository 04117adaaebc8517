"""protect_stream on a real standalone Flink cluster, submitted with the real ``flink run -py``.

A module fixture starts a JobManager and one TaskManager (2 slots) from the pip-installed
distribution, on free loopback ports, in a temporary folder; the session Kafka broker of
``kafka_fixture`` holds the topics. Each test uses its own topic names.

- submit: the views appear on Kafka and are correct (every record once in each record view
  or in the dead letters, no raw PII, one DP release per window and group);
- failure: the TaskManager JVM is killed by pid mid-stream, a new one is started, the job
  restores its last checkpoint, and the exactly-once sinks hold every record exactly once;
- savepoint: stop with a savepoint, change a stateless masking parameter, resume: nothing lost;
- rescale: the whole policy stopped with a savepoint at one subtask (stateful stages chained onto
  protect) and resumed at two (keyed by a shuffle): nothing lost or doubled, k still holds;
- live DP: a job submitted with ``flink-anonymizer submit`` and left running closes every window of
  the sample within window + watermark delay + allowed lateness + idle timeout (issue 19): each is
  charged, and released unless private group selection rightly suppresses its few subjects; and
  ``flink-anonymizer status`` shows the records read and the DP operators' watermarks as times;
- quiet restore: stopped with a savepoint while the stateful views hold the sample's last windows
  and records, then resumed with no input after it: the quiet-input clocks, seeded from the restored
  state, still close every window and release every record.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conf.samples.generate_events import iter_events
from flink_jobs.cli.submit import (
    SubmitOptions,
    cancel_job,
    job_state,
    job_status,
    stop_with_savepoint,
    submit_job,
    wait_for_job,
)
from flink_jobs.devtools import cluster as flink_cluster
from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.policy import load_policy
from operators.dp.flink import GATE_REFUSAL
from tests.support.dp_expect import event_ms, every_window_decided, single_group_subjects, windows_surely_released
from tests.support.kanon_checker import assert_k_anonymous
from tests.support.leak_scan import pii_values

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
    state = tmp_path_factory.mktemp("flink")
    cluster = flink_cluster.start_cluster(state, rest_port=0, rpc_port=0, taskmanagers=1, timeout=150)
    try:
        yield cluster
    finally:
        flink_cluster.stop_cluster(cluster)
        assert not flink_cluster.taskmanager_pids(cluster), "a TaskManager outlived the cluster"


def _policy_document(topic: str, views: tuple[str, ...]) -> dict:
    """The customer-events policy with `views` only, on topics named after `topic`."""
    document = json.loads(json.dumps(load_policy(POLICY).document))
    document["source"]["topic"] = topic
    document["views"] = {name: document["views"][name] for name in views}
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    return document


def _policy_file(directory: Path, topic: str, views: tuple[str, ...] = ("masked",),
                 street: dict | None = None) -> tuple[Path, object]:
    """:func:`_policy_document` written to a YAML file, and loaded."""
    document = _policy_document(topic, views)
    if street is not None:
        document["views"]["masked"]["fields"]["address.street"] = street
    path = directory / f"{topic}-{len(list(directory.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, load_policy(path)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n") if line.strip()]


def _identities(records) -> Counter:
    return Counter((r.json()["customerId"], r.json()["timestamp"]) for r in records)


def _expected(lines: list[str], dead_values: set[str]) -> Counter:
    return Counter((json.loads(v)["customerId"], json.loads(v)["timestamp"]) for v in lines if v not in dead_values)


def _options(flink, policy_path: Path, kafka_broker, keyring_ref: str, **kw) -> SubmitOptions:
    return SubmitOptions(policy=str(policy_path), bootstrap=kafka_broker.bootstrap, keyring=keyring_ref,
                         state_dir=flink.state_dir, **kw)


def _checkpoints(flink, job_id: str) -> dict:
    return flink_cluster.rest_get(flink, f"/jobs/{job_id}/checkpoints")


def _gate_refusals(flink) -> int:
    """Refusals of a second release of a DP window logged so far by the cluster's TaskManagers."""
    return sum(log.read_text(errors="replace").count(GATE_REFUSAL) for log in flink.log_dir.glob("*taskexecutor*"))


def _assert_views(kafka_broker, policy, raw: list[str], produced: int, dead_expected: int | None = None) -> None:
    """Every record once in the masked view or the dead letters; one DP release per window and group; no PII."""
    masked = consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=30)
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=30)
    releases = consume(kafka_broker.bootstrap, policy.views["aggregated"].topic, timeout=30)
    if dead_expected is not None:
        assert len(dead) == dead_expected
    assert len(masked) + len(dead) == produced, "duplicates or gaps in the masked view"
    assert _identities(masked) == _expected(raw, {r.value for r in dead})
    windows = Counter((r.json()["window_start"], r.json().get("region")) for r in releases)
    assert releases and max(windows.values()) == 1, "no DP release, or a window released twice"
    text = "\n".join(r.value for r in masked + releases)
    assert not [v for v in pii_values(raw) if v in text]
    for record in masked[:50]:
        assert record.headers["policy_hash"] == policy.hash


def test_the_k_anonymity_view_runs_on_the_cluster(flink, kafka_broker, keyring_ref, tmp_path):
    # Runs in process mode (submit's default). In thread mode it fails on a cluster: the
    # TaskManager's embedded Python has no JVM gateway, and k_anonymity's StateTtlConfig keeps the
    # default background cleanup, whose RocksDB compaction-filter strategy calls
    # Duration.of_days(30) -> get_gateway() -> FileNotFoundError (pyflink/datastream/state.py:970).
    topic = "cluster-kanon"
    path, policy = _policy_file(tmp_path, topic, ("anonymized",))
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref, bounded=True))
    wait_for_job(flink.rest_url, job_id, "FINISHED", timeout=240)
    anonymized = consume(kafka_broker.bootstrap, policy.views["anonymized"].topic, timeout=30)
    suppressed = consume(kafka_broker.bootstrap, f"{policy.views['anonymized'].topic}.suppressed", timeout=30)
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=30)
    # the bounded end flushes every buffer: each record is released or suppressed, once
    assert len(anonymized) + len(suppressed) + len(dead) == produced


def test_flink_run_writes_correct_views_to_kafka(flink, kafka_broker, keyring_ref, tmp_path):
    topic = "cluster-submit"
    path, policy = _policy_file(tmp_path, topic, ("masked", "aggregated"))
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref, bounded=True))
    wait_for_job(flink.rest_url, job_id, "FINISHED", timeout=240)
    _assert_views(kafka_broker, policy, _lines(SAMPLE), produced, dead_expected=40)


def test_a_killed_taskmanager_recovers_from_its_checkpoint_exactly_once(flink, kafka_broker, keyring_ref, tmp_path):
    topic = "cluster-failure"
    path, policy = _policy_file(tmp_path, topic, ("masked", "aggregated"))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(iter_events(20_000, seed=11, malformed=20)) + "\n")
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, events)

    # unbounded: after a failover the restored source did not end at the bounded offsets here
    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref))
    wait_for_job(flink.rest_url, job_id, "RUNNING", timeout=60)
    deadline = time.monotonic() + 150
    while _checkpoints(flink, job_id)["counts"]["completed"] < 2:
        assert time.monotonic() < deadline, "no two checkpoints within 150 s"
        assert flink_cluster.rest_get(flink, f"/jobs/{job_id}")["state"] == "RUNNING", "the job ended before the kill"
        time.sleep(0.5)

    killed = flink_cluster.kill_taskmanager(flink)
    masked_topic = policy.views["masked"].topic
    committed_at_kill = len(consume(kafka_broker.bootstrap, masked_topic, timeout=20))
    assert committed_at_kill < produced - 20, "the kill did not land mid-stream"
    new_pid = flink_cluster.add_taskmanager(flink)
    assert new_pid != killed and flink_cluster.taskmanager_pids(flink) == [new_pid]

    deadline = time.monotonic() + 300
    while True:
        done = len(consume(kafka_broker.bootstrap, masked_topic, timeout=20))
        done += len(consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20))
        if done >= produced or time.monotonic() > deadline:
            break
        time.sleep(3)
    restored = (_checkpoints(flink, job_id).get("latest") or {}).get("restored")
    # drain: event time jumps to the end, so every DP window still open fires, once
    stop_with_savepoint(flink.rest_url, job_id, drain=True, timeout=120)
    assert restored and not restored["is_savepoint"], "the job did not restore a checkpoint"
    _assert_views(kafka_broker, policy, _lines(events), produced, dead_expected=20)


def test_stop_with_savepoint_change_a_parameter_and_resume_loses_nothing(flink, kafka_broker, keyring_ref, tmp_path):
    topic = "cluster-savepoint"
    path, policy = _policy_file(tmp_path, topic, ("masked",))
    raw = _lines(SAMPLE)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(raw[:5000]) + "\n")
    second.write_text("\n".join(raw[5000:]) + "\n")
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, first)

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref))
    wait_for_job(flink.rest_url, job_id, "RUNNING", timeout=60)
    deadline = time.monotonic() + 120
    while not consume(kafka_broker.bootstrap, policy.views["masked"].topic, n=1, timeout=2):
        assert time.monotonic() < deadline, "no committed output within 120 s"
    savepoint = stop_with_savepoint(flink.rest_url, job_id, timeout=120)
    assert Path(savepoint.removeprefix("file:")).exists()

    produced += produce_file(kafka_broker.bootstrap, topic, second)
    # a stateless parameter changes: the street is now redacted instead of substituted
    changed_path, changed = _policy_file(tmp_path, topic, ("masked",), street={"redact": "fixed", "mask": "[ADDRESS]"})
    assert changed.hash != policy.hash
    resumed = submit_job(_options(flink, changed_path, kafka_broker, keyring_ref, savepoint=savepoint))
    try:
        wait_for_job(flink.rest_url, resumed, "RUNNING", timeout=60)
        deadline = time.monotonic() + 180
        while True:
            masked = consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=20)
            dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20)
            if len(masked) + len(dead) >= produced or time.monotonic() > deadline:
                break
            time.sleep(2)
        restored = (_checkpoints(flink, resumed).get("latest") or {}).get("restored") or {}
        status = job_status(flink.rest_url, resumed)
    finally:
        cancel_job(flink.rest_url, resumed)
    assert restored.get("is_savepoint"), "the resumed job did not restore the savepoint"
    assert status["job"]["state"] == "RUNNING"
    assert len(masked) + len(dead) == produced, "records lost or duplicated across the savepoint"
    assert _identities(masked) == _expected(raw, {r.value for r in dead})
    hashes = Counter(r.headers["policy_hash"] for r in masked)
    assert set(hashes) == {policy.hash, changed.hash}
    streets = [r.json()["address"]["street"] for r in masked
               if r.headers["policy_hash"] == changed.hash and "street" in r.json().get("address", {})]
    assert streets and set(streets) == {"[ADDRESS]"}


def test_a_savepoint_of_the_whole_job_at_one_subtask_resumes_at_two(flink, kafka_broker, keyring_ref, tmp_path):
    # at one subtask the stateful stages chain onto protect (no shuffle); at two they are keyed by a
    # shuffle. Their uids and key groups are the same, so the state of one restores into the other
    topic = "cluster-rescale"
    path, policy = _policy_file(tmp_path, topic, ("masked", "anonymized", "aggregated"))
    raw = _lines(SAMPLE)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(raw[:5000]) + "\n")
    second.write_text("\n".join(raw[5000:]) + "\n")
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, first)
    refusals = _gate_refusals(flink)

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref))
    wait_for_job(flink.rest_url, job_id, "RUNNING", timeout=60)
    deadline = time.monotonic() + 150
    while len(consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=2)) < 2000:
        assert time.monotonic() < deadline, "fewer than 2,000 committed records within 150 s"
        time.sleep(1)
    while not (releases := consume(kafka_broker.bootstrap, policy.views["aggregated"].topic, timeout=2)):
        assert time.monotonic() < deadline, "no DP window released within 150 s"
        time.sleep(1)
    savepoint = stop_with_savepoint(flink.rest_url, job_id, timeout=120)

    # late records of a window released before the savepoint come first after the resume. The
    # watermark starts over after a restore, so only the DP stages' state can tell them late
    released = min(event_ms(r.json()["window_start"]) for r in releases)
    window_ms = policy.views["aggregated"].differential_privacy.window_ms
    late = [line for line, ms in _timed_lines(raw[:5000]) if released <= ms < released + window_ms][:200]
    assert late, "no record of the released window to send late"
    second.write_text("\n".join(late + raw[5000:]) + "\n")
    raw = raw + late
    produced += produce_file(kafka_broker.bootstrap, topic, second)
    resumed = submit_job(_options(flink, path, kafka_broker, keyring_ref, savepoint=savepoint, parallelism=2))
    anonymized_topic = policy.views["anonymized"].topic
    try:
        wait_for_job(flink.rest_url, resumed, "RUNNING", timeout=60)
        deadline = time.monotonic() + 240
        while True:
            done = len(consume(kafka_broker.bootstrap, policy.views["masked"].topic, timeout=20))
            done += len(consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=20))
            if done >= produced or time.monotonic() > deadline:
                break
            time.sleep(2)
        restored = (_checkpoints(flink, resumed).get("latest") or {}).get("restored") or {}
        parallelism = {v["name"]: v["parallelism"] for v in flink_cluster.rest_get(flink, f"/jobs/{resumed}")["vertices"]}
    finally:
        # drain: event time jumps to the end, so every DP window and k-anonymity buffer is released, once
        stop_with_savepoint(flink.rest_url, resumed, drain=True, timeout=120)
    assert restored.get("is_savepoint"), "the resumed job did not restore the savepoint"
    assert set(parallelism.values()) == {2}, parallelism
    _assert_views(kafka_broker, policy, raw, produced)
    # the gate is the last guard: no stage before it may send a released window again (after a
    # restore the watermark starts over, so a late record cannot be told by the watermark alone)
    assert _gate_refusals(flink) == refusals, "a released DP window reached the budget gate again"
    dead = consume(kafka_broker.bootstrap, policy.dlq_topic, timeout=30)
    anonymized = consume(kafka_broker.bootstrap, anonymized_topic, timeout=30)
    suppressed = consume(kafka_broker.bootstrap, f"{anonymized_topic}.suppressed", timeout=30)
    # a record buffered at the savepoint is released after the resume: each once, none lost
    assert len(anonymized) + len(suppressed) + len(dead) == produced
    assert_k_anonymous([r.json() for r in anonymized], quasi_identifiers=("age", "zip", "location"),
                       subject="customerId", k=policy.views["anonymized"].k_anonymity.k)


CLI = str(Path(sys.executable).with_name("flink-anonymizer"))
LIVE_WINDOW_S, LIVE_DELAY_S, LIVE_LATENESS_S, LIVE_IDLE_S = 30, 5, 0, 5
LIVE_LINES = 5000  # about 250 s of the sample's event time: 9 windows
#: timer ticks, the Kafka transaction committed at the next checkpoint, a shared 2-core machine
LIVE_SLACK_S = 30


def _cli(*args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run([CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flink-anonymizer {args[0]} did not end within {timeout:g} s")
    assert done.returncode == 0, f"flink-anonymizer {args[0]} failed:\n{done.stderr[-3000:]}"
    return done


def _timed_lines(lines: list[str]) -> list[tuple[str, int]]:
    """The well-formed lines with their event times, read from the raw text."""
    timed = []
    for line in lines:
        try:
            timed.append((line, event_ms(str(json.loads(line)["timestamp"]))))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return timed


def _event_times(lines: list[str]) -> list[int]:
    """Event times of the well-formed lines, from the raw text."""
    return [ms for _, ms in _timed_lines(lines)]


def _live_policy(directory: Path, topic: str, views: tuple[str, ...], window_s: int = LIVE_WINDOW_S) -> Path:
    """:func:`_policy_document` on event time with the live tests' delays, written to a YAML file."""
    document = _policy_document(topic, views)
    document["source"]["watermark_delay"] = f"{LIVE_DELAY_S}s"
    if "aggregated" in views:
        document["views"]["aggregated"]["differential_privacy"].update(
            window=f"{window_s}s", idle_timeout=f"{LIVE_IDLE_S}s", allowed_lateness=f"{LIVE_LATENESS_S}s")
    if "anonymized" in views:
        document["views"]["anonymized"]["k_anonymity"].update(timing="event", idle_timeout=f"{LIVE_IDLE_S}s")
    path = directory / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.mark.timeout(240)
def test_a_submitted_job_left_running_closes_every_window_and_status_shows_its_watermarks(
        flink, kafka_broker, keyring_ref, tmp_path):
    topic = "cluster-live-dp"
    path = _live_policy(tmp_path, topic, ("aggregated",))
    lines = _lines(SAMPLE)[:LIVE_LINES]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    times = _event_times(lines)
    wanted = {ms - ms % (LIVE_WINDOW_S * 1000) for ms in times}
    # private group selection may rightly suppress every group of the last window, cut short (it
    # is still charged): only the windows with a group far above the threshold must be released
    params = load_policy(path).views["aggregated"].differential_privacy
    counts = single_group_subjects(lines, LIVE_WINDOW_S * 1000, "region", "customerId")
    sure = windows_surely_released(counts, params)
    assert wanted - sure <= {max(wanted)}, "only the sample's last window may rightly release nothing"
    charged_micro = round(len(wanted) * params.window_epsilon * 1e6)
    # one partition: the sample in its own order, so no window's records fall behind the watermark
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)
    produced = produce_file(kafka_broker.bootstrap, topic, events)

    # the real `flink run`, unbounded: nothing tells the job that the input has ended
    submitted = _cli("submit", "--policy", str(path), "--bootstrap-servers", kafka_broker.bootstrap,
                     "--keyring", keyring_ref, "--state-dir", str(flink.state_dir))
    job_id = re.search(r"submitted job ([0-9a-f]{32})", submitted.stdout).group(1)
    first_dp, noisy, gate = (f"{stage}[aggregated]" for stage in ("dp-bound-contributions", "dp-noisy-aggregate",
                                                                 "dp-budget-gate"))
    try:
        # the clock starts when the last event has reached the DP view: its watermark, as status shows it,
        # is then the last event time less the watermark delay
        deadline = time.monotonic() + 150
        while (job_status(flink.rest_url, job_id)["watermarks"].get(first_dp) or 0) < max(times) - LIVE_DELAY_S * 1000 - 1:
            assert time.monotonic() < deadline, "the sample did not reach the DP view within 150 s"
            time.sleep(1)
        bound = LIVE_WINDOW_S + LIVE_DELAY_S + LIVE_LATENESS_S + LIVE_IDLE_S + LIVE_SLACK_S
        deadline = time.monotonic() + bound
        while True:
            releases = consume(kafka_broker.bootstrap, f"{topic}.aggregated", timeout=5)
            status = job_status(flink.rest_url, job_id)
            metrics = status["operators"]
            pairs = {(r.json()["window_start"], r.json()["region"]) for r in releases}
            if every_window_decided(metrics, len(pairs), charged_micro, len(counts)) or time.monotonic() > deadline:
                break
            time.sleep(2)
        shown = _cli("status", job_id, "--state-dir", str(flink.state_dir), timeout=60).stdout
    finally:
        cancel_job(flink.rest_url, job_id)
    windows = Counter((r.json()["window_start"], r.json()["region"]) for r in releases)
    released = {event_ms(w) for w, _ in windows}
    assert sure <= released <= wanted, f"windows of the sample not released within {bound} s:\n{shown}"
    assert max(windows.values()) == 1, "a window and group was released twice"
    # each window charged once, the last (which only the quiet-input close can end) whether its groups were
    # released or suppressed; each (window, group) decided once
    assert metrics[gate]["epsilon spent"] == pytest.approx(charged_micro, abs=1), shown
    assert metrics[noisy]["groups released"] == len(windows), shown
    assert metrics[noisy]["groups released"] + metrics[noisy].get("groups suppressed", 0) == len(counts), shown
    assert status["job"]["state"] == "RUNNING"
    # status: the records read, whole operator names, and each DP operator's watermark as a time
    assert status["source"] == produced
    assert re.search(rf"source records read\s+{produced:,}\n", shown), shown
    for operator in (first_dp, noisy, gate):
        mark = status["watermarks"][operator]
        assert mark is not None and mark >= min(wanted), f"{operator}: watermark {mark}"
        section = shown.split(f"  {operator}\n", 1)[1]
        assert re.match(r"\s+watermark\s+20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\n", section), shown
    assert "records in" in shown and "epsilon spent" in shown


@pytest.mark.timeout(420)
def test_submit_with_schema_registry_reads_avro_on_the_cluster(flink, kafka_broker, schema_registry, keyring_ref,
                                                              tmp_path):
    """`submit --schema-registry URL` hands the registry to the job that `flink run` runs, as `run` does."""
    from confluent_kafka import Producer
    from fastavro import parse_schema

    from flink_jobs.avro_format import RegistrySchemaStore, encode, split_frame
    from tests.integration.test_avro_kafka import SCHEMA, _sample_records

    topic = f"cluster-avro-{time.time_ns()}"
    document = yaml.safe_load((ROOT / "conf/policies/customer-events-avro.yaml").read_text())
    document["source"]["topic"] = topic
    document["source"].pop("schema", None)  # only the command line names the registry
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
        view["sink"]["format"] = "avro"
    path = tmp_path / "avro-registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    store = RegistrySchemaStore(schema_registry.url)
    schema = json.loads(SCHEMA.read_text())
    sid, parsed = store.register(f"{topic}-value", schema), parse_schema(schema)
    records = _sample_records()[:200]
    unknown = b"\x00" + (2_000_000_000).to_bytes(4, "big") + b"\x02\x41"
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for value in [encode(r, sid, parsed) for r in records] + [unknown]:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0

    submitted = _cli("submit", "--policy", str(path), "--bootstrap-servers", kafka_broker.bootstrap,
                     "--keyring", keyring_ref, "--state-dir", str(flink.state_dir), "--bounded",
                     "--schema-registry", schema_registry.url)
    job_id = re.search(r"submitted job ([0-9a-f]{32})", submitted.stdout).group(1)
    try:
        wait_for_job(flink.rest_url, job_id, "FINISHED", timeout=240)
    finally:
        if job_state(flink.rest_url, job_id) not in ("FINISHED", "FAILED", "CANCELED"):
            cancel_job(flink.rest_url, job_id)

    for name in document["views"]:
        view_records = consume(kafka_broker.bootstrap, f"{topic}.{name}", timeout=20)
        assert len(view_records) == len(records), name
        latest = store.latest(f"{topic}.{name}-value")  # each view registered its schema in the registry
        assert latest is not None and {split_frame(r.raw_value)[0] for r in view_records} == {latest[0]}
    dead = consume(kafka_broker.bootstrap, f"{topic}.dlq", timeout=20)
    assert [r.headers["reason"] for r in dead] == ["unknown_schema_id 2000000000"]
    assert [r.raw_value for r in dead] == [unknown]


@pytest.mark.timeout(300)
def test_stateful_slots_run_the_stateful_views_in_a_slot_of_their_own(flink, kafka_broker, keyring_ref, tmp_path):
    # submit --stateful-slots, thread mode: the k-anonymity and DP operators in their own slot sharing
    # group, so the p=1 job holds both slots of the TaskManager (on one-slot TaskManagers: two interpreters)
    topic = "cluster-stateful-slots"
    path, policy = _policy_file(tmp_path, topic, ("masked", "anonymized", "aggregated"))
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    assert flink_cluster.rest_get(flink, "/overview")["slots-available"] == 2

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref, bounded=True, execution_mode="thread",
                                 stateful_slots=True))
    slots_free = set()
    deadline = time.monotonic() + 240
    while job_state(flink.rest_url, job_id) not in ("FINISHED", "FAILED", "CANCELED"):
        assert time.monotonic() < deadline, "the job did not finish within 240 s"
        slots_free.add(flink_cluster.rest_get(flink, "/overview")["slots-available"])
        time.sleep(0.5)
    assert job_state(flink.rest_url, job_id) == "FINISHED"
    assert 0 in slots_free, "the job never held both slots"
    _assert_views(kafka_broker, policy, _lines(SAMPLE), produced, dead_expected=40)
    anonymized = consume(kafka_broker.bootstrap, policy.views["anonymized"].topic, timeout=30)
    suppressed = consume(kafka_broker.bootstrap, f"{policy.views['anonymized'].topic}.suppressed", timeout=30)
    assert len(anonymized) + len(suppressed) + 40 == produced


@pytest.mark.timeout(480)
def test_a_job_restored_on_an_input_that_stays_quiet_still_closes_what_it_held(flink, kafka_broker, keyring_ref,
                                                                             tmp_path):
    """Stopped with a savepoint once the sample has reached the stateful views, resumed with no input after it.

    No record will move the watermark again: only the quiet-input clocks, seeded from the restored
    state, can close the DP windows and meet the k-anonymity deadlines that the savepoint held.
    """
    topic = "cluster-quiet-restore"
    window_s = 60  # the sample's last window then needs about a minute of quiet: the stop comes well before
    path = _live_policy(tmp_path, topic, ("anonymized", "aggregated"), window_s=window_s)
    policy = load_policy(path)
    lines = _lines(SAMPLE)[:LIVE_LINES]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    times = _event_times(lines)
    params = policy.views["aggregated"].differential_privacy
    charged_micro = round(len({ms - ms % (window_s * 1000) for ms in times}) * params.window_epsilon * 1e6)
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)
    produced = produce_file(kafka_broker.bootstrap, topic, events)
    anonymized_topic = policy.views["anonymized"].topic
    gate = "dp-budget-gate[aggregated]"

    def closed() -> int:
        return sum(len(consume(kafka_broker.bootstrap, name, timeout=10))
                   for name in (anonymized_topic, f"{anonymized_topic}.suppressed", policy.dlq_topic))

    job_id = submit_job(_options(flink, path, kafka_broker, keyring_ref))
    deadline = time.monotonic() + 150
    while (job_status(flink.rest_url, job_id)["watermarks"].get("dp-bound-contributions[aggregated]") or 0) < (
            max(times) - LIVE_DELAY_S * 1000 - 1):
        assert time.monotonic() < deadline, "the sample did not reach the DP view within 150 s"
        time.sleep(1)
    savepoint = stop_with_savepoint(flink.rest_url, job_id, timeout=120)
    assert closed() < produced, "nothing was held at the savepoint: the test no longer tests a restore"

    resumed = submit_job(_options(flink, path, kafka_broker, keyring_ref, savepoint=savepoint))
    bound = window_s + LIVE_DELAY_S + LIVE_LATENESS_S + LIVE_IDLE_S + LIVE_SLACK_S + 60  # + the job's start
    try:
        deadline = time.monotonic() + bound
        while True:
            done = closed()
            metrics = job_status(flink.rest_url, resumed)["operators"]
            spent = metrics.get(gate, {}).get("epsilon spent", 0)
            if done >= produced and spent >= charged_micro - 1 or time.monotonic() > deadline:
                break
            time.sleep(3)
        restored = (_checkpoints(flink, resumed).get("latest") or {}).get("restored") or {}
    finally:
        cancel_job(flink.rest_url, resumed)
    assert restored.get("is_savepoint"), "the resumed job did not restore the savepoint"
    assert done == produced, f"{produced - done} records the savepoint held were not released within {bound} s"
    # the resumed job's spend counter starts at 0 and catches up at its first charge: a window closed after the restore
    assert spent == pytest.approx(charged_micro, abs=1), f"DP windows not closed within {bound} s: {metrics.get(gate)}"
    anonymized = consume(kafka_broker.bootstrap, anonymized_topic, timeout=30)
    assert_k_anonymous([r.json() for r in anonymized], quasi_identifiers=("age", "zip", "location"),
                       subject="customerId", k=policy.views["anonymized"].k_anonymity.k)
