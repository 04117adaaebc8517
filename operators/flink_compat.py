"""Small shims over PyFlink 2.2: differences between process and thread mode, and crossings it adds."""

from __future__ import annotations

import time
from typing import Any

#: timestamp of the event-time timer that flushes a buffer when a bounded input ends: processing-time
#: timers never fire after the end of input, the final watermark does reach this one
FLUSH_TIMER = 2**63 - 2


def now_ms() -> int:
    """Flink's processing time, read from the wall clock.

    Asking the timer service is a call into the JVM, and in BATCH mode it has no clock at all.
    """
    return int(time.time() * 1000)


class BatchedCounter:
    """A Flink counter increased once every ``every`` counts: each ``inc`` is a call into the JVM.

    ``add`` says whether it reached the counter; call ``flush`` in timers and ``close`` so
    that nothing stays pending.
    """

    __slots__ = ("counter", "every", "pending")

    def __init__(self, counter: Any, every: int = 1024) -> None:
        self.counter, self.every, self.pending = counter, every, 0

    def add(self, n: int = 1) -> bool:
        self.pending += n
        if self.pending >= self.every:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if self.pending:
            self.counter.inc(self.pending)
            self.pending = 0


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


# -- crossings between Java and Python ----------------------------------------------------
#
# Every record a Python operator hands to Java, and every record Java hands back, is a crossing:
# a few microseconds for a string, several times that for a tuple or Row. PyFlink adds crossings
# of its own that these helpers avoid:
#
# - ``DataStream.get_side_output`` appends an identity Python map to every side output, so a side
#   output bound for a Java sink crosses into Python and back for nothing;
# - ``DataStream.key_by`` runs the key selector in a Python operator that emits ``Row(key, value)``;
# - ``assign_timestamps_and_watermarks`` with a Python timestamp assigner adds another Python
#   operator that emits ``(value, timestamp)``.
#
# So the job's Python operators emit those shapes themselves, and Java does the rest:
# ``Row(key, payload)`` is keyed with PyFlink's own Java ``KeyByKeySelector``, and
# ``(Row(key, payload), event ms)`` gets its timestamp from PyFlink's Java ``CustomTimestampAssigner``.


def side_output(stream: Any, tag: Any) -> Any:
    """A side output as Java has it, without PyFlink's identity Python map (one crossing less per record)."""
    from pyflink.datastream import DataStream

    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def keyed_by_first_field(stream: Any, row_type: Any) -> Any:
    """Key a stream of ``Row(key, payload)`` on its key, in Java: what ``key_by`` does, without its Python step.

    The keyed Python function then receives the payload, as after ``key_by``.
    """
    return _keyed(stream._j_data_stream, row_type)


def keyed_side_output(stream: Any, tag: Any, row_type: Any) -> Any:
    """A side output of ``Row(key, payload)`` records, keyed on its key in Java."""
    return _keyed(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()), row_type)


def keyed_event_time_side_output(stream: Any, tag: Any, row_type: Any, strategy: Any, name: str) -> Any:
    """A side output of ``(Row(key, payload), event ms)``: timestamps and watermarks set, keyed, all in Java.

    ``strategy`` is a ``WatermarkStrategy`` without a timestamp assigner (the second field is the
    timestamp); ``name`` names and identifies the watermark operator.
    """
    from pyflink.java_gateway import get_gateway

    event_time = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    j_side = stream._j_data_stream.getSideOutput(tag.get_java_output_tag())
    j_timed = j_side.assignTimestampsAndWatermarks(
        strategy._j_watermark_strategy.withTimestampAssigner(event_time.CustomTimestampAssigner()))
    j_timed.name(name).uid(name)
    j_rows = j_timed.map(event_time.RemoveTimestampMapFunction(), row_type.get_java_type_info())
    j_rows.name(f"{name}-drop-timestamp").uid(f"{name}-drop-timestamp")
    return _keyed(j_rows, row_type)


def _keyed(j_stream: Any, row_type: Any) -> Any:
    from pyflink.common import Types
    from pyflink.datastream import DataStream, KeyedStream
    from pyflink.java_gateway import get_gateway

    key_type = row_type.get_field_types()[0]
    payload_type = row_type.get_field_types()[1]
    j_keyed = j_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, payload_type, DataStream(j_stream))
