"""The DP view's logic in plain Python: contribution bounding, noisy release, the budget ledger.

The Flink stages in :mod:`operators.dp.flink` call these classes and only adapt state and
timers; :class:`LocalAggregator` runs the same code over an in-memory stream, for tests and
benches without a JVM.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from operators.dp.mechanisms import GaussianAnalytic, Geometric, Laplace, make_random
from operators.dp.params import DpParams, Metric, group_key, scalar_group_value
from udfs.errors import MISSING, TransformError
from udfs.record import lookup

_Z95 = 1.959963984540054

try:  # orjson is pinned in setup.cfg; it parses the per-record values about 3x faster
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _loads

    def _dumps(obj: Any) -> str:
        return _orjson_dumps(obj).decode()

except ImportError:  # pragma: no cover
    _loads = json.loads
    _dumps = json.dumps


# ---------------------------------------------------------------------------
# records -> contributions (called by the job per record)
# ---------------------------------------------------------------------------
#: group values -> group_key, for the per-record path; emptied when it reaches the limit
_GROUP_KEYS: dict[tuple, str] = {}
_GROUP_KEYS_LIMIT = 10_000


def extract_contribution(params: DpParams, record: Mapping[str, Any]) -> tuple[str, str]:
    """Group key and metric values of one parsed record, as the job feeds stage 1.

    Returns
    -------
    tuple of str
        ``(group_json, values_json)``: the group as a JSON list in ``group_by``
        order and ``{field: number or null}`` for every field a metric reads.

    Raises
    ------
    TransformError
        When a group field is missing or not a scalar, or a metric field is not a
        number; the message names the field, never the value.
    """
    group = []
    for name in params.group_by:
        value = lookup(record, name)
        if value is MISSING or value is None:
            raise TransformError(f"field {name}: missing group field")
        if not scalar_group_value(value):
            raise TransformError(f"field {name}: expected a string or number")
        group.append(value)
    # group values repeat from record to record: their canonical key is remembered, with each value's
    # type beside it (1 and True are one dict key, but two group keys). Floats are not: 0.0 and -0.0
    # are one dict key too
    types = tuple(map(type, group))
    if float in types:
        key = group_key(group)
    else:
        memo_key = (*types, *group)
        key = _GROUP_KEYS.get(memo_key)
        if key is None:
            if len(_GROUP_KEYS) >= _GROUP_KEYS_LIMIT:
                _GROUP_KEYS.clear()
            key = _GROUP_KEYS[memo_key] = group_key(group)
    values: dict[str, float | None] = {}
    for metric in params.value_metrics:
        name = metric.field
        if name in values:
            continue
        value = lookup(record, name)
        if value is MISSING or value is None:
            values[name] = None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TransformError(f"field {name}: expected a number")
        else:
            values[name] = value
    return key, _dumps(values)


#: stage 1's keys: subjects hashed into this many buckets (stage 1 uses at most this many subtasks)
BUCKETS = 64
_FIELD = "\x1f"  # JSON text never holds a raw control character: the subject travels JSON-encoded


def encode_contribution(subject: str, group_json: str, values_json: str, event_ms: int) -> tuple[int, str]:
    """Stage 1's input for one record: the subject's bucket, its key, and one ``STRING`` payload.

    The bucket is CRC-32 of the subject's JSON text (stable across processes, unlike ``hash``) modulo
    :data:`BUCKETS`, so one subject's records meet in one place and each bucket and window
    has one timer. One string crosses between Java and Python, not a four-field tuple.
    """
    subject_id = _dumps(subject)
    return zlib.crc32(subject_id.encode()) % BUCKETS, _FIELD.join((subject_id, group_json, values_json, str(event_ms)))


def decode_contribution(payload: str) -> tuple[str, str, str, int]:
    """``(subject id, group JSON, values JSON, event ms)``; the subject id is its JSON text, an opaque identity."""
    subject, group_json, values_json, event_ms = payload.split(_FIELD)
    return subject, group_json, values_json, int(event_ms)


def window_starts(params: DpParams, ts: int) -> list[int]:
    """Starts of every window that holds event time ``ts`` (one for tumbling windows)."""
    if params.slide_ms is None:
        return [ts - ts % params.window_ms]
    slide = params.slide_ms
    last = ts - ts % slide
    return list(range(last, ts - params.window_ms, -slide))


# ---------------------------------------------------------------------------
# stage 1 core: bound one subject's contributions to one window
# ---------------------------------------------------------------------------
class SubjectWindow:
    """What one subject has added to one window so far: its secret salt and its kept groups.

    ``groups`` maps group_json to a buffer
    ``[priority, records seen, kept record 1 slots..., kept record 2 slots...]``,
    with one slot per sum or mean metric (NaN where the value was null). The priority
    is NaN until a group must give way to another: most subjects touch one group per
    window, and then no priority is ever needed.
    """

    __slots__ = ("groups", "salt")

    def __init__(self, salt: int, groups: dict[str, list[float]] | None = None) -> None:
        self.salt = salt
        self.groups = {} if groups is None else groups


class ContributionBounder:
    """Bounds what one subject adds to one window.

    Group choice is bottom-k sampling: each group gets a priority from a keyed hash
    with a secret salt drawn once per (subject, window) from the secure generator,
    and the ``max_groups_per_subject`` groups of lowest priority are kept. That is a
    uniform random subset of the distinct groups the subject touched, whatever their
    order or frequency, and it needs memory only for the kept groups. Within a kept
    group, reservoir sampling (Algorithm R) keeps ``max_contributions_per_group``
    records uniformly at random; its random index for the n-th record is the same
    keyed hash of (group, n), so no record costs a draw from the operating system.
    The keyed hash is BLAKE2b with the 62-bit salt as its key, a PRF: without the
    salt, which never leaves the operator's state, its outputs are unpredictable.

    References
    ----------
    .. [1] Wilson, R. J. et al. "Differentially Private SQL with Bounded User Contribution." 2020.
    .. [2] Vitter, J. S. "Random Sampling with a Reservoir." ACM TOMS, 1985.
    .. [3] Cohen, E., Kaplan, H. "Summarizing Data using Bottom-k Sketches." PODC 2007.
    """

    def __init__(self, params: DpParams) -> None:
        self.params = params
        self.metrics = params.value_metrics
        self.width = len(self.metrics)
        self.cap = params.max_contributions_per_group
        self.max_groups = params.max_groups_per_subject
        self._fields = tuple((m.field, m.lo, m.hi) for m in self.metrics)
        self._slots = tuple((m.kind == "sum", m.mid) for m in self.metrics)

    @staticmethod
    def new_salt(rng: Any) -> int:
        return rng.getrandbits(62)

    def new_window(self, rng: Any) -> SubjectWindow:
        """An empty buffer for one (subject, window), with its salt drawn from ``rng``."""
        return SubjectWindow(self.new_salt(rng))

    @staticmethod
    def priority(salt: int, group_json: str) -> float:
        digest = hashlib.blake2b(group_json.encode(), key=salt.to_bytes(8, "little"), digest_size=8).digest()
        return (int.from_bytes(digest, "little") >> 11) / 9007199254740992.0

    @staticmethod
    def draw(salt: int, group_json: str, n: int) -> int:
        """Uniform index in ``[0, n)`` for the n-th record of a group (bias below n / 2**64)."""
        data = f"{group_json}\x1f{n}".encode()  # "\x1f" never occurs in group JSON: apart from priority()
        digest = hashlib.blake2b(data, key=salt.to_bytes(8, "little"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % n

    def vector(self, values: Mapping[str, Any] | str) -> list[float]:
        """Clamped value slots of one record (NaN for a null value); takes the dict or its JSON."""
        if isinstance(values, str):
            values = _loads(values)
        out = []
        for name, lo, hi in self._fields:
            v = values.get(name)
            if v is None:
                out.append(math.nan)
            else:
                v = float(v)
                out.append(lo if v < lo else hi if v > hi else v)
        return out

    def offer(self, window: SubjectWindow, group_json: str, vector: list[float]) -> bool:
        """Add one record to a (subject, window) buffer; False when the buffer did not change."""
        groups = window.groups
        acc = groups.get(group_json)
        if acc is None:
            if len(groups) < self.max_groups:
                # kept whatever its priority: the keyed hash waits until a group must give way
                groups[group_json] = [math.nan, 1.0, *vector]
                return True
            salt = window.salt
            for key, kept in groups.items():
                if kept[0] != kept[0]:  # NaN: not computed yet
                    kept[0] = self.priority(salt, key)
            prio = self.priority(salt, group_json)
            worst_key = max(groups, key=lambda g: groups[g][0])
            if prio >= groups[worst_key][0]:
                return False
            del groups[worst_key]
            groups[group_json] = [prio, 1.0, *vector]
            return True
        seen = int(acc[1]) + 1
        acc[1] = float(seen)
        cap = self.cap
        if seen <= cap:
            acc.extend(vector)
        else:
            j = self.draw(window.salt, group_json, seen)
            if j < cap:
                base = 2 + j * self.width
                acc[base : base + self.width] = vector
        return True  # the count of records seen changed in any case

    def contribution(self, acc: list[float]) -> list[float]:
        """The stage-2 vector of one kept group: ``[1 subject, records, per metric slots]``."""
        width = self.width
        kept = (len(acc) - 2) // width if width else min(int(acc[1]), self.cap)
        out = [1.0, float(kept)]
        # a window's flush runs this for every (subject, window): slot i of each kept record is acc[2 + i::width]
        for i, (is_sum, mid) in enumerate(self._slots):
            vals = [v for v in acc[2 + i :: width] if v == v]  # drop NaN (null values)
            if is_sum:
                out.append(vals[0] if len(vals) == 1 else math.fsum(vals))
            else:
                out.append(float(len(vals)))
                out.append(vals[0] - mid if len(vals) == 1 else math.fsum([v - mid for v in vals]))
        return out

    def totals(self, windows: Iterable[SubjectWindow]) -> dict[str, list[float]]:
        """One window's partial sums: the bounded contributions of its (subject, window) buffers, per group."""
        totals: dict[str, list[float]] = {}
        for window in windows:
            for group_json, acc in window.groups.items():
                vector = self.contribution(acc)
                total = totals.get(group_json)
                totals[group_json] = vector if total is None else [a + b for a, b in zip(total, vector, strict=True)]
        return totals

    def zero(self) -> list[float]:
        """The vector of a public-group marker: no subject, nothing added."""
        return [0.0] * (2 + sum(m.slots for m in self.params.metrics))


