import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from operators.dp.core import (
    BudgetLedger,
    ContributionBounder,
    GroupReleaser,
    SubjectWindow,
    decode_vector,
    decode_window,
    encode_vector,
    encode_window,
    extract_contribution,
    laplace_threshold,
    window_starts,
)
from operators.dp.mechanisms import make_random
from operators.dp.params import DpParams, group_key
from udfs.registry import ParamError, TransformError

DESIGN_BLOCK = {
    "window": "1m",
    "group_by": ["region"],
    "epsilon": 1.0,
    "max_groups_per_subject": 1,
    "metrics": ["count", {"sum": "purchaseAmount", "bounds": [0, 1000]}],
}


def block(**changes):
    out = dict(DESIGN_BLOCK)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# -- parameters ---------------------------------------------------------------
def test_when_design_example_then_valid_with_documented_defaults():
    p = DpParams.from_policy(DESIGN_BLOCK)
    assert p.window_ms == 60_000 and p.slide == 60_000
    assert p.mechanism == "laplace" and p.delta == 1e-6
    assert p.max_contributions_per_group == 1 and p.allowed_lateness_ms == 0
    assert p.public_groups is None and p.total_epsilon is None
    assert p.state_ttl_ms == 3_600_000
    assert [m.name for m in p.metrics] == ["count", "purchaseAmount_sum"]
    # one share each for count, sum and group selection
    assert p.plan["selection"] == pytest.approx((1 / 3, 1e-6))
    assert p.window_epsilon == 1.0 and p.window_delta == 1e-6


def test_when_every_option_given_then_parsed():
    p = DpParams.from_policy(
        block(
            slide="30s",
            allowed_lateness="5s",
            mechanism="gaussian",
            delta=1e-5,
            max_contributions_per_group=3,
            metrics=["count", {"mean": "purchaseAmount", "bounds": [0, 100], "name": "avg"}],
            public_groups=["us-west", ["us-east"]],
            total_epsilon=10,
            state_ttl="2h",
        )
    )
    assert p.slide_ms == 30_000 and p.allowed_lateness_ms == 5_000 and p.state_ttl_ms == 7_200_000
    assert p.public_groups == ('["us-west"]', '["us-east"]')
    assert "selection" not in p.plan
    # count takes half of epsilon, the mean the other half split in two; delta split over 3 gaussian parts
    assert p.plan["count"] == [pytest.approx((0.5, 1e-5 / 3))]
    assert p.plan["avg"] == [pytest.approx((0.25, 1e-5 / 3))] * 2


