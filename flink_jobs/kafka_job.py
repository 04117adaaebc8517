"""protect_stream on Kafka: the policy's source topic in, one topic per view plus ``<source>.dlq`` out.

Sources and sinks go through the Table API Kafka connector (``kafka_io``), because only it
reads offsets and writes record headers from PyFlink. The graph itself is the same
``protect_stream.build`` that the file runs use. :func:`main` is what ``flink run -py``
runs on a cluster (``flink-anonymizer submit``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flink_jobs.avro_format import binary_source
from flink_jobs.kafka_io import add_connector_jars, kafka_sink, kafka_source
from flink_jobs.kafka_tools import KafkaToolsError, TopicsMissingError, check_reachable, ensure_topics
from flink_jobs.keyring_ref import resolve_keyring
from flink_jobs.policy import Policy, PolicyError, load_policy
from flink_jobs.protect import DLQ
from flink_jobs.protect_stream import JobOptions, build, make_env
from udfs.keyring import KeyringError


class KafkaInput:
    """The policy's raw topic, read as raw strings so malformed records still arrive."""

    def __init__(self, t_env: Any, *, bootstrap: str, topic: str, group_id: str, start: str,
                 read_committed: bool, bounded: bool, binary: bool = False) -> None:
        self.t_env = t_env
        self.settings = dict(bootstrap=bootstrap, topic=topic, group_id=group_id, start=start,
                             read_committed=read_committed, bounded=bounded, binary=binary)

    def open_source(self, env: Any) -> Any:
        # shape: (position "topic/partition/offset", key, raw value, Kafka timestamp ms)
        return kafka_source(env, self.t_env, name="raw-kafka", **self.settings)


class KafkaOutput:
    """One topic per channel; all sinks join one statement set, attached to the job by :meth:`finish`."""

    def __init__(self, t_env: Any, *, bootstrap: str, delivery: str, policy: Policy) -> None:
        self.t_env = t_env
        self.bootstrap = bootstrap
        self.delivery = delivery
        self.prefix = f"anon-{policy.id}"
        # Avro channels carry bytes: the avro views, and the dead letters of an avro or debezium-avro
        # source (raw bytes kept)
        self.binary = {DLQ: binary_source(policy.document)} | {name: (v.get("sink") or {}).get("format") == "avro"
                                                                for name, v in policy.document["views"].items()}
        # the dead letters of such a source keep the raw key too (an Avro key is bytes); a view's key is text
        self.binary_key = {DLQ: binary_source(policy.document)}
        self.statement_set = t_env.create_statement_set()

    encodes_lines = False

    def takes_rows(self, channel: str) -> bool:
        """Whether the protect operator may hand this channel's records over as the sink table's rows."""
        return not self.binary.get(channel, False)

    def write(self, stream: Any, channel: str, topic: str, *, encoded: bool = False) -> None:
        kafka_sink(self.t_env, stream, bootstrap=self.bootstrap, topic=topic, delivery=self.delivery,
                   transactional_id_prefix=f"{self.prefix}-{channel}", statement_set=self.statement_set,
                   name=f"sink-{channel}", binary=self.binary.get(channel, False),
                   binary_key=self.binary_key.get(channel, False), rows_ready=encoded)

    def finish(self) -> None:
        # a statement set nobody attaches is dropped silently: attach it before execute()
        self.statement_set.attach_as_datastream()


def output_topics(policy: Policy) -> list[str]:
    topics = [policy.dlq_topic]
    for view in policy.views.values():
        topics.append(view.topic)
        if view.k_anonymity or view.shuffle:
            topics.append(f"{view.topic}.suppressed")
    return topics


def prepare_topics(bootstrap: str, policy: Policy, *, create: bool, timeout: float = 10) -> list[str]:
    """Check the broker answers and the topics exist; create missing output topics when allowed."""
    check_reachable(bootstrap, timeout=timeout)
    ensure_topics(bootstrap, [policy.source_topic], create=False)
    return ensure_topics(bootstrap, output_topics(policy), create=create)


