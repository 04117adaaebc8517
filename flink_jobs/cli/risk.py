"""``flink-anonymizer risk`` and ``dp-report``: what a recipient of a published view can learn.

::

    flink-anonymizer risk out/anonymized/ --policy conf/policies/customer-events.yaml --view anonymized \
        --html risk.html --json-out risk.json
    flink-anonymizer risk --quasi-identifiers age,zip --subject customerId --sensitive band --k 5 view.jsonl
    flink-anonymizer dp-report out/aggregated/ --policy conf/policies/customer-events.yaml --html dp.html

INPUT is JSON Lines files or folders of them (``*.jsonl``, as the job's file sinks
write them), or ``kafka:TOPIC``. A folder's sibling ``<folder>.suppressed/`` (where the
job writes what k-anonymity suppressed) is counted too. With ``--policy`` the view's
``k_anonymity`` block gives the quasi-identifiers, the subject field, the ``k`` and ``l``
required, the QIs' domains and the number of release levels; options given on the
command line win. The exit code is 1 when the view fails its requirement (or
``--fail-below K``), 2 on a usage error.

The policy is read as YAML, not compiled: the report shares no code with the
k-anonymity operator it judges.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from flink_jobs.report import page
from flink_jobs.report.risk import QiSpec, Requirement, assess, assess_dp, parse_line

__all__ = ["register"]

#: the policy's hierarchy level kinds, as the report reads them off published values
_KIND_OF_LEVEL = {"range": "range", "truncate": "truncate", "geohash": "geohash", "grid": "grid", "date": "date",
                  "group": "group"}


class UsageError(ValueError):
    """A problem with the command line or the policy; its text names no record value."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``risk`` and ``dp-report`` commands to ``subparsers``; return ``risk``'s parser."""
    parser = subparsers.add_parser(
        "risk", help="k, class sizes and prosecutor risk of a published view, with a PASS/FAIL against the policy",
        description="Group a view's records by their published quasi-identifiers and report the k achieved "
        "(distinct subjects in the smallest class) against the k required, the class sizes, the share of unique "
        "records, prosecutor risk as ARX defines it, l for a sensitive attribute, records per release level and "
        "information loss (NCP) per quasi-identifier. Records with a k_suppressed header are counted apart. "
        "Reads JSON Lines files, or folders of *.jsonl.")
    _inputs(parser)
    parser.add_argument("--policy", metavar="P", help="policy YAML: the view's k_anonymity block gives the QIs, "
                        "subject, k and l required, domains and release levels")
    parser.add_argument("--view", metavar="NAME", help="the view in --policy (default: its only k-anonymous view)")
    parser.add_argument("--quasi-identifiers", help="comma-separated published QI fields (default: the policy's)")
    parser.add_argument("--subject", help="field holding the (pseudonymized) subject (default: the policy's subject_field)")
    parser.add_argument("--sensitive", help="sensitive attribute for l-diversity (default: the policy's l_diversity)")
    parser.add_argument("--k", type=int, metavar="K", help="k required (default: the policy's)")
    parser.add_argument("--l", type=int, metavar="L", dest="l_required", help="l required (default: the policy's)")
    parser.add_argument("--threshold", type=float, default=0.2,
                        help="a record is at risk above this prosecutor risk (default 0.2, i.e. classes under 5)")
    parser.add_argument("--html", metavar="OUT", help="also write a one-file HTML report: summary, charts, raw figures")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    parser.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--fail-below", type=int, metavar="K", help="exit 1 when the view's k is below K")
    parser.set_defaults(func=handler)

    dp = subparsers.add_parser(
        "dp-report", help="the releases of a differentially private view and its privacy budget",
        description="Read a DP view's releases and report, per window and group, each metric with its 95% "
        "interval, the cumulative epsilon spent (epsilon_spent header) against total_epsilon, and the group-windows "
        "not released. Exit 1 when the spend is over the budget.")
    _inputs(dp)
    dp.add_argument("--policy", metavar="P", help="policy YAML: the view's differential_privacy block gives "
                    "group_by, epsilon, delta, total_epsilon and public_groups")
    dp.add_argument("--view", metavar="NAME", help="the view in --policy (default: its only DP view)")
    dp.add_argument("--total-epsilon", type=float, metavar="E", help="the budget (default: the policy's total_epsilon)")
    dp.add_argument("--html", metavar="OUT", help="also write a one-file HTML report")
    dp.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    dp.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON to FILE")
    dp.set_defaults(func=dp_handler)
    return parser