@pytest.mark.parametrize(
    ("changes", "param", "problem"),
    [
        ({"colour": "red"}, "colour", "unknown key"),  # typo in a key
        ({"window": ...}, "window", "is required"),  # window missing
        ({"window": "soon"}, "window", "is not a duration"),  # not a duration
        ({"window": 0}, "window", "must be longer than 0"),  # empty window
        ({"slide": "7s"}, "slide", "must be positive and divide the window"),  # slide does not divide
        ({"allowed_lateness": True}, "allowed_lateness", "must be a duration"),  # bool is no duration
        ({"group_by": []}, "group_by", "must list distinct fields"),  # no group
        ({"group_by": [1]}, "group_by", "must be a list of field names"),  # not names
        ({"epsilon": 0}, "epsilon", "must be greater than 0"),  # epsilon = 0
        ({"epsilon": "1"}, "epsilon", "must be a finite number"),  # epsilon as a string
        ({"delta": 1.0}, "delta", "must be in [0, 1)"),  # delta = 1
        ({"delta": 0}, "delta", "private group selection needs delta > 0"),  # thresholding without delta
        ({"delta": 0, "mechanism": "gaussian", "public_groups": ["x"]}, "delta", "gaussian noise needs delta > 0"),
        ({"mechanism": "staircase"}, "mechanism", "unknown mechanism"),  # mechanism not offered
        ({"max_groups_per_subject": 0}, "max_groups_per_subject", "at least 1"),  # zero groups
        ({"max_contributions_per_group": 1.5}, "max_contributions_per_group", "at least 1"),  # not an int
        ({"metrics": []}, "metrics", "must be a non-empty list"),  # nothing to release
        ({"metrics": ["median"]}, "metrics[0]", "unknown metric"),  # unknown metric
        ({"metrics": ["count", {"sum": "a"}]}, "metrics[1].bounds", "is required"),  # sum without bounds
        ({"metrics": ["count", {"sum": "a", "bounds": [5, 5]}]}, "metrics[1].bounds", "lower bound must be below"),
        ({"metrics": [{"sum": "a", "bounds": [0]}]}, "metrics[0].bounds", "must be two numbers"),
        ({"metrics": [{"sum": "a", "bounds": [0, "x"]}]}, "metrics[0].bounds", "must be a finite number"),
        ({"metrics": [{"sum": "a", "mean": "a", "bounds": [0, 1]}]}, "metrics[0]", "exactly one of"),
        ({"metrics": [{"sum": "a", "bounds": [0, 1], "clip": 1}]}, "metrics[0].clip", "unknown key"),
        ({"metrics": [{"sum": "", "bounds": [0, 1]}]}, "metrics[0].sum", "must name a field"),
        ({"metrics": ["count", "count"]}, "metrics", "must be unique"),  # duplicate names
        ({"public_groups": [["a", "b"]]}, "public_groups[0]", "one scalar per group_by field"),
        ({"public_groups": ["a", "a"]}, "public_groups", "lists a group twice"),
        ({"total_epsilon": 0.5}, "total_epsilon", "must be at least epsilon"),  # can never release
        ({"state_ttl": "1s"}, "state_ttl", "must outlast window plus allowed_lateness"),
    ],
)
def test_when_parameter_is_wrong_then_param_error_names_its_path(changes, param, problem):
    with pytest.raises(ParamError) as info:
        DpParams.from_policy(block(**changes))
    assert info.value.param == param
    assert problem in info.value.problem
    assert info.value.allowed


def test_when_block_is_not_a_mapping_then_refused():
    with pytest.raises(ParamError):
        DpParams.from_policy(["window", "1m"])


# -- records ------------------------------------------------------------------
def test_extract_contribution_gives_group_json_and_values_json():
    p = DpParams.from_policy(block(group_by=["region", "geo.zip"]))
    group, values = extract_contribution(p, {"region": "us-west", "geo": {"zip": "941"}, "purchaseAmount": 12.5})
    assert group == '["us-west", "941"]'
    assert json.loads(values) == {"purchaseAmount": 12.5}
    _, values = extract_contribution(p, {"region": "us-west", "geo": {"zip": "941"}})
    assert json.loads(values) == {"purchaseAmount": None}


def test_group_keys_of_values_a_dict_would_confuse_stay_apart():
    # the per-record path remembers group keys: 1 and True, 0.0 and -0.0 are equal dict keys
    p = DpParams.from_policy(block(group_by=["region"]))
    for value in [1, True, 1, 0.0, -0.0, "1", 1.5, True]:
        group, _ = extract_contribution(p, {"region": value, "purchaseAmount": 1})
        assert group == group_key([value]), value


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"purchaseAmount": 1}, "field region: missing group field"),  # group field absent
        ({"region": None, "purchaseAmount": 1}, "field region: missing group field"),  # group field null
        ({"region": {"a": 1}, "purchaseAmount": 1}, "field region: expected a string or number"),
        ({"region": "x", "purchaseAmount": "12.5"}, "field purchaseAmount: expected a number"),  # string amount
        ({"region": "x", "purchaseAmount": True}, "field purchaseAmount: expected a number"),  # bool amount
        ({"region": "x", "purchaseAmount": float("nan")}, "field purchaseAmount: expected a number"),
    ],
)
def test_when_record_field_has_wrong_type_then_transform_error_without_value(record, message):
    p = DpParams.from_policy(DESIGN_BLOCK)
    with pytest.raises(TransformError) as info:
        extract_contribution(p, record)
    assert str(info.value) == message


def test_window_starts_cover_every_window_holding_the_time():
    tumbling = DpParams.from_policy(DESIGN_BLOCK)
    assert window_starts(tumbling, 125_000) == [120_000]
    sliding = DpParams.from_policy(block(slide="20s"))
    assert window_starts(sliding, 125_000) == [120_000, 100_000, 80_000]
    assert all(s <= 125_000 < s + 60_000 for s in window_starts(sliding, 125_000))


