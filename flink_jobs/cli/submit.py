r"""Cluster commands of ``flink-anonymizer``: submit, savepoint, resume, status.

``submit`` runs the real ``flink run -py flink_jobs/kafka_job.py`` of the pip-installed
distribution against a standalone (or remote) cluster. The project's packages travel with the
job (``-pyfs``, one zip), and so does the Kafka connector (in the zip; ``kafka_io`` adds it to
``pipeline.jars``, which ``flink run`` uploads); the workers' interpreter is given
by ``-pyexec`` (a venv on every node, or a packed one shipped with ``--pyarch``)::

    flink-anonymizer submit --policy conf/policies/customer-events.yaml \
        --bootstrap-servers 127.0.0.1:9092 --keyring file:/secure/keyring.json
    flink-anonymizer status
    flink-anonymizer savepoint JOB_ID            # stop with a savepoint; prints its path
    flink-anonymizer resume SAVEPOINT --policy ... --bootstrap-servers ... --keyring ...

The functions behind them (:func:`submit_job`, :func:`stop_with_savepoint`, :func:`job_status`,
:func:`cancel_job`, :func:`wait_for_job`) are what the cluster tests and ``bench/scaling.py`` use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs.cli.errors import CliError
from flink_jobs.cli.flink_rest import TERMINAL_STATES, SubmitError, rest_request
from flink_jobs.cli.startup_watch import StartupWatch
from flink_jobs.devtools.cluster import DEFAULT_STATE_DIR, PROJECT_ROOT, flink_home, load_cluster
from flink_jobs.keyring_ref import KEYRING_ENV

__all__ = [
    "SubmitError",
    "SubmitOptions",
    "cancel_job",
    "job_status",
    "list_jobs",
    "register",
    "stop_with_savepoint",
    "submit_command",
    "submit_job",
    "wait_for_job",
]

SCRIPT = PROJECT_ROOT / "flink_jobs" / "kafka_job.py"
#: the slot sharing group of the stateful operators with --stateful-slots
STATEFUL_SLOT_GROUP = "stateful"
#: the project's packages, shipped to the workers with -pyfs (as one zip)
PACKAGES = ("udfs", "operators", "flink_jobs")
#: what the job never imports, so the workers never need it: the command line, the local
#: servers and demos, and the offline reports
NOT_SHIPPED = ("flink_jobs/cli", "flink_jobs/devtools", "flink_jobs/report")
_JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


@dataclass
class SubmitOptions:
    """What ``flink run`` needs besides the job's own arguments."""

    policy: str
    bootstrap: str
    keyring: str
    parallelism: int = 1
    #: "process" by default on a session cluster: a thread-mode TaskManager keeps one Python
    #: interpreter for its whole life, so a later job sees the modules an earlier job imported
    #: (from that job's -pyfs folder, deleted when it ended) and fails with ModuleNotFoundError
    execution_mode: str = "process"
    start: str = "earliest"
    delivery: str | None = None
    bounded: bool = False
    no_create_topics: bool = False
    savepoint: str | None = None
    allow_non_restored_state: bool = False
    detached: bool = True
    jobmanager: str | None = None
    state_dir: str = str(DEFAULT_STATE_DIR)
    #: a packed venv (zip) to ship with the job, for a cluster without the project's dependencies
    pyarch: str | None = None
    #: the workers' interpreter (default: this venv's, or ``<pyarch>/bin/python`` with pyarch)
    pyexec: str | None = None
    #: extra ``-D key=value`` settings for the job
    config: dict[str, str] = field(default_factory=dict)
    #: a Confluent-compatible schema registry, as the client and the workers reach it (overrides source.schema)
    schema_registry: str | None = None
    #: the k-anonymity and DP operators in a slot sharing group of their own (two slots per subtask)
    stateful_slots: bool = False


def _rest_base(jobmanager: str | None, state_dir: str | Path) -> str:
    if jobmanager:
        return "http://" + jobmanager if "://" not in jobmanager else jobmanager
    cluster = load_cluster(state_dir)
    return cluster.rest_url if cluster else "http://127.0.0.1:8081"


