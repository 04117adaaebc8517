"""Every PyFlink 2.2 workaround of the project, described once, and the shims that apply them.

The code that applies one carries a one-line pointer here, by the name in brackets.

Thread mode (Python operators in the JVM's embedded pemja interpreter)
    - [subtask index] ``get_index_of_this_subtask`` and ``get_attempt_number`` forward to Java methods
      that Flink 2.x moved to ``getTaskInfo()``: :func:`subtask_index` and :func:`task_attempt` ask the
      task info instead.
    - [ttl cleanup] incremental heap cleanup of state with a TTL fails ("Failed to incrementally
      clean up state with TTL"): :func:`state_ttl` expires entries on read and in full snapshots.
    - [gauges] Flink's metric thread would call a Python gauge into the embedded interpreter, and a
      REST metrics query then crashes the JVM (SIGSEGV in ``take_gil``): the operators report
      counters only, never gauges (k-anonymity's NCP and longest wait, DP's spent epsilon).
    - [list state] LIST state gets a pickled-bytes serializer on the Java side but stores the
      ``java.util.ArrayList`` its converter makes, so the first checkpoint fails (``ArrayList
      cannot be cast to [B``): DP's vectors travel and rest as comma-joined ``STRING``.
    - [instants] a Table-API timestamp arrives as a ``java.time.Instant``; in process mode it is a
      PyFlink ``Instant`` or a ``datetime`` (``flink_jobs.kafka_io``).
    - [site-packages] the embedded interpreter does not see the venv's site-packages by itself:
      the job sets ``python.pythonpath`` (``flink_jobs.protect_stream.make_env``).
    - [pybind11] scipy's pybind11 modules deadlock the embedded interpreter: a chained operator
      imports them on a thread whose GIL it already holds. So BATCH jobs run with operator
      chaining off (``make_env``), and DP draws noise without diffprivlib
      (``operators.dp.mechanisms``).

Process mode (Python operators in Beam worker processes)
    - [no None] a STRING or LONG field cannot carry None: ``""`` stands for "no key" (the sinks
      turn it back into none) and ``-1`` for "no timestamp".
    - [put_all] ``MapState.put_all`` iterates its dict as if it were (key, value) pairs and fails:
      :func:`put_all` puts one entry at a time there (a write to the worker's cache, not a call).

Both modes
    - [end of input] processing-time timers never fire once a bounded input has ended: a buffer
      also holds an event-time timer at :data:`FLUSH_TIMER`, which the final watermark fires.
    - [idleness] with ``with_idleness`` the watermark never left the source chain on an unbounded
      Kafka source (issue 19): event-time operators keep a :class:`~operators.quiet_clock.QuietClock`.
    - [jvm calls] every metric ``inc`` and every timer-service clock read is a call into the JVM:
      :class:`BatchedCounter` and :func:`now_ms` keep them off the per-record path.
    - [crossings] every record a Python operator hands to Java, and every record Java hands back,
      is a crossing: a few microseconds for a string, several times that for a tuple or Row.
      PyFlink adds crossings of its own: ``DataStream.get_side_output`` appends an identity Python
      map to every side output; ``DataStream.key_by`` runs the key selector in a Python operator
      that emits ``Row(key, value)``; ``assign_timestamps_and_watermarks`` with a Python timestamp
      assigner adds another Python operator that emits ``(value, timestamp)``. So the job's Python
      operators emit those shapes themselves, and Java does the rest: ``Row(key, payload)`` is
      keyed with PyFlink's own Java ``KeyByKeySelector``, and ``(Row(key, payload), event ms)``
      gets its timestamp from PyFlink's Java ``CustomTimestampAssigner`` (:func:`side_output`,
      :func:`keyed_by_first_field`, :func:`keyed_side_output`, :func:`keyed_event_time_side_output`).
    - [one subtask] thread mode runs a TaskManager's Python under one interpreter lock, and each task
      thread takes it once per record: a record that passes a keyed stage in a task of its own hands
      the lock between threads, a few context switches per record (9 in the whole shipped job,
      measured with ``perf``). At parallelism 1 in STREAMING mode one subtask holds every key group,
      so the keyed streams above are reinterpreted as keyed (``DataStreamUtils.reinterpretAsKeyedStream``)
      instead of shuffled: the keyed operators chain onto the protect operator and run in its thread.
      At parallelism > 1, in BATCH mode (whose keyed inputs Flink sorts by key), and where the
      parallelism may change while the job runs (``scheduler-mode: reactive``, an autoscaler's
      ``pipeline.jobvertex-parallelism-overrides``), they are keyed by a shuffle as before. At one
      subtask in thread mode the protect operator also publishes a k-anonymity record whose class the
      chained first stage has released, instead of handing it over
      (:func:`operators.k_anonymity.flink.released_shortcut`, which checks the calling thread).
    - [bundles] thread mode calls a Python function once per record and ignores
      ``python.fn-execution.bundle.size`` (Flink 2.2's ``AbstractEmbeddedPythonFunctionOperator``
      has no bundles), and a keyed Python stage costs more per call than the work of most of its
      records. So the keyed streams above may pass a Java operator first, ``BundleByKey``
      (``conf/bundle``, built into :data:`BUNDLE_JAR` by ``make jars``): it joins the payloads of one
      key with :data:`BUNDLE_SEPARATOR` and lets them go at ``bundle.size`` records, after
      ``bundle.time``, before a watermark, before a checkpoint barrier and at the end of input. It
      holds no state, so a restore loses and repeats nothing. The keyed function then splits its
      input (:func:`unbundle`). Not in BATCH mode, nor with a bundle size of 1; without the jar the
      records cross one by one, as before, with a warning.
    - [frames] the same holds for the protect operator, called once per input line: a file source's
      lines pass a Java operator first, ``FrameLines`` (same jar), which numbers them and joins runs of
      them into one string, let go as ``BundleByKey`` lets a bundle go (:func:`framed_lines`,
      :func:`unframe`). The protect operator then hands each of its channels over once per frame: the
      lines of a file sink joined, a keyed channel's payloads joined per key, as ``BundleByKey``
      would join them. Without the jar each line is a frame of its own, numbered in Python.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: timestamp of the event-time timer that flushes a buffer when a bounded input ends [end of input]
FLUSH_TIMER = 2**63 - 2

#: joins the payloads of one bundle [bundles]. No payload holds it: their fields are JSON text, which
#: escapes control characters, joined by the codecs' own ``\x1e`` and ``\x1f``.
BUNDLE_SEPARATOR = "\x1d"

#: the Java side of [bundles]: ``dev.flinkanonymizer.BundleByKey``, built from ``conf/bundle`` by ``make jars``
BUNDLE_JAR = Path(__file__).resolve().parents[1] / "jars" / "ops" / "flink-anonymizer-ops.jar"


def unbundle(payload: str) -> list[str]:
    """The payloads a keyed function received in one call: one, or a bundle of one key's [bundles]."""
    return payload.split(BUNDLE_SEPARATOR)


