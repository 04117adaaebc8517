"""The ``produce`` and ``consume`` commands, on the helpers of :mod:`flink_jobs.kafka_tools`.

For example::

flink-anonymizer produce conf/samples/events.jsonl --topic raw-customer-events
flink-anonymizer consume --topic masked-customer-events -n 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flink_jobs.kafka_tools import DEFAULT_BOOTSTRAP, KafkaToolsError, consume, produce_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``produce`` and ``consume`` subcommands; each sets ``func(args) -> int``."""
    p = subparsers.add_parser(
        "produce",
        help="produce a JSONL file to a topic, one record per line",
        description="Produce every non-empty line of FILE as one record value (malformed JSON too). "
        "The key is the line's --key-field value when it parses.",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="JSON Lines file")
    p.add_argument("--topic", required=True, help="target topic")
    _bootstrap_arg(p)
    p.add_argument("--key-field", default="customerId", help="JSON field used as the record key (default: customerId)")
    p.add_argument("--no-key", action="store_true", help="produce without keys")
    p.add_argument("--partitions", type=int, default=1, help="partitions if the topic is created (default: 1)")
    p.add_argument("--no-create", action="store_true", help="fail if the topic does not exist instead of creating it")
    p.set_defaults(func=_cmd_produce)

    c = subparsers.add_parser(
        "consume",
        help="print records of a topic as JSON lines",
        description="Print up to N records of a topic from the beginning, one JSON object per line "
        "(partition, offset, timestamp, key, headers, value). Nothing is committed.",
    )
    c.add_argument("--topic", required=True, help="topic to read")
    _bootstrap_arg(c)
    c.add_argument("-n", type=int, default=10, help="records to print at most (default: 10; 0 = up to the current end)")
    c.add_argument("--timeout", type=float, default=10, help="seconds to wait at most (default: 10)")
    c.add_argument(
        "--isolation",
        choices=["read_committed", "read_uncommitted"],
        default="read_committed",
        help="read_committed (default) hides open and aborted transactions",
    )
    c.add_argument("--from-end", action="store_true", help="only records that arrive from now on")
    c.add_argument("--values-only", action="store_true", help="print only the raw values, one per line")
    c.set_defaults(func=_cmd_consume)


def _bootstrap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        default=DEFAULT_BOOTSTRAP,
        help=f"Kafka HOST:PORT (default: $KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_BOOTSTRAP})",
    )


def _cmd_produce(args: argparse.Namespace) -> int:
    try:
        n = produce_file(
            args.bootstrap_servers,
            args.topic,
            args.file,
            key_field=None if args.no_key else args.key_field,
            create_topic=not args.no_create,
            partitions=args.partitions,
        )
    except (KafkaToolsError, OSError) as exc:
        print(f"produce: {exc}", file=sys.stderr)
        return 1
    print(f"produced {n} records to {args.topic} at {args.bootstrap_servers}", file=sys.stderr)
    return 0


def _cmd_consume(args: argparse.Namespace) -> int:
    try:
        records = consume(
            args.bootstrap_servers,
            args.topic,
            n=args.n or None,
            timeout=args.timeout,
            isolation=args.isolation,
            from_beginning=not args.from_end,
        )
    except KafkaToolsError as exc:
        print(f"consume: {exc}", file=sys.stderr)
        return 1
    for r in records:
        if args.values_only:
            print(r.value)
            continue
        try:
            value: Any = r.json()
        except ValueError:
            value = r.value  # malformed: shown as the raw string
        row = {"partition": r.partition, "offset": r.offset, "timestamp": r.timestamp, "key": r.key, "headers": r.headers}
        print(json.dumps({**row, "value": value}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m flink_jobs.cli.kafka {produce,consume} ...``."""
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.cli.kafka", description="Kafka produce/consume helpers.")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
