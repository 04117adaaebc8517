"""The masked view through a real Kafka broker: sustained throughput, and latency at fixed rates.

A pass-through job (raw value to the output topic, through the same Kafka source and sink
adapters) and the masked view of ``conf/policies/customer-events.yaml`` run side by side in one
run, at parallelism 1 in thread mode, at-least-once, on a broker started here on loopback
(``flink_jobs.devtools.kafka_broker``). Every output topic is created with
``message.timestamp.type=LogAppendTime``, so each output record carries the broker's clock at
the moment the sink's write reached the log.

1. Sustained throughput: ``--n`` events are produced to the raw topic *before* the job starts;
   a bounded job then reads them to the end. The whole output is read back in batches, and

       sustained = records stamped after the first output ms / (last - first output timestamp)

   so job start (JVM, interpreter, operator open, first fetch) is left out. The rate with job
   start (records / wall time from submit to job end) and the time from submit to the first
   output record are printed beside it. The masked job's output is its view topic plus its
   dead-letter topic: every input record leaves through one of them.
2. Latency at fixed rates: an unbounded job is started on an empty topic; a few warm-up records
   show it is processing; then a paced producer in this process writes at each rate of
   ``--rates`` for ``--seconds``, waiting for the output to drain before the next rate. Latency
   is the output record's LogAppendTime (broker clock) minus the input record's CreateTime
   (this script's librdkafka producer, wall clock at ``produce()``); both clocks are this
   machine's. Records are matched by (customerId, timestamp), which the masked view keeps;
   the few pairs that occur twice in the input are left out. Bundles of 100 records or 1 ms.

Both jobs run at-least-once: exactly-once adds up to one checkpoint interval, because the views
are committed at checkpoints. The load average is printed before and after, since other builds
may share the machine. ``--n 0`` skips part 1, ``--seconds 0`` part 2.

    .venv/bin/python bench/kafka_e2e.py [--n 1000000] [--rates 5000 10000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from pyflink.common import Types  # noqa: E402
from pyflink.datastream import MapFunction  # noqa: E402
from pyflink.table import StreamTableEnvironment  # noqa: E402

from conf.samples.generate_events import iter_events  # noqa: E402
from flink_jobs.devtools.kafka_broker import start_broker  # noqa: E402
from flink_jobs.kafka_io import add_connector_jars, kafka_sink, kafka_source  # noqa: E402
from flink_jobs.kafka_job import build_kafka_job, prepare_topics  # noqa: E402
from flink_jobs.kafka_tools import ensure_topics  # noqa: E402
from flink_jobs.policy import compile_policy, load_policy  # noqa: E402
from flink_jobs.protect_stream import JobOptions, make_env  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402

#: chosen for latency: a bundle is flushed after 1 ms or 100 records, whichever comes first
LATENCY_CONFIG = {"python.fn-execution.bundle.time": "1", "python.fn-execution.bundle.size": "100"}
#: every output topic: the broker stamps each record with its own clock when it appends it
OUTPUT_TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}
CLOCKS = {TIMESTAMP_CREATE_TIME: "CreateTime", TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}
JOBS = (("pass-through", False), ("masked view", True))
WARMUP = 200


class BenchError(RuntimeError):
    """A job failed, or did not start or end within its bound."""


class PassThrough(MapFunction):
    def map(self, value: tuple) -> tuple:
        _, key, raw, _ = value
        return (key, "{}", raw)


def masked_policy(topic: str):
    document = json.loads(json.dumps(load_policy(ROOT / "conf/policies/customer-events.yaml").document))
    document["source"]["topic"] = topic
    document["views"] = {"masked": document["views"]["masked"]}
    document["views"]["masked"]["sink"]["topic"] = f"{topic}.masked"
    return compile_policy(document, file="bench")


def passthrough_env(bootstrap: str, topic: str, out: str, keyring_ref: str, bounded: bool, config: dict):
    options = JobOptions(keyring_ref=keyring_ref, checkpoint_interval_ms=2000, extra_config=config)
    env = make_env(options)
    add_connector_jars(env)
    t_env = StreamTableEnvironment.create(env)
    raw = kafka_source(env, t_env, bootstrap=bootstrap, topic=topic, group_id=f"bench-{out}",
                       bounded=bounded, read_committed=False)
    mapped = raw.map(PassThrough(), output_type=Types.TUPLE([Types.STRING()] * 3))
    statements = t_env.create_statement_set()
    kafka_sink(t_env, mapped, bootstrap=bootstrap, topic=out, delivery="at-least-once",
               transactional_id_prefix=f"bench-{out}", statement_set=statements)
    statements.attach_as_datastream()
    return env


def job_env(bootstrap: str, keyring_ref: str, topic: str, masked: bool, bounded: bool, config: dict):
    """The job's environment and the topics its output goes to (created here with LogAppendTime)."""
    ensure_topics(bootstrap, [topic])
    if masked:
        policy = masked_policy(topic)
        outputs = [policy.views["masked"].topic, policy.dlq_topic]
        ensure_topics(bootstrap, outputs, config=OUTPUT_TOPIC_CONFIG)
        prepare_topics(bootstrap, policy, create=True)
        env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery="at-least-once", bounded=bounded,
                              group_id=f"bench-{topic}-masked", config=config)
    else:
        outputs = [f"{topic}.pass"]
        ensure_topics(bootstrap, outputs, config=OUTPUT_TOPIC_CONFIG)
        env = passthrough_env(bootstrap, topic, outputs[0], keyring_ref, bounded, config)
    return env, outputs


