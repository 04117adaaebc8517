"""``flink-anonymizer risk``: the re-identification risk of a published view, read from files or a topic.

::

    flink-anonymizer risk --quasi-identifiers age,zip,location --subject customerId out/anonymized/
    flink-anonymizer risk --quasi-identifiers age,zip --subject customerId --sensitive band \
        --html risk.html --fail-below 5 view.jsonl

INPUT is JSON Lines files or folders of them (``*.jsonl``, as the job's file sinks
write them). The exit code is 1 when ``--fail-below K`` is given and the view's k is
lower, so a pipeline can gate on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from operators.risk import assess, parse_line, render_html

__all__ = ["register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``risk`` command to ``subparsers``."""
    parser = subparsers.add_parser(
        "risk", help="k, class sizes and prosecutor risk of a published view",
        description="Group a view's records by their published quasi-identifiers and report the k achieved "
        "(distinct subjects in the smallest class), the class sizes, the share of unique records, prosecutor "
        "risk as ARX defines it, and l for a sensitive attribute. Records with a k_suppressed header are "
        "counted apart. Reads JSON Lines files, or folders of *.jsonl.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="JSON Lines file or folder, or kafka:TOPIC (read_committed, from the beginning)")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                        help="Kafka HOST:PORT for kafka:TOPIC inputs (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")
    parser.add_argument("--quasi-identifiers", required=True, help="comma-separated published QI fields")
    parser.add_argument("--subject", required=True, help="field holding the (pseudonymized) subject")
    parser.add_argument("--sensitive", help="sensitive attribute for l-diversity")
    parser.add_argument("--threshold", type=float, default=0.2,
                        help="a record is at risk above this prosecutor risk (default 0.2, i.e. classes under 5)")
    parser.add_argument("--html", metavar="OUT", help="also write an HTML report with plots")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--fail-below", type=int, metavar="K", help="exit 1 when the view's k is below K")
    parser.set_defaults(func=handler)
    return parser


def _lines(inputs: list[str], bootstrap: str = "") -> Iterator[tuple[str, int, str]]:
    for name in inputs:
        if name.startswith("kafka:"):
            from flink_jobs.kafka_tools import consume

            topic = name.removeprefix("kafka:")
            for record in consume(bootstrap, topic, timeout=15):
                # the envelope the file sink writes, so both inputs parse alike
                yield topic, record.offset, json.dumps({"headers": record.headers, "value": json.loads(record.value)})
            continue
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
        for file in files:
            with file.open() as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        yield str(file), number, line


def handler(args: argparse.Namespace) -> int:
    qis = [q.strip() for q in args.quasi_identifiers.split(",") if q.strip()]
    if not qis:
        print("error: --quasi-identifiers names no field", file=sys.stderr)
        return 2
    if not 0 < args.threshold <= 1:
        print("error: --threshold must be in (0, 1]", file=sys.stderr)
        return 2
    records, bad = [], 0
    try:
        for file, number, line in _lines(args.inputs, args.bootstrap_servers):
            try:
                records.append(parse_line(line))
            except ValueError:
                bad += 1
                if bad <= 3:  # by position only: a view's line may still be sensitive
                    print(f"warning: {file}:{number}: not a JSON object, skipped", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot read {exc.filename}", file=sys.stderr)
        return 2
    report = assess(records, qis, args.subject, sensitive=args.sensitive, threshold=args.threshold)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"records {report.records} (suppressed apart: {report.suppressed}, unreadable: {bad})")
        print(f"classes {report.classes}, k achieved {report.k}")
        print("class sizes (subjects: classes): " + ", ".join(f"{s}: {c}" for s, c in sorted(report.class_sizes.items())))
        print(f"unique records {report.unique_share:.2%}")
        print(f"prosecutor risk: highest {report.highest_risk:.3f}, mean {report.mean_risk:.3f}, "
              f"records above {report.threshold:g}: {report.at_risk_share:.2%}")
        if report.l_value is not None:
            print(f"l achieved for {args.sensitive}: {report.l_value}")
        if report.levels:
            print("release levels: " + ", ".join(f"{lv}: {n}" for lv, n in sorted(report.levels.items())))
    if args.html:
        Path(args.html).write_text(render_html(report))
    if args.fail_below is not None and report.k < args.fail_below:
        print(f"k {report.k} is below {args.fail_below}", file=sys.stderr)
        return 1
    return 0
