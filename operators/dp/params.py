"""The checked parameters of a ``differential_privacy:`` block, checked in one place.

Every problem is a :class:`~udfs.errors.ParamError` naming the parameter; the policy loader
prefixes the policy path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.quiet_clock import DEFAULT_IDLE_TIMEOUT_MS, parse_idle_timeout
from udfs.durations import parse_duration
from udfs.errors import ParamError

MECHANISMS = ("laplace", "gaussian")
METRIC_KINDS = ("count", "sum", "mean")
DEFAULT_DELTA = 1e-6
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
    "idle_timeout",
)
#: quiet time after which event time follows the wall clock, so a silent input still closes its windows



def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(param, "must be a finite number", "a number")
    return float(value)


def _positive_int(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError(param, "must be a whole number of at least 1", "an integer >= 1")
    return value


def scalar_group_value(value: Any) -> bool:
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
    idle_timeout_ms : int or None
        When no record has arrived for this long, event time is taken to follow the wall clock
        from the last event time seen (minus the watermark delay), so open windows still close on
        a quiet input; a record for a window closed so is late. ``None`` (``idle_timeout: none``)
        waits for the watermark alone.

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
    idle_timeout_ms: int | None = DEFAULT_IDLE_TIMEOUT_MS
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
        if "idle_timeout" in block:
            kwargs["idle_timeout_ms"] = parse_idle_timeout(block["idle_timeout"])
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
        if len(values) != width or not all(scalar_group_value(v) for v in values):
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


def group_key(values: Iterable[Any]) -> str:
    """The canonical group key: a JSON list, e.g. ``'["us-west"]'``."""
    return json.dumps(list(values), ensure_ascii=False)
