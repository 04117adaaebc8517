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


def state_ttl(ms: int) -> Any:
    """The TTL every operator's state uses: refreshed on write, expired entries never returned."""
    from pyflink.common import Time
    from pyflink.datastream.state import StateTtlConfig

    return (
        StateTtlConfig.new_builder(Time.milliseconds(ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        # incremental heap cleanup fails in thread mode ("Failed to incrementally clean up
        # state with TTL"); expired entries go on read and in full snapshots instead
        .disable_cleanup_in_background()
        .cleanup_full_snapshot()
        .build()
    )
