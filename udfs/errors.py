"""The errors and the absent-field marker every transform shares.

:class:`ParamError` is raised when a policy is checked, :class:`TransformError` per record
(the record goes to the dead letters), and :data:`MISSING` stands for a field the record
does not have. :mod:`udfs.registry` re-exports all three, for plugins written against it.
"""

from __future__ import annotations

__all__ = ["MISSING", "ParamError", "TransformError"]


class _Missing:
    """Marker for "this field is absent from the record"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class ParamError(ValueError):
    """A parameter is wrong. Raised when the policy is checked, never per record.

    Parameters
    ----------
    param : str
        Name of the parameter at fault, relative to the field's spec ("" for the spec itself).
    problem : str
        What is wrong. Never contains a record value.
    allowed : str
        What would be accepted instead.
    """

    def __init__(self, param: str, problem: str, allowed: str = "") -> None:
        self.param = param
        self.problem = problem
        self.allowed = allowed
        super().__init__(f"{param}: {problem}" + (f" (allowed: {allowed})" if allowed else ""))


class TransformError(ValueError):
    """A value does not fit its transform. The record goes to the dead-letter output.

    The message is a short reason such as ``expected digits``. It must never
    contain the value itself, because reasons travel to logs and headers.
    """
