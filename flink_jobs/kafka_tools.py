"""Kafka helpers on confluent-kafka: produce a JSONL file, consume records, make topics, probe a broker.

They serve the job (topic checks at start), the tests, the demos and the CLI's ``produce`` and
``consume`` commands (:mod:`flink_jobs.cli.kafka`).

None of them ever puts a record value in an exception message or a log line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "KafkaRecord",
    "KafkaToolsError",
    "TopicsMissingError",
    "UnreachableError",
    "check_reachable",
    "consume",
    "ensure_topics",
    "produce_file",
]

DEFAULT_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

# Probing clients stay silent: librdkafka otherwise logs every refused connection to stderr.
_QUIET = {"log_level": 0}


class KafkaToolsError(RuntimeError):
    """A Kafka operation failed; the message says what and where, never which record value."""


class UnreachableError(KafkaToolsError):
    """No broker answered at the bootstrap address within the time allowed."""


class TopicsMissingError(KafkaToolsError):
    """Topics the caller needs do not exist, and creating them was not allowed."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record.

    ``key`` and ``value`` are the UTF-8 text (undecodable bytes replaced); ``raw_key`` and
    ``raw_value`` are the exact bytes. ``headers`` maps each header name to its text value
    (the last one wins on repeats); ``raw_headers`` keeps them all, as bytes.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    raw_key: bytes | None
    raw_value: bytes | None
    raw_headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    @property
    def key(self) -> str | None:
        return None if self.raw_key is None else self.raw_key.decode("utf-8", "replace")

    @property
    def value(self) -> str | None:
        return None if self.raw_value is None else self.raw_value.decode("utf-8", "replace")

    @property
    def headers(self) -> dict[str, str | None]:
        return {k: (None if v is None else v.decode("utf-8", "replace")) for k, v in self.raw_headers}

    def json(self) -> Any:
        """The value parsed as JSON (raises ``ValueError`` on a malformed one)."""
        if self.raw_value is None:
            raise ValueError("tombstone: the record has no value")
        return json.loads(self.raw_value)


def check_reachable(bootstrap: str, timeout: float = 10) -> None:
    """Raise :class:`UnreachableError` unless a broker at `bootstrap` answers a metadata request in `timeout` s.

    Parameters
    ----------
    bootstrap : str
        ``HOST:PORT[,HOST:PORT...]``.
    timeout : float
        Seconds to wait at most.
    """
    _metadata(bootstrap, timeout)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = 1,
    create: bool = True,
    *,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30,
) -> list[str]:
    """Make sure `topics` exist: create the missing ones, or refuse with the missing names.

    Parameters
    ----------
    bootstrap : str
        ``HOST:PORT``.
    topics : iterable of str
        Topic names.
    partitions : int
        Partitions of each topic created here (existing topics are left alone).
    create : bool
        Create missing topics; when False, raise :class:`TopicsMissingError` instead.
    replication_factor : int
        Replicas of each topic created here.
    config : dict, optional
        Topic configs for the topics created here (``{"cleanup.policy": "compact"}``).
    timeout : float
        Seconds for reaching the broker and for the creation to show in the metadata.

    Returns
    -------
    list of str
        The topics this call created.

    Raises
    ------
    UnreachableError
        No broker answered.
    TopicsMissingError
        Some topics are missing and `create` is False.
    KafkaToolsError
        The broker refused to create a topic.
    """
    wanted = list(dict.fromkeys(topics))
    md = _metadata(bootstrap, min(timeout, 10))
    missing = [t for t in wanted if t not in md.topics]
    if not missing:
        return []
    if not create:
        raise TopicsMissingError(
            f"missing Kafka topic(s) at {bootstrap}: {', '.join(missing)}; create them first or allow topic creation",
            missing,
        )
    admin = AdminClient({"bootstrap.servers": bootstrap, **_QUIET})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor, config=config or {}) for t in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # made meanwhile by someone else: fine
                continue
            raise KafkaToolsError(f"cannot create topic {topic} at {bootstrap}: {err.str()}") from None
    # A created topic may take a moment to get a leader; producers and Flink fail fast without one.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        if all(t in md.topics and md.topics[t].partitions and not md.topics[t].error for t in missing):
            ready = all(p.leader >= 0 for t in missing for p in md.topics[t].partitions.values())
            if ready:
                return created
        if time.monotonic() > deadline:
            raise KafkaToolsError(f"topics {', '.join(missing)} at {bootstrap} got no leader within {timeout:g} s")
        time.sleep(0.1)


