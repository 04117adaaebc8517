"""The protect_stream job: one raw stream in, one output per view plus a dead-letter output.

    raw ──[number]──[protect]──┬─▶ masked view        (key, headers, value)
                               ├─▶ anonymized view ──[k-anonymity cascade]──▶ released / suppressed
                               ├─▶ aggregated view ──[DP stage 1]──[DP stage 2, windows]──▶ releases
                               └─▶ dead letters       (key, headers with reason, raw value)

``build(env, policy, source, sinks)`` wires the graph; ``main()`` is for ``flink run -py``.
Sources and sinks are small objects with ``open_source(env)`` and ``write(stream, channel, topic)``,
so the same graph runs on JSONL files (the embedded default) and on Kafka.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pyflink.common import Configuration, Duration, Encoder, Row, Types, WatermarkStrategy
from pyflink.datastream import (
    MapFunction,
    OutputTag,
    ProcessFunction,
    RuntimeExecutionMode,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.file_system import (
    BucketAssigner,
    FileSink,
    FileSource,
    OutputFileConfig,
    RollingPolicy,
    StreamFormat,
)

from flink_jobs.kafka_io import sink_row, sink_row_type
from flink_jobs.metrics import ProtectMetrics
from flink_jobs.policy import Policy
from flink_jobs.protect import BLANK, DLQ, Protector
from operators.flink_compat import (
    BUNDLE_SEPARATOR,
    BatchedCounter,
    framed_lines,
    keyed_event_time_side_output,
    keyed_side_output,
    side_output,
    subtask_index,
    task_attempt,
    thread_mode,
    unframe,
)
from udfs.keyring import load_keyring
from udfs.record import envelope_line

# Type infos are made fresh on each call: once Flink has used one it holds a JVM handle,
# and a function that captures it can no longer be pickled.


def out_type() -> Any:
    """(key, headers JSON, value): what every sink takes."""
    return Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()])


def kanon_type() -> Any:
    """k-anonymity input: ``Row(stage-0 partition key, staged payload)``, keyed in Java on the first field."""
    return Types.ROW([Types.STRING(), Types.STRING()])


def dp_row_type() -> Any:
    """DP input once timestamped: ``Row(subject bucket, contribution payload)``, keyed in Java on the bucket."""
    return Types.ROW([Types.INT(), Types.STRING()])


def dp_type() -> Any:
    """DP input as the protect operator emits it: ``(Row(bucket, payload), event ms)``, timestamped in Java."""
    return Types.TUPLE([dp_row_type(), Types.LONG()])


def kanon_event_type() -> Any:
    """k-anonymity input with ``timing: event``: ``(Row(partition key, payload), event ms)``, timestamped in Java."""
    return Types.TUPLE([kanon_type(), Types.LONG()])


_CHANNEL_TYPES = {"record": out_type, "line": Types.STRING, "row": sink_row_type, "kanon": kanon_type,
                  "kanon-event": kanon_event_type, "dp": dp_type}


def channel_kinds(policy: Policy, lines: bool = False, rows: Any = None) -> dict[str, str]:
    """Each output channel of the protect operator and the shape of its records.

    With ``lines`` the record channels carry finished JSON Lines, for a sink that writes them
    as they are; with ``rows`` (a sink's ``takes_rows(channel)``), a channel it accepts carries
    the Kafka sink table's rows. Either way one Python step fewer per record than a separate
    encoding map.
    """

    def record(channel: str) -> str:
        return "line" if lines else "row" if rows is not None and rows(channel) else "record"

    kinds = {DLQ: record(DLQ)}
    for name, view in policy.views.items():
        kinds[name] = ("dp" if view.differential_privacy else record(name) if not view.k_anonymity
                       else "kanon-event" if view.k_anonymity.timing == "event" else "kanon")
        if view.shuffle:
            kinds[name] = "record"  # the shuffle operator takes (key, headers, value) tuples
    return kinds


def output_tag(channel: str, kind: str) -> OutputTag:
    return OutputTag(f"channel-{channel}", _CHANNEL_TYPES[kind]())


def released_tag(view: str, lines: bool) -> OutputTag:
    """A k-anonymity view's records that the protect operator publishes itself, shaped as the cascade's output."""
    return OutputTag(f"channel-{view}-released", Types.STRING() if lines else out_type())


class Source(Protocol):
    def open_source(self, env: StreamExecutionEnvironment) -> Any: ...


class Sinks(Protocol):
    #: True when the sink takes finished JSON Lines (STRING) for the record channels
    encodes_lines: bool

    def write(self, stream: Any, channel: str, topic: str, *, encoded: bool = False) -> None: ...


@dataclass
class JobOptions:
    keyring_ref: str
    parallelism: int = 1
    execution_mode: str = "thread"
    checkpoint_interval_ms: int = 2000
    stats_dir: str | None = None
    bundle_size: int = 1000
    bundle_time_ms: int = 100
    restart_attempts: int = 0
    #: Flink's BATCH runtime mode (static masking of a bounded input): no checkpoints, and each
    #: keyed operator sees its input sorted by key, with its timers fired at the end of each key
    batch: bool = False
    #: any other Flink settings (checkpoint folders, state backend, recovery path)
    extra_config: dict[str, str] = field(default_factory=dict)
    #: the slot sharing group of the k-anonymity and DP operators, None for the job's one group. In its
    #: own group a stateful view runs in another slot (each subtask then takes two): on TaskManagers of
    #: one slot each, in thread mode, in an interpreter of its own (README, "When a topic outgrows one core")
    stateful_slot_group: str | None = None


#: where a local run keeps its checkpoints; Flink makes a folder per job id inside
LOCAL_CHECKPOINTS = Path(tempfile.gettempdir()) / "flink-anonymizer-checkpoints"


def make_env(options: JobOptions, jars: Iterable[str] = ()) -> StreamExecutionEnvironment:
    """An environment configured the way these jobs need it: STREAMING, or BATCH with ``options.batch``."""
    config = Configuration()
    config.set_string("python.execution-mode", options.execution_mode)
    # workers must run this interpreter, or they cannot import pyflink and this project
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("python.fn-execution.bundle.size", str(options.bundle_size))
    config.set_string("python.fn-execution.bundle.time", str(options.bundle_time_ms))
    # 0 turns checkpointing off; a batch job recovers by re-running its stages, never from a checkpoint
    checkpointing = options.checkpoint_interval_ms > 0 and not options.batch
    config.set_string("execution.runtime-mode", "BATCH" if options.batch else "STREAMING")
    if options.batch:
        # one operator per task: PyFlink workaround [pybind11] in operators.flink_compat (the
        # exchanges of a batch job are blocking anyway)
        config.set_string("pipeline.operator-chaining.enabled", "false")
    if checkpointing:
        config.set_string("execution.checkpointing.interval", f"{options.checkpoint_interval_ms}ms")
        if "PYFLINK_GATEWAY_PORT" not in os.environ:
            # a local MiniCluster would keep checkpoints in the JobManager's memory, capped at 5 MB:
            # a k-anonymity buffer past that fails every checkpoint. Under `flink run` (the gateway
            # port is set) the cluster's own checkpoint folder applies.
            # the state holds raw subjects and buffered records: the folder is this user's only
            LOCAL_CHECKPOINTS.mkdir(mode=0o700, exist_ok=True)
            LOCAL_CHECKPOINTS.chmod(0o700)
            config.set_string("execution.checkpointing.dir", LOCAL_CHECKPOINTS.as_uri())
    # PyFlink workaround [site-packages] in operators.flink_compat
    project_root = str(Path(__file__).resolve().parent.parent)
    # and the folder the job starts from, where the command line finds a policy's plugins
    paths = dict.fromkeys([project_root, os.getcwd(), sysconfig.get_paths()["purelib"]])
    config.set_string("python.pythonpath", ":".join(paths))
    if options.restart_attempts:
        config.set_string("restart-strategy.type", "fixed-delay")
        config.set_string("restart-strategy.fixed-delay.attempts", str(options.restart_attempts))
        config.set_string("restart-strategy.fixed-delay.delay", "2s")
    else:
        # a bounded run that fails must say so, not restart forever
        config.set_string("restart-strategy.type", "none")
    for key, value in options.extra_config.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_runtime_mode(RuntimeExecutionMode.BATCH if options.batch else RuntimeExecutionMode.STREAMING)
    env.set_parallelism(options.parallelism)
    if checkpointing:
        env.enable_checkpointing(options.checkpoint_interval_ms)
    for jar in jars:
        env.add_jars(jar)
    return env


class LinePositions:
    """A line's position for dead-letter reasons, from its number in the run's input [frames].

    ``files`` lists, in reading order, each file's position prefix and its line count: number N
    then reads ``<file> line n``. Without it, positions are ``line N``.
    """

    def __init__(self, files: list[tuple[str, int]] | None = None) -> None:
        self.prefixes = [prefix for prefix, _ in files or []]
        # the number each file's first line has in the whole input
        self.starts = list(itertools.accumulate((count for _, count in (files or [])[:-1]), initial=1))

    def __call__(self, number: int) -> str:
        if len(self.prefixes) < 2:
            return f"{self.prefixes[0] if self.prefixes else ''}line {number}"
        index = bisect.bisect_right(self.starts, number) - 1
        return f"{self.prefixes[index]}line {number - self.starts[index] + 1}"


def input_files(path: Path) -> list[Path]:
    """The files a run reads: the file itself, or a folder's files, recursively, in name order.

    Names starting with ``.`` or ``_`` are skipped, as Flink's file source skips them.
    """
    if not path.is_dir():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file()
                  and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts))


def line_count(path: Path) -> int:
    r"""Lines as Flink's text line reader splits them: at ``\n``, ``\r\n`` or ``\r``."""
    count, pending_cr, last = 0, False, b""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            count += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if pending_cr and chunk.startswith(b"\n"):
                count -= 1  # a \r\n split between two chunks
            pending_cr, last = chunk.endswith(b"\r"), chunk[-1:]
    return count + (1 if last not in (b"", b"\n", b"\r") else 0)


class FileInput:
    """A bounded JSON Lines file or folder: the embedded default source.

    It yields frames of numbered lines (:func:`~operators.flink_compat.framed_lines`), and
    ``positions`` turns a line's number into its position for a dead letter: ``line N`` of the
    file; in a folder, ``<file> line N``, with the file's path inside the folder. A folder's files
    are read one after another, in name order (a hybrid source of one file source each), so the
    positions and the order of the records are the same in every run, streaming or BATCH.
    """

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).resolve())

    def open_source(self, env: StreamExecutionEnvironment) -> Any:
        from pyflink.datastream.connectors.hybrid_source import HybridSource

        root = Path(self.path)
        files = input_files(root) if root.is_dir() else []

        def file_source(path: str) -> Any:
            return FileSource.for_record_stream_format(StreamFormat.text_line_format(), path).build()

        if files:
            builder = HybridSource.builder(file_source(str(files[0])))
            for file in files[1:]:
                builder = builder.add_source(file_source(str(file)))
            source = builder.build()
            self.positions = LinePositions([(f"{file.relative_to(root)} ", line_count(file)) for file in files])
        else:
            source, self.positions = file_source(self.path), LinePositions()
        # a hybrid source's element type cannot be inferred: name it
        lines = env.from_source(source, WatermarkStrategy.no_watermarks(), "raw-file", type_info=Types.STRING())
        # shape: frames of numbered lines, "<first line's number>\n<line>\n<line>..." [frames]
        return framed_lines(lines.set_parallelism(1), "frame-lines")


