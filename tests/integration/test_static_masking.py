"""Static masking: ``flink-anonymizer run --bounded`` (Flink's BATCH mode) against the streaming run.

The bundled sample, as one file and as a folder of two files, goes once through the streaming
job and once through ``--bounded``, both by the CLI entry point. What must match:

- the masked view and the dead letters, byte for byte, as multisets of lines;
- every record accounted for in the anonymized view (released + suppressed + dead = in), the
  same records in both modes, and k-anonymity by the independent checker. Which level a record
  is released at may differ: in streaming, a class waits in wall-clock time and the input's end
  flushes what is left; in BATCH mode, a class sees all its records before any timer fires;
- the DP releases: every group far above the selection threshold in both runs, and the un-noised
  parts of each release both runs have (noise differs per run, and may suppress a group near the threshold).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from flink_jobs import cli
from flink_jobs.cli.run import count_records, read_channel
from operators.dp.core import laplace_threshold
from operators.dp.params import DpParams
from tests.support.kanon_checker import assert_k_anonymous

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
LINE_CHANNELS = ("masked", "dlq")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The sample split into two files of one folder."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("folder-input")
    half = len(lines) // 2
    (path / "part-1.jsonl").write_text("".join(lines[:half]))
    (path / "part-2.jsonl").write_text("".join(lines[half:]))
    return path


def _cli_run(tmp_path_factory, keyring_ref: str, source: Path, name: str, *bounded: str) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp(name)
    stderr, stdout = io.StringIO(), io.StringIO()
    # the progress display runs (no --quiet); it writes to stderr from its own thread
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        status = cli.main(["run", *bounded, "--policy", str(POLICY), "--input", str(source), "--output", str(out),
                           "--keyring", keyring_ref])
    assert status == 0, f"the run failed or its counts do not balance:\n{stdout.getvalue()}\n{stderr.getvalue()}"
    return out, stdout.getvalue() + stderr.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, keyring_ref, folder) -> dict[tuple[str, str], tuple[Path, str]]:
    """{(input, mode): (output folder, what the CLI printed)}; four MiniCluster runs."""
    result = {}
    for label, source in (("file", SAMPLE), ("folder", folder)):
        result[(label, "streaming")] = _cli_run(tmp_path_factory, keyring_ref, source, f"{label}-streaming")
        result[(label, "batch")] = _cli_run(tmp_path_factory, keyring_ref, source, f"{label}-batch", "--bounded")
    return result


def _lines(out: Path, channel: str) -> Counter:
    lines: Counter = Counter()
    for file in sorted((out / channel).rglob("*.jsonl")):
        assert not file.name.startswith("."), f"an unfinished part file: {file}"
        lines.update(line for line in file.read_text().splitlines() if line)
    return lines


INPUTS = ["file", "folder"]  # the sample as one file; as a folder of two files


@pytest.mark.parametrize("label", INPUTS)
@pytest.mark.parametrize("channel", LINE_CHANNELS)  # the masked view; the dead letters
def test_bounded_run_writes_the_same_lines_as_the_streaming_run(runs, label, channel):
    streaming, batch = _lines(runs[(label, "streaming")][0], channel), _lines(runs[(label, "batch")][0], channel)
    assert sum(streaming.values()) > 0
    assert batch == streaming


@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_a_folders_dead_letters_name_their_file_and_line(runs, folder, mode):
    dead = read_channel(runs[("folder", mode)][0] / "dlq")
    assert dead
    files = {f.name: f.read_text().split("\n") for f in folder.iterdir()}
    for entry in dead:
        name, _, line = entry["headers"]["position"].partition(" line ")
        assert entry["value"] == files[name][int(line) - 1]  # the raw line, found by its position
    assert {e["headers"]["position"].partition(" ")[0] for e in dead} == set(files)


@pytest.mark.parametrize("label", INPUTS)
def test_bounded_run_finalizes_every_part_file(runs, label):
    out = runs[(label, "batch")][0]
    hidden = [f for f in out.rglob("*") if f.is_file() and f.name.startswith(".")]
    assert hidden == [], "in-progress part files left behind"
    total = count_records(SAMPLE)
    assert len(read_channel(out / "masked")) + len(read_channel(out / "dlq")) == total


@pytest.mark.parametrize("label", INPUTS)
def test_bounded_run_shows_progress_and_says_it_ran_in_batch_mode(runs, label):
    out, printed = runs[(label, "batch")]
    assert "protect_stream (batch mode) finished" in printed
    # the progress display: "[#####...   ]  50.0% 5,020/10,040 records    3.2s" lines, the last at the end
    total = count_records(SAMPLE)
    progress = re.findall(r"^\[([# ]{30})\] +(\d{1,3}\.\d)% ([\d,]+)/([\d,]+) records +\d+\.\ds$",
                          printed, flags=re.MULTILINE)
    assert progress, f"no progress line in:\n{printed}"
    assert all(int(t.replace(",", "")) == total == 10_040 for _, _, _, t in progress)
    for bar, percent, seen, _ in progress:
        filled = bar.count("#")
        assert bar == "#" * filled + " " * (30 - filled)  # filled from the left
        assert float(percent) == pytest.approx(min(100.0, 100 * int(seen.replace(",", "")) / total), abs=0.051)
        assert abs(filled - float(percent) * 0.3) < 1.05  # one # per 3.33 %
    assert progress[-1][1:3] == ("100.0", "10,040")  # the last line: every record read
    # what the progress display reads: the protect operator's final count
    stats = [json.loads(f.read_text()) for f in (out / "_stats").glob("subtask-*.json")]
    assert sum(s["records_in"] for s in stats) == count_records(SAMPLE)


def _anonymized_identities(out: Path) -> Counter:
    """(pseudonym, timestamp, amount) of every record released or suppressed by the k-anonymity cascade."""
    ids: Counter = Counter()
    for channel in ("anonymized", "anonymized.suppressed"):
        for record in read_channel(out / channel):
            value = record["value"]
            ids[(record["key"], value.get("timestamp"), value.get("purchaseAmount"))] += 1
    return ids


@pytest.mark.parametrize("label", INPUTS)
def test_bounded_run_accounts_for_every_record_in_a_k_anonymous_view(runs, label):
    streaming, batch = runs[(label, "streaming")][0], runs[(label, "batch")][0]
    total = count_records(SAMPLE)
    dead = len(read_channel(batch / "dlq"))
    released = [r["value"] for r in read_channel(batch / "anonymized")]
    suppressed = read_channel(batch / "anonymized.suppressed")
    assert len(released) + len(suppressed) + dead == total
    assert released, "nothing released"
    assert_k_anonymous(released, quasi_identifiers=("age", "zip", "location"), subject="customerId", k=5)
    # the same records reach the cascade's two outputs in both modes, none lost or doubled
    assert _anonymized_identities(batch) == _anonymized_identities(streaming)


def _releases(out: Path) -> dict[tuple, dict]:
    releases = {}
    for record in read_channel(out / "aggregated"):
        value = record["value"]
        key = (value["window_start"], value["window_end"], value["region"])
        assert key not in releases, f"released twice: {key}"
        releases[key] = value
    return releases


def _subjects_per_minute_and_region() -> Counter:
    """Distinct subjects of the sample per (minute, region): at least the DP view's true counts."""
    subjects: dict[tuple[str, str], set] = {}
    for line in SAMPLE.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("timestamp"), str):
            subjects.setdefault((record["timestamp"][:16], record.get("region")), set()).add(record.get("customerId"))
    return Counter({key: len(ids) for key, ids in subjects.items()})


