"""Throughput on a standalone Flink cluster as a topic outgrows one core: p=1 against p=2, in one run.

It starts (unless given) a Kafka broker on a free loopback port, produces N generated events
to a raw topic with 2 partitions, then submits a policy with the real ``flink run -py``,
bounded, in each of these shapes, each to its own output topics:

- ``process``: PyFlink's process mode (the session-cluster default), one TaskManager with 2
  slots, at parallelism 1 and then 2. Each Python operator of each subtask runs in its own
  worker process, so p=2 can use both cores.
- ``thread``: thread mode, at p=1 on a cluster of one TaskManager, and at p=2 on a cluster of
  two TaskManagers with one slot each. A thread-mode TaskManager runs all its Python
  operators in one interpreter under one GIL, so a second slot on the same TaskManager adds
  no Python core; a second TaskManager does. Thread mode keeps one interpreter for the
  TaskManager's life, so each thread-mode run gets a fresh cluster (started here).
- with ``--policy all``, also thread mode at p=1 on two TaskManagers of one slot each, with
  ``submit --stateful-slots``: the protect operator in one TaskManager's interpreter, the
  k-anonymity and DP operators in the other's.

``--policy masked`` (default) keeps the masked view of conf/policies/customer-events.yaml;
``--policy all`` runs all three views. Throughput is the records divided by the job's own
running time as the JobManager reports it (first task running to finished); the submission
and the cluster start are not counted. The README's target for the masked view's p=2 / p=1
ratio is >= 1.7 on 2 cores; the broker, the JobManager and this script share those cores.

    .venv/bin/python bench/scaling.py --n 200000 [--policy masked|all] [--modes process thread]
    .venv/bin/python bench/scaling.py --bootstrap-servers 127.0.0.1:9092 --state-dir .local/flink --modes process
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


def job_policy(work: Path, topic: str, views: str, suffix: str) -> Path:
    """The shipped policy on ``topic``, with only its masked view (``views="masked"``) or all three."""
    document = json.loads(json.dumps(load_policy(ROOT / "conf/policies/customer-events.yaml").document))
    document["source"]["topic"] = topic
    if views == "masked":
        document["views"] = {"masked": document["views"]["masked"]}
    for name, view in document["views"].items():
        view["sink"]["topic"] = f"{topic}.{name}.{suffix}"
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


def timed_job(cluster, work: Path, bootstrap: str, topic: str, keyring: Path, views: str, mode: str,
              parallelism: int, total: int, stateful_slots: bool = False) -> float:
    """Submit one bounded run and return its records per running second."""
    suffix = f"{mode}-p{parallelism}{'-stateful-slots' if stateful_slots else ''}"
    policy = job_policy(work, topic, views, suffix)
    options = SubmitOptions(policy=str(policy), bootstrap=bootstrap, keyring=f"file:{keyring}",
                            parallelism=parallelism, bounded=True, state_dir=cluster.state_dir,
                            execution_mode=mode, stateful_slots=stateful_slots)
    submitted = time.monotonic()
    job_id = submit_job(options)
    wait_for_job(cluster.rest_url, job_id, "FINISHED", timeout=1800)
    seconds = running_seconds(cluster.rest_url, job_id)
    rate = total / seconds
    print(f"  {views} views, {mode} mode, p={parallelism}{' --stateful-slots' if stateful_slots else ''}  "
          f"{rate:>10,.0f} records/s  "
          f"({seconds:.1f} s running, {time.monotonic() - submitted:.1f} s with submission)", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="events to produce (default 200,000)")
    parser.add_argument("--policy", choices=("masked", "all"), default="masked",
                        help="the masked view alone (default) or all three views")
    parser.add_argument("--modes", nargs="+", choices=("process", "thread"), default=["process", "thread"],
                        help="execution modes to compare (default both)")
    parser.add_argument("--bootstrap-servers", help="an existing Kafka (default: start one in a temp folder)")
    parser.add_argument("--state-dir", help="an existing cluster's state folder, for process mode "
                                            "(default: start one in a temp folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    broker = None
    owned: list = []
    try:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            from flink_jobs.devtools.kafka_broker import start_broker

            broker = start_broker(work / "kafka", timeout=90)
            bootstrap = broker.bootstrap

        events = work / "events.jsonl"
        with open(events, "w") as fh:
            for line in iter_events(args.n, seed=11, malformed=args.n // 1000):
                fh.write(line + "\n")
        topic = f"bench-scaling-{os.getpid()}"
        ensure_topics(bootstrap, [topic], partitions=2)
        total = produce_file(bootstrap, topic, events)
        keyring = work / "keyring.json"
        Keyring.generate().save(keyring)
        print(f"{total:,} events on 2 partitions; this machine has {os.cpu_count()} cores (the broker, "
              f"JobManager and client share them); load average {os.getloadavg()[0]:.2f}", flush=True)

        def fresh_cluster(name: str, taskmanagers: int, slots: int):
            cluster = flink_cluster.start_cluster(work / name, rest_port=0, rpc_port=0, taskmanagers=taskmanagers,
                                                  overrides={"taskmanager.numberOfTaskSlots": slots})
            owned.append(cluster)
            return cluster

        def stop(cluster) -> None:
            if cluster in owned:
                flink_cluster.stop_cluster(cluster)
                owned.remove(cluster)

        ratios = {}
        for mode in args.modes:
            rates = {}
            if mode == "process":
                if args.state_dir:
                    cluster = flink_cluster.load_cluster(args.state_dir)
                    if cluster is None:
                        parser.error(f"no cluster was started from {args.state_dir}")
                else:
                    cluster = fresh_cluster("flink-process", taskmanagers=1, slots=2)
                print(f" process mode: one TaskManager, 2 slots ({cluster.rest_url})", flush=True)
                for parallelism in (1, 2):
                    rates[parallelism] = timed_job(cluster, work, bootstrap, topic, keyring, args.policy, mode,
                                                   parallelism, total)
                stop(cluster)
            else:
                for parallelism in (1, 2):
                    cluster = fresh_cluster(f"flink-thread-{parallelism}", taskmanagers=parallelism, slots=1)
                    print(f" thread mode: {parallelism} TaskManager(s), 1 slot each ({cluster.rest_url})", flush=True)
                    rates[parallelism] = timed_job(cluster, work, bootstrap, topic, keyring, args.policy, mode,
                                                   parallelism, total)
                    stop(cluster)
                if args.policy == "all":
                    cluster = fresh_cluster("flink-thread-stateful-slots", taskmanagers=2, slots=1)
                    print(f" thread mode: 2 TaskManagers, 1 slot each, p=1, --stateful-slots ({cluster.rest_url})",
                          flush=True)
                    split = timed_job(cluster, work, bootstrap, topic, keyring, args.policy, mode, 1, total,
                                      stateful_slots=True)
                    ratios["thread, p=1 with --stateful-slots on 2 TaskManagers"] = split / rates[1]
                    stop(cluster)
            ratios[mode] = rates[2] / rates[1]
        for mode, ratio in ratios.items():
            if mode.startswith("thread, "):
                print(f"  ratio {mode} / p=1 on 1 TaskManager  {ratio:>6.2f}")
                continue
            print(f"  ratio p=2 / p=1, {mode} mode  {ratio:>6.2f}   (target for the masked view >= 1.7 on "
                  f"{os.cpu_count()} cores)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        for cluster in owned:
            flink_cluster.stop_cluster(cluster)
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
