"""Differentially private counts, sums and means per group and event-time window.

A policy view with a ``differential_privacy:`` block becomes two keyed stages
and a budget gate::

    (subject, group_json, values_json, ts)            # from the job, event-time stamped
      -> stage 1, keyed by a bucket of subjects       # (group_json, window_start, summed contributions)
      -> stage 2, keyed by group                      # (group_json, window_start, release JSON)
      -> budget gate, keyed by view                   # (group_json, headers JSON, value JSON)

Stage 1 bounds what one subject adds to one window: at most
``max_groups_per_subject`` groups, chosen uniformly at random, at most
``max_contributions_per_group`` records per group, chosen uniformly at random,
and every value clamped to its metric's bounds. Stage 2 adds the contributions
of a group, adds noise when the window closes, and releases the group only when
its noisy number of subjects passes a threshold (or when the group is public).
The gate keeps the view's spend under basic composition and stops releases
once ``total_epsilon`` is reached. Everything the three stages hold is Flink
state: a job restored from a checkpoint loses no contribution to an open window
and goes on from the spend it had.

Policy syntax (defaults in brackets)::

    differential_privacy:
      window: 1m                       # required; ms, s, m, h or d
      slide: 30s                       # [none: tumbling]; divides the window
      allowed_lateness: 0s             # [0s]; delays each release; later records are dropped
      group_by: [region]               # required; record fields (dotted paths allowed)
      epsilon: 1.0                     # required; spent per window, for all groups together
      delta: 1.0e-6                    # [1e-6]; used by private group selection and Gaussian noise
      mechanism: laplace               # [laplace] | gaussian
      max_groups_per_subject: 1        # [1]
      max_contributions_per_group: 1   # [1]
      metrics: [count, {sum: purchaseAmount, bounds: [0, 1000]}, {mean: purchaseAmount, bounds: [0, 1000]}]
      public_groups: [[us-west], [us-east]]   # [none: private group selection]
      total_epsilon: 100               # [none: unlimited]; the view stops when it would exceed it
      state_ttl: 1h                    # [max(1h, 4 x (window + allowed_lateness))]

Metric names in the output are ``count``, ``<field>_sum`` and ``<field>_mean``
unless a metric sets ``name``.

References
----------
.. [1] Dwork, C. "Differential Privacy: A Survey of Results." TAMC 2008.
.. [2] Dwork, C., Roth, A. "The Algorithmic Foundations of Differential Privacy." 2014.
.. [3] Wilson, R. J. et al. "Differentially Private SQL with Bounded User Contribution." PoPETs 2020.
.. [4] PipelineDP, ``pipeline_dp/partition_selection.py`` and Google's ``partition-selection.h``
   (Laplace thresholding).
.. [5] Holohan, N., Braghin, S. "Secure Random Sampling in Differential Privacy." 2021.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import operator
import secrets
import sys
import types
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from operators.flink_compat import state_ttl, subtask_index
from udfs.durations import parse_duration
from udfs.registry import MISSING, ParamError, TransformError


def _diffprivlib_mechanisms() -> types.ModuleType:
    """``diffprivlib.mechanisms``, even where the package's ``__init__`` cannot import.

    diffprivlib 0.6.6 imports its scikit-learn models from ``__init__``, and those
    fail on scikit-learn >= 1.9 (``sklearn.tree._tree.DOUBLE`` is gone). The
    mechanisms need only ``sklearn.utils.check_random_state``, so when the package
    import fails they are loaded without running its ``__init__``.
    """
    try:
        from diffprivlib import mechanisms
    except ImportError:
        spec = importlib.util.find_spec("diffprivlib")
        if spec is None or spec.submodule_search_locations is None:
            raise
        package = types.ModuleType("diffprivlib")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["diffprivlib"] = package
        from diffprivlib import mechanisms
    return mechanisms


_mechanisms = _diffprivlib_mechanisms()
GaussianAnalytic, Geometric, Laplace = _mechanisms.GaussianAnalytic, _mechanisms.Geometric, _mechanisms.Laplace

__all__ = [
    "BudgetLedger",
    "ContributionBounder",
    "DpParams",
    "SubjectWindow",
    "GroupReleaser",
    "Metric",
    "attach",
    "extract_contribution",
    "laplace_threshold",
    "window_starts",
]

log = logging.getLogger(__name__)

MECHANISMS = ("laplace", "gaussian")
METRIC_KINDS = ("count", "sum", "mean")
POLICY_KEYS = (
    "window",
    "slide",
    "allowed_lateness",
    "group_by",
    "epsilon",
    "delta",
    "mechanism",
    "max_groups_per_subject",
    "max_contributions_per_group",
    "metrics",
    "public_groups",
    "total_epsilon",
    "state_ttl",
)
DEFAULT_DELTA = 1e-6
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
# parameters
# ---------------------------------------------------------------------------
def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(param, "must be a finite number", "a number")
    return float(value)


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError(param, "must be a whole number of at least 1", "an integer >= 1")
    return value


def _scalar_group_value(value: Any) -> bool:
    return isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class Metric:
    """One aggregate: ``count``, or ``sum``/``mean`` of a field clamped to ``[lo, hi]``."""

    kind: str
    field: str | None = None
    lo: float = 0.0
    hi: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise ParamError("", "unknown metric", ", ".join(METRIC_KINDS))
        if self.kind == "count":
            object.__setattr__(self, "name", self.name or "count")
            return
        if not isinstance(self.field, str) or not self.field:
            raise ParamError(self.kind, "must name a field", "a field name")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or not self.lo < self.hi:
            raise ParamError("bounds", "lower bound must be below upper bound", "[lo, hi] with lo < hi")
        object.__setattr__(self, "name", self.name or f"{self.field}_{self.kind}")

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2.0

    @property
    def slots(self) -> int:
        """Number of accumulator slots beyond the common ``[subjects, records]``."""
        return {"count": 0, "sum": 1, "mean": 2}[self.kind]


@dataclass(frozen=True)
class DpParams:
    """Checked parameters of one DP view. Build it with :meth:`from_policy`.

    Parameters
    ----------
    window_ms : int
        Window length.
    group_by : tuple of str
        Record fields that form the group key.
    epsilon : float
        Privacy budget spent per window, for all groups and metrics together.
    metrics : tuple of Metric
        What to release per group.
    delta : float
        Budget for private group selection and Gaussian noise; unused otherwise.
    mechanism : {"laplace", "gaussian"}
        Noise for sums and means. Counts use the discrete geometric mechanism under
        ``laplace``, and rounded Gaussian noise under ``gaussian``.
    max_groups_per_subject, max_contributions_per_group : int
        Contribution bounds per subject and window.
    slide_ms : int or None
        Slide of sliding windows; ``None`` for tumbling ones.
    allowed_lateness_ms : int
        How long after its end a window waits for late records.
    public_groups : tuple of str or None
        Group keys (JSON lists) released in every window, even when empty. When set,
        other groups are dropped and no budget goes to group selection.
    total_epsilon : float or None
        Budget for the whole life of the view.
    state_ttl_ms : int
        Processing-time TTL of the per-window buffers.

    References
    ----------
    .. [1] Dwork, C. "Differential Privacy: A Survey of Results." TAMC 2008.
    .. [2] PipelineDP ``AggregateParams`` (checked dataclass of the same parameters).
    """

    window_ms: int
    group_by: tuple[str, ...]
    epsilon: float
    metrics: tuple[Metric, ...]
    delta: float = DEFAULT_DELTA
    mechanism: str = "laplace"
    max_groups_per_subject: int = 1
    max_contributions_per_group: int = 1
    slide_ms: int | None = None
    allowed_lateness_ms: int = 0
    public_groups: tuple[str, ...] | None = None
    total_epsilon: float | None = None
    state_ttl_ms: int = 0
    _plan: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ParamError("window", "must be longer than 0", "a positive duration")
        if self.slide_ms is not None:
            if self.slide_ms <= 0 or self.slide_ms > self.window_ms or self.window_ms % self.slide_ms:
                raise ParamError("slide", "must be positive and divide the window", "a duration that divides window")
        if self.allowed_lateness_ms < 0:
            raise ParamError("allowed_lateness", "must not be negative", "a duration >= 0")
        if not self.group_by or len(set(self.group_by)) != len(self.group_by):
            raise ParamError("group_by", "must list distinct fields", "a non-empty list of field names")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ParamError("epsilon", "must be greater than 0", "a finite number > 0")
        if not 0 <= self.delta < 1:
            raise ParamError("delta", "must be in [0, 1)", "a number in [0, 1)")
        if self.mechanism not in MECHANISMS:
            raise ParamError("mechanism", "unknown mechanism", ", ".join(MECHANISMS))
        if self.delta == 0 and self.mechanism == "gaussian":
            raise ParamError("delta", "gaussian noise needs delta > 0", "a number in (0, 1)")
        if self.delta == 0 and self.public_groups is None:
            raise ParamError("delta", "private group selection needs delta > 0", "a number in (0, 1), or public_groups")
        for name in ("max_groups_per_subject", "max_contributions_per_group"):
            _positive_int(getattr(self, name), name)
        if not self.metrics:
            raise ParamError("metrics", "must list at least one metric", "count, {sum: field, bounds: [lo, hi]}, {mean: ...}")
        names = [m.name for m in self.metrics]
        clash = sorted(set(names) & set(self.group_by) | {n for n in names if names.count(n) > 1})
        if clash or set(names) & {"window_start", "window_end", "epsilon", "delta", "mechanism"}:
            raise ParamError("metrics", "metric names must be unique and differ from group_by fields", "set name:")
        if self.total_epsilon is not None and not self.total_epsilon >= self.epsilon:
            raise ParamError("total_epsilon", "must be at least epsilon", "a number >= epsilon")
        if self.state_ttl_ms <= 0:
            ttl = max(3_600_000, 4 * (self.window_ms + self.allowed_lateness_ms))
            object.__setattr__(self, "state_ttl_ms", ttl)
        elif self.state_ttl_ms < self.window_ms + self.allowed_lateness_ms:
            raise ParamError("state_ttl", "must outlast window plus allowed_lateness", "a longer duration")
        self._plan.update(_budget_plan(self))

    # -- policy ---------------------------------------------------------------
    @classmethod
    def from_policy(cls, block: Mapping[str, Any]) -> DpParams:
        """Check a view's ``differential_privacy:`` block and build the parameters.

        Raises
        ------
        ParamError
            With ``param`` the path inside the block (``metrics[1].bounds``).
        """
        if not isinstance(block, Mapping):
            raise ParamError("", "must be a mapping", ", ".join(POLICY_KEYS))
        unknown = sorted(set(block) - set(POLICY_KEYS), key=str)
        if unknown:
            raise ParamError(str(unknown[0]), "unknown key", ", ".join(POLICY_KEYS))
        for required in ("window", "group_by", "epsilon", "metrics"):
            if required not in block:
                raise ParamError(required, "is required", "see the differential_privacy defaults")
        group_by = block["group_by"]
        if isinstance(group_by, str):
            group_by = [group_by]
        if not isinstance(group_by, list) or not all(isinstance(g, str) and g for g in group_by):
            raise ParamError("group_by", "must be a list of field names", "[field, ...]")
        kwargs: dict[str, Any] = {
            "window_ms": parse_duration(block["window"], "window"),
            "group_by": tuple(group_by),
            "epsilon": _number(block["epsilon"], "epsilon"),
            "metrics": _parse_metrics(block["metrics"]),
        }
        if "delta" in block:
            kwargs["delta"] = _number(block["delta"], "delta")
        if "mechanism" in block:
            kwargs["mechanism"] = block["mechanism"]
        for name in ("max_groups_per_subject", "max_contributions_per_group"):
            if name in block:
                kwargs[name] = _positive_int(block[name], name)
        if block.get("slide") is not None:
            kwargs["slide_ms"] = parse_duration(block["slide"], "slide")
        if "allowed_lateness" in block:
            kwargs["allowed_lateness_ms"] = parse_duration(block["allowed_lateness"], "allowed_lateness")
        if "state_ttl" in block:
            kwargs["state_ttl_ms"] = parse_duration(block["state_ttl"], "state_ttl", minimum_ms=1)
        if block.get("total_epsilon") is not None:
            kwargs["total_epsilon"] = _number(block["total_epsilon"], "total_epsilon")
        if block.get("public_groups") is not None:
            kwargs["public_groups"] = _parse_public_groups(block["public_groups"], len(group_by))
        return cls(**kwargs)

    # -- derived --------------------------------------------------------------
    @property
    def slide(self) -> int:
        return self.slide_ms or self.window_ms

    @property
    def private_selection(self) -> bool:
        return self.public_groups is None

    @property
    def plan(self) -> dict[str, Any]:
        """The per-window budget split: ``{"selection": (eps, delta), metric name: [(eps, delta), ...]}``."""
        return self._plan

    @property
    def window_epsilon(self) -> float:
        return self._plan["epsilon"]

    @property
    def window_delta(self) -> float:
        return self._plan["delta"]

    def release_time(self, window_start: int) -> int:
        """Event time at which a window is released (its last millisecond plus the lateness)."""
        return window_start + self.window_ms - 1 + self.allowed_lateness_ms

    @property
    def value_metrics(self) -> tuple[Metric, ...]:
        return tuple(m for m in self.metrics if m.kind != "count")


def _parse_metrics(raw: Any) -> tuple[Metric, ...]:
    if not isinstance(raw, list) or not raw:
        raise ParamError("metrics", "must be a non-empty list", "count, {sum: field, bounds: [lo, hi]}, {mean: ...}")
    metrics = []
    for i, item in enumerate(raw):
        path = f"metrics[{i}]"
        if item == "count" or item == {"count": None}:
            metrics.append(Metric("count"))
            continue
        if isinstance(item, Mapping) and set(item) <= {"count", "name"} and "count" in item:
            metrics.append(Metric("count", name=_metric_name(item, path)))
            continue
        if not isinstance(item, Mapping):
            raise ParamError(path, "unknown metric", "count, {sum: field, bounds: [lo, hi]}, {mean: field, bounds: [lo, hi]}")
        kinds = [k for k in ("sum", "mean") if k in item]
        if len(kinds) != 1:
            raise ParamError(path, "must have exactly one of sum, mean or count", "count, {sum: ...}, {mean: ...}")
        kind = kinds[0]
        unknown = sorted(set(item) - {kind, "bounds", "name"}, key=str)
        if unknown:
            raise ParamError(f"{path}.{unknown[0]}", "unknown key", "bounds, name")
        if not isinstance(item[kind], str) or not item[kind]:
            raise ParamError(f"{path}.{kind}", "must name a field", "a field name")
        bounds = item.get("bounds")
        if bounds is None:
            raise ParamError(f"{path}.bounds", "is required", "[lo, hi] with lo < hi")
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise ParamError(f"{path}.bounds", "must be two numbers", "[lo, hi] with lo < hi")
        lo = _number(bounds[0], f"{path}.bounds")
        hi = _number(bounds[1], f"{path}.bounds")
        try:
            metrics.append(Metric(kind, item[kind], lo, hi, _metric_name(item, path)))
        except ParamError as exc:
            raise ParamError(f"{path}.{exc.param}", exc.problem, exc.allowed) from None
    return tuple(metrics)


def _metric_name(item: Mapping[str, Any], path: str) -> str:
    name = item.get("name", "")
    if not isinstance(name, str):
        raise ParamError(f"{path}.name", "must be a string", "a name")
    return name


def _parse_public_groups(raw: Any, width: int) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ParamError("public_groups", "must be a list", "a list of group values, one per group_by field")
    keys = []
    for i, item in enumerate(raw):
        values = item if isinstance(item, list) else [item]
        if len(values) != width or not all(_scalar_group_value(v) for v in values):
            raise ParamError(f"public_groups[{i}]", "must give one scalar per group_by field", f"a list of {width} values")
        keys.append(group_key(values))
    if len(set(keys)) != len(keys):
        raise ParamError("public_groups", "lists a group twice", "distinct groups")
    return tuple(keys)


def _budget_plan(p: DpParams) -> dict[str, Any]:
    """Split the per-window budget into equal shares under basic composition.

    Each metric takes one share of epsilon and group selection (when private)
    another; a mean splits its share between its count and its sum. Delta goes in
    equal shares to the parts that need it: selection and Gaussian noise.
    """
    eps_parts = len(p.metrics) + (1 if p.private_selection else 0)
    eps = p.epsilon / eps_parts
    gaussian = p.mechanism == "gaussian"
    metric_parts = sum(2 if m.kind == "mean" else 1 for m in p.metrics)
    delta_parts = (1 if p.private_selection else 0) + (metric_parts if gaussian else 0)
    delta = p.delta / delta_parts if delta_parts else 0.0
    plan: dict[str, Any] = {"epsilon": p.epsilon, "delta": p.delta if delta_parts else 0.0}
    if p.private_selection:
        plan["selection"] = (eps, delta)
    for m in p.metrics:
        if m.kind == "mean":
            half = (eps / 2, delta if gaussian else 0.0)
            plan[m.name] = [half, half]
        else:
            plan[m.name] = [(eps, delta if gaussian else 0.0)]
    return plan


# ---------------------------------------------------------------------------
# records -> contributions (called by the job per record)
# ---------------------------------------------------------------------------
def group_key(values: Iterable[Any]) -> str:
    """The canonical group key: a JSON list, e.g. ``'["us-west"]'``."""
    return json.dumps(list(values), ensure_ascii=False)


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


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
        value = _lookup(record, name)
        if value is MISSING or value is None:
            raise TransformError(f"field {name}: missing group field")
        if not _scalar_group_value(value):
            raise TransformError(f"field {name}: expected a string or number")
        group.append(value)
    values: dict[str, float | None] = {}
    for metric in params.value_metrics:
        name = metric.field
        if name in values:
            continue
        value = _lookup(record, name)
        if value is MISSING or value is None:
            values[name] = None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TransformError(f"field {name}: expected a number")
        else:
            values[name] = value
    return group_key(group), json.dumps(values)


def window_starts(params: DpParams, ts: int) -> list[int]:
    """Starts of every window that holds event time ``ts`` (one for tumbling windows)."""
    if params.slide_ms is None:
        return [ts - ts % params.window_ms]
    slide = params.slide_ms
    last = ts - ts % slide
    return list(range(last, ts - params.window_ms, -slide))


# ---------------------------------------------------------------------------
# randomness
# ---------------------------------------------------------------------------
def make_random(random_state: int | None) -> Any:
    """Random source for sampling and noise: ``secrets.SystemRandom`` unless a test seeds it.

    The result works both as ``random.Random`` (sampling) and as diffprivlib's
    ``random_state`` (noise): diffprivlib accepts a ``SystemRandom`` or a
    ``np.random.RandomState``.
    """
    if random_state is None:
        return secrets.SystemRandom()
    return _SeededRandom(random_state)


class _SeededRandom(np.random.RandomState):
    """A seeded ``RandomState`` that also answers the ``random.Random`` calls we use. Tests only."""

    def random(self, size: Any = None) -> Any:  # noqa: D102 - numpy's signature
        return super().random(size) if size is not None else float(super().random())

    def randrange(self, n: int) -> int:
        return int(self.randint(n))

    def getrandbits(self, k: int) -> int:
        return int(self.randint(0, 2**62, dtype=np.int64)) & ((1 << k) - 1)


# ---------------------------------------------------------------------------
# stage 1 core: bound one subject's contributions to one window
# ---------------------------------------------------------------------------
class SubjectWindow:
    """What one subject has added to one window so far: its secret salt and its kept groups.

    ``groups`` maps group_json to a buffer
    ``[priority, records seen, kept record 1 slots..., kept record 2 slots...]``,
    with one slot per sum or mean metric (NaN where the value was null).
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
            prio = self.priority(window.salt, group_json)
            if len(groups) >= self.max_groups:
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
        kept = (len(acc) - 2) // self.width if self.width else min(int(acc[1]), self.cap)
        out = [1.0, float(kept)]
        for i, m in enumerate(self.metrics):
            vals = [acc[2 + r * self.width + i] for r in range(kept)]
            vals = [v for v in vals if v == v]  # drop NaN (null values)
            if m.kind == "sum":
                out.append(math.fsum(vals))
            else:
                out.extend((float(len(vals)), math.fsum(v - m.mid for v in vals)))
        return out

    def finish(self, window: SubjectWindow) -> list[tuple[str, list[float]]]:
        return [(key, self.contribution(acc)) for key, acc in window.groups.items()]

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
    NaN (a null value's slot) as null, which :func:`decode_window` turns back into NaN.
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
        mech = GaussianAnalytic(epsilon=eps, delta=delta, sensitivity=math.sqrt(max_groups) * linf, random_state=rng)
        sigma = math.sqrt(mech.variance(0))
        # rounding a count adds about 1/12 of variance
        std = math.sqrt(sigma**2 + (1 / 12 if integer else 0))
        return _Noise(mech, integer=integer, std=std, half95=_Z95 * std)
    l1 = max_groups * linf
    if integer:
        mech = Geometric(epsilon=eps, sensitivity=int(l1), random_state=rng)
        alpha = math.exp(-eps / l1)
        # smallest k with P(|Z| >= k) = 2 alpha^k / (1 + alpha) <= 0.05
        # log(alpha) taken as -eps / l1: exp() underflows to 0 for a large epsilon
        k = max(0, math.ceil(math.log(0.025 * (1 + alpha)) / (-eps / l1)))
        return _Noise(mech, integer=True, std=math.sqrt(mech.variance(0)), half95=float(max(k - 1, 0)))
    mech = Laplace(epsilon=eps, delta=0.0, sensitivity=l1, random_state=rng)
    b = l1 / eps
    return _Noise(mech, integer=False, std=math.sqrt(mech.variance(0.0)), half95=b * math.log(20))


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
            self.selector = Laplace(epsilon=eps_s, delta=0.0, sensitivity=g, random_state=self.rng)

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


def merge(acc: list[float] | None, vector: list[float]) -> list[float]:
    if acc is None:
        return list(vector)
    return [a + b for a, b in zip(acc, vector, strict=True)]


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
# Flink wrappers
# ---------------------------------------------------------------------------
def attach(
    stream: Any,
    params: DpParams,
    *,
    view_name: str,
    policy_id: str,
    policy_hash: str,
    random_state: int | None = None,
) -> Any:
    """Add the DP aggregation of one view to a stream of contributions.

    Parameters
    ----------
    stream : DataStream
        ``(subject, group_json, values_json, event_time_ms)`` with event-time
        timestamps and watermarks already assigned.
    params : DpParams
    view_name, policy_id, policy_hash : str
        Name operators and uids; go into the headers of every release.
    random_state : int or None
        Tests only: seeds the noise (per subtask). ``None`` uses the secure generator.

    Returns
    -------
    DataStream
        ``(group_json, headers_json, value_json)``; headers hold ``policy_id``,
        ``policy_hash``, ``view``, ``epsilon_spent`` and ``delta_spent``.

    Notes
    -----
    Stage 1 is keyed by ``subject_bucket`` (CRC-32 of the subject modulo ``BUCKETS``), so
    one subject's records meet in one place and each bucket and window has one timer.
    Vectors travel and rest as ``STRING`` (comma-joined floats), never as
    ``Types.LIST``: in thread mode PyFlink 2.2 gives LIST state a pickled-bytes
    serializer on the Java side but stores the ``java.util.ArrayList`` its converter
    makes, so the first checkpoint fails (``ArrayList cannot be cast to [B``).
    """
    from pyflink.common.typeinfo import Types

    contribution_type = Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()])
    uid = f"dp/{view_name}"
    bounded = (
        stream.key_by(subject_bucket, key_type=Types.INT())
        .process(_BoundContributions(params, random_state), output_type=contribution_type)
        .name(f"dp-bound-contributions[{view_name}]")
        .uid(f"{uid}/bound-contributions")
    )
    # (group_json, window_start, summed contribution vectors) one per bucket, window and group
    released = (
        bounded.key_by(_first, key_type=Types.STRING())
        .process(
            _NoisyAggregate(params, random_state),
            output_type=Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()]),
        )
        .name(f"dp-noisy-aggregate[{view_name}]")
        .uid(f"{uid}/noisy-aggregate")
    )
    # (group_json, window_start, release_json) one per released group and window
    gated = (
        released.key_by(lambda r: view_name, key_type=Types.STRING())
        .process(
            _BudgetGate(params, view_name, policy_id, policy_hash),
            output_type=Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()]),
        )
        .name(f"dp-budget-gate[{view_name}]")
        .uid(f"{uid}/budget-gate")
    )
    # (group_json, headers_json, value_json)
    return gated


