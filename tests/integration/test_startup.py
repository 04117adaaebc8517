"""Every shape a user starts: each view of the shipped policy alone and the whole policy, through the
command line, in thread and process mode, on files and on Kafka; two jobs from one client; a plugin;
and the start-up watchdog on a job whose operator never opens.

A masked-only policy once hung at start in thread mode (a scipy import deadlocked the embedded
interpreter); no test ran a policy without all three views, so none caught it. Each run here is a
subprocess with a timeout that fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flink_jobs.kafka_tools import consume, ensure_topics, produce_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
# the console script, as a user runs it
CLI = [str(Path(sys.executable).with_name("flink-anonymizer"))]
#: one job on the 10,040-event sample; "what good looks like" is 120 s, so this leaves room for a loaded machine
RUN_TIMEOUT_S = 240
EVENTS = 10_040  # the sample's lines; each is protected for every view or dead-lettered

VIEWS = ["masked", "anonymized", "aggregated", "all"]
MODES = ["thread", "process"]


def _write_policy(tmp_path: Path, view: str, *, topic: str | None = None, plugins: list[str] | None = None,
                  fields: dict | None = None) -> Path:
    document = yaml.safe_load(POLICY.read_text())
    if view != "all":
        document["views"] = {view: document["views"][view]}
    if topic is not None:
        document["source"]["topic"] = topic
        for name, spec in document["views"].items():
            spec["sink"]["topic"] = f"{topic}.{name}"
    if plugins is not None:
        document["plugins"] = plugins
    if fields:
        document["views"]["masked"]["fields"].update(fields)
    path = tmp_path / f"{view}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _run(args: list[str], timeout: float = RUN_TIMEOUT_S, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in its own process group; on timeout kill the group (its JVM too) and fail."""
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"flink-anonymizer {' '.join(args[:1])} did not end within {timeout:g} s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _lines(folder: Path) -> int:
    return sum(len([x for x in f.read_text().splitlines() if x.strip()])
               for f in folder.rglob("*.jsonl") if not f.name.startswith(".")) if folder.exists() else 0


