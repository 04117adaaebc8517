"""Prometheus metrics from a real job, scraped by a real Prometheus (Debian's ``prometheus`` package).

``run --metrics-port`` on the sample: the job reads it from a real Kafka topic and is left running
(a finished task's metrics leave the reporter with it), while Prometheus scrapes its port every
second; the test asks Prometheus's HTTP API until every metric a dashboard needs is there with a
plausible value, then stops the job and Prometheus. The README's ``prometheus.yml`` is checked with
``promtool check config``. Without Prometheus these tests fail (``apt-get install prometheus``;
``.ci/run`` installs it): they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flink_jobs.devtools.processes import free_port
from flink_jobs.devtools.prometheus import JOB_NAME, Prometheus, start_prometheus
from flink_jobs.kafka_tools import ensure_topics, produce_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
CLI = Path(sys.executable).with_name("flink-anonymizer")
_PREFIX = "flink_taskmanager_job_task_operator_"
_KEPT_LABELS = ("view", "reason", "field", "level", "stage")
_LINE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format: {(name, labels we care about): value}."""
    series = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or line.startswith("#"):
            continue
        labels = frozenset((k, v) for k, v in _LABEL.findall(match.group(2) or "")
                           if k in _KEPT_LABELS)
        series[(match.group(1), labels)] = float(match.group(3))
    return series


def total(series: dict, name: str, **labels: str) -> float | None:
    """Sum of the series named ``name`` (with ``flink_taskmanager_job_task_operator_`` before it)."""
    full = _PREFIX + name
    values = [v for (n, ls), v in series.items() if n == full and set(labels.items()) <= ls]
    return sum(values) if values else None


def _policy(tmp_path: Path, topic: str) -> Path:
    document = yaml.safe_load(POLICY.read_text())
    document["source"]["topic"] = topic
    document["plugins"] = ["udfs.tokenization"]
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}"
    # a token per customer from the vault: the same customer again is a hit
    document["views"]["masked"]["fields"]["customerId"] = {
        "tokenize": "vault", "format": "prefixed", "prefix": "tok_", "domain": "customer_id",
        "subject_field": "customerId", "vault": f"sqlite:{tmp_path / 'vault.db'}"}
    # three windows' worth of budget: the sample's later windows are refused
    document["views"]["aggregated"]["differential_privacy"]["total_epsilon"] = 3.0
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _wanted(series: dict) -> dict[str, bool]:
    """Each metric the README names, and whether its value is plausible for the sample."""
    released = total(series, "k_anonymity_view_stage_level_released", view="anonymized")
    return {
        "records in, per view": all((total(series, "protect_view_records_in", view=v) or 0) >= 1000
                                    for v in ("masked", "anonymized", "aggregated")),
        "dead letters by reason": all((total(series, "protect_reason_dead_letters", reason=r) or 0) >= 1
                                      for r in ("invalid_json", "not_an_object", "missing_field", "field")),
        "fields dropped": (total(series, "protect_view_field_fields_dropped", view="masked", field="notes") or 0) >= 1,
        "k-anonymity buffered": (total(series, "k_anonymity_view_stage_buffered", view="anonymized") or 0) >= 1,
        "k-anonymity released": (released or 0) >= 1,
        "k-anonymity suppressed": total(series, "k_anonymity_view_stage_suppressed", view="anonymized") is not None,
        "k-anonymity longest wait": (total(series, "k_anonymity_view_stage_longest_wait_ms", view="anonymized")
                                     or 0) > 0,
        "k-anonymity NCP": 0 < (total(series, "k_anonymity_view_stage_ncp_micro") or 0)
                           <= 1e6 * ((total(series, "k_anonymity_view_stage_ncp_records") or 0) + 256),
        "DP releases": (total(series, "dp_groups_released") or 0) >= 1,
        "DP epsilon spent": total(series, "dp_epsilon_spent_micro") == 3_000_000,
        "DP refused releases": (total(series, "dp_releases_refused_budget") or 0) >= 1,
        "vault hits": (total(series, "protect_vault_hits") or 0) >= 1,
        "vault misses": (total(series, "protect_vault_misses") or 0) >= 1,
    }


def _require(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"`{binary}` not found on PATH: this test runs the real Prometheus; "
                    f"install Debian's package (apt-get install prometheus), as .ci/run does")
    return found


def from_prometheus(results: list[dict]) -> dict[tuple[str, frozenset], float]:
    """An instant query's answer in :func:`parse_metrics`'s shape: {(name, labels we care about): value}."""
    return {(r["metric"]["__name__"], frozenset((k, v) for k, v in r["metric"].items() if k in _KEPT_LABELS)):
            float(r["value"][1]) for r in results}