def produce_file(
    bootstrap: str,
    topic: str,
    path: str | Path,
    key_field: str | None = "customerId",
    *,
    create_topic: bool = True,
    partitions: int = 1,
    timeout: float = 60,
) -> int:
    """Produce each line of a JSONL file as one record's value.

    Parameters
    ----------
    bootstrap : str
        ``HOST:PORT``.
    topic : str
        Target topic.
    path : str or pathlib.Path
        The file. Every non-empty line is one value, sent byte for byte without its line end;
        malformed JSON lines are sent too (the job must route them to its dead-letter topic).
    key_field : str or None
        The key is this field's value when the line parses as a JSON object holding it
        (strings as they are, other values as JSON text); otherwise the record has no key.
    create_topic : bool
        Create `topic` if it is missing (with `partitions`), else refuse.
    partitions : int
        Partitions for a topic created here.
    timeout : float
        Seconds to wait for all deliveries.

    Returns
    -------
    int
        The number of records produced.

    Raises
    ------
    UnreachableError, TopicsMissingError, KafkaToolsError
        The broker is not there, the topic is missing, or a delivery failed.
    """
    ensure_topics(bootstrap, [topic], partitions=partitions, create=create_topic)
    # Idempotent producer: a retry never duplicates a line, and order per partition is kept.
    # log_level 3: errors only; the retry warnings while a fresh broker loads its coordinators are noise.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "acks": "all", "log_level": 3}
    )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.removesuffix(b"\n").removesuffix(b"\r")
            if not line:
                continue
            key = _key_of(line, key_field) if key_field else None
            while True:
                try:
                    producer.produce(topic, value=line, key=key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry this line
                    producer.poll(0.1)
            count += 1
            producer.poll(0)
    left = producer.flush(timeout)
    if left:
        raise KafkaToolsError(f"{left} of {count} records to {topic} at {bootstrap} not delivered within {timeout:g} s")
    if failures:
        raise KafkaToolsError(f"{len(failures)} of {count} records to {topic} at {bootstrap} failed: {failures[0]}")
    return count


def consume(
    bootstrap: str,
    topic: str,
    n: int | None = None,
    timeout: float = 30,
    isolation: str = "read_committed",
    *,
    from_beginning: bool = True,
) -> list[KafkaRecord]:
    """Read records from every partition of `topic`, without a consumer group (nothing is committed).

    Parameters
    ----------
    bootstrap : str
        ``HOST:PORT``.
    topic : str
        The topic, which must exist.
    n : int, optional
        Stop after `n` records, waiting up to `timeout` for them to arrive. When omitted, read up to
        the current end of every partition (for ``read_committed``, the last stable offset).
    timeout : float
        Seconds at most; whatever was read by then is returned.
    isolation : {"read_committed", "read_uncommitted"}
        ``read_committed`` hides records of open and aborted transactions.
    from_beginning : bool
        Start at the earliest offset, or else at the end (only new records).

    Returns
    -------
    list of KafkaRecord
        In partition order of arrival; within a partition, in offset order.
    """
    if isolation not in ("read_committed", "read_uncommitted"):
        raise ValueError(f"isolation must be read_committed or read_uncommitted, not {isolation!r}")
    md = _metadata(bootstrap, min(timeout, 10), topic)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise TopicsMissingError(f"missing Kafka topic at {bootstrap}: {topic}", [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "flink-anonymizer-tools",  # required by librdkafka; unused since partitions are assigned
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            **_QUIET,
        }
    )
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    parts = sorted(tmd.partitions)
    consumer.assign([TopicPartition(topic, p, start) for p in parts])
    out: list[KafkaRecord] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (n is None or len(out) < n):
            msgs = consumer.consume(num_messages=min(500, n - len(out)) if n else 500, timeout=0.2)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(msg.partition())
                        continue
                    raise KafkaToolsError(f"consuming {topic} at {bootstrap} failed: {err.str()}")
                at_eof.discard(msg.partition())
                ts_type, ts = msg.timestamp()
                out.append(
                    KafkaRecord(
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        timestamp=ts,
                        raw_key=msg.key(),
                        raw_value=msg.value(),
                        raw_headers=list(msg.headers() or []),
                    )
                )
            if n is None and len(at_eof) == len(parts):
                break
    finally:
        consumer.close()
    return out[:n] if n is not None else out


def _key_of(line: bytes, key_field: str) -> bytes | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get(key_field) is None:
        return None
    v = obj[key_field]
    return (v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))).encode()


def _metadata(bootstrap: str, timeout: float, topic: str | None = None):
    admin = AdminClient({"bootstrap.servers": bootstrap, **_QUIET})
    try:
        return admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise UnreachableError(
            f"cannot reach Kafka at {bootstrap} within {timeout:g} s; start one with `make kafka-up` "
            f"or pass --bootstrap-servers ({exc.args[0].str()})"
        ) from None
