"""protect_stream end to end in a MiniCluster, on the bundled sample and on an adversarial file.

Each run is a real PyFlink job (thread mode, and process mode once), reading JSON Lines and
writing one folder per view plus the dead letters. The checks read what the job wrote.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from conf.samples.generate_events import malformed_plan
from flink_jobs.cli.run import count_records, read_channel, run_files
from flink_jobs.policy import load_policy
from tests.support.kanon_checker import assert_k_anonymous
from tests.support.leak_scan import record_pii_values
from udfs.keyring import Keyring
from udfs.record import invert_view

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
ADVERSARIAL = ROOT / "tests/data/adversarial-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
#: the protected record views (the suppressed output and the dead letters are as sensitive as raw)
PROTECTED = ("masked", "anonymized", "aggregated")
# names are checked per record (a fake may be another customer's real name), not by tests.support.leak_scan

# generator kind -> the start of the dead-letter reason the job must give
EXPECTED_REASONS = {
    "broken_json_truncated": "invalid_json",
    "broken_json_trailing_garbage": "invalid_json",
    "not_object_array": "not_an_object",
    "not_object_string": "not_an_object",
    "not_object_number": "not_an_object",
    "wrong_type_age_string": "field age:",
    "wrong_type_card_number": "field card:",
    "wrong_type_purchase_amount_string": "field purchaseAmount:",
    "wrong_type_ssn_list": "field ssn:",
    "missing_customerId": "missing_field customerId",
    "missing_timestamp": "missing_field timestamp",
    "too_short_card": "field card:",
    "too_short_ssn": "field ssn:",
    "too_short_email": "field email:",
}


@pytest.fixture(scope="session")
def keyring_ref(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("keys") / "keyring.json"
    Keyring.generate().save(path)
    return f"file:{path}"


def _run(tmp_path_factory, keyring_ref: str, source: Path, name: str, **options) -> Path:
    out = tmp_path_factory.mktemp(name)
    policy = load_policy(POLICY)
    status = run_files(policy, keyring_ref, source, out, quiet=True, **options)
    assert status == 0, "the run's summary says the counts do not balance"
    return out


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, keyring_ref) -> Path:
    return _run(tmp_path_factory, keyring_ref, SAMPLE, "sample-thread")


@pytest.fixture(scope="session")
def process_run(tmp_path_factory, keyring_ref) -> Path:
    return _run(tmp_path_factory, keyring_ref, SAMPLE, "sample-process", execution_mode="process")


@pytest.fixture(scope="session")
def parallel_run(tmp_path_factory, keyring_ref) -> Path:
    """Two subtasks: the stateful views are keyed by a shuffle, not chained onto protect."""
    return _run(tmp_path_factory, keyring_ref, SAMPLE, "sample-parallel", parallelism=2)


@pytest.fixture(scope="session")
def adversarial_run(tmp_path_factory, keyring_ref) -> Path:
    return _run(tmp_path_factory, keyring_ref, ADVERSARIAL, "adversarial")


@pytest.fixture(scope="session")
def fpe_run(tmp_path_factory, keyring_ref) -> tuple[Path, object]:
    """The masked view alone, with the SSN format-preserving encrypted too (issue 3's check)."""
    document = json.loads(json.dumps(load_policy(POLICY).document))
    document["views"] = {"masked": document["views"]["masked"]}
    document["views"]["masked"]["fields"]["ssn"] = {"fpe": "ff1", "format": "ssn", "domain": "ssn"}
    policy_file = tmp_path_factory.mktemp("fpe-policy") / "fpe.yaml"
    policy_file.write_text(json.dumps(document))
    out = tmp_path_factory.mktemp("fpe-run")
    assert run_files(load_policy(policy_file), keyring_ref, SAMPLE, out, quiet=True) == 0
    return out, policy_file


def _unique_by_identity(records: list[dict]) -> dict:
    """Raw records by (customerId, timestamp), leaving out identities that occur twice."""
    counts = Counter((r.get("customerId"), r.get("timestamp")) for r in records)
    return {(r["customerId"], r["timestamp"]): r for r in records
            if isinstance(r.get("customerId"), str) and isinstance(r.get("timestamp"), str)
            and counts[(r["customerId"], r["timestamp"])] == 1}


def _raw_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().split("\n"):
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict):
            records.append(doc)
    return records