class Envelope(MapFunction):
    """Turn (key, headers, value) into one JSONL line: ``{"key":..,"headers":{..},"value":..}``."""

    def __init__(self, value_is_json: bool) -> None:
        self.value_is_json = value_is_json

    def map(self, item: tuple) -> str:
        key, headers, value = item
        return envelope_line(key, headers, value, self.value_is_json)


class FileOutput:
    """Write each channel to ``<dir>/<channel>/`` as JSON Lines part files."""

    encodes_lines = True

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory).resolve()

    def write(self, stream: Any, channel: str, topic: str, *, encoded: bool = False) -> None:
        lines = stream
        if not encoded:
            lines = stream.map(Envelope(value_is_json=channel != DLQ), output_type=Types.STRING())
            lines = lines.name(f"envelope-{channel}").uid(f"envelope-{channel}")
        sink = (
            FileSink.for_row_format(str(self.directory / channel), Encoder.simple_string_encoder())
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix(channel).with_part_suffix(".jsonl").build())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
            .build()
        )
        lines.sink_to(sink).name(f"sink-{channel}").uid(f"sink-{channel}")


# how a Kafka record channel, a k-anonymity channel (without and with event time) and a DP channel leave
# the protect operator
_ROW, _KEYED, _STAGED_TIMED, _TIMED = "row", "keyed", "staged-timed", "timed"
#: the channel kinds a sink writes as they come (``encoded=True``)
_ENCODED = ("line", "row")


