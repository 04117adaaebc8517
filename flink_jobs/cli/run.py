"""``flink-anonymizer run``: the job on JSON Lines files in a local MiniCluster, or between Kafka topics.

A file run shows its progress on stderr and ends with a summary whose counts must balance:
every record read reaches each view (or its suppressed channel) or the dead letters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flink_jobs.avro_format import binary_source
from flink_jobs.cli.errors import CliError
from flink_jobs.cli.startup_watch import DEFAULT_STARTUP_TIMEOUT_S, StartupWatch, local_rest_config, wait_watched
from flink_jobs.keyring_ref import DEV_KEYRING, KEYRING_ENV, resolve_keyring
from flink_jobs.policy import load_policy
from flink_jobs.protect import BLANK


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the protect_stream job", description="Run the protect_stream job. "
                                "With --input/--output it reads JSON Lines and writes DIR/<view>/ and DIR/dlq/ in "
                                "a local MiniCluster; with --bootstrap-servers it reads and writes Kafka topics.")
    run.add_argument("--policy", required=True, help="policy YAML file")
    run.add_argument("--input", help="JSON Lines file or folder to read (bounded run)")
    run.add_argument("--output", help="folder for the views and the dead letters (with --input)")
    run.add_argument("--bootstrap-servers", help="Kafka HOST:PORT (instead of --input/--output)")
    run.add_argument("--start", choices=("earliest", "latest", "group-offsets"), default="earliest",
                     help="where to start reading the source topic (Kafka only)")
    run.add_argument("--delivery", choices=("exactly-once", "at-least-once"),
                     help="override the policy's delivery guarantee (Kafka only)")
    run.add_argument("--no-create-topics", action="store_true", help="refuse to start when an output topic is missing")
    run.add_argument("--bounded", action="store_true",
                     help="with --input: static masking, in Flink's BATCH execution mode (same outputs as the "
                     "streaming run, no checkpoints); with --bootstrap-servers: stop at the offsets that are "
                     "the latest when the job starts")
    run.add_argument("--keyring", default=None, help=f"keyring reference env:NAME or file:PATH (default: ${KEYRING_ENV})")
    run.add_argument("--dev-keyring", action="store_true",
                     help=f"create or use a development keyring at {DEV_KEYRING} (demo only, never production)")
    run.add_argument("--parallelism", type=int, default=1, help="job parallelism (default 1)")
    run.add_argument("--execution-mode", choices=("thread", "process"), default="thread",
                     help="PyFlink Python execution mode (default thread)")
    run.add_argument("--bundle-size", type=int, metavar="N",
                     help="records the job hands a keyed Python stage (k-anonymity, DP) in one call, at most: more "
                     "is faster, and a record may wait up to the bundle time (100 ms) for its bundle; 1 hands "
                     "them one at a time (default 1000)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT_S, metavar="SECONDS",
                     help="cancel the job and fail when an operator has not opened (or, on a bounded input, no "
                     f"record has moved) within SECONDS (default {DEFAULT_STARTUP_TIMEOUT_S:g})")
    run.add_argument("--schema", metavar="FILE.avsc",
                     help="the Avro schema of an avro source (source.format: avro); overrides source.schema")
    run.add_argument("--schema-registry", metavar="URL",
                     help="a Confluent-compatible schema registry (e.g. http://127.0.0.1:8085/apis/ccompat/v6 "
                     "from make registry-up): the source's schema is the latest under <source topic>-value, and "
                     "each avro view registers its own under <view topic>-value; overrides source.schema")
    run.add_argument("--metrics-port", metavar="PORT[-PORT]",
                     help="serve Flink's metrics to Prometheus at http://HOST:PORT/metrics (a port, or a range "
                     "to take the first free one from)")
    run.set_defaults(func=cmd_run)


def bundle_config(bundle_size: int | None) -> dict[str, str]:
    """The Flink setting of ``--bundle-size``, when given."""
    return {} if bundle_size is None else {"python.fn-execution.bundle.size": str(bundle_size)}


def cmd_run(args: argparse.Namespace) -> int:
    schema, registry = getattr(args, "schema", None), getattr(args, "schema_registry", None)
    if schema and registry:
        raise CliError("--schema FILE.avsc and --schema-registry URL are alternatives: pass one")
    keyring, reference = resolve_keyring(args.keyring, dev=args.dev_keyring)
    args.metrics_config = metrics_config(getattr(args, "metrics_port", None))
    if schema or registry:
        from flink_jobs.cli.avro import load_policy_with_schema

        policy = load_policy_with_schema(args.policy, schema, keyring=keyring, registry=registry)
    else:
        policy = load_policy(args.policy, keyring=keyring)
    if not args.bootstrap_servers and binary_source(policy.document):
        raise CliError("an avro or debezium-avro source is read from Kafka (--bootstrap-servers): "
                       "JSON Lines files hold no Avro")
    if args.bundle_size is not None and args.bundle_size < 1:
        raise CliError(f"--bundle-size must be at least 1, not {args.bundle_size}")
    if args.bootstrap_servers:
        return run_kafka(args, policy, reference)
    if not args.input or not args.output:
        raise CliError("pass --input FILE and --output DIR for a file run, or --bootstrap-servers HOST:PORT for Kafka")
    return run_files(policy, reference, Path(args.input), Path(args.output), parallelism=args.parallelism,
                     execution_mode=args.execution_mode, quiet=args.quiet, batch=args.bounded,
                     startup_timeout_s=args.startup_timeout, metrics_config=args.metrics_config,
                     bundle_size=args.bundle_size)


def run_files(policy: Any, keyring_ref: str, input_path: Path, output: Path, *, parallelism: int = 1,
              execution_mode: str = "thread", quiet: bool = False, batch: bool = False,
              startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S, metrics_config: dict | None = None,
              bundle_size: int | None = None) -> int:
    """Run the job on a JSON Lines file or folder; ``batch`` runs it in Flink's BATCH mode (static masking)."""
    from flink_jobs.protect_stream import FileInput, FileOutput, JobOptions, build, make_env

    if not input_path.exists():
        raise CliError(f"input {input_path} does not exist")
    total = count_records(input_path)
    channels = _channels(policy)
    output.mkdir(parents=True, exist_ok=True)
    for channel in [*channels, "_stats"]:
        # each run replaces the previous one's results, so the counts below are this run's
        shutil.rmtree(output / channel, ignore_errors=True)
    rest_base, rest_config = local_rest_config()
    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism, execution_mode=execution_mode,
                         stats_dir=str((output / "_stats").resolve()), batch=batch,
                         extra_config={**rest_config, **(metrics_config or {}), **bundle_config(bundle_size)})
    env = make_env(options)
    build(env, policy, FileInput(str(input_path)), FileOutput(str(output)), options)
    started = time.monotonic()
    done = threading.Event()
    progress = None
    if not quiet:
        progress = threading.Thread(target=_show_progress, args=(output / "_stats", total, done, started), daemon=True)
        progress.start()
    try:
        run_watched(env, f"protect_stream[{policy.id}]", rest_base, startup_timeout_s, expect_records=total > 0)
    finally:
        done.set()
        if progress is not None:
            progress.join(timeout=5)  # its last line, with the final count, before the summary
    elapsed = time.monotonic() - started
    summary = summarize(output, channels, total, elapsed, policy, mode="batch" if batch else "streaming")
    print(summary["text"])
    return 0 if summary["balanced"] else 1