def _view_text(out: Path) -> str:
    return "\n".join(
        f.read_text() for view in PROTECTED for f in sorted((out / view).glob("*.jsonl")) if not f.name.startswith(".")
    )


@pytest.mark.parametrize("run_name", ["sample_run", "process_run", "parallel_run"])  # thread; process; p=2
def test_no_raw_pii_value_appears_in_any_protected_view(run_name, request):
    out = request.getfixturevalue(run_name)
    text = _view_text(out)
    assert text, "the views are empty"
    leaked = [value for value in record_pii_values(_raw_records(SAMPLE)) if value in text]
    assert leaked == [], f"{len(leaked)} raw PII values appear in the protected views"


def test_no_raw_name_survives_in_its_own_record(sample_run):
    # substitution may pick a fake that is some other customer's real name, never the customer's own
    raw_names = {r["customerId"]: r["name"] for r in _raw_records(SAMPLE) if "customerId" in r and "name" in r}
    masked = [r["value"] for r in read_channel(sample_run / "masked")]
    same = [r for r in masked if raw_names.get(r["customerId"]) == r["name"]]
    assert len(same) == 0


def test_the_anonymized_view_carries_no_raw_customer_id(sample_run):
    ids = {r["customerId"] for r in _raw_records(SAMPLE) if isinstance(r.get("customerId"), str)}
    text = "\n".join(f.read_text() for f in (sample_run / "anonymized").glob("*.jsonl"))
    assert not [i for i in ids if re.search(rf"\b{i}\b", text)]


def test_fields_not_in_the_policy_are_dropped(sample_run):
    unknown = {"ipAddress", "deviceId", "notes", "loyaltyTier", "userAgent", "lat", "lon"}
    for view in ("masked", "anonymized"):
        for record in read_channel(sample_run / view):
            assert not unknown & set(record["value"]), f"{view} carries an unnamed field"
    stats = json.loads(next((sample_run / "_stats").glob("subtask-*.json")).read_text())
    assert stats["dropped_fields"]["masked:notes"] > 0


@pytest.mark.parametrize("run_name", ["sample_run", "process_run", "parallel_run"])  # thread; process; p=2
def test_every_input_record_is_accounted_for_in_each_view(run_name, request):
    out = request.getfixturevalue(run_name)
    total = count_records(SAMPLE)
    dead = len(read_channel(out / "dlq"))
    assert len(read_channel(out / "masked")) + dead == total
    released = len(read_channel(out / "anonymized"))
    suppressed = len(read_channel(out / "anonymized.suppressed"))
    assert released + suppressed + dead == total


def test_dead_letters_carry_the_right_reason_and_position(sample_run):
    plan = dict(malformed_plan(10_000, 7, 40))
    dead = read_channel(sample_run / "dlq")
    assert len(dead) == len(plan)
    raw_lines = SAMPLE.read_text().split("\n")
    for entry in dead:
        line = int(entry["headers"]["position"].removeprefix("line "))
        kind = plan[line]
        assert entry["headers"]["reason"].startswith(EXPECTED_REASONS[kind]), (line, kind)
        assert entry["value"] == raw_lines[line - 1]  # nothing lost: the raw record is kept
        assert entry["headers"]["policy_id"] == "customer-events"


def test_reasons_never_quote_a_value(sample_run):
    raw = _raw_records(SAMPLE)
    values = record_pii_values(raw) | {str(r.get("age")) for r in raw if isinstance(r.get("age"), str)}
    for entry in read_channel(sample_run / "dlq"):
        assert not [v for v in values if v in entry["headers"]["reason"]]