def _conf_dir(state_dir: str | Path) -> str:
    # the rendered conf of a local cluster when there is one, else the distribution's
    cluster = load_cluster(state_dir)
    return cluster.conf_dir if cluster else str(flink_home() / "conf")


def connector_jars() -> list[Path]:
    """The Kafka connector jar(s) shipped with every job."""
    from flink_jobs.kafka_io import DEFAULT_JARS_DIR

    jars = sorted(DEFAULT_JARS_DIR.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise SubmitError(f"no Kafka connector jar in {DEFAULT_JARS_DIR}; run `make jars` (bash conf/fetch_jars.sh)")
    return jars


def pack_project(directory: Path) -> Path:
    """Zip the project's packages (sources only) into `directory`; the path of the zip.

    The zip is extracted on every worker and its root put on ``PYTHONPATH``, so
    ``import udfs``, ``operators`` and ``flink_jobs`` work on a cluster without the project;
    :data:`NOT_SHIPPED` stays out (the job never imports it). It also holds ``jars/flink/``
    (the Kafka connector), where ``kafka_io`` looks for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "flink_anonymizer.zip"
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for file in sorted((PROJECT_ROOT / package).rglob("*.py")):
                name = file.relative_to(PROJECT_ROOT).as_posix()
                if "__pycache__" not in file.parts and not name.startswith(tuple(f"{d}/" for d in NOT_SHIPPED)):
                    zf.write(file, name)
        # kafka_io finds the connector next to its own file (../jars/flink); in the client the
        # job imports kafka_io from this zip, so the jar rides along and kafka_io puts it in
        # pipeline.jars, which the client uploads with the job graph
        for jar in connector_jars():
            zf.write(jar, jar.relative_to(PROJECT_ROOT).as_posix(), compress_type=zipfile.ZIP_STORED)
    os.replace(tmp, target)  # atomic: a concurrent submit never ships a half-written zip
    return target


def submit_command(options: SubmitOptions) -> list[str]:
    """The ``flink run`` command line for `options` (nothing is run)."""
    base = _rest_base(options.jobmanager, options.state_dir)
    python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", base.split("://", 1)[1]]
    if options.detached:
        cmd.append("-d")
    if options.savepoint:
        cmd += ["-s", options.savepoint]
    if options.allow_non_restored_state:
        cmd.append("-n")
    cmd += ["-pyclientexec", python]
    if options.pyarch:
        cmd += ["-pyarch", f"{Path(options.pyarch).resolve()}#venv"]
        cmd += ["-pyexec", options.pyexec or "venv/bin/python"]
    else:
        cmd += ["-pyexec", options.pyexec or python]
    # one zip holding the packages and the Kafka connector (see pack_project)
    cmd += ["-pyfs", str(pack_project(Path(options.state_dir) / "pyfiles"))]
    for key, value in options.config.items():
        cmd.append(f"-D{key}={value}")
    cmd += ["-py", str(SCRIPT)]
    # after the script: the Kafka arguments of `flink-anonymizer run`, which kafka_job.main() parses
    cmd += ["--policy", str(Path(options.policy).resolve()), "--bootstrap-servers", options.bootstrap,
            "--keyring", _absolute_ref(options.keyring), "--parallelism", str(options.parallelism),
            "--execution-mode", options.execution_mode, "--start", options.start]
    if options.delivery:
        cmd += ["--delivery", options.delivery]
    if options.bounded:
        cmd.append("--bounded")
    if options.no_create_topics:
        cmd.append("--no-create-topics")
    if options.schema_registry:
        cmd += ["--schema-registry", options.schema_registry]
    if options.stateful_slots:
        cmd += ["--stateful-slot-group", STATEFUL_SLOT_GROUP]
    return cmd


def _absolute_ref(ref: str) -> str:
    # the workers open the keyring themselves, from their own working directory
    return f"file:{Path(ref[5:]).resolve()}" if ref.startswith("file:") else ref


def submit_job(options: SubmitOptions, timeout: float = 180) -> str:
    """Run ``flink run`` and return the job id it reports.

    Raises
    ------
    SubmitError
        ``flink run`` failed or printed no job id; the message has the end of its output.
    """
    cmd = submit_command(options)
    env = dict(os.environ, FLINK_CONF_DIR=_conf_dir(options.state_dir))
    env.pop("PYTHONPATH", None)  # the job must import the project from -pyfs / the venv, nothing else
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=PROJECT_ROOT)
    output = done.stdout + "\n" + done.stderr
    match = _JOB_ID.search(output)
    if done.returncode != 0 or not match:
        raise SubmitError(f"flink run failed (exit {done.returncode}): {_tail(output)}")
    return match.group(1)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])


def list_jobs(base: str) -> list[dict]:
    """``/jobs/overview``: id, name, state, start time, duration of every job."""
    return rest_request(base, "/jobs/overview")["jobs"]


def job_state(base: str, job_id: str) -> str:
    return rest_request(base, f"/jobs/{job_id}")["state"]


def wait_for_job(base: str, job_id: str, states: set[str] | str, timeout: float = 120) -> str:
    """Wait until the job is in one of `states` and return it.

    Raises
    ------
    SubmitError
        The time ran out, or the job ended in a state that is not wanted (the message has
        the root exception Flink reports).
    """
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        state = job_state(base, job_id)
        if state in wanted:
            return state
        if state in TERMINAL_STATES:
            break
        time.sleep(0.5)
    raise SubmitError(f"job {job_id} is {state}, not {'/'.join(sorted(wanted))}: {_root_cause(base, job_id)}")


def _root_cause(base: str, job_id: str) -> str:
    try:
        info = rest_request(base, f"/jobs/{job_id}/exceptions?maxExceptions=1")
    except SubmitError:
        return "no exception reported"
    history = info.get("exceptionHistory", {}).get("entries") or []
    text = history[0].get("stacktrace", "") if history else info.get("root-exception") or ""
    # the exception lines and their causes, not the frames
    causes = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("at ", "..."))]
    return "\n".join(causes[:12]) or "no exception reported"


def cancel_job(base: str, job_id: str, timeout: float = 60) -> None:
    """Cancel a job and wait until it is cancelled (or already over)."""
    rest_request(base, f"/jobs/{job_id}?mode=cancel", method="PATCH")
    wait_for_job(base, job_id, TERMINAL_STATES, timeout=timeout)


def stop_with_savepoint(base: str, job_id: str, target: str | None = None, *, drain: bool = False,
                        timeout: float = 120) -> str:
    """Stop a job with a savepoint (REST ``/jobs/:id/stop``) and return the savepoint's path.

    Parameters
    ----------
    base : str
        REST API base URL.
    job_id : str
        The running job.
    target : str, optional
        Savepoint folder; default: the cluster's ``execution.checkpointing.savepoint-dir``.
    drain : bool
        Advance event time to the end first (fires every window); a job resumed after a drain
        would see its windows closed, so the default keeps them open.
    timeout : float
        Seconds to wait for the savepoint.
    """
    body: dict[str, Any] = {"drain": drain}
    if target:
        body["targetDirectory"] = target
    trigger = rest_request(base, f"/jobs/{job_id}/stop", method="POST", body=body)["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = rest_request(base, f"/jobs/{job_id}/savepoints/{trigger}")
        if info["status"]["id"] == "COMPLETED":
            operation = info.get("operation", {})
            if "location" in operation:
                wait_for_job(base, job_id, TERMINAL_STATES, timeout=max(5.0, deadline - time.monotonic()))
                return operation["location"]
            cause = operation.get("failure-cause", {}).get("stack-trace", "unknown cause")
            raise SubmitError(f"stop-with-savepoint of job {job_id} failed: {_tail(cause, 8)}")
        time.sleep(0.5)
    raise SubmitError(f"stop-with-savepoint of job {job_id} did not complete within {timeout:g} s")


# --- status -------------------------------------------------------------------------------------

#: user metrics worth a row, by a part of their id (see protect_stream, flink_jobs.metrics, k_anonymity,
#: operators.dp.flink)
_USER_METRICS = (".protect.", ".k_anonymity.", ".dp_", "cache", ".transform_refused")
# a metric id is "<operator>.<groups...>.<name>"; Flink writes "." and " " in the operator's name as "_",
# and joins Python operators fused into one as "a__b" ("dp-budget-gate[aggregated]__sink-aggregated-to-row")
_SOURCE_OUT = re.compile(r"^Source__.*\.numRecordsOut$")
_SINK_OUT = re.compile(r"sink-(.+?)-to-row\.numRecordsOut$")
#: the operators that run on event time, as they appear in a vertex's name
_EVENT_TIME_OPERATOR = re.compile(r"dp-[a-z-]+\[[^\]]*\]|k-anon \S+ stage \d+")
#: what the REST API reports for a watermark that has not arrived (and for the end of input)
NO_WATERMARK, END_OF_INPUT = -(2**63), 2**63 - 1


def job_status(base: str, job_id: str) -> dict:
    """A job's checkpoints, source and view counts, operators' metrics and event-time watermarks.

    Returns
    -------
    dict
        ``{"job": {...}, "checkpoints": {...}, "source": records read by the source operators
        (their ``numRecordsOut``), "views": {channel: records that reached its sink},
        "operators": {operator: {label: value}}, "watermarks": {operator: epoch ms | None},
        "metrics": {metric id: sum over subtasks}}``. A watermark is None until one arrives.
    """
    job = rest_request(base, f"/jobs/{job_id}")
    views: dict[str, int] = {}
    metrics: dict[str, float] = {}
    watermarks: dict[str, int | None] = {}
    source = 0
    for vertex in job.get("vertices", []):
        vid = vertex["id"]
        try:
            available = [m["id"] for m in rest_request(base, f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics")]
        except SubmitError:
            continue  # a finished vertex may have no metrics left
        wanted = [m for m in available if _wanted_metric(m)]
        for chunk in (wanted[i:i + 40] for i in range(0, len(wanted), 40)):
            query = urllib.parse.quote(",".join(chunk), safe=",")
            for item in rest_request(base, f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics?get={query}&agg=sum"):
                value = float(item.get("sum", 0) or 0)
                name = item["id"]
                sink = _SINK_OUT.search(name)
                if sink:
                    channel = _channel(sink.group(1))
                    views[channel] = views.get(channel, 0) + int(value)
                elif _SOURCE_OUT.search(name):
                    source += int(value)
                else:
                    metrics[name] = metrics.get(name, 0) + value
        for operator in _EVENT_TIME_OPERATOR.findall(vertex.get("name", "")):
            watermarks[operator] = _operator_watermark(base, job_id, vid, operator, available)
    try:
        checkpoints = rest_request(base, f"/jobs/{job_id}/checkpoints")
    except SubmitError:
        checkpoints = {}
    return {"job": {k: job.get(k) for k in ("jid", "name", "state", "duration")}, "checkpoints": checkpoints,
            "source": source, "views": views, "operators": operator_metrics(metrics), "watermarks": watermarks,
            "metrics": metrics}


def _wanted_metric(name: str) -> bool:
    if _SINK_OUT.search(name) or _SOURCE_OUT.search(name):
        return True
    return any(part in name for part in _USER_METRICS)


def _channel(mangled: str) -> str:
    # "anonymized_suppressed" in a metric id is the channel "anonymized.suppressed"
    return re.sub(r"_suppressed$", ".suppressed", mangled)


def watermark_metric(operator: str, available: list[str]) -> str | None:
    """The id of ``operator``'s input watermark metric among a vertex's ``available`` metric ids.

    Flink writes an operator's name with ``_`` for spaces, and PyFlink joins the names of Python
    operators it fuses with ``__`` (``dp-budget-gate[v]__sink-v-to-row``, and a keyed operator's
    ``___stream_key_by_map_operator``): the name ends at ``.`` or ``__``, so ``k-anon a stage 1`` is
    not ``k-anon a stage 10`` nor ``k-anon a_stage_1 stage 0``.
    """
    name = operator.replace(" ", "_")
    for prefix in (name + ".", name + "__"):
        for metric in available:
            if metric.startswith(prefix) and metric.endswith(".currentInputWatermark"):
                return metric
    return None


def _operator_watermark(base: str, job_id: str, vertex_id: str, operator: str, available: list[str]) -> int | None:
    """An operator's current input watermark, the least over its subtasks; None when none has arrived.

    Read from the operator's own metric, not the vertex's: at one subtask the stateful operators
    chain onto the protect operator, and a chain's vertex shows its first operator's watermark.
    """
    metric = watermark_metric(operator, available)
    if metric is None:
        return None
    query = urllib.parse.quote(metric, safe="")
    try:
        items = rest_request(base, f"/jobs/{job_id}/vertices/{vertex_id}/subtasks/metrics?get={query}&agg=min")
        value = int(float(items[0]["min"]))
    except (SubmitError, KeyError, IndexError, ValueError):
        return None
    # a subtask without a watermark holds back the operator: its least is the operator's event time
    return None if value <= NO_WATERMARK else value


def operator_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Group metric ids by the operator they describe, each under a short label a person can read.

    ``k-anon_anonymized_stage_0.k_anonymity.view.anonymized.stage.0.level.3.released`` becomes
    ``{"k-anon anonymized stage 0": {"released (level 3)": ...}}``;
    ``dp-bound-contributions[aggregated]___stream_key_by_map_operator.dp_late_records_dropped`` becomes
    ``{"dp-bound-contributions[aggregated]": {"late records dropped": ...}}``. A k-anonymity stage's
    ``ncp_micro`` and ``ncp_records`` become one ``mean NCP``; ``dp_epsilon_spent_micro`` becomes
    ``epsilon spent``.
    """
    out: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        operator, label = _describe(name)
        out.setdefault(operator, {})
        out[operator][label] = out[operator].get(label, 0) + value
    for rows in out.values():
        if "ncp micro" in rows:
            micro, records = rows.pop("ncp micro"), rows.pop("ncp records", 0)
            if records:
                rows["mean NCP"] = micro / 1e6 / records
    return out


def _describe(metric_id: str) -> tuple[str, str]:
    """(operator, label) of one metric id."""
    op, _, rest = metric_id.partition(".")
    parts = rest.split(".")
    if parts[0] == "k_anonymity":
        # k_anonymity.view.<view>.stage.<n>[.level.<level>].<metric>
        pairs = _groups(parts[1:-1])
        operator = f"k-anon {pairs.pop('view', '?')} stage {pairs.pop('stage', '?')}"
        return operator, _label(parts[-1], pairs)
    if parts[0] == "protect":
        return "protect", _label(parts[-1], _groups(parts[1:-1]))
    if parts[-1].startswith("dp_"):
        match = re.search(r"dp-[a-z-]+\[[^\]]*\]", op)
        operator = match.group(0) if match else op
        if parts[-1] == "dp_epsilon_spent_micro":
            return operator, "epsilon spent"  # value divided by 1e6 when shown
        return operator, _label(parts[-1].removeprefix("dp_"), {})
    # any other operator: its name as Flink wrote it, without the fused Python operators after it
    return op.split("__")[0].replace("_", " "), _label(parts[-1], _groups(parts[:-1]))


def _groups(path: list[str]) -> dict[str, str]:
    # add_group(key, value) pairs: ["view", "masked", "field", "card"] -> {"view": "masked", "field": "card"}
    return dict(zip(path[::2], path[1::2], strict=False))


def _label(metric: str, groups: dict[str, str]) -> str:
    text = metric.replace("_", " ")
    if text.endswith(" ms"):
        text = text[:-3] + " (ms)"
    return text + (" (" + ", ".join(f"{k} {v}" for k, v in groups.items()) + ")" if groups else "")


def iso_time(ms: int | None) -> str:
    """An event time as ISO 8601 UTC, ``none yet`` for no watermark, ``end of input`` for the last one."""
    if ms is None or ms <= NO_WATERMARK:
        return "none yet"
    if ms >= END_OF_INPUT:
        return "end of input"
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_status(status: dict) -> str:
    """A text table of :func:`job_status`: one section per operator, full labels, watermarks as times."""
    job = status["job"]
    lines = [f"{job['name']}  {job['jid']}  {job['state']}  {int(job.get('duration') or 0) / 1000:.0f}s"]
    counts = status["checkpoints"].get("counts", {})
    latest = (status["checkpoints"].get("latest") or {}).get("completed") or {}
    restored = (status["checkpoints"].get("latest") or {}).get("restored") or {}
    if counts:
        lines.append(f"  checkpoints: {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed"
                     + (f", latest #{latest['id']}" if latest else "")
                     + (f", restored from #{restored['id']}" if restored else ""))
    rows: list[tuple[str, str]] = [("source records read", f"{status['source']:,}")]
    rows += [(f"view {channel}", f"{count:,}") for channel, count in sorted(status["views"].items())]
    sections: list[tuple[str, list[tuple[str, str]]]] = [("", rows)]
    watermarks = status.get("watermarks", {})
    operators = status.get("operators", {})
    for operator in sorted(set(operators) | set(watermarks), key=_operator_order):
        section = [("watermark", iso_time(watermarks[operator]))] if operator in watermarks else []
        for label, value in sorted(operators.get(operator, {}).items(), key=lambda item: _label_order(item[0])):
            section.append((label, _number(label, value)))
        sections.append((operator, section))
    width = max(len(label) for _, section in sections for label, _ in section) + 2
    for title, section in sections:
        indent = "  "
        if title:
            lines.append(f"  {title}")
            indent = "    "
        lines += [f"{indent}{label:<{width}} {value:>24}" for label, value in section]
    return "\n".join(lines)


def _operator_order(name: str) -> tuple:
    # the job's order: protect, then each view's operators in the order records pass them
    kind = 0 if name == "protect" else 1 if name.startswith("k-anon") else 2 if name.startswith("dp-") else 3
    stage = re.search(r"stage (\d+)$", name)
    dp_step = next((i for i, step in enumerate(("bound", "noisy", "budget")) if name.startswith(f"dp-{step}")), 0)
    return kind, re.sub(r" stage \d+$|^dp-[a-z-]+", "", name), int(stage.group(1)) if stage else dp_step


def _label_order(label: str) -> tuple:
    level = re.search(r"\(level (\d+)\)", label)
    return (re.sub(r" \(level \d+\)", "", label), int(level.group(1)) if level else -1)


def _number(label: str, value: float) -> str:
    if label == "epsilon spent":
        return f"{value / 1e6:,.3f}"
    if label == "mean NCP":
        return f"{value:.3f}"
    return f"{value:,.0f}"


# --- CLI ------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``savepoint``, ``resume`` and ``status``; each sets ``func(args) -> int``."""
    submit = subparsers.add_parser(
        "submit", help="submit protect_stream to a Flink cluster with `flink run`",
        description="Run `flink run -py flink_jobs/kafka_job.py` of the pip-installed Flink against a cluster "
        "(the local one of `make cluster-up` by default). The project's packages go with the job (-pyfs), and so "
        "does the Kafka connector (pipeline.jars). The job runs detached; its id is printed.")
    _job_args(submit)
    submit.add_argument("--metrics-port", metavar="PORT[-PORT]",
                        help="check that the cluster serves Prometheus metrics on these ports (a cluster's reporter "
                        "starts with it: make cluster-up METRICS_PORT=9249-9259) and say where to scrape")
    submit.set_defaults(func=_cmd_submit)

    resume = subparsers.add_parser(
        "resume", help="submit protect_stream again, restoring a savepoint",
        description="Like submit, restoring the state of SAVEPOINT (flink run -s). Every operator has a stable "
        "uid, so a job whose stateless parameters changed still restores.")
    resume.add_argument("savepoint_path", metavar="SAVEPOINT", help="savepoint folder (as printed by savepoint)")
    resume.add_argument("--allow-non-restored-state", action="store_true",
                        help="skip state of operators the new job no longer has")
    _job_args(resume)
    resume.set_defaults(func=_cmd_resume)

    savepoint = subparsers.add_parser(
        "savepoint", help="stop a job with a savepoint",
        description="Stop a running job with a savepoint (stop-with-savepoint through the REST API): sources stop, "
        "the last transactions commit, and the savepoint path is printed for resume.")
    savepoint.add_argument("job_id", metavar="JOB_ID", nargs="?",
                           help="the job (default: the only running one)")
    savepoint.add_argument("--target", help="savepoint folder (default: the cluster's savepoint dir)")
    savepoint.add_argument("--drain", action="store_true", help="fire all windows first (the job is not resumed)")
    savepoint.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    _cluster_args(savepoint)
    savepoint.set_defaults(func=_cmd_savepoint)

    status = subparsers.add_parser(
        "status", help="jobs on the cluster, records per view, dead letters, checkpoints",
        description="Read the cluster's REST API and print each job with its checkpoints, the records that reached "
        "each view's sink, and the job's own metrics (dead letters, suppressed, epsilon spent, ...).")
    status.add_argument("job_id", metavar="JOB_ID", nargs="?", help="one job (default: every running job)")
    status.add_argument("--all", action="store_true", help="also finished, cancelled and failed jobs")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _cluster_args(status)
    status.set_defaults(func=_cmd_status)


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobmanager", metavar="HOST:PORT",
                   help="REST address of the cluster (default: the one started from --state-dir, else 127.0.0.1:8081)")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                   help="state folder of a local cluster (default: .local/flink)")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("--bootstrap-servers", required=True, help="Kafka HOST:PORT, as the cluster's workers see it")
    p.add_argument("--keyring", default=None,
                   help="keyring reference env:NAME or file:PATH, readable on every worker (default: $ANON_KEYRING)")
    p.add_argument("--parallelism", type=int, default=1, help="job parallelism (default 1)")
    p.add_argument("--execution-mode", choices=("process", "thread"), default="process",
                   help="PyFlink execution mode (default process: on a session cluster a thread-mode TaskManager "
                   "keeps one interpreter across jobs; use thread for one job per TaskManager, as in application mode)")
    p.add_argument("--start", choices=("earliest", "latest", "group-offsets"), default="earliest",
                   help="where a fresh start reads the source topic from (default earliest)")
    p.add_argument("--delivery", choices=("exactly-once", "at-least-once"), help="override the policy's guarantee")
    p.add_argument("--bounded", action="store_true", help="stop at the offsets that are the latest at start")
    p.add_argument("--no-create-topics", action="store_true", help="refuse to start when an output topic is missing")
    p.add_argument("--schema-registry", metavar="URL",
                   help="a Confluent-compatible schema registry for an avro or debezium-avro source, as the client "
                   "and every worker reach it (e.g. http://127.0.0.1:8085/apis/ccompat/v6); overrides source.schema")
    p.add_argument("--stateful-slots", action="store_true",
                   help="run the k-anonymity and DP operators in a slot sharing group of their own: each subtask "
                   "takes two slots, and on TaskManagers of one slot each, in thread mode, the stateful views get "
                   "an interpreter of their own")
    p.add_argument("--pyarch", metavar="VENV.zip",
                   help="a packed venv to ship with the job, for a cluster without the project's dependencies")
    p.add_argument("--pyexec", help="the workers' python (default: this venv's, or venv/bin/python with --pyarch)")
    p.add_argument("-D", dest="config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Flink setting for the job (repeatable)")
    p.add_argument("--attached", action="store_true", help="wait for the job to end (default: detached)")
    p.add_argument("--startup-timeout", type=float, default=90.0, metavar="SECONDS",
                   help="a detached submit waits until every operator has opened; past SECONDS it cancels the job "
                   "and fails, naming the operators that did not open (default 90)")
    p.add_argument("--dry-run", action="store_true", help="print the flink run command and do nothing")
    _cluster_args(p)