def _inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="JSON Lines file or folder, or kafka:TOPIC (read_committed, from the beginning)")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                        help="Kafka HOST:PORT for kafka:TOPIC inputs (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")


def _with_suppressed(inputs: list[str]) -> list[str]:
    """The inputs, and beside each folder its ``<folder>.suppressed/`` when the job wrote one."""
    out = list(inputs)
    for name in inputs:
        path = Path(name)
        sibling = path.parent / (path.name + ".suppressed")
        if not name.startswith("kafka:") and path.is_dir() and sibling.is_dir() and str(sibling) not in out:
            out.append(str(sibling))
    return out


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


def _read(inputs: list[str], bootstrap: str) -> tuple[list[tuple[dict, dict]], int]:
    records, bad = [], 0
    for file, number, line in _lines(inputs, bootstrap):
        try:
            records.append(parse_line(line))
        except ValueError:
            bad += 1
            if bad <= 3:  # by position only: a view's line may still be sensitive
                print(f"warning: {file}:{number}: not a JSON object, skipped", file=sys.stderr)
    return records, bad


def _policy_view(path: str, view: str | None, block_key: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """``(document, view name, the view's block_key block)`` of a policy, read as YAML."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError:
        raise UsageError(f"cannot read the policy {path}") from None
    except yaml.YAMLError:
        raise UsageError(f"{path}: not valid YAML (flink-anonymizer validate names the problem)") from None
    views = document.get("views") if isinstance(document, dict) else None
    if not isinstance(views, dict):
        raise UsageError(f"{path}: no views")
    candidates = [name for name, v in views.items() if isinstance(v, dict) and isinstance(v.get(block_key), dict)]
    if view is None:
        if len(candidates) != 1:
            raise UsageError(f"{path}: give --view, one of: {', '.join(candidates) or '(no view has ' + block_key + ')'}")
        view = candidates[0]
    if view not in views:
        raise UsageError(f"{path}: no view {view!r} (views: {', '.join(map(str, views))})")
    if view not in candidates:
        raise UsageError(f"{path}: view {view!r} has no {block_key} block (views with one: {', '.join(candidates) or 'none'})")
    return document, view, views[view][block_key]


def _qi_specs(block: Mapping[str, Any]) -> list[QiSpec]:
    specs = []
    for name, spec in (block.get("quasi_identifiers") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kinds = [next(iter(level)) for level in spec.get("hierarchy") or [] if isinstance(level, dict) and level]
        kind = _KIND_OF_LEVEL.get(kinds[0]) if kinds else None
        if kind is None and (spec.get("hierarchy_file") or spec.get("groups")):
            kind = "group"
        domain = spec.get("domain")
        number_domain = (isinstance(domain, list) and len(domain) == 2
                         and all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in domain))
        specs.append(QiSpec(str(name), kind=kind, domain=(float(domain[0]), float(domain[1]))
                            if number_domain and kind == "range" and domain[0] < domain[1] else None))
    return specs


def _level_count(block: Mapping[str, Any]) -> int | None:
    """Release levels the view's path has: one per step of a lattice path through the QIs' hierarchies."""
    if block.get("on_timeout") == "suppress":
        return 1
    depths = [len(spec.get("hierarchy") or []) for spec in (block.get("quasi_identifiers") or {}).values()
              if isinstance(spec, dict)]
    if not depths or not all(depths):
        return None
    path = block.get("path", "cheapest_first")
    if isinstance(path, list):
        return len(path)
    if path == "lockstep":
        return max(depths)
    return 1 + sum(d - 1 for d in depths)  # cheapest_first: one QI one step coarser per level


def handler(args: argparse.Namespace) -> int:
    try:
        return _risk(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _risk(args: argparse.Namespace) -> int:
    block: dict[str, Any] = {}
    subject, source = args.subject, ", ".join(args.inputs)
    if args.policy:
        document, view, block = _policy_view(args.policy, args.view, "k_anonymity")
        subject = subject or document.get("subject_field")
        source += f" (policy {document.get('id', args.policy)}, view {view})"
    elif args.view:
        raise UsageError("--view needs --policy")
    specs = _qi_specs(block)
    if args.quasi_identifiers is not None:
        named = [q.strip() for q in args.quasi_identifiers.split(",") if q.strip()]
        known = {s.name: s for s in specs}
        specs = [known.get(q, QiSpec(q)) for q in named]
    if not specs:
        raise UsageError("--quasi-identifiers names no field (give it, or --policy with --view)")
    if not subject:
        raise UsageError("--subject is missing (give it, or --policy)")
    if not 0 < args.threshold <= 1:
        raise UsageError("--threshold must be in (0, 1]")
    ldiv = block.get("l_diversity") if isinstance(block.get("l_diversity"), dict) else {}
    sensitive = args.sensitive or ldiv.get("attribute")
    k_required = args.k if args.k is not None else block.get("k")
    l_required = args.l_required if args.l_required is not None else ldiv.get("l")
    try:
        requirement = Requirement(k=k_required, l_value=l_required)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    inputs = _with_suppressed(args.inputs)
    try:
        records, bad = _read(inputs, args.bootstrap_servers)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}") from None
    report = assess(records, specs, subject, sensitive=sensitive, threshold=args.threshold, requirement=requirement)
    figures = report.as_dict()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for extra in inputs[len(args.inputs):]:
            print(f"suppressed records read from {extra}")
        print(f"records {report.records} (suppressed apart: {report.suppressed}, unreadable: {bad})")
        print(f"classes {report.classes}, k achieved {report.k}"
              + (f" (required {requirement.k})" if requirement.k is not None else ""))
        print("class sizes (subjects: classes): " + ", ".join(f"{s}: {c}" for s, c in sorted(report.class_sizes.items())))
        print(f"unique records {page.share(report.unique_share)}")
        print(f"prosecutor risk: highest {page.risk(report.highest_risk)}, mean {page.risk(report.mean_risk)}, "
              f"records above {report.threshold:g}: {page.share(report.at_risk_share)} "
              f"({page.count(report.at_risk_records)} records)")
        if report.l_value is not None:
            print(f"l achieved for {sensitive}: {report.l_value}"
                  + (f" (required {requirement.l_value})" if requirement.l_value is not None else ""))
        if report.levels:
            print("release levels: " + ", ".join(f"{lv}: {n}" for lv, n in figures["release_levels"].items()))
        if report.ncp:
            print("NCP by quasi-identifier: " + ", ".join(f"{q} {page.ncp(v)}" for q, v in report.ncp.items())
                  + f"; mean {page.ncp(report.ncp_overall)}")
        if report.verdict is None:
            print("verdict: NO VERDICT (no k or l required: give --policy and --view, or --k)")
        else:
            print(f"verdict: {report.verdict}" + (": " + "; ".join(report.failures) if report.failures else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.html:
        Path(args.html).write_text(page.render_risk_html(report, source=source, sensitive=sensitive,
                                                         level_count=_level_count(block) if block else None))
    if args.fail_below is not None and report.k < args.fail_below:
        print(f"k {report.k} is below {args.fail_below}", file=sys.stderr)
        return 1
    return 1 if report.verdict == "FAIL" else 0


def dp_handler(args: argparse.Namespace) -> int:
    try:
        return _dp(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dp(args: argparse.Namespace) -> int:
    block: dict[str, Any] = {}
    source = ", ".join(args.inputs)
    if args.policy:
        document, view, block = _policy_view(args.policy, args.view, "differential_privacy")
        source += f" (policy {document.get('id', args.policy)}, view {view})"
    elif args.view:
        raise UsageError("--view needs --policy")
    group_by = block.get("group_by") if isinstance(block.get("group_by"), list) else None
    public = [g if isinstance(g, list) else [g] for g in block.get("public_groups") or []]
    total = args.total_epsilon if args.total_epsilon is not None else _float(block.get("total_epsilon"))
    try:
        records, bad = _read(args.inputs, args.bootstrap_servers)
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}") from None
    report = assess_dp(records, group_by=group_by, total_epsilon=total, epsilon=_float(block.get("epsilon")),
                       delta=_float(block.get("delta")), public_groups=public)
    figures = report.as_dict()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"releases {len(report.releases)} in {len(report.windows)} windows, {len(report.groups)} groups"
              + (f" ({', '.join(report.group_by)})" if report.group_by else "")
              + f" (not releases: {report.skipped}, unreadable: {bad})")
        print(f"epsilon per window {page.eps(report.epsilon)}, delta per window {page.eps(report.delta)}")
        print(f"epsilon spent {page.eps(report.epsilon_spent)} of total_epsilon "
              + (page.eps(total) if total is not None else "not set (no cap)"))
        print(f"group-windows not released: {report.unreleased} (suppressed by the threshold, refused by the "
              "budget, or no record: the view does not say which)")
        if report.verdict is None:
            print("verdict: NO VERDICT (no total_epsilon: the spend has no cap)")
        else:
            print(f"verdict: {report.verdict}" + (": " + "; ".join(report.failures) if report.failures else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    if args.html:
        Path(args.html).write_text(page.render_dp_html(report, source=source))
    return 1 if report.verdict == "FAIL" else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