def metrics_config(ports: str | None) -> dict[str, str]:
    """Flink settings for ``--metrics-port`` (none without it); says on stderr where to scrape."""
    if not ports:
        return {}
    from flink_jobs.metrics import MetricsConfigError, ensure_prometheus_plugin, prometheus_config

    try:
        config = prometheus_config(ports)
        ensure_prometheus_plugin()
    except MetricsConfigError as exc:
        raise CliError(str(exc)) from None
    first = config["metrics.reporter.prom.port"].split("-")[0]
    print(f"metrics: Prometheus reporter on port {config['metrics.reporter.prom.port']} "
          f"(http://127.0.0.1:{first}/metrics when that port is free; it listens on every interface)",
          file=sys.stderr)
    return config


def _channels(policy: Any) -> list[str]:
    channels = ["dlq"]
    for name, view in policy.views.items():
        channels.append(name)
        if view.k_anonymity or view.shuffle:
            channels.append(f"{name}.suppressed")
    return channels


def count_records(path: Path) -> int:
    r"""Non-blank lines in a file or in every file of a folder: what the protect operator counts in.

    Lines split as Flink's text line reader splits them (at ``\n``, ``\r\n`` or ``\r``, as
    ``line_count`` does); a blank line is no record to the job either.
    """
    from flink_jobs.protect_stream import input_files

    blank, total = BLANK.encode(), 0
    for file in input_files(path):
        pending = b""
        with open(file, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                # a \r\n cut between two chunks gives an extra empty line here: blank, so never counted
                lines = _LINE_BREAK.split(pending + chunk)
                pending = lines.pop()
                total += sum(1 for line in lines if line.strip(blank))
        total += 1 if pending.strip(blank) else 0
    return total


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def read_channel(directory: Path) -> list[dict]:
    """Every record of a channel folder written by a file run (finished part files only)."""
    records = []
    for file in sorted(directory.rglob("*.jsonl")) if directory.exists() else []:
        if file.name.startswith("."):
            continue  # in-progress part files are hidden
        with open(file) as fh:
            records.extend(json.loads(line) for line in fh if line.strip())
    return records


def _count_lines(directory: Path) -> int:
    return sum(
        sum(1 for _ in open(f, "rb")) for f in directory.rglob("*.jsonl") if not f.name.startswith(".")
    ) if directory.exists() else 0


def _progress_line(stats_dir: Path, total: int, started: float) -> str:
    """``[#####     ]  50.0% 5,020/10,040 records    3.2s``: records read so far, from the operators' stats."""
    seen = 0
    for file in stats_dir.glob("subtask-*.json"):
        try:
            seen += json.loads(file.read_text())["records_in"]
        except (OSError, ValueError, KeyError):
            pass
    fraction = min(1.0, seen / total) if total else 1.0
    bar = "#" * int(fraction * 30)
    return f"[{bar:<30}] {fraction:5.1%} {seen:,}/{total:,} records  {time.monotonic() - started:5.1f}s"


def _show_progress(stats_dir: Path, total: int, done: threading.Event, started: float) -> None:
    """A progress line on stderr: redrawn in place on a terminal, every 5 s otherwise; a last one at the end."""
    interactive = sys.stderr.isatty()
    last_print = 0.0
    while not done.wait(0.5):
        line = _progress_line(stats_dir, total, started)
        if interactive:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last_print > 5:
            last_print = time.monotonic()
            print(line, file=sys.stderr, flush=True)
    # the job has ended: its operators' final counts are written
    line = _progress_line(stats_dir, total, started)
    print(("\r" + line) if interactive else line, file=sys.stderr, flush=True)


def summarize(output: Path, channels: list[str], total: int, elapsed: float, policy: Any,
              mode: str = "streaming") -> dict:
    counts = {channel: _count_lines(output / channel) for channel in channels}
    dropped: dict[str, int] = {}
    routed: dict[str, int] = {}  # records the protect operator handed to each view
    for file in (output / "_stats").glob("subtask-*.json"):
        stats = json.loads(file.read_text())
        for name, count in stats.get("dropped_fields", {}).items():
            dropped[name] = dropped.get(name, 0) + count
        for name, count in stats.get("routed", {}).items():
            routed[name] = routed.get(name, 0) + count
    label = "protect_stream" if mode == "streaming" else f"protect_stream ({mode} mode)"
    lines = [f"{label} finished in {elapsed:.1f}s: {total:,} records in", f"results in {output}/"]
    balanced = True
    for name, view in policy.views.items():
        if view.differential_privacy:
            # a DP view publishes aggregates: its balance is the records it took in
            ok = routed.get(name, 0) + counts["dlq"] == total
            balanced &= ok
            lines.append(f"  {name:<12} {counts[name]:>8,} DP releases from {routed.get(name, 0):,} records  "
                         f"-> {output / name}/  [{'balanced' if ok else 'NOT BALANCED'}: view input + dead letters = in]")
            continue
        out = counts[name] + counts.get(f"{name}.suppressed", 0)
        ok = out + counts["dlq"] == total
        balanced &= ok
        extra = f" (+{counts[f'{name}.suppressed']:,} suppressed)" if f"{name}.suppressed" in counts else ""
        lines.append(f"  {name:<12} {counts[name]:>8,} records{extra}  -> {output / name}/  "
                     f"[{'balanced' if ok else 'NOT BALANCED'}: view + dead letters = in]")
    lines.append(f"  {'dlq':<12} {counts['dlq']:>8,} dead letters -> {output / 'dlq'}/ (as sensitive as the input)")
    if dropped:
        lines.append("  fields dropped (not in the policy): " + ", ".join(
            f"{name} x{count:,}" for name, count in sorted(dropped.items())))
    return {"text": "\n".join(lines), "balanced": balanced, "counts": counts, "dropped": dropped}


def run_watched(env: Any, job_name: str, rest_base: str, startup_timeout_s: float, *, expect_records: bool) -> None:
    """Execute a local job; cancel it and fail with a clear message if it does not start in time."""
    job = env.execute_async(job_name)
    watch = StartupWatch(rest_base, str(job.get_job_id()), timeout_s=startup_timeout_s, expect_records=expect_records)
    watch.start()
    try:
        wait_watched(job, watch)
    except RuntimeError as exc:
        if watch.failure is None:
            raise
        raise CliError(watch.failure) from exc


def run_kafka(args: argparse.Namespace, policy: Any, keyring_ref: str) -> int:
    """``run --bootstrap-servers``: runs until cancelled, or to the end with --bounded."""
    from flink_jobs.kafka_job import TOPICS_HINT, prepare_job
    from flink_jobs.kafka_tools import KafkaToolsError, TopicsMissingError

    # under `flink run` the cluster runs the job and `submit` watches its start; locally, this does
    local = "PYFLINK_GATEWAY_PORT" not in os.environ
    rest_base, rest_config = local_rest_config() if local else ("", {})
    try:
        env = prepare_job(policy, keyring_ref, bootstrap=args.bootstrap_servers, delivery=args.delivery,
                          start=args.start, bounded=getattr(args, "bounded", False),
                          create_topics=not args.no_create_topics,
                          config={**rest_config, **getattr(args, "metrics_config", {}),
                                  **bundle_config(getattr(args, "bundle_size", None))},
                          parallelism=args.parallelism, execution_mode=args.execution_mode)
    except TopicsMissingError as exc:
        raise CliError(f"{exc}; {TOPICS_HINT}") from None
    except KafkaToolsError as exc:
        raise CliError(str(exc)) from None
    if local:
        run_watched(env, f"protect_stream[{policy.id}]", rest_base,
                    getattr(args, "startup_timeout", DEFAULT_STARTUP_TIMEOUT_S), expect_records=False)
    else:
        env.execute(f"protect_stream[{policy.id}]")
    return 0
