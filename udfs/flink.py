"""Every registered transform as a PyFlink ``ScalarFunction``, for the Table API and Flink SQL.

The wrapper is thin: ``open()`` builds the plain transform and resolves its key from the
keyring (never from SQL text), ``eval()`` calls ``apply``. A value that does not fit its
transform gives NULL, never the value itself, and is counted in the ``transform_refused``
metric: in SQL there is no dead-letter output to route it to.

    from udfs.flink import scalar_function
    t_env.create_temporary_function(
        "mask_email", scalar_function("mask.email", keyring_ref="file:/etc/anon/keyring.json"))
    t_env.sql_query("SELECT mask_email(email) FROM raw_events")
"""

from __future__ import annotations

from typing import Any

from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction, udf

from udfs import registry
from udfs.keyring import load_keyring
from udfs.registry import TransformError

__all__ = ["TransformFunction", "scalar_function"]


class TransformFunction(ScalarFunction):
    """A registered transform, by name and parameters, as a Flink scalar function."""

    def __init__(self, name: str, params: dict[str, Any] | None = None, *, domain: str | None = None,
                 keyring_ref: str | None = None) -> None:
        self.transform_name = name
        self.params = dict(params or {})
        self.domain = domain or name.rsplit(".", 1)[-1]
        self.keyring_ref = keyring_ref
        cls = registry.get(name)  # unknown names fail here, when the query is built
        self._deterministic = cls.deterministic
        cls(self.params, domain=self.domain)  # and bad parameters too, with their ParamError

    def open(self, function_context: Any) -> None:
        self.transform = registry.get(self.transform_name)(self.params, domain=self.domain)
        self.transform.open(load_keyring(self.keyring_ref) if self.keyring_ref else None)
        self.apply = self.transform.cached_apply()
        self.refused = function_context.get_metric_group().counter("transform_refused")

    def eval(self, value: Any) -> Any:
        try:
            return self.apply(value)
        except TransformError:
            self.refused.inc()
            return None

    def is_deterministic(self) -> bool:
        return self._deterministic


def scalar_function(name: str, params: dict[str, Any] | None = None, *, domain: str | None = None,
                    keyring_ref: str | None = None, result_type: Any = None) -> Any:
    """A ``udf`` wrapping the transform ``name`` (STRING result unless ``result_type`` says otherwise)."""
    function = TransformFunction(name, params, domain=domain, keyring_ref=keyring_ref)
    return udf(function, result_type=result_type if result_type is not None else DataTypes.STRING())