def test_readme_prometheus_yml_passes_promtool_check_config(tmp_path):
    promtool = _require("promtool")
    blocks = re.findall(r"```yaml\n# prometheus\.yml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "README.md should hold one ```yaml block starting `# prometheus.yml`"
    config = tmp_path / "prometheus.yml"
    config.write_text(blocks[0])
    done = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(blocks[0])["scrape_configs"][0]["job_name"] == JOB_NAME


@pytest.mark.timeout(480)
def test_run_with_metrics_port_serves_every_dashboard_metric_to_a_real_prometheus(kafka_broker, keyring_ref,
                                                                                 tmp_path):
    _require("prometheus")
    topic = "prometheus-sample"
    policy = _policy(tmp_path, topic)
    ensure_topics(kafka_broker.bootstrap, [topic])
    produce_file(kafka_broker.bootstrap, topic, SAMPLE)
    port = free_port()
    prometheus: Prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], timeout=60)
    log = open(tmp_path / "run.log", "w")
    env = dict(os.environ, FLINK_LOG_DIR=str(tmp_path / "flink-log"))
    job = subprocess.Popen(
        [str(CLI), "run", "--policy", str(policy), "--bootstrap-servers", kafka_broker.bootstrap,
         "--keyring", keyring_ref, "--delivery", "at-least-once", "--metrics-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    wanted: dict[str, bool] = {}
    results: list[dict] = []
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline and job.poll() is None and prometheus.alive():
            time.sleep(2)
            # every series Prometheus holds from the job right now (up, the JVM's, the operators')
            results = prometheus.query(f'{{job="{JOB_NAME}"}}')
            wanted = _wanted(from_prometheus(results))
            if all(wanted.values()):
                break
    finally:
        os.killpg(job.pid, signal.SIGTERM)  # the CLI and the MiniCluster's JVM it started
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        log.close()
        prometheus.stop(timeout=30)
    assert job.returncode is not None and not prometheus.alive()
    missing = [name for name, ok in wanted.items() if not ok]
    assert wanted and not missing, f"not in Prometheus with a plausible value: {missing or 'nothing scraped'}; " \
        f"Prometheus log: {prometheus.log_tail(10)}; job output: {(tmp_path / 'run.log').read_text()[-2000:]}"
    series = from_prometheus(results)
    assert series[("up", frozenset())] == 1  # Prometheus's own word: the target answered its last scrape
    # a dead letter's reason is its first word: never a field's value
    reasons = {dict(ls).get("reason") for (n, ls) in series if n.endswith("protect_reason_dead_letters")}
    assert reasons <= {"invalid_json", "not_an_object", "missing_field", "field"}
    raw_ids = set(re.findall(r"CUST\d+", SAMPLE.read_text()))
    stored = json.dumps(results)  # every label of every series Prometheus took from the job
    assert not any(identifier in stored for identifier in raw_ids)


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


@pytest.mark.timeout(300)
def test_cluster_up_with_metrics_port_serves_the_jobmanager_and_taskmanager_and_submit_checks_it(tmp_path, capsys):
    from flink_jobs.cli.errors import CliError
    from flink_jobs.cli.submit import check_cluster_metrics
    from flink_jobs.devtools import cluster as cluster_cli

    first = free_port()
    state = tmp_path / "flink"
    assert cluster_cli.main(["up", "--state-dir", str(state), "--rest-port", "0", "--rpc-port", "0",
                             "--metrics-port", str(first), "--timeout", "180"]) == 0
    try:
        running = cluster_cli.load_cluster(state)
        assert "ports" in capsys.readouterr().out
        # one port became a range: the JobManager and the TaskManager each took one of it
        have = check_cluster_metrics(running.rest_url, str(first))
        low, high = (int(p) for p in have.split("-"))
        served = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ({"jobmanager", "taskmanager"} <= set(served)):
            for port in range(low, high + 1):
                text = _scrape(port)
                if text and "flink_jobmanager_numRegisteredTaskManagers" in text:
                    served["jobmanager"] = parse_metrics(text)
                elif text and "flink_taskmanager_Status_JVM_CPU_Load" in text:
                    served["taskmanager"] = parse_metrics(text)
            time.sleep(1)
        assert served["jobmanager"][("flink_jobmanager_numRegisteredTaskManagers", frozenset())] == 1
        with pytest.raises(CliError, match="serves Prometheus on ports"):
            check_cluster_metrics(running.rest_url, str(high + 100))
    finally:
        cluster_cli.main(["down", "--state-dir", str(state)])