# -- stage 1: contribution bounding -------------------------------------------
def bound(params, records, seed):
    """Run the stage-1 core over one subject-window; returns {group: contribution}."""
    core = ContributionBounder(params)
    window = core.new_window(make_random(seed))
    for group, values in records:
        core.offer(window, group, core.vector(values))
    return core.totals([window])


def test_vector_encoding_round_trips_exactly():
    vector = [1.0, 0.1 + 0.2, -1e-300, 123456789.123, 0.0]
    assert decode_vector(encode_vector(vector)) == vector


def test_window_encoding_round_trips_salt_groups_and_nan_slots():
    window = SubjectWindow(2**62 - 1, {'["us-west"]': [0.25, 3.0, 1.5, math.nan], '["a,b", 2]': [0.5, 1.0, 0.1 + 0.2]})
    back = decode_window(encode_window(window))
    assert back.salt == window.salt and list(back.groups) == list(window.groups)
    assert back.groups['["a,b", 2]'] == [0.5, 1.0, 0.1 + 0.2]
    west = back.groups['["us-west"]']
    assert west[:3] == [0.25, 3.0, 1.5] and math.isnan(west[3])
    assert decode_window(encode_window(SubjectWindow(7))).groups == {}


def test_when_group_not_kept_then_buffer_unchanged():
    p = DpParams.from_policy(block(max_groups_per_subject=1))
    core = ContributionBounder(p)
    window = core.new_window(make_random(3))
    g1, g2 = '["g1"]', '["g2"]'
    assert core.offer(window, g1, core.vector({"purchaseAmount": 1}))
    loser = g2 if core.priority(window.salt, g2) > core.priority(window.salt, g1) else g1
    winner = g1 if loser == g2 else g2
    core.offer(window, winner, core.vector({"purchaseAmount": 1}))
    before = {g: list(acc) for g, acc in window.groups.items()}
    assert core.offer(window, loser, core.vector({"purchaseAmount": 1})) is False
    assert window.groups == before and list(window.groups) == [winner]


def test_a_subject_of_one_group_needs_no_priority_and_a_second_group_computes_both():
    p = DpParams.from_policy(block(max_groups_per_subject=1))
    core = ContributionBounder(p)
    window = core.new_window(make_random(5))
    core.offer(window, '["g1"]', core.vector({"purchaseAmount": 1}))
    core.offer(window, '["g1"]', core.vector({"purchaseAmount": 2}))
    assert math.isnan(window.groups['["g1"]'][0])
    # the priority not yet computed survives the state round trip as NaN
    assert math.isnan(decode_window(encode_window(window)).groups['["g1"]'][0])
    core.offer(window, '["g2"]', core.vector({"purchaseAmount": 3}))
    (kept, acc), = window.groups.items()
    assert acc[0] == core.priority(window.salt, kept)
    assert kept == min(('["g1"]', '["g2"]'), key=lambda g: core.priority(window.salt, g))


def test_record_draws_are_uniform_indices():
    core = ContributionBounder(DpParams.from_policy(DESIGN_BLOCK))
    counts = Counter(core.draw(salt, '["a"]', 7) for salt in range(7000))
    assert set(counts) == set(range(7))
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=6)


def test_when_subject_touches_many_groups_then_kept_groups_are_uniform_not_first_seen():
    p = DpParams.from_policy(block(max_groups_per_subject=2))
    groups = [f'["g{i}"]' for i in range(5)]
    # g0 appears first and 20 times as often: first-seen or frequency-weighted choice would favour it
    records = [(groups[0], {})] * 20 + [(g, {}) for g in groups[1:]]
    trials = 4000
    hits = Counter()
    for seed in range(trials):
        kept = bound(p, records, seed)
        assert len(kept) == 2
        hits.update(kept.keys())
    expected = trials * 2 / 5
    chi2 = sum((hits[g] - expected) ** 2 / expected for g in groups)
    assert chi2 < stats.chi2.ppf(1 - 1e-6, df=4)