def build_kafka_job(policy: Policy, keyring_ref: str, *, bootstrap: str, delivery: str, start: str = "earliest",
                    group_id: str | None = None, bounded: bool = False, parallelism: int = 1,
                    execution_mode: str = "thread", checkpoint_interval_ms: int = 2000,
                    restart_attempts: int = 3, config: dict[str, str] | None = None,
                    stateful_slot_group: str | None = None) -> Any:
    """A ready-to-execute environment running ``policy`` between Kafka topics."""
    from pyflink.table import StreamTableEnvironment

    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism, execution_mode=execution_mode,
                         checkpoint_interval_ms=checkpoint_interval_ms, restart_attempts=restart_attempts,
                         extra_config=dict(config or {}), stateful_slot_group=stateful_slot_group)
    env = make_env(options)
    add_connector_jars(env)  # before the table environment, so its planner finds the connector
    t_env = StreamTableEnvironment.create(env)
    source = KafkaInput(t_env, bootstrap=bootstrap, topic=policy.source_topic,
                        group_id=group_id or f"flink-anonymizer-{policy.id}", start=start,
                        read_committed=True, bounded=bounded,
                        binary=binary_source(policy.document))
    sinks = KafkaOutput(t_env, bootstrap=bootstrap, delivery=delivery, policy=policy)
    build(env, policy, source, sinks, options)
    sinks.finish()
    return env


def prepare_job(policy: Policy, keyring_ref: str, *, bootstrap: str, delivery: str | None = None,
                start: str = "earliest", bounded: bool = False, create_topics: bool = True, parallelism: int = 1,
                execution_mode: str = "thread", config: dict[str, str] | None = None,
                stateful_slot_group: str | None = None) -> Any:
    """Check the topics (creating missing output topics when allowed), build the job, say on stderr what it runs.

    Returns the environment, ready to execute. Raises :class:`TopicsMissingError` (see
    :data:`TOPICS_HINT`) or another :class:`KafkaToolsError` when the topics are not ready.
    """
    delivery = delivery or policy.delivery
    created = prepare_topics(bootstrap, policy, create=create_topics)
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)
    env = build_kafka_job(policy, keyring_ref, bootstrap=bootstrap, delivery=delivery, start=start, bounded=bounded,
                          config=config, parallelism=parallelism, execution_mode=execution_mode,
                          stateful_slot_group=stateful_slot_group)
    views = ", ".join(f"{name} -> {view.topic}" for name, view in policy.views.items())
    print(f"protect_stream[{policy.id}] on {bootstrap}: {policy.source_topic} -> {views}, "
          f"{DLQ} -> {policy.dlq_topic} ({delivery})", file=sys.stderr)
    return env


#: what to do about missing topics, after the error's own text
TOPICS_HINT = "create them, or drop --no-create-topics to let the job create them"


def main(argv: list[str] | None = None) -> int:
    """The job on a cluster: ``flink run -py flink_jobs/kafka_job.py --policy P ...`` runs this.

    It takes the Kafka arguments of ``flink-anonymizer run`` that ``submit`` passes on, and
    needs no command line module: the workers are not shipped one.
    """
    parser = argparse.ArgumentParser(prog="flink_jobs/kafka_job.py", description="protect_stream on Kafka")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--keyring")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--execution-mode", choices=("thread", "process"), default="thread")
    parser.add_argument("--start", choices=("earliest", "latest", "group-offsets"), default="earliest")
    parser.add_argument("--delivery", choices=("exactly-once", "at-least-once"))
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--no-create-topics", action="store_true")
    parser.add_argument("--schema-registry", help="a Confluent-compatible registry; overrides source.schema")
    parser.add_argument("--stateful-slot-group", help="the slot sharing group of the k-anonymity and DP operators")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        keyring, reference = resolve_keyring(args.keyring)
        # the workers get the policy document with the registry in it, as `run --schema-registry` does
        policy = load_policy(args.policy, keyring=keyring, schema=args.schema_registry)
        env = prepare_job(policy, reference, bootstrap=args.bootstrap_servers, delivery=args.delivery,
                          start=args.start, bounded=args.bounded, create_topics=not args.no_create_topics,
                          parallelism=args.parallelism, execution_mode=args.execution_mode,
                          stateful_slot_group=args.stateful_slot_group)
    except (KafkaToolsError, KeyringError, PolicyError) as exc:
        # as `flink-anonymizer run` says it; `flink run` shows it when the script fails
        hint = f"; {TOPICS_HINT}" if isinstance(exc, TopicsMissingError) else ""
        print(f"error: {exc.summary() if isinstance(exc, PolicyError) else exc}{hint}", file=sys.stderr)
        return 2
    env.execute(f"protect_stream[{policy.id}]")
    return 0


if __name__ == "__main__":
    # `flink run -py flink_jobs/kafka_job.py` (what `submit` runs) and `-pym flink_jobs.kafka_job` (conf/k8s)
    sys.exit(main())
