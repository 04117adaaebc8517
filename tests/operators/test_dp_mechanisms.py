"""The job's own noise mechanisms against diffprivlib, the reference they follow.

diffprivlib is imported here, in the test process, never in a Flink worker (see
``operators/dp/mechanisms.py``; ``tests/flink_jobs/test_layout.py`` checks that the job never
loads it). Each mechanism must state the same variance as diffprivlib's and draw from the
same distribution: a two-sample test against diffprivlib's draws, and a one-sample test
against the exact distribution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from operators.dp.mechanisms import GaussianAnalytic, Geometric, Laplace, make_random

dpl = pytest.importorskip("diffprivlib.mechanisms")

N = 20_000
#: a two-sample or goodness-of-fit p-value below this fails; with the fixed seeds the tests are repeatable
ALPHA = 1e-4


def _draws(mech, value, n=N):
    return np.array([mech.randomise(value) for _ in range(n)], dtype=float)


@pytest.mark.parametrize(
    ("epsilon", "sensitivity"),
    [
        (1.0, 1.0),  # a count's noise
        (0.25, 3.0),  # group selection's, three groups per subject
        (5.0, 1000.0),  # a sum's, wide bounds
    ],
)
def test_laplace_matches_diffprivlib_in_variance_and_distribution(epsilon, sensitivity):
    ours = Laplace(epsilon=epsilon, sensitivity=sensitivity, rng=make_random(1))
    ref = dpl.Laplace(epsilon=epsilon, delta=0.0, sensitivity=sensitivity, random_state=2)
    assert ours.variance() == pytest.approx(ref.variance(0.0), rel=1e-12)
    a, b = _draws(ours, 10.0), _draws(ref, 10.0)
    assert stats.ks_2samp(a, b).pvalue > ALPHA
    assert stats.kstest(a, stats.laplace(loc=10.0, scale=sensitivity / epsilon).cdf).pvalue > ALPHA
    assert a.var() == pytest.approx(ours.variance(), rel=0.1)


@pytest.mark.parametrize(
    ("epsilon", "sensitivity"),
    [
        (1.0, 1),  # a count, one record per subject
        (0.5, 2),  # two contributions per group
        (3.0, 1),  # a large epsilon: most draws are 0
    ],
)
def test_geometric_matches_diffprivlib_in_variance_and_distribution(epsilon, sensitivity):
    ours = Geometric(epsilon=epsilon, sensitivity=sensitivity, rng=make_random(3))
    ref = dpl.Geometric(epsilon=epsilon, sensitivity=sensitivity, random_state=4)
    assert ours.variance() == pytest.approx(ref.variance(0), rel=1e-12)
    a = np.array([ours.randomise(7) for _ in range(N)]) - 7
    b = np.array([ref.randomise(7) for _ in range(N)]) - 7
    assert all(float(x).is_integer() for x in a[:100])
    # the exact two-sided geometric pmf: P(k) = (1 - r) / (1 + r) r^|k|
    r = math.exp(-epsilon / sensitivity)
    support = np.arange(-12, 13)
    pmf = (1 - r) / (1 + r) * r ** np.abs(support)
    expected = np.append(pmf, 1 - pmf.sum()) * N
    for draws in (a, b):
        counts = np.array([np.sum(draws == k) for k in support] + [np.sum(np.abs(draws) > 12)])
        keep = expected > 5  # chi-square needs enough expected counts per cell
        observed, wanted = counts[keep], expected[keep]
        wanted = wanted * observed.sum() / wanted.sum()
        assert stats.chisquare(observed, wanted).pvalue > ALPHA
    assert a.var() == pytest.approx(ours.variance(), rel=0.1)


@pytest.mark.parametrize(
    ("epsilon", "delta", "sensitivity"),
    [
        (1.0, 1e-6, 1.0),  # the policy default delta
        (0.1, 1e-5, 2.0),  # a small epsilon
        (4.0, 1e-9, 10.0),  # a large epsilon, where the analytic calibration beats the classic one most
    ],
)
def test_analytic_gaussian_matches_diffprivlib_in_sigma_and_distribution(epsilon, delta, sensitivity):
    ours = GaussianAnalytic(epsilon=epsilon, delta=delta, sensitivity=sensitivity, rng=make_random(5))
    ref = dpl.GaussianAnalytic(epsilon=epsilon, delta=delta, sensitivity=sensitivity, random_state=6)
    assert ours.variance() == pytest.approx(ref.variance(0.0), rel=1e-9)
    a, b = _draws(ours, 0.0), _draws(ref, 0.0)
    assert stats.ks_2samp(a, b).pvalue > ALPHA
    assert stats.kstest(a, stats.norm(scale=ours.sigma).cdf).pvalue > ALPHA


def test_when_seeded_then_repeatable_and_when_not_then_secure():
    first = [Laplace(epsilon=1, sensitivity=1, rng=make_random(9)).randomise(0) for _ in range(3)]
    again = [Laplace(epsilon=1, sensitivity=1, rng=make_random(9)).randomise(0) for _ in range(3)]
    assert first == again
    assert type(make_random(None)).__name__ == "SystemRandom"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Laplace(epsilon=0, sensitivity=1, rng=make_random(0)), "epsilon"),  # no privacy at all
        (lambda: Laplace(epsilon=1, sensitivity=-1, rng=make_random(0)), "sensitivity"),
        (lambda: Geometric(epsilon=1, sensitivity=1.5, rng=make_random(0)), "whole number"),  # integers only
        (lambda: GaussianAnalytic(epsilon=1, delta=0, sensitivity=1, rng=make_random(0)), "delta"),
    ],
)
def test_when_parameters_are_invalid_then_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