def _options(args: argparse.Namespace, savepoint: str | None = None) -> SubmitOptions:
    keyring = args.keyring or (f"env:{KEYRING_ENV}" if os.environ.get(KEYRING_ENV) else None)
    if not keyring:
        raise CliError(f"no keyring: pass --keyring file:PATH (readable on every worker) or set ${KEYRING_ENV}")
    config = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"-D needs KEY=VALUE, not {item!r}")
        config[key] = value
    return SubmitOptions(
        policy=args.policy, bootstrap=args.bootstrap_servers, keyring=keyring, parallelism=args.parallelism,
        execution_mode=args.execution_mode, start=args.start, delivery=args.delivery, bounded=args.bounded,
        no_create_topics=args.no_create_topics,
        savepoint=savepoint, allow_non_restored_state=getattr(args, "allow_non_restored_state", False),
        detached=not args.attached, jobmanager=args.jobmanager, state_dir=args.state_dir, pyarch=args.pyarch,
        pyexec=args.pyexec, config=config, schema_registry=getattr(args, "schema_registry", None),
        stateful_slots=getattr(args, "stateful_slots", False))


def _run_submit(options: SubmitOptions, dry_run: bool, startup_timeout_s: float = 90.0) -> int:
    if dry_run:
        print(" ".join(submit_command(options)))
        return 0
    try:
        job_id = submit_job(options)
    except (SubmitError, subprocess.TimeoutExpired) as exc:
        raise CliError(str(exc)) from None
    base = _rest_base(options.jobmanager, options.state_dir)
    print(f"submitted job {job_id} to {base}" + (f" from savepoint {options.savepoint}" if options.savepoint else ""))
    if options.detached:
        watch = StartupWatch(base, job_id, timeout_s=startup_timeout_s)
        watch.run()  # in this thread: the command's answer is whether the job started
        if watch.failure is not None:
            raise CliError(watch.failure)
        if watch.started.is_set():
            print(f"job {job_id} is running: every operator has opened")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    if getattr(args, "metrics_port", None) and not args.dry_run:
        check_cluster_metrics(_rest_base(args.jobmanager, args.state_dir), args.metrics_port)
    return _run_submit(_options(args), args.dry_run, args.startup_timeout)


