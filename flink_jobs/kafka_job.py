"""protect_stream on Kafka: the policy's source topic in, one topic per view plus ``<source>.dlq`` out.

Sources and sinks go through the Table API Kafka connector (``kafka_io``), because only it
reads offsets and writes record headers from PyFlink. The graph itself is the same
``protect_stream.build`` that the file runs use.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from flink_jobs.kafka_io import add_connector_jars, kafka_sink, kafka_source
from flink_jobs.kafka_tools import KafkaToolsError, TopicsMissingError, check_reachable, ensure_topics
from flink_jobs.policy import Policy
from flink_jobs.protect import DLQ
from flink_jobs.protect_stream import JobOptions, build, make_env
from flink_jobs.startup_watch import DEFAULT_STARTUP_TIMEOUT_S, local_rest_config


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
        # Avro channels carry bytes: the avro views, and the dead letters of an avro source (raw bytes kept)
        avro_source = policy.document["source"].get("format") == "avro"
        self.binary = {DLQ: avro_source} | {name: (v.get("sink") or {}).get("format") == "avro"
                                            for name, v in policy.document["views"].items()}
        self.statement_set = t_env.create_statement_set()

    encodes_lines = False

    def takes_rows(self, channel: str) -> bool:
        """Whether the protect operator may hand this channel's records over as the sink table's rows."""
        return not self.binary.get(channel, False)

    def write(self, stream: Any, channel: str, topic: str, *, encoded: bool = False) -> None:
        kafka_sink(self.t_env, stream, bootstrap=self.bootstrap, topic=topic, delivery=self.delivery,
                   transactional_id_prefix=f"{self.prefix}-{channel}", statement_set=self.statement_set,
                   name=f"sink-{channel}", binary=self.binary.get(channel, False), rows_ready=encoded)

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
                    restart_attempts: int = 3, config: dict[str, str] | None = None) -> Any:
    """A ready-to-execute environment running ``policy`` between Kafka topics."""
    from pyflink.table import StreamTableEnvironment

    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism, execution_mode=execution_mode,
                         checkpoint_interval_ms=checkpoint_interval_ms, restart_attempts=restart_attempts,
                         extra_config=dict(config or {}))
    env = make_env(options)
    add_connector_jars(env)  # before the table environment, so its planner finds the connector
    t_env = StreamTableEnvironment.create(env)
    source = KafkaInput(t_env, bootstrap=bootstrap, topic=policy.source_topic,
                        group_id=group_id or f"flink-anonymizer-{policy.id}", start=start,
                        read_committed=True, bounded=bounded,
                        binary=policy.document["source"].get("format") == "avro")
    sinks = KafkaOutput(t_env, bootstrap=bootstrap, delivery=delivery, policy=policy)
    build(env, policy, source, sinks, options)
    sinks.finish()
    return env


def run(args: argparse.Namespace, policy: Policy, keyring_ref: str) -> int:
    """``flink-anonymizer run --bootstrap-servers``: runs until cancelled, or to the end with --bounded."""
    from flink_jobs.cli import CliError

    delivery = args.delivery or policy.delivery
    try:
        created = prepare_topics(args.bootstrap_servers, policy, create=not args.no_create_topics)
    except TopicsMissingError as exc:
        raise CliError(f"{exc}; create them, or drop --no-create-topics to let the job create them") from None
    except KafkaToolsError as exc:
        raise CliError(str(exc)) from None
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)
    bounded = getattr(args, "bounded", False)
    # under `flink run` the cluster runs the job and `submit` watches its start; locally, this does
    local = "PYFLINK_GATEWAY_PORT" not in os.environ
    rest_base, rest_config = local_rest_config() if local else ("", {})
    env = build_kafka_job(policy, keyring_ref, bootstrap=args.bootstrap_servers, delivery=delivery,
                          start=args.start, bounded=bounded,
                          config={**rest_config, **getattr(args, "metrics_config", {})},
                          parallelism=args.parallelism, execution_mode=args.execution_mode)
    views = ", ".join(f"{name} -> {view.topic}" for name, view in policy.views.items())
    print(f"protect_stream[{policy.id}] on {args.bootstrap_servers}: {policy.source_topic} -> {views}, "
          f"{DLQ} -> {policy.dlq_topic} ({delivery})", file=sys.stderr)
    if local:
        from flink_jobs.cli import run_watched

        run_watched(env, f"protect_stream[{policy.id}]", rest_base,
                    getattr(args, "startup_timeout", DEFAULT_STARTUP_TIMEOUT_S), expect_records=False)
    else:
        env.execute(f"protect_stream[{policy.id}]")
    return 0
