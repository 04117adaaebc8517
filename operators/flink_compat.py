"""Small shims over PyFlink 2.2 differences between process and thread mode."""

from __future__ import annotations

from typing import Any


def subtask_index(runtime_context: Any) -> int:
    """Index of this parallel subtask, in both execution modes.

    In thread mode PyFlink 2.2 forwards ``get_index_of_this_subtask`` to a Java method that
    Flink 2.x moved to ``getTaskInfo()``, so the call fails there; ask the task info instead.
    """
    try:
        return runtime_context.get_index_of_this_subtask()
    except AttributeError:
        return runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask()
