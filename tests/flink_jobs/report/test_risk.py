"""Unit tests of the risk report, the DP report, their pages and their CLI commands."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from flink_jobs.cli import risk as cli_risk
from flink_jobs.report.page import render_dp_html, render_risk_html
from flink_jobs.report.risk import QiSpec, Requirement, assess, assess_dp, parse_line, risk_bins


def rows(*specs):
    """(age, zip, subject, band, level) -> (headers, value)."""
    return [({"k_level": str(level)}, {"age": age, "zip": zip_, "customerId": who, "band": band})
            for age, zip_, who, band, level in specs]


def cli(*argv):
    parser = argparse.ArgumentParser()
    cli_risk.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def write_view(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


POLICY = """
version: 1
id: test-policy
subject_field: customerId
views:
  anonymized:
    sink: {topic: anon}
    fields: {customerId: keep, band: keep}
    k_anonymity:
      k: 3
      quasi_identifiers:
        age: {hierarchy: [{range: 10}, {range: 20}, "*"], domain: [0, 100]}
        zip: {hierarchy: [{truncate: 3}, "*"]}
      l_diversity: {attribute: band, l: 2}
  aggregated:
    sink: {topic: agg}
    differential_privacy: {window: 1m, group_by: [region], epsilon: 1.0, total_epsilon: 2.5, metrics: [count]}
