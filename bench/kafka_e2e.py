"""The masked view through a real Kafka broker: throughput, and latency at a fixed rate.

Side by side in one run, on a broker started here on loopback:

1. full speed: N events already in the raw topic, a bounded job to the end, records/s,
   for a pass-through job (raw value to the output topic) and for the masked view;
2. fixed rate: events produced at ``--rate`` records/s for ``--seconds`` while each job runs;
   latency is the output record's broker append time minus the raw record's create time
   (p50, p99). Both jobs run at-least-once here: exactly-once adds up to one checkpoint
   interval, because the views are committed at checkpoints.

    .venv/bin/python bench/kafka_e2e.py [--n 200000] [--rate 10000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from pyflink.common import Types  # noqa: E402
from pyflink.datastream import MapFunction  # noqa: E402
from pyflink.table import StreamTableEnvironment  # noqa: E402

from conf.samples.generate_events import iter_events  # noqa: E402
from flink_jobs.kafka_broker import start_broker  # noqa: E402
from flink_jobs.kafka_io import add_connector_jars, kafka_sink, kafka_source  # noqa: E402
from flink_jobs.kafka_job import build_kafka_job, prepare_topics  # noqa: E402
from flink_jobs.kafka_tools import consume, ensure_topics  # noqa: E402
from flink_jobs.policy import compile_policy, load_policy  # noqa: E402
from flink_jobs.protect_stream import JobOptions, make_env  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402

#: chosen for latency: a bundle is flushed after 1 ms or 100 records, whichever comes first
LATENCY_CONFIG = {"python.fn-execution.bundle.time": "1", "python.fn-execution.bundle.size": "100"}


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


def produce(bootstrap: str, topic: str, lines, rate: float | None = None) -> int:
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
    return count


def full_speed(bootstrap: str, keyring_ref: str, n: int) -> tuple[float, float]:
    topic = "bench-raw-full"
    ensure_topics(bootstrap, [topic, f"{topic}.pass"])
    produce(bootstrap, topic, iter_events(n, seed=5))
    env = passthrough_env(bootstrap, topic, f"{topic}.pass", keyring_ref, True, {})
    started = time.perf_counter()
    env.execute("bench-pass-full")
    passthrough = n / (time.perf_counter() - started)
    policy = masked_policy(topic)
    prepare_topics(bootstrap, policy, create=True)
    env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery="at-least-once", bounded=True,
                          group_id="bench-masked-full")
    started = time.perf_counter()
    env.execute("bench-masked-full")
    return passthrough, n / (time.perf_counter() - started)


def latency(bootstrap: str, keyring_ref: str, rate: int, seconds: int, masked: bool) -> list[float]:
    topic = f"bench-raw-rate-{'masked' if masked else 'pass'}"
    out = f"{topic}.masked" if masked else f"{topic}.pass"
    ensure_topics(bootstrap, [topic])
    ensure_topics(bootstrap, [out], config={"message.timestamp.type": "LogAppendTime"})
    if masked:
        policy = masked_policy(topic)
        prepare_topics(bootstrap, policy, create=True)
        env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery="at-least-once",
                              start="latest", group_id=f"bench-{topic}", config=LATENCY_CONFIG)
    else:
        env = passthrough_env(bootstrap, topic, out, keyring_ref, False, LATENCY_CONFIG)
    client = env.execute_async(f"bench-latency-{topic}")
    time.sleep(15)  # the job is running and reading from the latest offset
    lines = list(iter_events(rate * seconds, seed=9))
    producer = threading.Thread(target=produce, args=(bootstrap, topic, lines, rate))
    producer.start()
    producer.join()
    time.sleep(5)
    client.cancel().result()
    raw = {(r.json()["customerId"], r.json()["timestamp"]): r.timestamp for r in consume(bootstrap, topic, timeout=20)}
    waits = []
    for record in consume(bootstrap, out, timeout=20, isolation="read_uncommitted"):
        value = record.json()
        created = raw.get((value.get("customerId"), value.get("timestamp")))
        if created is not None:
            waits.append(record.timestamp - created)
    return waits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="events for the full-speed runs")
    parser.add_argument("--rate", type=int, default=10_000, help="records/s for the latency runs")
    parser.add_argument("--seconds", type=int, default=20, help="how long to produce at that rate")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    broker = start_broker(work / "kafka")
    try:
        Keyring.generate().save(work / "keyring.json")
        ref = f"file:{work / 'keyring.json'}"
        passthrough, masked = full_speed(broker.bootstrap, ref, args.n)
        print(f"full speed, {args.n:,} events, parallelism 1, thread mode (includes job start):")
        print(f"  pass-through   {passthrough:>10,.0f} records/s")
        print(f"  masked view    {masked:>10,.0f} records/s   ratio {masked / passthrough:.2f}")
        print(f"fixed rate {args.rate:,} records/s for {args.seconds} s, at-least-once, bundle 100 records / 1 ms:")
        for name, is_masked in (("pass-through", False), ("masked view", True)):
            waits = latency(broker.bootstrap, ref, args.rate, args.seconds, is_masked)
            if not waits:
                print(f"  {name:<14} no records matched")
                continue
            q = statistics.quantiles(waits, n=100)
            print(f"  {name:<14} p50 {q[49]:>7,.0f} ms   p99 {q[98]:>7,.0f} ms   ({len(waits):,} records)")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