_first = operator.itemgetter(0)  # group of a contribution

#: stage 1's keys: subjects hashed into this many buckets (stage 1 uses at most this many subtasks)
BUCKETS = 64
#: entries kept in stage 2's write-through cache before it is emptied (state still holds them)
CACHE_LIMIT = 200_000
#: (subject, window) buffers one stage-1 subtask holds at most (a few hundred bytes each)
BUFFER_LIMIT = 2_000_000


def subject_bucket(record: tuple[Any, ...]) -> int:
    """Stage 1's key: the subject's bucket, from CRC-32 (stable across processes, unlike ``hash``).

    ``_BoundContributions.process_element`` computes the same expression inline.
    """
    return zlib.crc32(record[0].encode()) % BUCKETS


def _flink_bases() -> type:
    from pyflink.datastream.functions import KeyedProcessFunction

    return KeyedProcessFunction


_KeyedProcess = _flink_bases()


class _SeededProcess(_KeyedProcess):
    """A keyed stage that draws noise: not deterministic, seeded per subtask from ``random_state``.

    With ``random_state`` None every subtask seeds from fresh entropy; otherwise the seed is
    ``random_state * 1000 + seed_offset + subtask index``, so stages and subtasks draw apart.
    """

    #: keeps this stage's seeds apart from the other stage's for the same subtask
    seed_offset = 0

    def __init__(self, params: DpParams, random_state: int | None) -> None:
        self.params = params
        self.random_state = random_state

    def is_deterministic(self) -> bool:
        return False

    def subtask_seed(self, ctx: Any) -> int | None:
        return None if self.random_state is None else self.random_state * 1000 + self.seed_offset + subtask_index(ctx)