"""


def test_when_classes_differ_in_size_then_k_is_the_smallest_in_distinct_subjects():
    records = rows(("30-39", "941**", "a", "x", 0), ("30-39", "941**", "a", "y", 0), ("30-39", "941**", "b", "x", 0),
                   ("*", "*", "c", "x", 3))
    report = assess(records, ["age", "zip"], "customerId", sensitive="band")
    assert (report.records, report.classes, report.k) == (4, 2, 1)
    assert report.class_sizes == {2: 1, 1: 1}
    assert report.unique_share == 0.25 and report.highest_risk == 1.0
    assert report.mean_risk == pytest.approx((0.5 * 3 + 1.0) / 4)
    assert report.at_risk_share == 1.0 and report.at_risk_records == 4  # every risk (0.5 and 1) is above 0.2
    assert report.l_value == 1 and report.levels == {"0": 3, "3": 1}
    assert report.records_by_size == {2: 3, 1: 1}
    assert report.verdict is None  # nothing required, nothing judged


def test_when_a_record_is_suppressed_then_it_is_counted_apart():
    records = [*rows(("30-39", "941**", "a", "x", 0)), ({"k_suppressed": "timeout"}, {"age": 34, "customerId": "z"})]
    report = assess(records, ["age", "zip"], "customerId")
    assert report.records == 1 and report.suppressed == 1 and report.k == 1
    assert report.suppressed_reasons == {"timeout": 1}


@pytest.mark.parametrize(("requirement", "verdict", "failures"), [
    (Requirement(k=2), "PASS", []),  # both classes have two subjects
    (Requirement(k=3), "FAIL", ["k 2 is below the 3 required"]),
    (Requirement(k=2, l_value=2), "FAIL", ["l 1 is below the 2 required"]),  # one class has a single band
    (Requirement(l_value=1), "PASS", []),  # l alone
])
def test_when_a_requirement_is_given_then_the_verdict_names_what_fails(requirement, verdict, failures):
    records = rows(("30-39", "941**", "a", "x", 0), ("30-39", "941**", "b", "y", 0),
                   ("40-49", "941**", "c", "x", 1), ("40-49", "941**", "d", "x", 1))
    report = assess(records, ["age", "zip"], "customerId", sensitive="band", requirement=requirement)
    assert (report.verdict, report.failures) == (verdict, failures)


def test_when_nothing_is_published_then_a_requirement_fails():
    report = assess([], ["age"], "customerId", requirement=Requirement(k=5))
    assert report.verdict == "FAIL" and "no published record" in report.failures


def test_ncp_is_read_off_the_published_values_with_the_policy_domain():
    records = [({"k_level": "0"}, {"age": "20-29", "zip": "941**", "loc": "9q8y", "customerId": "a"}),
               ({"k_level": "1"}, {"age": "*", "zip": "9****", "loc": "9q", "customerId": "b"})]
    report = assess(records, [QiSpec("age", "range", (0, 100)), "zip", "loc"], "customerId")
    assert report.ncp["age"] == pytest.approx((10 / 100 + 1.0) / 2)  # a width-10 range of 0-100, then a *
    assert report.ncp["zip"] == pytest.approx(((10**2 - 1) / (10**5 - 1) + (10**4 - 1) / (10**5 - 1)) / 2)
    # the geohash 9q8y is a corner of 9q, which is the whole published area: half its sides, then all of them
    assert 0 < report.ncp["loc"] < 0.6
    assert report.level_detail["0"].steps == {"age": "{range: 10}", "zip": "{truncate: 3}", "loc": "{geohash: 4}"}
    assert report.level_detail["1"].steps == {"age": "*", "zip": "{truncate: 1}", "loc": "{geohash: 2}"}


def test_when_a_record_is_suppressed_then_it_costs_full_information_loss():
    records = [*rows(("30-39", "941**", "a", "x", 0)), ({"k_suppressed": "timeout"}, {"customerId": "z"})]
    report = assess(records, [QiSpec("age", "range", (0, 100)), "zip"], "customerId")
    assert report.ncp["age"] == pytest.approx((0.1 + 1.0) / 2)


def test_when_a_level_class_is_smaller_than_k_then_its_example_is_withheld():
    records = rows(("30-39", "941**", "a", "x", 0), ("30-39", "941**", "b", "x", 0), ("30-39", "941**", "c", "x", 0),
                   ("40-59", "94***", "d", "x", 1))
    report = assess(records, ["age", "zip"], "customerId", requirement=Requirement(k=3))
    assert report.level_detail["0"].example == {"age": "30-39", "zip": "941**"}
    assert report.level_detail["1"].example is None  # one subject: its values stay off the page
    assert report.level_detail["1"].steps == {"age": "{range: 20}", "zip": "{truncate: 2}"}


def test_risk_bins_cover_every_record_highest_risk_first():
    bins = risk_bins({1: 2, 5: 10, 7: 3, 30: 4, 500: 1})
    assert sum(n for _, n, _ in bins) == 20
    assert bins[0] == ("100%", 2, 1.0) and bins[4] == ("20%", 10, 0.2)
    assert dict((label, n) for label, n, _ in bins)["2-5%"] == 4


def test_when_a_line_is_the_job_envelope_or_a_bare_record_then_both_parse():
    assert parse_line('{"key": null, "headers": {"k_level": "1"}, "value": {"age": "30-39"}}') == (
        {"k_level": "1"}, {"age": "30-39"})
    assert parse_line('{"age": "30-39"}') == ({}, {"age": "30-39"})
    with pytest.raises(ValueError):
        parse_line("[1, 2]")


def test_risk_command_reports_and_gates_on_k(tmp_path, capsys):
    lines = [{"key": None, "headers": {"k_level": "0"}, "value": {"age": "30-39", "customerId": c}} for c in "abc"]
    view = write_view(tmp_path / "view", lines)
    with (view / "part-0.jsonl").open("a") as handle:
        handle.write("not json\n")
    html_out = tmp_path / "risk.html"
    assert cli("risk", str(view), "--quasi-identifiers", "age", "--subject", "customerId",
               "--html", str(html_out), "--fail-below", "3") == 0
    out = capsys.readouterr()
    assert "k achieved 3" in out.out and "part-0.jsonl:4" in out.err and "not json" not in out.err
    assert "<svg" in html_out.read_text()
    assert cli("risk", str(view), "--quasi-identifiers", "age", "--subject", "customerId",
               "--fail-below", "4", "--json") == 1
    assert json.loads(capsys.readouterr().out)["k"] == 3


def test_risk_command_takes_the_requirement_from_the_policy(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    lines = [{"headers": {"k_level": "0"}, "value": {"age": "30-39", "zip": "941**", "band": b, "customerId": c}}
             for c, b in zip("abcd", "xyxy", strict=True)]
    view = write_view(tmp_path / "out" / "anonymized", lines)
    write_view(tmp_path / "out" / "anonymized.suppressed",
               [{"headers": {"k_suppressed": "timeout"}, "value": {"age": 77, "zip": "94110", "customerId": "e"}}])
    page, figures = tmp_path / "risk.html", tmp_path / "risk.json"
    assert cli("risk", str(view), "--policy", str(policy), "--view", "anonymized",
               "--html", str(page), "--json-out", str(figures)) == 0
    out = capsys.readouterr().out
    assert "k achieved 4 (required 3)" in out and "l achieved for band: 2 (required 2)" in out
    assert "verdict: PASS" in out and "suppressed apart: 1" in out and "anonymized.suppressed" in out
    assert "94110" not in page.read_text()  # a suppressed record's raw QIs are counted, never shown
    saved = json.loads(figures.read_text())
    assert saved["required"] == {"k": 3, "l": 2} and saved["verdict"] == "PASS" and saved["suppressed"] == 1
    # the same view judged against a stricter k: FAIL, exit 1
    assert cli("risk", str(view), "--policy", str(policy), "--k", "5") == 1
    assert "verdict: FAIL: k 4 is below the 5 required" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--policy", "{policy}", "--view", "nope"], "no view 'nope'"),  # a view the policy lacks
    (["--policy", "{policy}", "--view", "aggregated"], "has no k_anonymity block"),  # not a k-anonymous view
    (["--policy", "{tmp}/missing.yaml"], "cannot read the policy"),
    (["--subject", "customerId"], "--quasi-identifiers names no field"),  # neither QIs nor a policy
])
def test_when_the_command_line_is_wrong_then_exit_2_naming_the_problem(tmp_path, capsys, argv, message):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    view = write_view(tmp_path / "v", [{"age": "30-39", "customerId": "a"}])
    argv = [a.format(policy=policy, tmp=tmp_path) for a in argv]
    assert cli("risk", str(view), *argv) == 2
    assert message in capsys.readouterr().err


def test_risk_page_is_one_file_with_a_verdict_and_no_published_value_of_a_small_class():
    report = assess(rows(("<b>", "941**", "a", "x", 0)), ["age", "zip"], "customerId", requirement=Requirement(k=2))
    page = render_risk_html(report)
    assert "<b>" not in page and "941**" not in page  # a class of one subject shows its steps, not its values
    assert 'data-figure=verdict><strong>FAIL' in page and "k 1 is below the 2 required" in page
    assert '<meta name=viewport' in page and "default-src 'none'" in page
    assert page.index("data-figure=verdict") < page.index("<svg") < page.index("<details>")  # summary first
    assert not re.search(r"""(src|href)=(?!["']?data:)""", page)  # nothing to fetch
    for title in ("subjects in the class", "release level (k_level header)", "prosecutor risk", "quasi-identifier"):
        assert title in page  # each chart has its axis titles


def dp_lines(spent_by_window, groups=("east", "west"), skip=()):
    out = []
    for minute, spent in enumerate(spent_by_window):
        for group in groups:
            if (minute, group) in skip:
                continue
            out.append({"headers": {"epsilon_spent": spent}, "value": {
                "window_start": f"2024-03-15T00:0{minute}:00.000Z", "window_end": f"2024-03-15T00:0{minute + 1}:00.000Z",
                "region": group, "count": {"value": 100 + minute, "std": 5.6, "ci95": [88.0, 112.0]},
                "epsilon": 1.0, "delta": 1e-6, "mechanism": "laplace", "public_group": False}})
    return out


def test_dp_report_counts_unreleased_groups_and_the_spend_against_the_budget():
    records = [(x["headers"], x["value"]) for x in dp_lines([1.0, 2.0, 3.0], skip={(1, "west")})]
    report = assess_dp(records, total_epsilon=2.5)
    assert (len(report.releases), len(report.windows), report.groups) == (5, 3, (("east",), ("west",)))
    assert report.group_by == ("region",) and report.metrics == ("count",)
    assert report.missing == {"2024-03-15T00:00:00.000Z": 0, "2024-03-15T00:01:00.000Z": 1,
                              "2024-03-15T00:02:00.000Z": 0}
    assert report.epsilon_spent == 3.0 and report.verdict == "FAIL"
    assert report.failures == ["epsilon spent 3 is above total_epsilon 2.5"]
    assert report.releases[0].metrics["count"] == (100.0, 5.6, 88.0, 112.0)
    assert assess_dp(records).verdict is None  # no budget set: nothing to pass or fail
    page = render_dp_html(report)
    assert "total_epsilon = 2.5" in page and "Every release, with its 95% interval" in page
    assert "count, released with its 95% interval" in page


def test_dp_report_command_reads_the_budget_from_the_policy(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    view = write_view(tmp_path / "aggregated", dp_lines([1.0, 2.0]))
    page = tmp_path / "dp.html"
    assert cli("dp-report", str(view), "--policy", str(policy), "--html", str(page)) == 0
    out = capsys.readouterr().out
    assert "releases 4 in 2 windows, 2 groups (region)" in out and "epsilon spent 2 of total_epsilon 2.5" in out
    assert "<svg" in page.read_text()
    assert cli("dp-report", str(view), "--total-epsilon", "1.5", "--json") == 1
    assert json.loads(capsys.readouterr().out)["failures"] == ["epsilon spent 2 is above total_epsilon 1.5"]