def check_cluster_metrics(base: str, ports: str) -> str:
    """The cluster's Prometheus port range, when it overlaps ``ports``; a CliError saying what to do otherwise.

    Reporters are made when a JobManager or TaskManager starts, never per job: a job submitted to
    a running cluster cannot turn one on.
    """
    from flink_jobs.metrics import MetricsConfigError, parse_ports

    try:
        first, last = parse_ports(ports)
    except MetricsConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        config = {item["key"]: item["value"] for item in rest_request(base, "/jobmanager/config")}
    except (SubmitError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"cannot read the cluster's configuration from {base}: {exc}") from None
    have = config.get("metrics.reporter.prom.port")
    if not have:
        raise CliError(f"the cluster at {base} has no Prometheus reporter, and a job cannot add one (reporters "
                       "start with the cluster's processes); restart it with `make cluster-up METRICS_PORT="
                       f"{ports}` or `python -m flink_jobs.devtools.cluster up --metrics-port {ports}`")
    low, high = parse_ports(have)
    if high < first or low > last:
        raise CliError(f"the cluster at {base} serves Prometheus on ports {have}, not {ports}")
    print(f"metrics: the cluster serves Prometheus on ports {have} (http://127.0.0.1:PORT/metrics, one port "
          "per JobManager and TaskManager)")
    return have


