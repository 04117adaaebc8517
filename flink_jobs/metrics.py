"""Prometheus metrics: Flink's reporter switched on by ``--metrics-port``, and the protect operator's counters.

The pip distribution of Flink ships ``plugins/metrics-prometheus``. A standalone cluster loads
it as a plugin from its Flink home's ``plugins/``; a local run's MiniCluster needs it on the
class path instead (see :func:`ensure_prometheus_plugin`).

Each process that runs tasks serves ``http://HOST:PORT/metrics``. A local run is one process
(one port); a cluster's JobManager and each TaskManager take one port each from a range.
Names follow Flink's scope, then the groups the operators add (``view``, ``reason``, ``level``
become labels)::

    flink_taskmanager_job_task_operator_protect_view_records_in{view="masked"}
    flink_taskmanager_job_task_operator_protect_reason_dead_letters{reason="invalid_json"}
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Flink's Prometheus reporter, from plugins/metrics-prometheus of the distribution
PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
_PORTS = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
#: a field name becomes a label; past this many distinct ones a view's further names are not labelled
MAX_DROPPED_LABELS = 200


class MetricsConfigError(ValueError):
    """A ``--metrics-port`` that is not a port or a range, or no Prometheus plugin to load."""


def parse_ports(text: str) -> tuple[int, int]:
    """``"9249"`` or ``"9249-9259"`` as (first, last); refuses anything else."""
    match = _PORTS.match(str(text).strip())
    if not match:
        raise MetricsConfigError(f"--metrics-port must be a port or a range such as 9249-9259, got {text!r}")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 0 < first <= last <= 65535:
        raise MetricsConfigError(f"--metrics-port {text!r}: ports run from 1 to 65535, first <= last")
    return first, last


def prometheus_config(ports: str) -> dict[str, str]:
    """Flink settings that turn the Prometheus reporter on, serving ``/metrics`` on ``ports``."""
    first, last = parse_ports(ports)
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": str(first) if first == last else f"{first}-{last}",
    }


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def prometheus_jar() -> Path:
    """The reporter's jar in the distribution's ``plugins/metrics-prometheus`` (or ``$FLINK_PLUGINS_DIR``)."""
    folder = Path(os.environ.get("FLINK_PLUGINS_DIR") or flink_home() / "plugins")
    jars = sorted(folder.glob("metrics-prometheus/flink-metrics-prometheus-*.jar"))
    if not jars:
        raise MetricsConfigError(f"no metrics-prometheus/flink-metrics-prometheus-*.jar under {folder} "
                                 "(FLINK_PLUGINS_DIR); the apache-flink wheel ships it in pyflink/plugins")
    return jars[0]


def ensure_prometheus_plugin() -> Path:
    """Put the reporter where a local run's MiniCluster finds it; returns the lib folder used.

    A standalone cluster loads reporters as plugins, but a MiniCluster builds its reporters
    without a plugin manager: only factories on the JVM's class path count ("Available
    factories: []" otherwise). So a local run starts PyFlink's gateway JVM with
    ``$FLINK_LIB_DIR`` pointing at a folder of links to the distribution's ``lib/`` jars plus
    the reporter's jar. Call it before the process's first PyFlink environment: the gateway
    reads the variable when it starts.
    """
    jar = prometheus_jar()
    lib = Path(os.environ.get("FLINK_LIB_DIR") or flink_home() / "lib").resolve()
    if (lib / jar.name).exists():
        return lib
    jars = sorted(lib.glob("*.jar"))
    digest = hashlib.sha256("\n".join(map(str, [*jars, jar])).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"flink-anonymizer-lib-{os.getuid()}-{digest}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        for source in [*jars, jar]:
            (staging / source.name).symlink_to(source)
        try:
            staging.rename(target)
        except OSError:  # another run made it first: the same links
            shutil.rmtree(staging, ignore_errors=True)
    # with FLINK_HOME unset, PyFlink finds its home itself and resets FLINK_LIB_DIR to its own lib/
    os.environ.setdefault("FLINK_HOME", str(flink_home()))
    os.environ["FLINK_LIB_DIR"] = str(target)
    return target


def reason_word(reason: str) -> str:
    """A dead letter's reason as a label: its first word, letters and underscores only, never a value."""
    match = re.match(r"[A-Za-z_]+", reason)
    return match.group(0).lower() if match else "other"


class ProtectMetrics:
    """The protect operator's counters for dashboards, kept up from the counts it already keeps.

    ``update`` is called every few thousand records and at close: each call adds only what
    changed since the last one, so a counter costs no JVM call per record.

    Counters (under the operator's ``protect`` group): ``view.records_in`` per view,
    ``reason.dead_letters`` per first word of the reason, ``view.field.fields_dropped`` per view
    and field name, ``vault_hits`` and ``vault_misses`` (tokens found, in the cache or the vault,
    and tokens minted).
    """

    def __init__(self, group: Any, channels: list[str], dlq: str = "dlq") -> None:
        self.group = group
        self.dlq = dlq
        self.views = {c: group.add_group("view", c).counter("records_in") for c in channels if c != dlq}
        self.reasons: dict[str, Any] = {}
        self.dropped: dict[tuple[str, str], Any] = {}
        self.vault_hits = group.counter("vault_hits")
        self.vault_misses = group.counter("vault_misses")
        self.sent: dict[Any, int] = {}  # what each counter has been given so far
        self.tokenizers: list[Any] | None = None

    def _add(self, counter: Any, ident: Any, total: int) -> None:
        delta = total - self.sent.get(ident, 0)
        if delta > 0:
            counter.inc(delta)
            self.sent[ident] = total

    def update(self, routed: dict[str, int], protector: Any) -> None:
        """Bring the counters up to ``routed`` (records per channel) and the protector's own counts."""
        for view, counter in self.views.items():
            self._add(counter, ("view", view), routed.get(view, 0))
        by_word: dict[str, int] = {}
        for name, count in protector.counts.items():
            if name.startswith("dlq:"):
                word = reason_word(name[4:])
                by_word[word] = by_word.get(word, 0) + count
        for word, total in by_word.items():
            if word not in self.reasons:
                self.reasons[word] = self.group.add_group("reason", word).counter("dead_letters")
            self._add(self.reasons[word], ("reason", word), total)
        for name, total in protector.dropped.items():
            view, _, field = name.partition(":")
            key = (view, field)
            if key not in self.dropped:
                if len(self.dropped) >= MAX_DROPPED_LABELS:
                    key = (view, "_other")
                if key not in self.dropped:
                    self.dropped[key] = self.group.add_group("view", view).add_group("field", key[1]).counter(
                        "fields_dropped")
            self._add(self.dropped[key], ("dropped", name), total)
        if self.tokenizers is None:
            self.tokenizers = _tokenizers(protector)
        hits = misses = 0
        for transform in self.tokenizers:
            hits += getattr(transform, "hits", 0)
            misses += getattr(transform, "misses", 0)
        self._add(self.vault_hits, "vault_hits", hits)
        self._add(self.vault_misses, "vault_misses", misses)


def _tokenizers(protector: Any) -> list[Any]:
    policy = getattr(protector, "policy", None)
    if policy is None:
        return []
    return [t for t in policy.transforms() if hasattr(t, "misses")]