class ProtectFunction(ProcessFunction):
    """Thin Flink wrapper of :class:`~flink_jobs.protect.Protector`: routes its output to side outputs."""

    def __init__(self, policy: Policy, options: JobOptions, kinds: dict[str, str], lines: bool = False,
                 shortcut_token: str | None = None, positions: LinePositions | None = None) -> None:
        self.protector = Protector(policy.document, policy.file)
        self.positions = positions or LinePositions()  # a frame's line numbers -> dead-letter positions
        self.keyring_ref = options.keyring_ref
        self.stats_dir = options.stats_dir
        self.kinds = kinds  # channel -> its shape (channel_kinds)
        self.lines = lines  # the sinks take finished JSON Lines
        # the k-anonymity views' first stages, when they run in this operator's thread, publish through it
        self.shortcut_token = shortcut_token

    def open(self, runtime_context: Any) -> None:
        self.tags = {channel: output_tag(channel, kind) for channel, kind in self.kinds.items()}
        # channel -> None (emit the tuple), _KEYED / _STAGED_TIMED (encode the staged record and emit it keyed,
        # or keyed and timestamped), _TIMED (emit the timestamped Row), or whether its value is JSON (emit a
        # finished line)
        shapes = {"line": None, "record": None, "row": _ROW, "kanon": _KEYED, "kanon-event": _STAGED_TIMED,
                  "dp": _TIMED}
        self.encode = {c: (c != DLQ if kind == "line" else shapes[kind]) for c, kind in self.kinds.items()}
        self.protector.open(load_keyring(self.keyring_ref))
        if any(kind in ("kanon", "kanon-event") for kind in self.kinds.values()):
            from operators.k_anonymity.core import encode_staged

            self.encode_staged = encode_staged
        kanon = [c for c, kind in self.kinds.items() if kind == "kanon"]  # timing: processing (build says why)
        self.released_tags = {c: released_tag(c, self.lines) for c in kanon} if self.shortcut_token else {}
        self.shortcuts: dict[str, Any] = {}  # channel -> its ReleasedShortcut
        if self.released_tags:
            from operators.k_anonymity.flink import ReleasedShortcut

            task = task_attempt(runtime_context)
            self.shortcuts = {c: ReleasedShortcut(self.shortcut_token, c, task) for c in self.released_tags}
        self.subtask = subtask_index(runtime_context)
        group = runtime_context.get_metrics_group().add_group("protect")
        self.metric_in = BatchedCounter(group.counter("records_in"))
        self.metric_dlq = group.counter("dead_letters")
        self.metrics = ProtectMetrics(group, list(self.kinds))  # per view, reason, dropped field; vault
        self.seen = 0
        self.dead = 0
        self.routed = dict.fromkeys(self.kinds, 0)  # records per channel, for the run's accounting
        self.next_progress = time.monotonic() + 1.0

    def process_element(self, value: Any, ctx: Any):
        # a frame of numbered lines from a file source [frames], or one (position, key, raw value, ms) record
        if type(value) is str:
            first, lines = unframe(value)
            positions = self.positions
            records: Iterable[tuple] = ((positions(first + i), "", line) for i, line in enumerate(lines))
        else:
            records = (value[:3],)
        handover = Handover()  # each channel is handed over once per call
        for position, key, raw in records:
            if not raw.strip(BLANK) and self.protector.cdc is None:  # an empty change event is a tombstone
                continue  # a blank line is not a record: records_in counts what the CLI's count_records counts
            self.seen += 1
            for routed in self.protector.process(position, key, raw):
                channel = routed.channel
                self.routed[channel] += 1
                if channel == DLQ:
                    self.dead += 1
                    self.metric_dlq.inc()
                shape = self.encode[channel]
                if shape is None:
                    yield self.tags[channel], routed.value
                elif shape is _ROW:
                    yield self.tags[channel], sink_row(*routed.value)
                elif shape is _KEYED:
                    record, keys, _ = routed.value
                    if channel in self.shortcuts:
                        published = self.shortcuts[channel](record, keys, int(time.time() * 1000))
                        if published is not None:
                            if self.lines:
                                handover.line(self.released_tags[channel], published)
                            else:
                                yield self.released_tags[channel], published
                            continue
                    handover.keyed(self.tags[channel], keys[-1], self.encode_staged(record, keys))
                elif shape is _TIMED:
                    key, payload, event_ms = routed.value
                    handover.keyed(self.tags[channel], key, payload, event_ms)
                elif shape is _STAGED_TIMED:
                    record, keys, event_ms = routed.value
                    handover.keyed(self.tags[channel], keys[-1], self.encode_staged(record, keys), event_ms)
                else:
                    handover.line(self.tags[channel], envelope_line(*routed.value, shape))
            # metrics in batches: a counter call per record costs more than the record's masking. The
            # first record is reported at once: the start-up watchdog waits for it
            if self.metric_in.add() or self.seen == 1:
                self.metric_in.flush()
                self.metrics.update(self.routed, self.protector)
                if self.stats_dir and time.monotonic() > self.next_progress:
                    self.next_progress = time.monotonic() + 1.0
                    self._write_stats("progress")
        yield from handover.items()

    def close(self) -> None:
        if hasattr(self, "metric_in"):
            self.metric_in.flush()
            self.metrics.update(self.routed, self.protector)
            if self.stats_dir:
                self._write_stats("final")

    def _write_stats(self, kind: str) -> None:
        # names and counts only: never a value
        stats = {"subtask": self.subtask, "kind": kind, "records_in": self.seen, "dead_letters": self.dead,
                 "routed": self.routed, "dropped_fields": dict(self.protector.dropped),
                 "k_anonymity_released_in_protect": {c: shortcut.used for c, shortcut in self.shortcuts.items()}}
        os.makedirs(self.stats_dir, exist_ok=True)
        path = os.path.join(self.stats_dir, f"subtask-{self.subtask}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(stats, fh)
        os.replace(path + ".tmp", path)


class Handover:
    """What one call of the protect operator hands to its channels: each channel once [frames].

    A file sink's lines are joined (it writes each string and a line break); a keyed channel's
    payloads are joined per key, as ``BundleByKey`` would join them, and a timed one takes its
    latest event time. The watermark after the protect operator then moves as it would have,
    record by record: it is never emitted in the middle of one call.
    """

    __slots__ = ("lines", "groups")

    def __init__(self) -> None:
        self.lines: dict[Any, list[str]] = {}  # tag -> finished lines, in order
        self.groups: dict[tuple[Any, str], list] = {}  # (tag, key) -> [payloads in order, latest event ms or None]

    def line(self, tag: Any, line: str) -> None:
        lines = self.lines.get(tag)
        if lines is None:
            self.lines[tag] = [line]
        else:
            lines.append(line)

    def keyed(self, tag: Any, key: str, payload: str, event_ms: int | None = None) -> None:
        group = self.groups.get((tag, key))
        if group is None:
            self.groups[tag, key] = [[payload], event_ms]
            return
        group[0].append(payload)
        if event_ms is not None and event_ms > group[1]:
            group[1] = event_ms

    def items(self) -> Iterator[tuple[Any, Any]]:
        """``(tag, output)``: a string of lines, ``Row(key, payloads)``, or ``(Row(key, payloads), event ms)``."""
        for tag, lines in self.lines.items():
            yield tag, "\n".join(lines)
        for (tag, key), (payloads, event_ms) in self.groups.items():
            row = Row(key, BUNDLE_SEPARATOR.join(payloads))
            yield tag, row if event_ms is None else (row, event_ms)


def build(env: StreamExecutionEnvironment, policy: Policy, source: Source, sinks: Sinks, options: JobOptions) -> None:
    """Wire the protect_stream graph for ``policy`` into ``env``."""
    lines = getattr(sinks, "encodes_lines", False)
    kinds = channel_kinds(policy, lines, getattr(sinks, "takes_rows", None))
    tags = {channel: output_tag(channel, kind) for channel, kind in kinds.items()}

    raw = source.open_source(env)
    # at one subtask, in thread mode, the k-anonymity views' first stages chain onto protect, in its task
    # thread, and protect publishes a record of a class they have released itself: one crossing fewer for
    # most records. released_shortcut (operators/k_anonymity/flink.py) checks the thread; the token tells
    # this job's stages from another job's in the same TaskManager. Process mode runs a worker's bundles
    # on a pool of threads, so a thread tells nothing there. Only with timing: processing: with timing:
    # event a stage's watermark moves with the records it receives, and a record published here would
    # hold it back
    kanon = "kanon" in kinds.values()
    shortcut_token = uuid.uuid4().hex if kanon and not options.batch and thread_mode(raw) else None
    # shape: frames of numbered lines (files), or (position, key, raw value, source ms) records (Kafka)
    protected = (
        raw.process(ProtectFunction(policy, options, kinds, lines, shortcut_token, getattr(source, "positions", None)),
                    output_type=Types.STRING())
        .name("protect").uid("protect")
    )
    # every channel leaves the protect operator in the shape its next operator takes, so no record
    # crosses into Python again before it is keyed or written (operators/flink_compat.py says why)
    # shape: (key, headers, value), or its JSON line or Kafka row when the sink takes one
    sinks.write(side_output(protected, tags[DLQ]), DLQ, policy.dlq_topic, encoded=kinds[DLQ] in _ENCODED)

    for name, view in policy.views.items():
        if view.k_anonymity:
            from operators import k_anonymity

            # shape: staged payloads bundled and keyed by their stage-0 partition key (with event-time
            # timestamps and watermarks for timing: event, whose deadlines are event time)
            if view.k_anonymity.timing == "event":
                keyed = keyed_event_time_side_output(protected, tags[name], kanon_type(), _watermarks(policy),
                                                     f"event-time-{name}", bundle=f"kanon-{name}-bundle-0")
            else:
                keyed = keyed_side_output(protected, tags[name], kanon_type(), bundle=f"kanon-{name}-bundle-0")
            released, suppressed = k_anonymity.attach_staged(keyed, view.k_anonymity, view_name=name, lines=lines,
                                                             watermark_delay_ms=policy.watermark_delay_ms,
                                                             slot_group=options.stateful_slot_group,
                                                             shortcut_token=shortcut_token)
            if shortcut_token and kinds[name] == "kanon":
                released = released.union(side_output(protected, released_tag(name, lines)))
            # shape: (key, headers, value), or its JSON line, for both
            sinks.write(released, name, view.topic, encoded=lines)
            sinks.write(suppressed, f"{name}.suppressed", f"{view.topic}.suppressed", encoded=lines)
        elif view.shuffle:
            from operators import shuffle

            # shape: (key, headers, protected value), shuffled window by window; a small window suppressed
            shuffled, suppressed = shuffle.attach(side_output(protected, tags[name]), view.shuffle, view_name=name)
            sinks.write(shuffled, name, view.topic)
            sinks.write(suppressed, f"{name}.suppressed", f"{view.topic}.suppressed")
        elif view.differential_privacy:
            from operators.dp import flink as dp_flink

            # shape: contribution payloads bundled and keyed by subject bucket, after event-time watermarks
            keyed = keyed_event_time_side_output(protected, tags[name], dp_row_type(), _watermarks(policy),
                                                 f"event-time-{name}", bundle=f"dp-{name}-bundle")
            releases = dp_flink.attach_keyed(keyed, view.differential_privacy, view_name=name, policy_id=policy.id,
                                             policy_hash=policy.hash, watermark_delay_ms=policy.watermark_delay_ms,
                                             slot_group=options.stateful_slot_group)
            sinks.write(releases, name, view.topic)
        else:
            # shape: (key, headers, protected value), or its JSON line or Kafka row
            sinks.write(side_output(protected, tags[name]), name, view.topic, encoded=kinds[name] in _ENCODED)


def _watermarks(policy: Policy) -> WatermarkStrategy:
    # no with_idleness: on an unbounded source the idle mark it sets kept every watermark from
    # leaving the protect chain (issue 19); a quiet input is the DP stages' idle_timeout instead
    return WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(policy.watermark_delay_ms))