def _check_file_views(out: Path, view: str) -> None:
    protected = EVENTS - _lines(out / "dlq")
    assert 0 < protected < EVENTS  # the sample holds malformed events too
    if view in ("masked", "all"):
        assert _lines(out / "masked") == protected
    if view in ("anonymized", "all"):
        assert _lines(out / "anonymized") + _lines(out / "anonymized.suppressed") == protected
        assert _lines(out / "anonymized") > 0
    if view in ("aggregated", "all"):
        assert _lines(out / "aggregated") > 0  # DP releases


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("mode", MODES)  # the embedded interpreter (default); a Python process per task
@pytest.mark.parametrize("view", VIEWS)  # each view of the shipped policy alone, then all three
def test_each_view_alone_and_the_whole_policy_run_on_files(tmp_path, keyring_ref, view, mode):
    policy = _write_policy(tmp_path, view)
    done = _run(["run", "--policy", str(policy), "--input", str(SAMPLE), "--output", str(tmp_path / "out"),
                 "--keyring", keyring_ref, "--execution-mode", mode, "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "balanced" in done.stdout
    _check_file_views(tmp_path / "out", view)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_whole_policy_runs_with_records_handed_to_its_keyed_stages_one_by_one(tmp_path, keyring_ref):
    # --bundle-size 1: no Java bundles before the k-anonymity and DP stages [bundles]
    policy = _write_policy(tmp_path, "all")
    done = _run(["run", "--policy", str(policy), "--input", str(SAMPLE), "--output", str(tmp_path / "out"),
                 "--keyring", keyring_ref, "--bundle-size", "1", "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "balanced" in done.stdout
    _check_file_views(tmp_path / "out", "all")


@pytest.mark.timeout(RUN_TIMEOUT_S + 90)
@pytest.mark.parametrize("mode", MODES)  # the embedded interpreter (default); a Python process per task
@pytest.mark.parametrize("view", VIEWS)  # each view of the shipped policy alone, then all three
def test_each_view_alone_and_the_whole_policy_run_on_kafka(tmp_path, kafka_broker, keyring_ref, view, mode):
    topic = f"startup-{view}-{mode}"
    ensure_topics(kafka_broker.bootstrap, [topic])
    produced = produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    assert produced == EVENTS
    policy = _write_policy(tmp_path, view, topic=topic)
    done = _run(["run", "--policy", str(policy), "--bootstrap-servers", kafka_broker.bootstrap, "--bounded",
                 "--keyring", keyring_ref, "--execution-mode", mode, "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    protected = EVENTS - len(consume(kafka_broker.bootstrap, f"{topic}.dlq", timeout=30))
    assert 0 < protected < EVENTS
    if view in ("masked", "all"):
        assert len(consume(kafka_broker.bootstrap, f"{topic}.masked", n=protected, timeout=30)) == protected
    if view in ("anonymized", "all"):
        released = consume(kafka_broker.bootstrap, f"{topic}.anonymized", timeout=30)
        suppressed = consume(kafka_broker.bootstrap, f"{topic}.anonymized.suppressed", timeout=30)
        assert released and len(released) + len(suppressed) == protected
    if view in ("aggregated", "all"):
        assert consume(kafka_broker.bootstrap, f"{topic}.aggregated", timeout=30)


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
def test_two_jobs_one_after_the_other_in_one_client_process(tmp_path, keyring_ref):
    """As ``bench/kafka_e2e.py`` does: the second job starts in the JVM and interpreter the first one used."""
    masked, full = _write_policy(tmp_path, "masked"), _write_policy(tmp_path, "all")
    code = (
        "import sys\n"
        "from flink_jobs import cli\n"
        f"for policy, out in (({str(full)!r}, 'first'), ({str(masked)!r}, 'second')):\n"
        f"    code = cli.main(['run', '--policy', policy, '--input', {str(SAMPLE)!r},\n"
        f"                     '--output', {str(tmp_path)!r} + '/' + out,\n"
        f"                     '--keyring', {keyring_ref!r}, '--quiet'])\n"
        "    assert code == 0, code\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=2 * RUN_TIMEOUT_S, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_file_views(tmp_path / "first", "all")
    _check_file_views(tmp_path / "second", "masked")


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_a_policy_with_a_plugins_module_runs_through_the_command_line(tmp_path, keyring_ref):
    policy = _write_policy(tmp_path, "masked", plugins=["conf.examples.my_udfs"], fields={"name": {"mask": "initials"}})
    done = _run(["run", "--policy", str(policy), "--input", str(SAMPLE), "--output", str(tmp_path / "out"),
                 "--keyring", keyring_ref, "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(next((tmp_path / "out/masked").rglob("*.jsonl")).read_text().splitlines()[0])
    name = first["value"]["name"]
    assert name.endswith(".") and len(name) <= 8  # initials, "J.D."


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)  # a blocked embedded interpreter; a blocked Python worker process
def test_when_an_operator_never_opens_then_the_job_is_cancelled_and_the_command_fails(tmp_path, keyring_ref, mode):
    policy = _write_policy(tmp_path, "masked", plugins=["tests.integration.blocking_udfs"],
                           fields={"name": {"test": "block_open"}})
    started = time.monotonic()
    done = _run(["run", "--policy", str(policy), "--input", str(SAMPLE), "--output", str(tmp_path / "out"),
                 "--keyring", keyring_ref, "--execution-mode", mode, "--startup-timeout", "15"], timeout=150)
    assert done.returncode != 0
    assert "did not start" in done.stderr and "did not open" in done.stderr
    assert "protect" in done.stderr  # the operator that did not open
    assert "--execution-mode process" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 150
    assert "[" in done.stderr  # the progress line was shown, not silence
