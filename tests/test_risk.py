"""Unit tests of the risk report and its CLI command."""

from __future__ import annotations

import argparse
import json

import pytest

from flink_jobs import cli_risk
from operators.risk import assess, parse_line, render_html


def rows(*specs):
    """(age, zip, subject, band, level) -> (headers, value)."""
    return [({"k_level": str(level)}, {"age": age, "zip": zip_, "customerId": who, "band": band})
            for age, zip_, who, band, level in specs]


def test_when_classes_differ_in_size_then_k_is_the_smallest_in_distinct_subjects():
    records = rows(("30-39", "941**", "a", "x", 0), ("30-39", "941**", "a", "y", 0), ("30-39", "941**", "b", "x", 0),
                   ("*", "*", "c", "x", 3))
    report = assess(records, ["age", "zip"], "customerId", sensitive="band")
    assert (report.records, report.classes, report.k) == (4, 2, 1)
    assert report.class_sizes == {2: 1, 1: 1}
    assert report.unique_share == 0.25 and report.highest_risk == 1.0
    assert report.mean_risk == pytest.approx((0.5 * 3 + 1.0) / 4)
    assert report.at_risk_share == 1.0  # every risk (0.5 and 1) is above 0.2
    assert report.l_value == 1 and report.levels == {"0": 3, "3": 1}


def test_when_a_record_is_suppressed_then_it_is_counted_apart():
    records = [*rows(("30-39", "941**", "a", "x", 0)), ({"k_suppressed": "timeout"}, {"age": 34, "customerId": "z"})]
    report = assess(records, ["age", "zip"], "customerId")
    assert report.records == 1 and report.suppressed == 1 and report.k == 1


def test_when_a_line_is_the_job_envelope_or_a_bare_record_then_both_parse():
    assert parse_line('{"key": null, "headers": {"k_level": "1"}, "value": {"age": "30-39"}}') == (
        {"k_level": "1"}, {"age": "30-39"})
    assert parse_line('{"age": "30-39"}') == ({}, {"age": "30-39"})
    with pytest.raises(ValueError):
        parse_line("[1, 2]")


def test_risk_command_reports_and_gates_on_k(tmp_path, capsys):
    view = tmp_path / "view"
    view.mkdir()
    lines = [{"key": None, "headers": {"k_level": "0"}, "value": {"age": "30-39", "customerId": c}} for c in "abc"]
    (view / "part-0.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    parser = argparse.ArgumentParser()
    cli_risk.register(parser.add_subparsers())
    html_out = tmp_path / "risk.html"
    args = parser.parse_args(["risk", str(view), "--quasi-identifiers", "age", "--subject", "customerId",
                              "--html", str(html_out), "--fail-below", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert "k achieved 3" in out.out and "part-0.jsonl:4" in out.err and "not json" not in out.err
    assert "<svg" in html_out.read_text()
    args = parser.parse_args(["risk", str(view), "--quasi-identifiers", "age", "--subject", "customerId",
                              "--fail-below", "4", "--json"])
    assert args.func(args) == 1
    assert json.loads(capsys.readouterr().out)["k"] == 3


def test_html_report_shows_figures_not_published_values():
    report = assess(rows(("<b>", "941**", "a", "x", 0)), ["age", "zip"], "customerId")
    page = render_html(report)
    assert "<b>" not in page and "941**" not in page and "&quot;k&quot;: 1" in page  # figures, escaped
