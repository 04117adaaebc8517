"""``make demo-kafka``: a local broker, the sample events in ``raw-customer-events``, the job, the views.

It starts (or reuses) the broker in ``.local/kafka`` on 127.0.0.1:9092, produces the bundled
sample once, runs protect_stream on Kafka to the end of what was produced, and prints a few
raw records beside their masked and anonymized forms, and a few DP releases.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flink_jobs.devtools.kafka_broker import running_broker, start_broker
from flink_jobs.kafka_job import build_kafka_job, prepare_topics
from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.keyring_ref import resolve_keyring
from flink_jobs.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.devtools.kafka_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(ROOT / "conf/policies/customer-events.yaml"))
    parser.add_argument("--sample", default=str(ROOT / "conf/samples/customer-events.jsonl"))
    parser.add_argument("--data-dir", default=str(ROOT / ".local/kafka"))
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("-n", type=int, default=3, help="records to show per view")
    args = parser.parse_args(argv)

    broker = running_broker(Path(args.data_dir)) or start_broker(Path(args.data_dir), args.port, detach=True)
    print(f"Kafka at {broker.bootstrap}", file=sys.stderr)
    keyring, reference = resolve_keyring(None, dev=True)
    policy = load_policy(args.policy, keyring=keyring)
    ensure_topics(broker.bootstrap, [policy.source_topic])
    if not consume(broker.bootstrap, policy.source_topic, n=1, timeout=5):
        count = produce_file(broker.bootstrap, policy.source_topic, Path(args.sample))
        print(f"produced {count:,} sample events to {policy.source_topic}", file=sys.stderr)
    prepare_topics(broker.bootstrap, policy, create=True)
    env = build_kafka_job(policy, reference, bootstrap=broker.bootstrap, delivery=policy.delivery, bounded=True,
                          group_id=f"demo-{policy.id}")
    print("running protect_stream on Kafka to the end of the raw topic ...", file=sys.stderr)
    env.execute(f"protect_stream[{policy.id}] demo")

    raw_records = [r.json() for r in consume(broker.bootstrap, policy.source_topic, n=2000, timeout=10)
                   if _is_object(r.value)]
    raw = {(r.get("customerId"), r.get("timestamp")): r for r in raw_records}
    for name, view in policy.views.items():
        records = consume(broker.bootstrap, view.topic, n=args.n, timeout=10)
        print(f"\n== {name} ({view.topic}) ==")
        for record in records:
            value = record.json()
            if view.differential_privacy:
                print(json.dumps(value))
                continue
            original = raw.get((value.get("customerId"), value.get("timestamp"))) if name == "masked" else None
            if original:
                print("raw:      " + json.dumps({k: original.get(k) for k in value if k in original}))
            print("protected: " + json.dumps(value))
    dead = consume(broker.bootstrap, policy.dlq_topic, timeout=10)
    print(f"\n== dead letters ({policy.dlq_topic}): {len(dead)}, reasons: "
          + ", ".join(sorted({r.headers.get('reason', '?').split(':')[0] for r in dead})))
    print(f"\nthe broker keeps running at {broker.bootstrap}: `make kafka-down` stops it", file=sys.stderr)
    return 0


def _is_object(text: str | None) -> bool:
    try:
        return isinstance(json.loads(text or ""), dict)
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