def test_when_records_exceed_cap_then_kept_records_are_uniform_and_clamped():
    p = DpParams.from_policy(block(max_contributions_per_group=2, metrics=["count", {"sum": "v", "bounds": [0, 10]}]))
    # values 0..9: each should be kept with probability 2/10
    hits = Counter()
    trials = 3000
    for seed in range(trials):
        (contrib,) = bound(p, [('["a"]', {"v": i}) for i in range(10)], seed).values()
        assert contrib[:2] == [1.0, 2.0]  # one subject, two records
        hits[contrib[2]] += 1
    # the sum of two distinct values drawn uniformly without replacement from 0..9 has mean 9
    sums = np.repeat(list(hits), list(hits.values()))
    assert abs(sums.mean() - 9) < 5 * sums.std() / math.sqrt(trials)


def test_values_are_clamped_to_bounds_and_nulls_skipped():
    p = DpParams.from_policy(
        block(
            max_contributions_per_group=5,
            metrics=["count", {"sum": "v", "bounds": [0, 10]}, {"mean": "v", "bounds": [0, 10]}],
        )
    )
    (contrib,) = bound(p, [('["a"]', {"v": v}) for v in (-50, 3, 1e9, None)], 0).values()
    # subjects, records, sum, mean values, centred mean sum (mid = 5)
    assert contrib == [1.0, 4.0, 13.0, 3.0, (0 - 5) + (3 - 5) + (10 - 5)]


def test_when_subject_floods_one_group_then_it_adds_at_most_its_bound():
    p = DpParams.from_policy(block(max_contributions_per_group=3))
    kept = bound(p, [('["a"]', {"purchaseAmount": 5000})] * 10_000, 1)
    assert kept['["a"]'][:3] == [1.0, 3.0, 3000.0]  # 3 records of at most 1000


# -- stage 2: noise --------------------------------------------------------------
def draws(releaser, metric, acc, n):
    return np.array([releaser.release('["a"]', 0, acc)[metric]["value"] for _ in range(n)], dtype=float)


def assert_variance_matches(sample, truth, stated_std):
    """Mean error about 0 and variance within a 1e-6 two-sided CI of the stated variance.

    The standard error of the sample variance comes from the sample's fourth
    moment, so heavy-tailed noise (Laplace, geometric) gets a fair interval.
    """
    n = len(sample)
    err = sample - truth
    assert abs(err.mean()) < 5 * stated_std / math.sqrt(n)
    var = err.var(ddof=1)
    m4 = np.mean((err - err.mean()) ** 4)
    se = math.sqrt((m4 - var**2) / n)
    z = stats.norm.ppf(1 - 1e-6 / 2)
    assert abs(var - stated_std**2) < z * se, (var, stated_std**2)


@pytest.mark.parametrize(
    ("mechanism", "epsilon"),
    [
        ("laplace", 1.0),  # geometric counts, Laplace sums
        ("laplace", 0.1),  # wide noise
        ("gaussian", 1.0),  # analytic Gaussian, rounded counts
    ],
)
def test_noise_is_present_and_its_variance_matches_the_stated_std(mechanism, epsilon):
    p = DpParams.from_policy(
        block(
            epsilon=epsilon,
            mechanism=mechanism,
            max_groups_per_subject=2,
            max_contributions_per_group=2,
            public_groups=["a"],
        )
    )
    releaser = GroupReleaser(p, random_state=7)
    acc = [500.0, 1000.0, 250_000.0]
    one = releaser.release('["a"]', 0, acc)
    # the count gets two-sided geometric noise of variance 2a/(1-a)^2, a = exp(-eps/L1)
    if mechanism == "laplace":
        a = math.exp(-(epsilon / 2) / (2 * 2))
        assert one["count"]["std"] == pytest.approx(math.sqrt(2 * a / (1 - a) ** 2))
        # Laplace sum: variance 2 b^2 with b = L1 / eps = 2 groups x 2 records x 1000 / (eps/2)
        assert one["purchaseAmount_sum"]["std"] == pytest.approx(math.sqrt(2) * 4000 / (epsilon / 2))
    for metric, truth in (("count", 1000.0), ("purchaseAmount_sum", 250_000.0)):
        sample = draws(releaser, metric, acc, 20_000)
        assert np.unique(sample).size > 100  # noise is present
        assert_variance_matches(sample, truth, one[metric]["std"])


