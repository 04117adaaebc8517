"""`flink-anonymizer run` on files, as a user runs it: the console script, a MiniCluster, a timeout.

Each run is a subprocess in its own process group; a run that does not end in time is killed
(its JVM too) and fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