def encode_vector(vector: Iterable[float]) -> str:
    """A float vector as a ``STRING`` for Flink records and state (``repr`` round-trips exactly)."""
    return ",".join(map(repr, vector))


def decode_vector(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def encode_window(window: SubjectWindow) -> str:
    """A (subject, window) buffer as a JSON ``STRING`` for stage 1's state: ``[salt, {group: buffer}]``.

    Written on every record that changes a buffer, so it must be cheap: orjson writes
    floats in their shortest exact form in a fraction of ``repr``'s time. It writes
    NaN (a null value's slot, or a priority not yet computed) as null, which
    :func:`decode_window` turns back into NaN.
    """
    return _dumps([window.salt, window.groups])


def decode_window(text: str) -> SubjectWindow:
    salt, groups = _loads(text)
    return SubjectWindow(salt, {g: [math.nan if v is None else v for v in acc] for g, acc in groups.items()})


# ---------------------------------------------------------------------------
# stage 2 core: noisy release of one group and window
# ---------------------------------------------------------------------------
def laplace_threshold(epsilon: float, delta: float, max_groups: int) -> float:
    """Threshold on ``subjects + Laplace(max_groups / epsilon)`` for private group selection.

    A group of one subject passes with probability at most ``delta`` over all the
    groups it touches: per group the allowance is
    ``1 - (1 - delta) ** (1 / max_groups)``.

    References
    ----------
    .. [1] Google differential-privacy, ``LaplacePartitionSelection::CalculateThreshold``;
       PipelineDP ``LaplaceThresholdingPartitionSelection``.
    """
    adjusted = -math.expm1(math.log1p(-delta) / max_groups)
    diversity = max_groups / epsilon
    if delta > 0.5:
        return 1 + diversity * math.log(2 * (1 - adjusted))
    return 1 - diversity * math.log(2 * adjusted)


class _Noise:
    """One noise source: a diffprivlib mechanism, its std and its 95% half-width."""

    def __init__(self, mech: Any, *, integer: bool, std: float, half95: float) -> None:
        self.mech = mech
        self.integer = integer
        self.std = std
        self.half95 = half95

    def add(self, value: float) -> float:
        if self.integer:
            return float(self.mech.randomise(int(round(value))))
        return float(self.mech.randomise(float(value)))


def _noise(mechanism: str, eps: float, delta: float, linf: float, max_groups: int, *, integer: bool, rng: Any) -> _Noise:
    """Noise for a per-group quantity with per-group sensitivity ``linf`` over ``max_groups`` groups."""
    if mechanism == "gaussian":
        # L2 sensitivity over the groups one subject may touch
        mech = GaussianAnalytic(epsilon=eps, delta=delta, sensitivity=math.sqrt(max_groups) * linf, rng=rng)
        sigma = math.sqrt(mech.variance())
        # rounding a count adds about 1/12 of variance
        std = math.sqrt(sigma**2 + (1 / 12 if integer else 0))
        return _Noise(mech, integer=integer, std=std, half95=_Z95 * std)
    l1 = max_groups * linf
    if integer:
        mech = Geometric(epsilon=eps, sensitivity=int(l1), rng=rng)
        alpha = math.exp(-eps / l1)
        # smallest k with P(|Z| >= k) = 2 alpha^k / (1 + alpha) <= 0.05
        # log(alpha) taken as -eps / l1: exp() underflows to 0 for a large epsilon
        k = max(0, math.ceil(math.log(0.025 * (1 + alpha)) / (-eps / l1)))
        return _Noise(mech, integer=True, std=math.sqrt(mech.variance()), half95=float(max(k - 1, 0)))
    mech = Laplace(epsilon=eps, sensitivity=l1, rng=rng)
    b = l1 / eps
    return _Noise(mech, integer=False, std=math.sqrt(mech.variance()), half95=b * math.log(20))


class GroupReleaser:
    """Adds noise to one group's window totals and decides whether to release them.

    Accumulator layout: ``[subjects, records, slots...]`` where a sum has one slot
    (the clamped sum) and a mean two (values, sum of value minus the bounds'
    midpoint). The mean is ``mid + noisy centred sum / noisy values``, clamped to
    the bounds; centring makes the sum's sensitivity half the bounds' width.

    Parameters
    ----------
    params : DpParams
    random_state : int or None
        ``None`` (default) draws from the operating system's secure generator; an
        integer seeds a reproducible generator and must be used only in tests.

    References
    ----------
    .. [1] Dwork, C. "Differential Privacy: A Survey of Results." TAMC 2008.
    .. [2] Ghosh, A., Roughgarden, T., Sundararajan, M. "Universally Utility-Maximizing Privacy
       Mechanisms." STOC 2009 (geometric mechanism).
    .. [3] PipelineDP ``MeanCombiner`` (normalised sum / count).
    """

    def __init__(self, params: DpParams, random_state: int | None = None) -> None:
        self.params = params
        self.rng = make_random(random_state)
        p = params
        g, c = p.max_groups_per_subject, p.max_contributions_per_group
        self.noises: list[list[_Noise]] = []
        for m in p.metrics:
            shares = p.plan[m.name]
            if m.kind == "count":
                self.noises.append([_noise(p.mechanism, *shares[0], c, g, integer=True, rng=self.rng)])
            elif m.kind == "sum":
                linf = c * max(abs(m.lo), abs(m.hi))
                self.noises.append([_noise(p.mechanism, *shares[0], linf, g, integer=False, rng=self.rng)])
            else:
                self.noises.append(
                    [
                        _noise(p.mechanism, *shares[0], c, g, integer=True, rng=self.rng),
                        _noise(p.mechanism, *shares[1], c * (m.hi - m.lo) / 2, g, integer=False, rng=self.rng),
                    ]
                )
        self.public = frozenset(p.public_groups or ())
        if p.private_selection:
            eps_s, delta_s = p.plan["selection"]
            self.threshold = laplace_threshold(eps_s, delta_s, g)
            self.selector = Laplace(epsilon=eps_s, sensitivity=g, rng=self.rng)

    def keep(self, group_json: str, subjects: float) -> bool:
        """Private group selection, or membership of the public list."""
        if not self.params.private_selection:
            return group_json in self.public
        if subjects <= 0:
            return False
        return self.selector.randomise(float(subjects)) > self.threshold

    def release(self, group_json: str, window_start: int, acc: list[float]) -> dict[str, Any] | None:
        """The release of one group and window as a JSON-ready dict, or None when suppressed."""
        p = self.params
        if not self.keep(group_json, acc[0]):
            return None
        out: dict[str, Any] = {
            "window_start": iso(window_start),
            "window_end": iso(window_start + p.window_ms),
        }
        out.update(zip(p.group_by, json.loads(group_json), strict=True))
        slot = 2
        for m, noises in zip(p.metrics, self.noises, strict=True):
            if m.kind == "count":
                out[m.name] = _metric(noises[0].add(acc[1]), noises[0])
            elif m.kind == "sum":
                out[m.name] = _metric(noises[0].add(acc[slot]), noises[0])
                slot += 1
            else:
                out[m.name] = self._mean(m, noises, acc[slot], acc[slot + 1])
                slot += 2
        out["epsilon"] = p.window_epsilon
        out["delta"] = p.window_delta
        out["mechanism"] = p.mechanism
        out["public_group"] = not p.private_selection
        return out

    @staticmethod
    def _mean(m: Metric, noises: list[_Noise], count: float, centred: float) -> dict[str, Any]:
        n_noise, s_noise = noises
        noisy_n = max(n_noise.add(count), 1.0)
        noisy_s = s_noise.add(centred)
        value = min(max(m.mid + noisy_s / noisy_n, m.lo), m.hi)
        # delta method on mid + S/N; capped at the largest std a value in [lo, hi] can have
        std = math.sqrt(s_noise.std**2 + (value - m.mid) ** 2 * n_noise.std**2) / noisy_n
        std = min(std, (m.hi - m.lo) / 2)
        lo, hi = max(value - _Z95 * std, m.lo), min(value + _Z95 * std, m.hi)
        return {"value": value, "std": std, "ci95": [lo, hi], "approximate": True}


def _metric(value: float, noise: _Noise) -> dict[str, Any]:
    if noise.integer:
        value = int(value)
    return {"value": value, "std": noise.std, "ci95": [value - noise.half95, value + noise.half95]}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------
class BudgetLedger:
    """The view's spend under basic composition.

    Every window from the first one the view released, up to the current one, is
    charged its epsilon and delta, whether or not it had data, so the reported
    spend reveals nothing about which windows were busy. Sliding windows overlap,
    and each one is charged in full.

    References
    ----------
    .. [1] Dwork, C., Roth, A. "The Algorithmic Foundations of Differential Privacy." 2014, Thm 3.16.
    """

    def __init__(self, params: DpParams) -> None:
        self.params = params

    def windows_charged(self, first_window: int, window_start: int) -> int:
        return max(0, (window_start - first_window) // self.params.slide) + 1

    def spent(self, first_window: int, window_start: int) -> tuple[float, float]:
        n = self.windows_charged(first_window, window_start)
        return n * self.params.window_epsilon, n * self.params.window_delta

    def allows(self, first_window: int, window_start: int) -> bool:
        total = self.params.total_epsilon
        if total is None:
            return True
        eps, _ = self.spent(first_window, window_start)
        return eps <= total * (1 + 1e-9)


# ---------------------------------------------------------------------------
# the three stages in one process, without a JVM
# ---------------------------------------------------------------------------
class LocalAggregator:
    """The DP view's stages over an in-memory stream: the Flink job's logic, for tests and benches.

    Feed ``(subject, group_json, values_json, event_ms)`` records to :meth:`add`, in arrival
    order; the watermark is the largest event time seen minus ``watermark_delay_ms``, as the
    job's bounded-out-of-orderness strategy makes it. :meth:`add` returns the releases the
    watermark made due; :meth:`finish` (the end of input) releases the rest. A release is
    ``(group_json, window_start, release dict, (epsilon spent, delta spent))``.
    """

    def __init__(self, params: DpParams, *, watermark_delay_ms: int = 0, random_state: int | None = None) -> None:
        self.params = params
        self.delay = watermark_delay_ms
        self.rng = make_random(random_state)
        self.bounder = ContributionBounder(params)
        self.releaser = GroupReleaser(params, None if random_state is None else random_state + 1)
        self.ledger = BudgetLedger(params)
        self.watermark = -(2**63)
        self.open: dict[int, dict[str, SubjectWindow]] = {}  # window start -> subject -> buffer
        self.first_window: int | None = None
        self.last_window: int | None = None
        self.late = 0

    def add(self, subject: str, group_json: str, values_json: str, event_ms: int) -> list[tuple]:
        p = self.params
        vector = self.bounder.vector(values_json)
        for start in window_starts(p, event_ms):
            if p.release_time(start) <= self.watermark:
                self.late += 1
                continue
            subjects = self.open.setdefault(start, {})
            window = subjects.get(subject)
            if window is None:
                window = subjects[subject] = self.bounder.new_window(self.rng)
            self.bounder.offer(window, group_json, vector)
        return self.advance(event_ms - self.delay)

    def advance(self, watermark: int) -> list[tuple]:
        """Move the watermark to ``watermark`` (never back) and release every window it closes."""
        self.watermark = max(self.watermark, watermark)
        due = sorted(s for s in self.open if self.params.release_time(s) <= self.watermark)
        out: list[tuple] = []
        for start in due:
            out += self._close(start, self.open.pop(start))
        return out

    def finish(self) -> list[tuple]:
        return self.advance(2**63 - 1)

    def _close(self, start: int, subjects: dict[str, SubjectWindow]) -> list[tuple]:
        totals = self.bounder.totals(subjects.values())
        for group_json in self.params.public_groups or ():
            totals.setdefault(group_json, self.bounder.zero())
        if self.params.public_groups is not None:
            totals = {g: acc for g, acc in totals.items() if g in self.releaser.public}
        out = []
        for group_json, acc in sorted(totals.items()):
            release = self.releaser.release(group_json, start, acc)
            first = start if self.first_window is None else min(self.first_window, start)
            last = start if self.last_window is None else max(self.last_window, start)
            if not self.ledger.allows(first, last):
                continue
            self.first_window, self.last_window = first, last
            if release is not None:
                out.append((group_json, start, release, self.ledger.spent(first, last)))
        return out