def test_reversible_fields_decrypt_back_to_the_input(sample_run, keyring_ref):
    from udfs.keyring import load_keyring

    keyring = load_keyring(keyring_ref)
    policy = load_policy(POLICY, keyring=keyring)
    policy.open(keyring)
    raw = _unique_by_identity(_raw_records(SAMPLE))
    checked = 0
    for record in read_channel(sample_run / "masked"):
        value = record["value"]
        original = raw.get((value["customerId"], value["timestamp"]))
        if original is None:
            continue  # two raw events share this identity: which is which cannot be told
        restored = invert_view(policy.views["masked"].tree, value)
        assert restored["card"] == original["card"]
        assert value["card"] != original["card"] and len(value["card"]) == len(original["card"])
        for got, want in zip(restored.get("items", []), original.get("items", []), strict=True):
            assert got["card"] == want["card"]
        checked += 1
    assert checked > 9_800


def test_card_and_ssn_are_format_preserving_encrypted_and_decrypt_back(fpe_run, keyring_ref):
    from udfs.keyring import load_keyring

    out, policy_file = fpe_run
    keyring = load_keyring(keyring_ref)
    policy = load_policy(policy_file, keyring=keyring)
    policy.open(keyring)
    raw = _unique_by_identity(_raw_records(SAMPLE))
    records = read_channel(out / "masked")
    assert len(records) == 10_000
    for record in records:
        value = record["value"]
        original = raw.get((value["customerId"], value["timestamp"]))
        if original is None:
            continue  # an identity two raw events share
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", value["ssn"]) and value["ssn"] != original["ssn"]
        assert re.fullmatch(r"\d{16}", value["card"]) and value["card"] != original["card"]
        restored = invert_view(policy.views["masked"].tree, value)
        assert (restored["ssn"], restored["card"]) == (original["ssn"], original["card"])


def test_headers_name_the_policy_and_the_key_ids(sample_run, keyring_ref):
    from udfs.keyring import load_keyring

    keyring = load_keyring(keyring_ref)
    policy = load_policy(POLICY)
    record = read_channel(sample_run / "masked")[0]
    assert record["headers"]["policy_hash"] == policy.hash
    assert set(record["headers"]["key_ids"].split(",")) == {keyring.active["fpe"], keyring.active["substitute"]}


@pytest.mark.parametrize("run_name", ["sample_run", "parallel_run"])  # one subtask, chained; two, shuffled
def test_the_anonymized_view_is_k_anonymous(run_name, request):
    records = [r["value"] for r in read_channel(request.getfixturevalue(run_name) / "anonymized")]
    assert records
    # the checker is independent of operators/: it regroups the published values itself
    assert_k_anonymous(records, quasi_identifiers=("age", "zip", "location"), subject="customerId", k=5)


def _released_in_protect(out: Path) -> Counter:
    """Records per k-anonymity view that the protect operator published itself (its subtasks' final stats)."""
    counts: Counter = Counter()
    for file in (out / "_stats").glob("subtask-*.json"):
        counts.update({view: n for view, n in json.loads(file.read_text())["k_anonymity_released_in_protect"].items()
                       if n})
    return counts


@pytest.mark.parametrize(("run_name", "in_protect"), [("sample_run", True), ("parallel_run", False),
                                                      ("process_run", False)])
def test_protect_publishes_a_released_class_itself_only_where_the_first_stage_shares_its_thread(run_name, in_protect,
                                                                                                 request):
    # at one subtask in thread mode the first stage chains onto protect: a record of a class that
    # stage has released is published by protect (the test above checks the view is still k-anonymous)
    out = request.getfixturevalue(run_name)
    by_protect = _released_in_protect(out)["anonymized"]
    published = len(read_channel(out / "anonymized"))
    if in_protect:
        # the records that fill a class, and the later ones whose deadline comes first, go through the stage
        assert 0 < by_protect < published
    else:
        assert by_protect == 0


@pytest.mark.parametrize("run_name", ["sample_run", "parallel_run"])
def test_the_aggregated_view_releases_noisy_counts_with_their_budget(run_name, request):
    releases = [r["value"] for r in read_channel(request.getfixturevalue(run_name) / "aggregated")]
    assert releases, "no DP release"
    for release in releases:
        assert release["epsilon"] > 0 and "count" in release


def test_adversarial_input_loses_nothing_and_leaks_nothing(adversarial_run):
    total = count_records(ADVERSARIAL)
    dead = read_channel(adversarial_run / "dlq")
    masked = read_channel(adversarial_run / "masked")
    assert len(masked) + len(dead) == total
    assert all(entry["headers"]["reason"] for entry in dead)
    text = _view_text(adversarial_run)
    leaked = [v for v in record_pii_values(_raw_records(ADVERSARIAL)) if v in text]
    assert leaked == []