def _surely_released(policy_view: dict) -> float:
    """Subjects above which private selection suppresses a group with probability below 1e-9 per run.

    Selection passes when ``subjects + Laplace(b)`` exceeds the threshold T, so a group of s > T
    subjects is suppressed with probability ``exp(-(s - T) / b) / 2``. A group nearer T may be
    released in one run and not in the other: that is the mechanism, not a loss.
    """
    params = DpParams.from_policy(policy_view["differential_privacy"])
    eps, delta = params.plan["selection"]
    scale = params.max_groups_per_subject / eps
    return laplace_threshold(eps, delta, params.max_groups_per_subject) + scale * math.log(0.5 / 1e-9)


@pytest.mark.parametrize("label", INPUTS)
def test_bounded_run_releases_the_same_dp_windows_and_groups(runs, label):
    streaming, batch = _releases(runs[(label, "streaming")][0]), _releases(runs[(label, "batch")][0])
    assert streaming, "the streaming run released nothing"
    # groups far above the selection threshold are released in both runs; one nearer it may not be
    view = yaml.safe_load(POLICY.read_text())["views"]["aggregated"]
    cutoff = _surely_released(view)
    subjects = _subjects_per_minute_and_region()
    sure = {key for key, count in subjects.items() if count > cutoff + 20}  # 20: dead letters and bounding
    assert len(sure) >= 25, "the sample no longer has enough large groups for this test"
    for run in (streaming, batch):
        released = {(key[0][:16], key[2]) for key in run}
        assert sure <= released, f"groups far above the threshold were not released: {sorted(sure - released)}"
        assert released <= set(subjects), "a release for a window and group the input does not have"
    for key in set(batch) & set(streaming):
        value, other = batch[key], streaming[key]
        for field in ("epsilon", "delta", "mechanism", "public_group"):
            assert value[field] == other[field], (key, field)
        # the noise differs per run: the true counts are equal, so the noisy ones differ by noise only
        spread = 12 * (value["count"]["std"] + other["count"]["std"])
        assert abs(value["count"]["value"] - other["count"]["value"]) <= spread, key


@pytest.mark.parametrize(("batch", "mode", "checkpointing"), [
    (True, "BATCH", False),  # static masking: no checkpoints, even when an interval is given
    (False, "STREAMING", True),  # the streaming job keeps its checkpoints
])
def test_the_environment_runs_in_the_mode_asked_for(batch, mode, checkpointing):
    from flink_jobs.protect_stream import JobOptions, make_env

    env = make_env(JobOptions(keyring_ref="", checkpoint_interval_ms=2000, batch=batch))
    assert env.get_checkpoint_config().is_checkpointing_enabled() is checkpointing
    config = env._j_stream_execution_environment.getConfiguration()
    assert config.toMap().get("execution.runtime-mode") == mode


def test_a_local_streaming_run_checkpoints_to_files_not_to_the_jobmanager_heap(tmp_path):
    # the JobManager's heap takes at most 5 MB of checkpoint: a k-anonymity buffer outgrows that
    from flink_jobs.protect_stream import LOCAL_CHECKPOINTS, JobOptions, make_env

    env = make_env(JobOptions(keyring_ref="", checkpoint_interval_ms=2000))
    config = env._j_stream_execution_environment.getConfiguration().toMap()
    assert config.get("execution.checkpointing.dir") == LOCAL_CHECKPOINTS.as_uri()
    assert LOCAL_CHECKPOINTS.stat().st_mode & 0o777 == 0o700  # raw subjects are in there
    chosen = (tmp_path / "checkpoints").as_uri()
    env = make_env(JobOptions(keyring_ref="", checkpoint_interval_ms=2000,
                              extra_config={"execution.checkpointing.dir": chosen}))
    assert env._j_stream_execution_environment.getConfiguration().toMap().get("execution.checkpointing.dir") == chosen