class _BoundContributions(_SeededProcess):
    r"""Stage 1: keyed by subject bucket; bounds each (subject, window) and sends per-group partial sums.

    Keying by a bucket of subjects (:data:`BUCKETS` of them), not by subject, gives one
    event-time timer per bucket and window instead of one per subject, and one
    stage-2 record per bucket, window and group instead of one per subject.

    State: ``buffers``, a ``MapState`` of the bucket from ``"<window start>\x1f<subject>"``
    to the encoded :class:`SubjectWindow`, written through on every record that
    changes a buffer, so a checkpoint holds every open window's contributions. A
    copy of the bucket's buffers lives in ``self.buckets`` (``{bucket: {window start:
    {subject: SubjectWindow}}}``), so records never read state; a bucket's copy is
    loaded from state the first time this subtask sees the bucket, which after a
    restore brings back what the checkpoint held. When a bucket's window timer
    fires, its buffers are bounded, summed per group and sent to stage 2, and their
    entries removed.

    A record for a window whose release time the watermark has passed is late:
    dropped and counted. At most ``BUFFER_LIMIT`` (subject, window) buffers are held
    per subtask; a new one beyond that is dropped and counted
    (``dp_records_dropped_buffer_full``), never sent early.
    """

    def open(self, ctx: Any) -> None:
        from pyflink.common.typeinfo import Types
        from pyflink.datastream.state import MapStateDescriptor

        self.rng = make_random(self.subtask_seed(ctx))
        self.core = ContributionBounder(self.params)
        buffers = MapStateDescriptor("subject_windows", Types.STRING(), Types.STRING())
        buffers.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
        self.state = ctx.get_map_state(buffers)
        self.buckets: dict[int, dict[int, dict[str, SubjectWindow]]] = {}
        self.held = 0  # (subject, window) buffers in self.buckets
        metrics = ctx.get_metrics_group()
        self.late = metrics.counter("dp_late_records_dropped")
        self.full = metrics.counter("dp_records_dropped_buffer_full")
        self.records = metrics.counter("dp_records_in")
        self.uncounted = 0  # records not yet added to the counter: one JVM call per 1024 records
        # public-group markers already sent per window; duplicates after a restore are harmless
        self.announced: set[int] = set()
        self.tumbling = self.params.slide_ms is None
        self.window_ms = self.params.window_ms

    def _windows(self, bucket: int, ctx: Any) -> dict[int, dict[str, SubjectWindow]]:
        """The bucket's open windows; the first call per bucket loads them from state (after a restore)."""
        windows = self.buckets.get(bucket)
        if windows is None:
            windows = self.buckets[bucket] = {}
            for key, text in self.state.items():
                start, subject = key.split("\x1f", 1)
                start = int(start)
                subjects = windows.get(start)
                if subjects is None:
                    subjects = windows[start] = {}
                    # restored with the state; registering it again is harmless
                    ctx.timer_service().register_event_time_timer(self.params.release_time(start))
                subjects[subject] = decode_window(text)
                self.held += 1
        return windows

    def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
        subject, group_json, values_json, ts = value
        self.uncounted += 1
        if self.uncounted >= 1024:
            self.records.inc(self.uncounted)
            self.uncounted = 0
        bucket = zlib.crc32(subject.encode()) % BUCKETS  # the current key, without a call into the JVM
        windows = self.buckets.get(bucket)
        if windows is None:
            windows = self._windows(bucket, ctx)
        starts = (ts - ts % self.window_ms,) if self.tumbling else window_starts(self.params, ts)
        vector = None
        for start in starts:
            subjects = windows.get(start)
            if subjects is None:
                subjects = self._open_window(windows, start, ctx)
                if subjects is None:
                    continue  # later than the allowed lateness
            window = subjects.get(subject)
            if window is None:
                if self.held >= BUFFER_LIMIT:
                    self.full.inc()
                    continue
                window = subjects[subject] = self.core.new_window(self.rng)
                self.held += 1
            if vector is None:
                vector = self.core.vector(values_json)
            if self.core.offer(window, group_json, vector):
                self.state.put(f"{start}\x1f{subject}", encode_window(window))
        return
        yield  # a generator, as PyFlink expects

    def _open_window(self, windows: dict[int, Any], start: int, ctx: Any) -> dict[str, SubjectWindow] | None:
        """A window this bucket has no buffers for yet; None when the window is closed."""
        release = self.params.release_time(start)
        # an open window's timer has not fired, so only a new one asks the JVM for the watermark. The
        # watermark alone decides: a released window's timer fired, so the watermark is past it; and
        # BATCH mode, which fires a key's timers when its records end, starts each key at the lowest one
        if release <= ctx.timer_service().current_watermark():
            self.late.inc()
            return None
        ctx.timer_service().register_event_time_timer(release)
        subjects = windows[start] = {}
        return subjects

    def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any]:
        p = self.params
        if self.uncounted:
            self.records.inc(self.uncounted)
            self.uncounted = 0
        start = timestamp - p.allowed_lateness_ms - p.window_ms + 1
        windows = self._windows(ctx.get_current_key(), ctx)
        subjects = windows.pop(start, None)
        if subjects:
            self.held -= len(subjects)
            if windows:
                for subject in subjects:
                    self.state.remove(f"{start}\x1f{subject}")
            else:
                self.state.clear()  # the bucket's only open window: one call
            totals: dict[str, list[float]] = {}
            for window in subjects.values():
                for group_json, vector in self.core.finish(window):
                    acc = totals.get(group_json)
                    if acc is None:
                        totals[group_json] = vector
                    else:
                        for i, v in enumerate(vector):
                            acc[i] += v
            for group_json, acc in totals.items():
                yield group_json, start, encode_vector(acc)
        if p.public_groups and start not in self.announced:
            self.announced.add(start)
            self.announced = {s for s in self.announced if s >= start - p.window_ms}
            zero = encode_vector(self.core.zero())
            for group_json in p.public_groups:
                yield group_json, start, zero