@pytest.fixture(scope="session")
def two_of_each_run(tmp_path_factory, keyring_ref) -> Path:
    """Two k-anonymous and two DP views in one job, each with its own parameters."""
    document = json.loads(json.dumps(load_policy(POLICY).document))
    views = document["views"]
    views["anonymized_k10"] = {**json.loads(json.dumps(views["anonymized"])), "sink": {"topic": "anonymized-k10"}}
    views["anonymized_k10"]["k_anonymity"]["k"] = 10
    views["aggregated_5m"] = {**json.loads(json.dumps(views["aggregated"])), "sink": {"topic": "aggregated-5m"}}
    views["aggregated_5m"]["differential_privacy"]["window"] = "5m"
    policy_file = tmp_path_factory.mktemp("two-of-each-policy") / "two.yaml"
    policy_file.write_text(yaml.safe_dump(document))  # YAML reads JSON's 1e-06 as text
    out = tmp_path_factory.mktemp("two-of-each")
    # run_files checks that each view balances: view records + dead letters = records in
    assert run_files(load_policy(policy_file), keyring_ref, SAMPLE, out, quiet=True) == 0
    return out


def test_two_views_of_each_kind_keep_their_own_k_and_windows(two_of_each_run):
    for view, k in (("anonymized", 5), ("anonymized_k10", 10)):
        records = [r["value"] for r in read_channel(two_of_each_run / view)]
        assert len(records) == count_records(SAMPLE) - len(read_channel(two_of_each_run / "dlq"))
        assert_k_anonymous(records, quasi_identifiers=("age", "zip", "location"), subject="customerId", k=k)
    # each view's first stage publishes through protect, under its own name (k is checked above)
    assert set(_released_in_protect(two_of_each_run)) == {"anonymized", "anonymized_k10"}
    for view, minutes in (("aggregated", 1), ("aggregated_5m", 5)):
        releases = read_channel(two_of_each_run / view)
        assert releases, f"no DP release in {view}"
        assert {r["headers"]["view"] for r in releases} == {view}
        spans = {datetime.fromisoformat(r["value"]["window_end"]) - datetime.fromisoformat(r["value"]["window_start"])
                 for r in releases}
        assert spans == {timedelta(minutes=minutes)}, view


def _job_vertices(policy_path: Path, keyring_ref: str, **options) -> list[str]:
    from flink_jobs.protect_stream import FileInput, FileOutput, JobOptions, build, make_env

    job_options = JobOptions(keyring_ref=keyring_ref, **options)
    env = make_env(job_options)
    build(env, load_policy(policy_path), FileInput(str(SAMPLE)), FileOutput("/nonexistent"), job_options)
    graph = env._j_stream_execution_environment.getStreamGraph(False).getJobGraph()
    return [vertex.getName() for vertex in graph.getVerticesAsArray()]


def _vertex_of(vertices: list[str], operator: str) -> str:
    return next(v for v in vertices if operator in v)


@pytest.mark.parametrize(("options", "chained"), [
    ({}, True), ({"parallelism": 2}, False), ({"batch": True}, False),
    ({"extra_config": {"scheduler-mode": "reactive"}}, False),  # may be rescaled while it runs
    ({"extra_config": {"pipeline.jobvertex-parallelism-overrides": "0a448493b4782967b150582570326227:2"}}, False),
], ids=["one-subtask", "two-subtasks", "batch", "reactive", "vertex-overrides"])
def test_the_stateful_stages_run_in_the_protect_task_only_at_one_streaming_subtask(keyring_ref, options, chained):
    # one subtask holds every key group, so the keyed stages need no shuffle and chain onto protect
    vertices = _job_vertices(POLICY, keyring_ref, **options)
    protect = _vertex_of(vertices, "protect")
    for stage in ("k-anon anonymized stage 0", "dp-bound-contributions[aggregated]", "dp-noisy-aggregate[aggregated]"):
        assert (stage in protect) is chained, (stage, vertices)
