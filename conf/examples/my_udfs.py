"""The README's example of user transforms: one decorated function and one class.

A policy loads it with ``plugins: [conf.examples.my_udfs]``; tests/flink_jobs/test_plugins.py runs it.
"""

from __future__ import annotations

from typing import Any

from udfs.registry import ParamError, Transform, TransformError, transform


@transform("mask.initials")
def initials(value: str) -> str:
    """``Jane Doe`` -> ``J.D.``."""
    return ".".join(part[0] for part in value.split()) + "."


@transform("generalize.bucket")
class Bucket(Transform):
    """The index of the bucket a number falls in: ``{generalize: bucket, edges: [0, 18, 65]}``."""

    params = ("edges",)

    def validate(self) -> None:
        edges = self.option("edges")
        if not isinstance(edges, list) or edges != sorted(edges):
            raise ParamError("edges", "must be a sorted list", "e.g. [0, 18, 65]")
        self.edges = edges

    def apply(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TransformError("expected a number")  # a reason, never the value
        return sum(value >= edge for edge in self.edges)
