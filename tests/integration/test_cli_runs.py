"""`flink-anonymizer run` on files, as a user runs it: the console script, a MiniCluster, a timeout.

Each run is a subprocess in its own process group; a run that does not end in time is killed
(its JVM too) and fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from flink_jobs.cli.run import read_channel
from operators.shuffle import SUPPRESSED_HEADER, WINDOW_HEADER

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
CLI = [str(Path(sys.executable).with_name("flink-anonymizer"))]
RUN_TIMEOUT_S = 240


def run_cli(args: list[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the CLI in its own process group; on timeout kill the group and fail."""
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"flink-anonymizer {args[0]} did not end within {timeout:g} s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def masked_only_policy(tmp_path: Path) -> Path:
    document = yaml.safe_load(POLICY.read_text())
    document["views"] = {"masked": document["views"]["masked"]}
    path = tmp_path / "masked.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_when_the_input_has_blank_lines_the_progress_line_stops_at_its_record_count(tmp_path, keyring_ref):
    records = SAMPLE.read_bytes().splitlines()[:30]
    # blank lines in the middle, CRLF endings, a whitespace line, and a blank last line
    body = b"\n".join(records[:10]) + b"\n\n  \t\n" + b"\r\n".join(records[10:20]) + b"\r\n\r\n"
    body += b"\n".join(records[20:]) + b"\n\n"
    source = tmp_path / "blank-lines.jsonl"
    source.write_bytes(body)
    out = tmp_path / "out"
    result = run_cli(["run", "--policy", str(masked_only_policy(tmp_path)), "--input", str(source),
                      "--output", str(out), "--keyring", keyring_ref])
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if re.search(r"\d records +[\d.]+s$", line)]
    assert progress, result.stderr[-3000:]
    assert "100.0% 30/30 records" in progress[-1], progress
    assert all(int(m.group(1)) <= 30 for line in progress for m in [re.search(r"% ([\d,]+)/30 records", line)] if m)
    assert "finished in" in result.stdout and ": 30 records in" in result.stdout
    # the sample's line 27 is malformed on purpose: view + dead letters = in
    assert "masked             29 records" in result.stdout and "1 dead letters" in result.stdout
    assert "[balanced" in result.stdout and "NOT BALANCED" not in result.stdout


# -- a shuffled view, named in the policy --------------------------------------------------------------
SHUFFLE = {"columns": ["zip", "age"], "window": 25, "min_size": 20, "small_window": "suppress",
           "partition_by": "region"}
REGIONS = {"north": 110, "south": 63, "east": 41, "west": 12}  # records per region: whole windows and a rest


def shuffle_input(path: Path) -> tuple[dict[int, dict], int]:
    """Synthetic events (unique ``id``) of four regions interleaved, two malformed lines and blank ones."""
    rng = random.Random(17)
    regions = [region for region, n in REGIONS.items() for _ in range(n)]
    rng.shuffle(regions)
    events = {}
    lines = []
    for i, region in enumerate(regions):
        events[i] = {"customerId": f"C{i % 37:03d}", "id": i, "region": region, "zip": f"{rng.randrange(10**5):05d}",
                     "age": rng.randrange(18, 90), "timestamp": f"2024-03-15T00:{i // 60:02d}:{i % 60:02d}Z"}
        lines.append(json.dumps(events[i]))
        if i in (40, 150):
            lines.append('{"customerId": "C999", "broken')  # a dead letter
        if i == 99:
            lines.append("")
    path.write_text("\n".join(lines) + "\n\n")
    return events, len(regions) + 2


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_a_shuffled_view_keeps_each_windows_multiset_and_accounts_for_every_record(tmp_path, keyring_ref):
    events, records_in = shuffle_input(tmp_path / "events.jsonl")
    document = yaml.safe_load(POLICY.read_text())
    fields = {name: "keep" for name in ("customerId", "id", "region", "zip", "age", "timestamp")}
    document["views"] = {"shuffled": {"sink": {"topic": "shuffled-customer-events"}, "fields": fields,
                                      "shuffle": SHUFFLE}}
    policy = tmp_path / "shuffled.yaml"
    policy.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    result = run_cli(["run", "--policy", str(policy), "--input", str(tmp_path / "events.jsonl"),
                      "--output", str(out), "--keyring", keyring_ref])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f": {records_in} records in" in result.stdout and "NOT BALANCED" not in result.stdout

    released, suppressed, dead = (read_channel(out / c) for c in ("shuffled", "shuffled.suppressed", "dlq"))
    # accounting: in = released + suppressed (+ the two dead letters), each record once
    assert len(dead) == 2 and len(released) + len(suppressed) + len(dead) == records_in
    assert Counter(r["value"]["id"] for r in released + suppressed) == Counter(list(events))
    # count windows per region: whole windows of 25 are released; a rest of 20 or more too, a smaller one suppressed
    for region, n in REGIONS.items():
        rest = n % SHUFFLE["window"]
        expected = n - rest + (rest if rest >= SHUFFLE["min_size"] else 0)
        assert sum(r["value"]["region"] == region for r in released) == expected, region
    assert all(r["headers"][SUPPRESSED_HEADER] for r in suppressed)
    # the multiset property per window: each window's zips and ages are exactly its records' own
    windows = defaultdict(list)
    for record in released:
        windows[record["headers"][WINDOW_HEADER]].append(record["value"])
    assert sum(len(w) for w in windows.values()) == len(released)
    moved = 0
    for window in windows.values():
        assert SHUFFLE["min_size"] <= len(window) <= SHUFFLE["window"]
        assert len({v["region"] for v in window}) == 1  # one partition per window
        for column in SHUFFLE["columns"]:
            assert Counter(v[column] for v in window) == Counter(events[v["id"]][column] for v in window), column
        moved += sum(v["zip"] != events[v["id"]]["zip"] for v in window)
        # the unshuffled fields stay with their record
        assert all(v["customerId"] == events[v["id"]]["customerId"] for v in window)
    assert moved > len(released) // 2  # shuffled: most zips left their record (about 1 per window stays)
    # a suppressed record is never shuffled: its values are its own
    assert all(r["value"]["zip"] == events[r["value"]["id"]]["zip"] for r in suppressed)