def produce(bootstrap: str, topic: str, lines, rate: float | None = None) -> tuple[int, float]:
    """Write `lines` (at `rate` records/s when given); returns (records, seconds until the last is acked)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    started, count = time.monotonic(), 0
    for line in lines:
        try:
            key = json.loads(line).get("customerId")
        except (ValueError, AttributeError):
            key = None
        while True:
            try:
                producer.produce(topic, value=line.encode(), key=str(key).encode() if key else None)
                break
            except BufferError:
                producer.poll(0.01)
        count += 1
        if rate and count % 100 == 0:
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.poll(0)
    producer.flush(60)
    return count, time.monotonic() - started


class Topics:
    """Record counts and full reads of topics (one partition each, as the broker makes them here)."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-kafka-e2e",
                                  "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                                  "log_level": 0})

    def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        parts = []
        for topic in topics:
            md = self.consumer.list_topics(topic, timeout=10)
            parts += [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions)]
        return parts

    def count(self, topics: list[str]) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions(topics))

    def scan(self, topics: list[str], on_message, timeout: float = 300) -> None:
        """Call ``on_message(msg)`` for every record from the beginning to the end each topic has now."""
        ends = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                for tp in self._partitions(topics)}
        remaining = {tp for tp, end in ends.items() if end > 0}
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in remaining])
        deadline = time.monotonic() + timeout
        try:
            while remaining:
                if time.monotonic() > deadline:
                    raise BenchError(f"reading {', '.join(topics)} back took more than {timeout:g} s")
                for msg in self.consumer.consume(num_messages=10_000, timeout=1):
                    if msg.error() is not None:
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            continue
                        raise BenchError(f"reading {msg.topic()} failed: {msg.error().str()}")
                    tp = (msg.topic(), msg.partition())
                    if msg.offset() < ends[tp]:
                        on_message(msg)
                    if msg.offset() >= ends[tp] - 1:
                        remaining.discard(tp)
        finally:
            self.consumer.unassign()

    def close(self) -> None:
        self.consumer.close()


def cancel(client) -> None:
    # a job stuck at start may not answer a cancel; never let that hang the bench
    thread = threading.Thread(target=lambda: client.cancel().result(), daemon=True)
    thread.start()
    thread.join(60)


def wait_for(topics: Topics, outputs: list[str], at_least: int, timeout: float, client=None) -> bool:
    """Wait until `outputs` hold `at_least` records; False after `timeout` s (or when the job ended)."""
    deadline = time.monotonic() + timeout
    while topics.count(outputs) < at_least:
        if time.monotonic() > deadline or (client is not None and client.get_job_execution_result().done()):
            return False
        time.sleep(0.5)
    return True


def throughput(bootstrap: str, keyring_ref: str, topics: Topics, topic: str, n: int, masked: bool,
               startup_timeout: float, job_timeout: float) -> dict:
    env, outputs = job_env(bootstrap, keyring_ref, topic, masked, bounded=True, config={})
    submitted = time.time()
    client = env.execute_async(f"bench-throughput-{'masked' if masked else 'pass'}")
    result = client.get_job_execution_result()
    if not wait_for(topics, outputs, 1, startup_timeout, client) and not result.done():
        cancel(client)
        raise BenchError(f"no output record within {startup_timeout:g} s of submit: the job did not start")
    while not result.done():
        if time.time() - submitted > job_timeout:
            cancel(client)
            raise BenchError(f"the bounded job did not end within {job_timeout:g} s")
        time.sleep(0.5)
    try:
        result.result()  # raises if the job failed
    except Exception as exc:  # a Py4J error from the JVM: its first line names the cause
        raise BenchError(f"the job failed: {str(exc).strip().splitlines()[0]}") from None
    wall = time.time() - submitted
    stats = {"count": 0, "first": None, "last": None, "at_first": 0, "clocks": set()}

    def on_message(msg) -> None:
        kind, ts = msg.timestamp()
        stats["clocks"].add(CLOCKS.get(kind, "none"))
        stats["count"] += 1
        if stats["first"] is None or ts < stats["first"]:
            stats["first"], stats["at_first"] = ts, 0
        if ts == stats["first"]:
            stats["at_first"] += 1
        stats["last"] = ts if stats["last"] is None else max(stats["last"], ts)

    topics.scan(outputs, on_message)
    if stats["count"] < 2 or stats["last"] == stats["first"]:
        raise BenchError(f"{stats['count']} records out: too few to measure a rate")
    span = (stats["last"] - stats["first"]) / 1000
    return {
        "records": stats["count"],
        "sustained": (stats["count"] - stats["at_first"]) / span,
        "span": span,
        "with_start": stats["count"] / wall,
        "to_first": stats["first"] / 1000 - submitted,
        "clocks": stats["clocks"],
    }