class _NoisyAggregate(_SeededProcess):
    """Stage 2: keyed by group; sums contributions per window and releases them with noise.

    Window totals live in a ``MapState`` (window start -> comma-joined floats) behind
    a write-through cache, as in stage 1: one state write per contribution.
    """

    seed_offset = 500

    def open(self, ctx: Any) -> None:
        from pyflink.common.typeinfo import Types
        from pyflink.datastream.state import MapStateDescriptor

        self.core = GroupReleaser(self.params, self.subtask_seed(ctx))
        windows = MapStateDescriptor("group_windows", Types.LONG(), Types.STRING())
        windows.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
        self.windows = ctx.get_map_state(windows)
        self.cache: dict[tuple[str, int], list[float]] = {}
        self.zero = ContributionBounder(self.params).zero()
        metrics = ctx.get_metrics_group()
        self.late = metrics.counter("dp_late_contributions_dropped")
        self.released = metrics.counter("dp_groups_released")
        self.suppressed = metrics.counter("dp_groups_suppressed")
        self.not_public = metrics.counter("dp_groups_not_public_dropped")

    def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
        group_json, start, vector = value
        if self.params.public_groups is not None and group_json not in self.core.public:
            self.not_public.inc()  # with public groups, other groups are never released
            return
        acc = self.cache.get((group_json, start))
        if acc is None:
            text = self.windows.get(start)
            if text is not None:
                acc = decode_vector(text)  # restored, or evicted from the cache
            else:
                release = self.params.release_time(start)
                if release <= ctx.timer_service().current_watermark():
                    self.late.inc()
                    return
                ctx.timer_service().register_event_time_timer(release)
                acc = list(self.zero)
            self._cache(group_json, start, acc)
        for i, v in enumerate(decode_vector(vector)):
            acc[i] += v
        self.windows.put(start, encode_vector(acc))
        return
        yield

    def _cache(self, group_json: str, start: int, acc: list[float]) -> None:
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[(group_json, start)] = acc

    def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any]:
        p = self.params
        start = timestamp - p.allowed_lateness_ms - p.window_ms + 1
        group_json = ctx.get_current_key()
        acc = self.cache.pop((group_json, start), None)
        if acc is None:
            text = self.windows.get(start)
            if text is None:
                return
            acc = decode_vector(text)
        self.windows.remove(start)
        out = self.core.release(group_json, start, acc)
        if out is None:
            self.suppressed.inc()
            # the gate must still charge this window: suppressing spent budget too
            yield group_json, start, ""
        else:
            self.released.inc()
            yield group_json, start, json.dumps(out)
        # a public group is released for every window after its first, busy or not
        if p.public_groups is not None and ctx.timer_service().current_watermark() < _MAX_WATERMARK:
            nxt = start + p.slide
            if (group_json, nxt) not in self.cache and self.windows.get(nxt) is None:
                acc = list(self.zero)
                self.windows.put(nxt, encode_vector(acc))
                self._cache(group_json, nxt, acc)
                ctx.timer_service().register_event_time_timer(p.release_time(nxt))