def now_ms() -> int:
    """Flink's processing time, read from the wall clock [jvm calls]; in BATCH mode the timer service has none."""
    return int(time.time() * 1000)


class BatchedCounter:
    """A Flink counter increased once every ``every`` counts [jvm calls].

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
    """Index of this parallel subtask, in both execution modes [subtask index]."""
    try:
        return runtime_context.get_index_of_this_subtask()
    except AttributeError:
        return runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask()


def task_attempt(runtime_context: Any) -> tuple[int, int]:
    """``(subtask index, attempt number)``: which run of which subtask this is [subtask index]."""
    try:
        attempt = runtime_context.get_attempt_number()
    except AttributeError:
        attempt = runtime_context._runtime_context.getTaskInfo().getAttemptNumber()
    return subtask_index(runtime_context), attempt


def thread_mode(stream: Any) -> bool:
    """Whether the job of ``stream`` runs its Python in thread mode, where a task's operators share its thread."""
    settings = stream._j_data_stream.getExecutionEnvironment().getConfiguration().toMap()
    return str(settings.get("python.execution-mode") or "process").lower() == "thread"


def state_ttl(ms: int) -> Any:
    """The TTL every operator's state uses: refreshed on write, expired entries never returned."""
    from pyflink.common import Time
    from pyflink.datastream.state import StateTtlConfig

    return (
        StateTtlConfig.new_builder(Time.milliseconds(ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()  # PyFlink workaround [ttl cleanup], see the module docstring
        .cleanup_full_snapshot()
        .build()
    )


# -- crossings between Java and Python [crossings] -------------------------------------


def side_output(stream: Any, tag: Any) -> Any:
    """A side output as Java has it, without PyFlink's identity Python map (one crossing less per record)."""
    from pyflink.datastream import DataStream

    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def keyed_by_first_field(stream: Any, row_type: Any, bundle: str | None = None) -> Any:
    """Key a stream of ``Row(key, payload)`` on its key, in Java: what ``key_by`` does, without its Python step.

    The keyed Python function then receives the payload, as after ``key_by``; with ``bundle`` (the
    bundling operator's name and uid) it receives one or more payloads of its key, to :func:`unbundle`.
    """
    return _keyed(stream._j_data_stream, row_type, bundle)


def keyed_side_output(stream: Any, tag: Any, row_type: Any, bundle: str | None = None) -> Any:
    """A side output of ``Row(key, payload)`` records, keyed on its key in Java; ``bundle`` as above."""
    return _keyed(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()), row_type, bundle)


def keyed_event_time_side_output(stream: Any, tag: Any, row_type: Any, strategy: Any, name: str,
                                 bundle: str | None = None) -> Any:
    """A side output of ``(Row(key, payload), event ms)``: timestamps and watermarks set, keyed, all in Java.

    ``strategy`` is a ``WatermarkStrategy`` without a timestamp assigner (the second field is the
    timestamp); ``name`` names and identifies the watermark operator; ``bundle`` as above.
    """
    from pyflink.java_gateway import get_gateway

    event_time = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    j_side = stream._j_data_stream.getSideOutput(tag.get_java_output_tag())
    j_timed = j_side.assignTimestampsAndWatermarks(
        strategy._j_watermark_strategy.withTimestampAssigner(event_time.CustomTimestampAssigner()))
    j_timed.name(name).uid(name)
    j_rows = j_timed.map(event_time.RemoveTimestampMapFunction(), row_type.get_java_type_info())
    j_rows.name(f"{name}-drop-timestamp").uid(f"{name}-drop-timestamp")
    return _keyed(j_rows, row_type, bundle)


def put_all(state: Any, entries: dict) -> None:
    """Put ``entries`` in a ``MapState``: in thread mode one call into Java for them all [put_all]."""
    if len(entries) > 1 and type(state).__module__.startswith("pyflink.fn_execution.datastream.embedded"):
        state.put_all(entries)
    else:
        for key, value in entries.items():
            state.put(key, value)


def pipeline_jars(j_env: Any) -> list[str]:
    """The jars a job ships (``pipeline.jars``), as ``StreamExecutionEnvironment.add_jars`` looks them up."""
    from pyflink.common import Configuration
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    key = jvm.org.apache.flink.configuration.PipelineOptions.JARS.key()
    conf = jvm.org.apache.flink.python.util.PythonConfigUtil.getEnvironmentConfig(j_env)
    return Configuration.parse_list_value(conf.getString(key, None))


def _bundle_settings(j_env: Any) -> tuple[int, int]:
    """``(records, ms)`` of a bundle: the job's ``python.fn-execution.bundle.*``, or else PyFlink's own defaults."""
    from pyflink.java_gateway import get_gateway

    python_options = get_gateway().jvm.org.apache.flink.python.PythonOptions
    config = j_env.getConfiguration()
    return config.get(python_options.MAX_BUNDLE_SIZE), config.get(python_options.MAX_BUNDLE_TIME_MILLS)


def _ops_jar_loaded(j_env: Any, missing: str) -> bool:
    """Whether :data:`BUNDLE_JAR` is there, shipped with the job and loadable here; else warns ``missing``."""
    from pyflink.datastream import StreamExecutionEnvironment

    if not BUNDLE_JAR.is_file():
        log.warning("%s is missing (make jars builds it): %s", BUNDLE_JAR, missing)
        return False
    url = BUNDLE_JAR.as_uri()
    if url not in pipeline_jars(j_env):
        StreamExecutionEnvironment(j_env).add_jars(url)
    return True


def _bundled(j_stream: Any, row_type: Any, name: str) -> Any:
    """``j_stream`` through ``BundleByKey``, where [bundles] applies; else ``j_stream`` as it is."""
    from pyflink.java_gateway import get_gateway

    j_env = j_stream.getExecutionEnvironment()
    size, delay_ms = _bundle_settings(j_env)
    if size <= 1 or not _streaming(j_env):
        return j_stream
    if not _ops_jar_loaded(j_env, "keyed Python stages take their records one by one"):
        return j_stream
    operator = get_gateway().jvm.dev.flinkanonymizer.BundleByKey(size, max(delay_ms, 1), BUNDLE_SEPARATOR)
    j_out = j_stream.transform(name, row_type.get_java_type_info(), operator)
    j_out.uid(name).setParallelism(j_stream.getParallelism())
    return j_out


def framed_lines(lines: Any, name: str) -> Any:
    r"""A text source's lines, numbered and joined into frames [frames]: ``"<first line's number>\n<line>\n..."``.

    ``lines`` must run at one subtask, in reading order: the numbers are the lines' positions in the
    input. Frames hold up to ``bundle.size`` lines and wait up to ``bundle.time``; in BATCH mode they
    wait for nothing but their size and the end of input. :func:`unframe` reads one.
    """
    from pyflink.common import Types
    from pyflink.datastream import DataStream, MapFunction
    from pyflink.java_gateway import get_gateway

    j_stream = lines._j_data_stream
    j_env = j_stream.getExecutionEnvironment()
    if not _ops_jar_loaded(j_env, "the protect operator takes the input's lines one by one"):

        class FrameEach(MapFunction):
            """Each line a frame of its own, numbered in Python."""

            def open(self, runtime_context: Any) -> None:
                self.number = 0

            def map(self, line: str) -> str:
                self.number += 1
                return f"{self.number}\n{line}"

        return lines.map(FrameEach(), output_type=Types.STRING()).set_parallelism(1).name(name).uid(name)
    size, delay_ms = _bundle_settings(j_env)
    operator = get_gateway().jvm.dev.flinkanonymizer.FrameLines(max(size, 1), max(delay_ms, 1) if _streaming(j_env) else 0)
    j_out = j_stream.transform(name, Types.STRING().get_java_type_info(), operator)
    j_out.uid(name).setParallelism(1)
    return DataStream(j_out)


def unframe(frame: str) -> tuple[int, list[str]]:
    """``(number of the first line, the lines)`` of a frame from :func:`framed_lines`."""
    first, _, body = frame.partition("\n")
    return int(first), body.split("\n")


def _keyed(j_stream: Any, row_type: Any, bundle: str | None = None) -> Any:
    from pyflink.common import Types
    from pyflink.datastream import DataStream, KeyedStream
    from pyflink.java_gateway import get_gateway

    if bundle is not None:
        j_stream = _bundled(j_stream, row_type, bundle)
    jvm = get_gateway().jvm
    key_type = row_type.get_field_types()[0]
    payload_type = row_type.get_field_types()[1]
    key_info = Types.ROW([key_type]).get_java_type_info()
    if _single_streaming_subtask(j_stream):
        # [one subtask] one subtask holds every key group: keyed state needs no shuffle, so the keyed
        # operator chains onto the one before it, in its thread
        j_keyed = jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
            j_stream, jvm.KeyByKeySelector(), key_info)
    else:
        j_keyed = j_stream.keyBy(jvm.KeyByKeySelector(), key_info)
    return KeyedStream(j_keyed, payload_type, DataStream(j_stream))


def _single_streaming_subtask(j_stream: Any) -> bool:
    """Whether ``j_stream`` and what keys it run as one subtask, in STREAMING mode [one subtask]."""
    j_env = j_stream.getExecutionEnvironment()
    config = j_env.getConfiguration()
    # reactive mode and an autoscaler's vertex overrides change a running job's parallelism without
    # building it again: a stream keyed only because it ran as one subtask would then be wrong
    settings = config.toMap()
    rescaled = (str(settings.get("scheduler-mode") or "").lower() == "reactive"
                or bool(settings.get("pipeline.jobvertex-parallelism-overrides")))
    return j_stream.getParallelism() == 1 and j_env.getParallelism() == 1 and _streaming(j_env) and not rescaled


def _streaming(j_env: Any) -> bool:
    """Whether the job runs in STREAMING mode (not BATCH, nor AUTOMATIC)."""
    from pyflink.java_gateway import get_gateway

    mode = j_env.getConfiguration().get(get_gateway().jvm.org.apache.flink.configuration.ExecutionOptions.RUNTIME_MODE)
    return str(mode.name()) == "STREAMING"