def test_when_epsilon_is_huge_then_counts_are_exact_and_nothing_overflows():
    # exp(-eps) underflows to 0 here: the geometric mechanism's 95% interval must not take log(0)
    p = DpParams.from_policy(block(epsilon=2000.0, metrics=["count"], public_groups=["a"]))
    out = GroupReleaser(p, random_state=2).release('["a"]', 0, [7.0, 7.0])
    assert out["count"]["value"] == 7 and out["count"]["std"] == 0.0 and out["count"]["ci95"] == [7.0, 7.0]


def test_ci95_covers_the_truth_about_95_percent_of_the_time():
    p = DpParams.from_policy(block(public_groups=["a"]))
    releaser = GroupReleaser(p, random_state=3)
    n = 4000
    covered = Counter()
    for _ in range(n):
        out = releaser.release('["a"]', 0, [50.0, 50.0, 20_000.0])
        covered["count"] += out["count"]["ci95"][0] <= 50 <= out["count"]["ci95"][1]
        covered["sum"] += out["purchaseAmount_sum"]["ci95"][0] <= 20_000 <= out["purchaseAmount_sum"]["ci95"][1]
    for key in covered:
        assert abs(covered[key] / n - 0.95) < 5 * math.sqrt(0.95 * 0.05 / n), key


def test_mean_is_noisy_sum_over_noisy_count_and_near_truth_for_big_groups():
    p = DpParams.from_policy(block(metrics=[{"mean": "v", "bounds": [0, 100]}], public_groups=["a"]))
    releaser = GroupReleaser(p, random_state=5)
    # 10,000 values averaging 30: centred sum = 10,000 x (30 - 50)
    sample = [releaser.release('["a"]', 0, [10_000.0, 10_000.0, 10_000.0, -200_000.0])["v_mean"] for _ in range(2000)]
    values = np.array([s["value"] for s in sample])
    assert abs(values.mean() - 30) < 0.1
    assert np.unique(values).size > 100
    stated = np.mean([s["std"] for s in sample])
    assert stated / 2 < values.std() < stated * 2  # the delta-method std is the right size


def test_when_default_rng_then_secure_and_unseeded():
    p = DpParams.from_policy(block(public_groups=["a"]))
    a, b = GroupReleaser(p), GroupReleaser(p)
    assert type(a.rng).__name__ == "SystemRandom"
    assert [a.release('["a"]', 0, [9.0, 9.0, 9.0])["purchaseAmount_sum"]["value"] for _ in range(3)] != [
        b.release('["a"]', 0, [9.0, 9.0, 9.0])["purchaseAmount_sum"]["value"] for _ in range(3)
    ]


# -- group selection -----------------------------------------------------------
def test_threshold_matches_laplace_thresholding():
    # one group per subject: P(1 + Lap(1/eps) > T) = exp(-(T - 1) eps) / 2 = delta
    t = laplace_threshold(1.0, 1e-6, 1)
    assert 0.5 * math.exp(-(t - 1)) == pytest.approx(1e-6)
    # more groups per subject: wider noise, and delta spread over the groups
    assert laplace_threshold(1.0, 1e-6, 3) > 3 * t - 2


def test_when_group_has_one_subject_then_not_released():
    p = DpParams.from_policy(block(epsilon=1.0, delta=1e-5))
    releaser = GroupReleaser(p, random_state=11)
    released = sum(releaser.release('["rare"]', 0, [1.0, 1.0, 10.0]) is not None for _ in range(20_000))
    # at most delta per release: expect ~0.2 out of 20,000; 3 allows for chance
    assert released <= 3


def test_when_group_is_big_then_released():
    p = DpParams.from_policy(DESIGN_BLOCK)
    releaser = GroupReleaser(p, random_state=12)
    big = 3 * releaser.threshold
    assert all(releaser.release('["big"]', 0, [big, big, 0.0]) is not None for _ in range(1000))


