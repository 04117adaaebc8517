"""How ``flink-anonymizer status`` names what the REST API reports (no JVM: metric ids as Flink writes them).

The ids below were read from a running protect_stream job's ``/subtasks/metrics``; the cluster
test (``tests/integration/test_cluster.py``) runs the command against a real cluster.
"""

from __future__ import annotations

import pytest

from flink_jobs.cli.submit import format_status, iso_time, operator_metrics, watermark_metric

KANON = "k-anon_anonymized_stage_0.k_anonymity.view.anonymized.stage.0."
DP_BOUND = "dp-bound-contributions[aggregated]___stream_key_by_map_operator."
DP_GATE = "dp-budget-gate[aggregated]__sink-aggregated-to-row."


@pytest.mark.parametrize(("metric_id", "operator", "label"), [
    (KANON + "buffered", "k-anon anonymized stage 0", "buffered"),  # the id that was cut at 40 characters
    (KANON + "level.3.released", "k-anon anonymized stage 0", "released (level 3)"),  # a group pair
    (KANON + "longest_wait_ms", "k-anon anonymized stage 0", "longest wait (ms)"),  # a unit
    (DP_BOUND + "dp_late_records_dropped", "dp-bound-contributions[aggregated]", "late records dropped"),
    (DP_GATE + "dp_releases_refused_budget", "dp-budget-gate[aggregated]", "releases refused budget"),  # fused
    ("raw-kafka-to-tuple__protect.protect.records_in", "protect", "records in"),
    ("raw-kafka-to-tuple__protect.protect.view.anonymized.field.card.fields_dropped", "protect",
     "fields dropped (view anonymized, field card)"),  # nested groups
])
def test_when_a_metric_id_is_long_then_its_operator_and_label_are_whole_words(metric_id, operator, label):
    assert operator_metrics({metric_id: 7.0}) == {operator: {label: 7.0}}


def test_when_a_stage_reports_ncp_then_status_shows_its_mean_and_epsilon_in_units():
    operators = operator_metrics({KANON + "ncp_micro": 300_000.0, KANON + "ncp_records": 2.0,
                                  DP_GATE + "dp_epsilon_spent_micro": 1_500_000.0})
    assert operators["k-anon anonymized stage 0"] == {"mean NCP": pytest.approx(0.15)}
    status = {"job": {"jid": "j", "name": "protect_stream[x]", "state": "RUNNING", "duration": 5000},
              "checkpoints": {}, "source": 19_456, "views": {"aggregated": 3}, "operators": operators,
              "watermarks": {"dp-budget-gate[aggregated]": 1_710_461_293_999, "k-anon anonymized stage 0": None}}
    text = format_status(status)
    assert "19,456" in text and "epsilon spent" in text and "1.500" in text
    assert "2024-03-15T00:08:13.999Z" in text and "none yet" in text


@pytest.mark.parametrize(("ms", "shown"), [
    (-(2**63), "none yet"),  # Long.MIN_VALUE: no watermark has arrived
    (None, "none yet"),  # the vertex reported none
    (2**63 - 1, "end of input"),  # Long.MAX_VALUE: a bounded input ended
    (0, "1970-01-01T00:00:00.000Z"),
])
def test_when_a_watermark_is_a_sentinel_then_it_is_named_not_shown_as_a_date(ms, shown):
    assert iso_time(ms) == shown


@pytest.mark.parametrize(("operator", "expected"), [
    ("k-anon a stage 1", "k-anon_a_stage_1.currentInputWatermark"),
    ("k-anon a stage 10", "k-anon_a_stage_10.currentInputWatermark"),
    ("k-anon a_stage_1 stage 0", "k-anon_a_stage_1_stage_0.currentInputWatermark"),
    ("dp-bound-contributions[a]", "dp-bound-contributions[a]___stream_key_by_map_operator.currentInputWatermark"),
    ("dp-budget-gate[a]", "dp-budget-gate[a]__sink-a-to-row.currentInputWatermark"),
    ("k-anon b stage 0", None),
])
def test_an_operators_watermark_metric_is_its_own_not_one_whose_name_it_begins(operator, expected):
    available = ["k-anon_a_stage_1_stage_0.currentInputWatermark", "k-anon_a_stage_10.currentInputWatermark",
                 "k-anon_a_stage_1.currentInputWatermark", "k-anon_a_stage_1.k_anonymity.view.a.stage.1.buffered",
                 "dp-bound-contributions[a]___stream_key_by_map_operator.currentInputWatermark",
                 "dp-budget-gate[a]__sink-a-to-row.currentInputWatermark"]
    assert watermark_metric(operator, available) == expected