_MAX_WATERMARK = 2**63 - 1  # Flink's end-of-input watermark is Long.MAX_VALUE


class _BudgetGate(_KeyedProcess):
    """Keyed by view; charges each window to the view's budget and stops at ``total_epsilon``."""

    def __init__(self, params: DpParams, view_name: str, policy_id: str, policy_hash: str) -> None:
        self.params = params
        self.view_name = view_name
        self.policy_id = policy_id
        self.policy_hash = policy_hash

    def open(self, ctx: Any) -> None:
        from pyflink.common.typeinfo import Types
        from pyflink.datastream.state import ValueStateDescriptor

        self.ledger = BudgetLedger(self.params)
        # no TTL: forgetting the spend would let the view spend its budget again
        self.first = ctx.get_state(ValueStateDescriptor("first_window", Types.LONG()))
        self.last = ctx.get_state(ValueStateDescriptor("last_window", Types.LONG()))
        metrics = ctx.get_metrics_group()
        self.refused = metrics.counter("dp_releases_refused_budget")
        # a counter raised to the spend, not a gauge: in thread mode Flink's metric thread calls a
        # Python gauge into the embedded interpreter, and a REST metrics query crashed the JVM so
        # (SIGSEGV in take_gil). It starts at 0 in a restored job and catches up at its first release.
        self.spent_counter = metrics.counter("dp_epsilon_spent_micro")
        self.spent_micro = 0
        self.warned = False

    def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
        group_json, start, value_json = value
        first, last = self.first.value(), self.last.value()
        # charge every window between the earliest and the latest one computed
        first = start if first is None else min(first, start)
        last = start if last is None else max(last, start)
        if not self.ledger.allows(first, last):
            self.refused.inc()
            if not self.warned:
                self.warned = True
                log.warning(
                    "dp view %s: total_epsilon %.6g reached; releases stopped (policy %s)",
                    self.view_name,
                    self.params.total_epsilon,
                    self.policy_id,
                )
            return
        self.first.update(first)
        self.last.update(last)
        eps, delta = self.ledger.spent(first, last)
        micro = int(eps * 1e6)
        if micro > self.spent_micro:
            self.spent_counter.inc(micro - self.spent_micro)
            self.spent_micro = micro
        if not value_json:
            return  # a suppressed group: charged, not released
        headers = {
            "policy_id": self.policy_id,
            "policy_hash": self.policy_hash,
            "view": self.view_name,
            "epsilon_spent": eps,
            "delta_spent": delta,
        }
        yield group_json, json.dumps(headers), value_json