def _cmd_resume(args: argparse.Namespace) -> int:
    return _run_submit(_options(args, savepoint=args.savepoint_path), args.dry_run, args.startup_timeout)


def _single_running(base: str) -> str:
    running = [j for j in list_jobs(base) if j["state"] == "RUNNING"]
    if len(running) != 1:
        raise CliError(f"{len(running)} jobs are running at {base}; name one (see flink-anonymizer status)")
    return running[0]["jid"]


def _cmd_savepoint(args: argparse.Namespace) -> int:
    base = _rest_base(args.jobmanager, args.state_dir)
    try:
        job_id = args.job_id or _single_running(base)
        path = stop_with_savepoint(base, job_id, args.target, drain=args.drain, timeout=args.timeout)
    except SubmitError as exc:
        raise CliError(str(exc)) from None
    print(path)
    print(f"job {job_id} stopped; resume it with: flink-anonymizer resume {path} --policy ... "
          "--bootstrap-servers ... --keyring ...", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    base = _rest_base(args.jobmanager, args.state_dir)
    try:
        if args.job_id:
            ids = [args.job_id]
        else:
            ids = [j["jid"] for j in list_jobs(base) if args.all or j["state"] in ("RUNNING", "RESTARTING", "CREATED")]
        statuses = [job_status(base, jid) for jid in ids]
    except SubmitError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(statuses, indent=2))
    elif not statuses:
        print(f"no {'' if args.all else 'running '}jobs at {base}")
    else:
        print("\n".join(format_status(s) for s in statuses))
    return 0
