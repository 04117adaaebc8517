"""The noise mechanisms the DP view draws from, in plain Python (``math`` and ``secrets`` only).

Why not diffprivlib in the job: importing it pulls in scikit-learn and scipy, and scipy's
pybind11 extension modules deadlock PyFlink's embedded interpreter (PyFlink workaround [pybind11]
in :mod:`operators.flink_compat`; issue 14: a masked-only job hung at start, stuck in ``scipy/spatial``). So
the worker draws noise from these classes, which follow diffprivlib 0.6's samplers line by
line, floating-point care included; diffprivlib stays the reference, and
``tests/operators/test_dp_mechanisms.py`` checks that both give the same variance and distribution.

Every mechanism takes ``rng``: ``secrets.SystemRandom()`` (the operating system's secure
generator) unless a test passes a seeded :class:`random.Random` (see :func:`make_random`).

References
----------
.. [1] Holohan, N., Braghin, S. "Secure Random Sampling in Differential Privacy." 2021
   (Laplace from four uniforms, against floating-point reconstruction attacks).
.. [2] Ghosh, A., Roughgarden, T., Sundararajan, M. "Universally Utility-Maximizing Privacy
   Mechanisms." STOC 2009 (two-sided geometric mechanism).
.. [3] Balle, B., Wang, Y.-X. "Improving the Gaussian Mechanism for Differential Privacy:
   Analytical Calibration and Optimal Denoising." ICML 2018.
.. [4] diffprivlib 0.6, ``diffprivlib/mechanisms/{laplace,geometric,gaussian}.py``.
"""

from __future__ import annotations

import math
import random
import secrets

__all__ = ["GaussianAnalytic", "Geometric", "Laplace", "make_random"]


def make_random(random_state: int | None) -> random.Random:
    """Random source for sampling and noise: ``secrets.SystemRandom`` unless a test seeds it.

    An integer seeds a reproducible :class:`random.Random`, for tests only.
    """
    if random_state is None:
        return secrets.SystemRandom()
    return random.Random(random_state)


def _check_epsilon(epsilon: float) -> float:
    if not isinstance(epsilon, int | float) or isinstance(epsilon, bool) or not epsilon > 0:
        raise ValueError("epsilon must be a number above 0")
    return float(epsilon)


def _check_sensitivity(sensitivity: float) -> float:
    if not isinstance(sensitivity, int | float) or isinstance(sensitivity, bool) or sensitivity < 0:
        raise ValueError("sensitivity must be a number of at least 0")
    return float(sensitivity)


class Laplace:
    """The Laplace mechanism, ``value + Laplace(sensitivity / epsilon)`` (pure epsilon-DP).

    The standard Laplace variate is ``log(1-U1) cos(pi U2) + log(1-U3) cos(pi U4)`` [1]_: four
    uniforms, so the output's low bits do not reveal the input as one uniform's inverse CDF does.
    """

    def __init__(self, *, epsilon: float, sensitivity: float, rng: random.Random) -> None:
        self.epsilon = _check_epsilon(epsilon)
        self.sensitivity = _check_sensitivity(sensitivity)
        self.scale = self.sensitivity / self.epsilon
        self.rng = rng

    def variance(self) -> float:
        return 2 * self.scale**2

    def randomise(self, value: float) -> float:
        u = self.rng.random
        standard = math.log(1 - u()) * math.cos(math.pi * u()) + math.log(1 - u()) * math.cos(math.pi * u())
        return value - self.scale * standard


class Geometric:
    """The two-sided geometric mechanism on integers, ratio ``exp(-epsilon / sensitivity)`` [2]_."""

    def __init__(self, *, epsilon: float, sensitivity: int, rng: random.Random) -> None:
        if not isinstance(sensitivity, int) or isinstance(sensitivity, bool) or sensitivity < 0:
            raise ValueError("sensitivity must be a whole number of at least 0")
        self.epsilon = _check_epsilon(epsilon)
        self.sensitivity = sensitivity
        self.log_ratio = -self.epsilon / sensitivity if sensitivity > 0 else -math.inf
        self.rng = rng

    def variance(self) -> float:
        ratio = math.exp(self.log_ratio)
        leading = (1 - ratio) / (1 + ratio)
        series = ratio / (1 - ratio)
        return 2 * leading * (series + 3 * series**2 + 2 * series**3)

    def randomise(self, value: int) -> int:
        if self.sensitivity == 0:
            return int(value)
        # one uniform picks the sign and the magnitude; the 1 + ratio stretch accounts for the
        # zero that both signs share
        u = (self.rng.random() - 0.5) * (1 + math.exp(self.log_ratio))
        sign = -1 if u < 0 else 1
        if u == 0:
            return int(value)
        return int(round(value + sign * math.floor(math.log(sign * u) / self.log_ratio)))


class GaussianAnalytic:
    """The analytic Gaussian mechanism: the smallest sigma that gives (epsilon, delta)-DP [3]_."""

    def __init__(self, *, epsilon: float, delta: float, sensitivity: float, rng: random.Random) -> None:
        self.epsilon = _check_epsilon(epsilon)
        if not isinstance(delta, int | float) or not 0 < delta <= 1:
            raise ValueError("delta must be a number in (0, 1]")
        self.delta = float(delta)
        self.sensitivity = _check_sensitivity(sensitivity)
        self.sigma = self._find_sigma()
        self.rng = rng

    def variance(self) -> float:
        return self.sigma**2

    def randomise(self, value: float) -> float:
        # the mean of two normals, rescaled: as diffprivlib does, against a weak single draw
        standard = (self.rng.normalvariate(0, 1) + self.rng.normalvariate(0, 1)) / math.sqrt(2)
        return value + standard * self.sigma

    def _find_sigma(self) -> float:
        epsilon, delta = self.epsilon, self.delta
        if self.sensitivity == 0:
            return 0.0

        def phi(x: float) -> float:
            return (1 + math.erf(x / math.sqrt(2))) / 2

        def b_plus(v: float) -> float:
            return phi(math.sqrt(epsilon * v)) - math.exp(epsilon) * phi(-math.sqrt(epsilon * (v + 2))) - delta

        def b_minus(v: float) -> float:
            return phi(-math.sqrt(epsilon * v)) - math.exp(epsilon) * phi(-math.sqrt(epsilon * (v + 2))) - delta

        delta_0 = b_plus(0)
        target = b_plus if delta_0 < 0 else b_minus
        left, right = 0.0, 1.0
        while target(left) * target(right) > 0:
            left, right = right, right * 2
        # bisection until the interval stops shrinking (floating-point resolution)
        previous = (right - left) * 2
        while previous > right - left:
            previous = right - left
            middle = (right + left) / 2
            if target(middle) * target(left) <= 0:
                right = middle
            if target(middle) * target(right) <= 0:
                left = middle
        alpha = math.sqrt(1 + (left + right) / 4) + (-1 if delta_0 < 0 else 1) * math.sqrt((left + right) / 4)
        return alpha * self.sensitivity / math.sqrt(2 * epsilon)
