"""Masked view throughput on a standalone Flink cluster at parallelism 1 and 2, in one run.

It starts (unless given) a Kafka broker and a standalone cluster (one TaskManager, 2 slots) on
free loopback ports, produces N generated events to a raw topic with 2 partitions, then submits
the masked view of conf/policies/customer-events.yaml with the real ``flink run -py``, bounded,
once at parallelism 1 and once at 2, each to its own output topics. Throughput is the records
divided by the job's own running time as the JobManager reports it (first task running to
finished); the submission is not counted. The README's Performance table sets >= 1.7 for the ratio.

    .venv/bin/python bench/scaling.py --n 200000
    .venv/bin/python bench/scaling.py --bootstrap-servers 127.0.0.1:9092 --state-dir .local/flink
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.samples.generate_events import iter_events  # noqa: E402
from flink_jobs.cli.submit import SubmitOptions, submit_job, wait_for_job  # noqa: E402
from flink_jobs.devtools import cluster as flink_cluster  # noqa: E402
from flink_jobs.kafka_tools import ensure_topics, produce_file  # noqa: E402
from flink_jobs.policy import load_policy  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402


def masked_policy(work: Path, topic: str, suffix: str) -> Path:
    document = json.loads(json.dumps(load_policy(ROOT / "conf/policies/customer-events.yaml").document))
    document["source"]["topic"] = topic
    document["views"] = {"masked": document["views"]["masked"]}
    document["views"]["masked"]["sink"]["topic"] = f"{topic}.masked.{suffix}"
    # each run its own transactional ids (they start with the policy id)
    document["id"] = f"{document['id']}-{suffix}"
    path = work / f"policy-{suffix}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def running_seconds(rest_url: str, job_id: str) -> float:
    """Seconds from the first task running to the job finishing, from the JobManager's timestamps."""
    job = flink_cluster.rest_get(rest_url, f"/jobs/{job_id}")
    running = [v["start-time"] for v in job["vertices"] if v.get("start-time", -1) > 0]
    started = min(running) if running else job["start-time"]
    return (job["end-time"] - started) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="events to produce (default 200,000)")
    parser.add_argument("--bootstrap-servers", help="an existing Kafka (default: start one in a temp folder)")
    parser.add_argument("--state-dir", help="an existing cluster's state folder (default: start one in a temp folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    broker = cluster = None
    owned = False
    try:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            from flink_jobs.devtools.kafka_broker import start_broker

            broker = start_broker(work / "kafka", timeout=90)
            bootstrap = broker.bootstrap
        if args.state_dir:
            cluster = flink_cluster.load_cluster(args.state_dir)
            if cluster is None:
                parser.error(f"no cluster was started from {args.state_dir}")
        else:
            cluster = flink_cluster.start_cluster(work / "flink", rest_port=0, rpc_port=0, taskmanagers=1)
            owned = True

        events = work / "events.jsonl"
        with open(events, "w") as fh:
            for line in iter_events(args.n, seed=11, malformed=args.n // 1000):
                fh.write(line + "\n")
        topic = f"bench-scaling-{os.getpid()}"
        ensure_topics(bootstrap, [topic], partitions=2)
        total = produce_file(bootstrap, topic, events)
        keyring = work / "keyring.json"
        Keyring.generate().save(keyring)

        slots = flink_cluster.rest_get(cluster.rest_url, "/overview")["slots-total"]
        print(f"{total:,} events on 2 partitions; cluster {cluster.rest_url} with {slots} slots; "
              f"this machine has {os.cpu_count()} cores (the broker, JobManager and client share them)")
        rates = {}
        for parallelism in (1, 2):
            policy = masked_policy(work, topic, f"p{parallelism}")
            options = SubmitOptions(policy=str(policy), bootstrap=bootstrap, keyring=f"file:{keyring}",
                                    parallelism=parallelism, bounded=True, state_dir=cluster.state_dir)
            submitted = time.monotonic()
            job_id = submit_job(options)
            wait_for_job(cluster.rest_url, job_id, "FINISHED", timeout=1800)
            seconds = running_seconds(cluster.rest_url, job_id)
            rates[parallelism] = total / seconds
            print(f"  masked view, p={parallelism}  {rates[parallelism]:>10,.0f} records/s  "
                  f"({seconds:.1f} s running, {time.monotonic() - submitted:.1f} s with submission)")
        print(f"  ratio p=2 / p=1     {rates[2] / rates[1]:>10.2f}   (target >= 1.7; {os.cpu_count()} cores)")
    finally:
        if cluster is not None and owned:
            flink_cluster.stop_cluster(cluster)
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