def latency(bootstrap: str, keyring_ref: str, topics: Topics, topic: str, masked: bool, rates: list[int],
            seconds: float, startup_timeout: float, drain_timeout: float) -> dict:
    env, outputs = job_env(bootstrap, keyring_ref, topic, masked, bounded=False, config=LATENCY_CONFIG)
    sizes = [int(rate * seconds) for rate in rates]
    lines = list(iter_events(WARMUP + sum(sizes), seed=9))
    keys = [(event.get("customerId"), event.get("timestamp")) for event in map(json.loads, lines)]
    seen = Counter(keys)
    phase_of = {}  # (customerId, timestamp) -> index of its rate, for pairs that occur once
    start = WARMUP
    for i, size in enumerate(sizes):
        phase_of.update({key: i for key in keys[start:start + size] if seen[key] == 1})
        start += size
    produce(bootstrap, topic, lines[:WARMUP])
    client = env.execute_async(f"bench-latency-{'masked' if masked else 'pass'}")
    phases = []
    try:
        if not wait_for(topics, outputs, WARMUP, startup_timeout, client):
            raise BenchError(f"the {WARMUP} warm-up records were not all out within {startup_timeout:g} s of submit")
        start, produced = WARMUP, WARMUP
        for rate, size in zip(rates, sizes, strict=True):
            count, elapsed = produce(bootstrap, topic, lines[start:start + size], rate)
            start, produced = start + size, produced + count
            t0 = time.monotonic()
            drained = wait_for(topics, outputs, produced, drain_timeout, client)
            if client.get_job_execution_result().done():
                raise BenchError(f"the job ended while records were offered at {rate:,}/s")
            phases.append({"rate": rate, "offered": count, "achieved": count / elapsed,
                           "drained": drained, "drain": time.monotonic() - t0})
    finally:
        cancel(client)
    created: dict = {}
    clocks = {"in": set(), "out": set()}

    def on_input(msg) -> None:
        try:
            event = json.loads(msg.value())
        except ValueError:
            return
        key = (event.get("customerId"), event.get("timestamp"))
        if key in phase_of:
            kind, created[key] = msg.timestamp()
            clocks["in"].add(CLOCKS.get(kind, "none"))

    waits: list[list[int]] = [[] for _ in rates]

    def on_output(msg) -> None:
        try:
            event = json.loads(msg.value())
        except (TypeError, ValueError):
            return
        key = (event.get("customerId"), event.get("timestamp")) if isinstance(event, dict) else None
        if key in created:
            kind, ts = msg.timestamp()
            clocks["out"].add(CLOCKS.get(kind, "none"))
            waits[phase_of[key]].append(ts - created.pop(key))  # pop: a redelivered record counts once

    topics.scan([topic], on_input)
    topics.scan(outputs[:1], on_output)  # the view (or pass-through) topic; the DLQ stays empty here
    for phase, found in zip(phases, waits, strict=True):
        phase["waits"] = found
    return {"phases": phases, "clocks": clocks}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _row(label: str, values: list, fmt: str, ratio: bool = True) -> str:
    cells = [format(v, fmt) if isinstance(v, (int, float)) else str(v) for v in values]
    out = f"  {label:<34}" + "".join(f"{c:>16}" for c in cells)
    if ratio and all(isinstance(v, (int, float)) and v for v in values):
        out += f"{values[1] / values[0]:>16.2f}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="events for the throughput runs (0: skip them)")
    parser.add_argument("--rates", type=int, nargs="+", default=[5_000, 10_000],
                        help="offered records/s for the latency runs, in this order (default 5000 10000)")
    parser.add_argument("--rate", type=int, help="one offered rate: the same as --rates RATE")
    parser.add_argument("--seconds", type=float, default=20, help="how long to produce at each rate (0: skip)")
    parser.add_argument("--startup-timeout", type=float, default=180,
                        help="seconds from submit to the first output record before a job counts as not started")
    parser.add_argument("--job-timeout", type=float, default=3600, help="seconds a bounded throughput job may take")
    parser.add_argument("--drain-timeout", type=float, default=120,
                        help="seconds to wait, after producing at a rate, for all its records to be out")
    args = parser.parse_args()
    rates = [args.rate] if args.rate else args.rates

    print(f"load average before: {_load()} (1, 5, 15 min; {os.cpu_count()} cores, shared with other builds)")
    work = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    broker = start_broker(work / "kafka")
    topics = Topics(broker.bootstrap)
    names = [name for name, _ in JOBS]
    header = "  " + " " * 34 + "".join(f"{h:>16}" for h in [*names, "masked / pass"])
    try:
        Keyring.generate().save(work / "keyring.json")
        ref = f"file:{work / 'keyring.json'}"
        if args.n > 0:
            raw = "bench-raw-full"
            ensure_topics(broker.bootstrap, [raw])
            produced, secs = produce(broker.bootstrap, raw, iter_events(args.n, seed=5))
            print(f"\nthroughput: {produced:,} events in the raw topic before each job starts (produced in {secs:.1f} s); "
                  "bounded job, p=1, thread mode, at-least-once")
            results = {}
            for name, masked in JOBS:
                try:
                    results[name] = throughput(broker.bootstrap, ref, topics, raw, produced, masked,
                                               args.startup_timeout, args.job_timeout)
                except BenchError as exc:
                    results[name] = None
                    print(f"  {name}: {exc}")
            got = [results[name] or {} for name in names]
            clocks = sorted(set().union(*(r.get("clocks", set()) for r in got)))
            print(f"  sustained = records after the first output ms / (last - first output timestamp); "
                  f"output timestamps: {', '.join(clocks) or '?'} (broker clock)")
            print(header)
            print(_row("sustained records/s", [r.get("sustained", "-") for r in got], ",.0f"))
            print(_row("records/s with job start", [r.get("with_start", "-") for r in got], ",.0f"))
            print(_row("submit to first output, s", [r.get("to_first", "-") for r in got], ".1f", ratio=False))
            print(_row("first to last output, s", [r.get("span", "-") for r in got], ".1f", ratio=False))
            print(_row("records out (view + DLQ)", [r.get("records", "-") for r in got], ",d", ratio=False))
            print(f"load average now: {_load()}")
        if args.seconds > 0:
            print(f"\nlatency: {', '.join(f'{r:,}' for r in rates)} records/s offered, {args.seconds:g} s each, "
                  "unbounded job, p=1, thread mode, at-least-once, bundle 100 records / 1 ms")
            results = {}
            for name, masked in JOBS:
                try:
                    results[name] = latency(broker.bootstrap, ref, topics, f"bench-raw-rate-{'masked' if masked else 'pass'}",
                                            masked, rates, args.seconds, args.startup_timeout, args.drain_timeout)
                except BenchError as exc:
                    results[name] = None
                    print(f"  {name}: {exc}")
            ins = sorted(set().union(*((r or {}).get("clocks", {}).get("in", set()) for r in results.values())))
            outs = sorted(set().union(*((r or {}).get("clocks", {}).get("out", set()) for r in results.values())))
            print(f"  latency = output record's {'/'.join(outs) or '?'} (broker clock) - input record's "
                  f"{'/'.join(ins) or '?'} (this script's producer clock at produce()); one machine, one wall clock")
            print(header)
            notes = []
            for i, rate in enumerate(rates):
                phases = [(results[name] or {}).get("phases", [])[i:i + 1] for name in names]
                phases = [p[0] if p else {} for p in phases]
                qs = [statistics.quantiles(p["waits"], n=100) if len(p.get("waits", [])) >= 2 else None for p in phases]
                print(_row(f"{rate:,}/s: achieved records/s", [p.get("achieved", "-") for p in phases], ",.0f",
                           ratio=False))
                print(_row(f"{rate:,}/s: p50 ms", [q[49] if q else "-" for q in qs], ",.0f"))
                print(_row(f"{rate:,}/s: p99 ms", [q[98] if q else "-" for q in qs], ",.0f"))
                print(_row(f"{rate:,}/s: matched / produced",
                           [f"{len(p['waits']):,}/{p['offered']:,}" if p else "-" for p in phases], "", ratio=False))
                for name, p in zip(names, phases, strict=True):
                    if p and not p["drained"]:
                        notes.append(f"  {name} at {rate:,}/s: not all out {args.drain_timeout:g} s after the "
                                     "producer stopped; the missing records are not in the percentiles, which understate")
            print("\n".join(notes) if notes else "  every record was out before the next rate started")
    finally:
        topics.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