def test_when_public_groups_then_released_even_when_empty_and_others_dropped():
    p = DpParams.from_policy(block(public_groups=["us-west", "us-east"], delta=0))
    releaser = GroupReleaser(p, random_state=13)
    empty = ContributionBounder(p).zero()
    for group in p.public_groups:
        out = releaser.release(group, 0, empty)
        assert out is not None and out["public_group"] is True
        assert out["epsilon"] == 1.0 and out["delta"] == 0.0 and out["mechanism"] == "laplace"
    assert releaser.release('["moon"]', 0, [1000.0, 1000.0, 0.0]) is None


# -- budget ---------------------------------------------------------------------
def test_budget_charges_every_window_since_the_first_under_basic_composition():
    p = DpParams.from_policy(block(epsilon=0.5, total_epsilon=2.0))
    ledger = BudgetLedger(p)
    assert ledger.spent(0, 0) == (0.5, 1e-6)
    # a quiet window in between is charged all the same
    assert ledger.spent(0, 3 * 60_000) == pytest.approx((2.0, 4e-6))
    assert ledger.allows(0, 3 * 60_000)
    assert not ledger.allows(0, 4 * 60_000)


def test_sliding_windows_are_each_charged():
    p = DpParams.from_policy(block(slide="15s"))
    assert BudgetLedger(p).spent(0, 60_000)[0] == pytest.approx(5.0)


def test_release_carries_epsilon_delta_mechanism_and_error_bars():
    p = DpParams.from_policy(block(metrics=["count", {"mean": "purchaseAmount", "bounds": [0, 1000]}]))
    releaser = GroupReleaser(p, random_state=1)
    out = releaser.release('["us-west"]', 120_000, [1000.0, 1000.0, 1000.0, 0.0])
    assert out["window_start"] == "1970-01-01T00:02:00.000Z" and out["window_end"] == "1970-01-01T00:03:00.000Z"
    assert out["region"] == "us-west"
    assert (out["epsilon"], out["delta"], out["mechanism"]) == (1.0, 1e-6, "laplace")
    for name in ("count", "purchaseAmount_mean"):
        assert out[name]["std"] > 0 and out[name]["ci95"][0] <= out[name]["value"] <= out[name]["ci95"][1]


def test_local_aggregator_releases_each_window_once_when_the_watermark_passes_it_and_drops_late_records():
    from operators.dp.core import LocalAggregator

    params = DpParams.from_policy(block(public_groups=[["a"]]))
    local = LocalAggregator(params, watermark_delay_ms=5_000, random_state=7)
    out = []
    for i in range(200):  # window [0, 60 s): 200 subjects in group "a"
        out += local.add(f"s{i}", '["a"]', '{"purchaseAmount": 10}', 1_000 + i)
    assert out == []  # the watermark (max - 5 s) has not passed the window's end
    out += local.add("late-mover", '["a"]', '{"purchaseAmount": 10}', 70_000)  # watermark 65 s
    assert [(g, start) for g, start, _, _ in out] == [('["a"]', 0)]
    release, spent = out[0][2], out[0][3]
    assert abs(release["count"]["value"] - 200) < 50 and spent[0] == params.window_epsilon
    assert local.add("too-late", '["a"]', '{"purchaseAmount": 10}', 30_000) == []
    assert local.late == 1
    rest = local.finish()
    assert [(g, start) for g, start, _, _ in rest] == [('["a"]', 60_000)]
    assert local.finish() == []  # nothing is released twice


@pytest.mark.parametrize("subject", ["CUST1", "a\x1fb", 'q"uote'])  # plain; a separator; a JSON escape
def test_when_a_contribution_is_encoded_then_it_decodes_with_the_subject_as_its_json_text(subject):
    from operators.dp.core import BUCKETS, decode_contribution, encode_contribution

    bucket, payload = encode_contribution(subject, '["us-east"]', '{"purchaseAmount":1.5}', 123)
    subject_id, group, values, ts = decode_contribution(payload)
    assert json.loads(subject_id) == subject and (group, values, ts) == ('["us-east"]', '{"purchaseAmount":1.5}', 123)
    assert 0 <= bucket < BUCKETS and encode_contribution(subject, "[]", "{}", 0)[0] == bucket  # stable per subject
