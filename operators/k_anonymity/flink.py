"""The k-anonymity cascade's Flink stages: thin keyed wrappers of :mod:`operators.k_anonymity.core`.

This is the only module of the package that imports PyFlink, and only inside its functions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson

from operators.flink_compat import FLUSH_TIMER, BatchedCounter, now_ms, put_all, state_ttl, task_attempt, unbundle
from operators.k_anonymity.core import (
    CACHE_LIMIT,
    ENTERED,
    EVENT_TIME,
    QIS,
    Partition,
    Release,
    SpanTracker,
    Stage,
    Stager,
    decode_staged,
    encode_staged,
    ncp,
    publish,
    published_fields,
    suppress,
)
from operators.k_anonymity.params import KAnonymityParams
from operators.quiet_clock import QuietClock

# -- Flink wrappers ---------------------------------------------------------------------


def _types(lines: bool):
    from pyflink.common.typeinfo import Types

    # (partition key in the stage, encoded staged record): keyed in Java on its first field
    staged = Types.ROW([Types.STRING(), Types.STRING()])
    # a finished JSON line for sinks that take lines; (key, headers, value) for the others
    out = Types.STRING() if lines else Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()])
    return staged, out


#: the span tracker sees every released record up to this many, then one in SPAN_SAMPLE
SPAN_WARMUP, SPAN_SAMPLE = 1024, 16

#: the open first stages, by (job's shortcut token, view, (subtask, attempt), thread): at one subtask the
#: first stage runs in the protect operator's thread, and the protect operator publishes a record of a
#: released class itself
_FIRST_STAGES: dict[tuple[str, str, tuple[int, int], int], Any] = {}


def released_shortcut(token: str, view_name: str, task: tuple[int, int]) -> Callable[[tuple, tuple[str, ...], int], Any] | None:
    """The first stage's :meth:`publish_released`, when that stage is open in the calling thread; else None.

    ``task`` is the caller's ``(subtask index, attempt number)``. The thread is the guard: only an
    operator chained onto the caller, in the caller's task, may be called from it; the attempt keeps
    an earlier run's stage apart, should its thread's id come back. At parallelism > 1, in BATCH mode
    or in a slot group of its own the first stage runs in another task, and every record goes to it.
    Only with ``timing: processing``: an event-time stage's watermark moves with the records it receives.
    """
    stage = _FIRST_STAGES.get((token, view_name, task, threading.get_ident()))
    return None if stage is None else stage.publish_released


class ReleasedShortcut:
    """What the operator that stages a view's records calls before it hands one to the first stage.

    ``shortcut(record, keys, now)``, with the record and its class keys as :meth:`Stager.staged` gives
    them, is the record as published, when the first stage runs in the calling thread and has released
    the record's finest class; otherwise None, and the record goes to the stage. The stage is looked up
    at the first call, once every chained operator is open.
    """

    def __init__(self, token: str, view_name: str, task: tuple[int, int]) -> None:
        self.token, self.view_name, self.task = token, view_name, task
        self.publish: Any = None
        self.found = False
        self.used = 0  # records published here

    def __call__(self, record: tuple, keys: tuple[str, ...], now: int) -> Any:
        if not self.found:
            self.publish, self.found = released_shortcut(self.token, self.view_name, self.task), True
        if self.publish is None:
            return None
        out = self.publish(record, keys, now)
        if out is not None:
            self.used += 1
        return out


# module functions, not methods: a stage class is pickled by value with a copy of the globals it names,
# and the registry must be this module's own
def _register_first_stage(token: str, view_name: str, task: tuple[int, int], stage: Any) -> tuple:
    key = (token, view_name, task, threading.get_ident())
    _FIRST_STAGES[key] = stage
    return key


def _unregister_first_stage(key: tuple, stage: Any) -> None:
    if _FIRST_STAGES.get(key) is stage:
        del _FIRST_STAGES[key]


def _stage_function(params: KAnonymityParams, number: int, view_name: str, promote_id: str, suppress_id: str,
                    lines: bool, watermark_delay_ms: int, shortcut_token: str | None = None):
    from pyflink.common import Row
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedProcessFunction, OutputTag, TimeDomain
    from pyflink.datastream.state import MapStateDescriptor

    from udfs.record import envelope_line

    first, last = params.stages[number]

    class StageFunction(KeyedProcessFunction):
        """One keyed stage of the cascade: the :class:`Stage` rules over keyed state and timers.

        Its input is one ``STRING`` per record (:func:`encode_staged`), keyed in Java by its
        partition key. Keyed state holds the facts of a partition: ``buffer`` (record id ->
        encoded staged record, without its class keys) and ``released`` (``"level|class"`` -> released at). The
        :class:`Partition` index over them lives in ``self.partitions`` as a write-through
        cache: every change is written to state in the same call, so a checkpoint holds it all,
        and a key whose partition is not cached (after a restore, or once dropped) is rebuilt
        from its state. A record costs one state write when it is buffered and one when it
        leaves; a record of a released class costs none.
        """

        def __init__(self) -> None:
            self.params = params
            # timing: event is left out: its watermark moves with the records this stage receives
            self.shortcut_token = shortcut_token if number == 0 and params.timing == "processing" else None
            self.registered: tuple | None = None  # its key in the registry of first stages, once open

        def open(self, runtime_context) -> None:
            # made here, not captured: a used TypeInformation (and a tag holding one) keeps a JVM handle
            staged_type, out_type = _types(lines)
            self.promote_tag = OutputTag(promote_id, staged_type)
            self.suppress_tag = OutputTag(suppress_id, out_type)
            self.row = Row
            self.envelope = envelope_line if lines else None
            self.stage = Stage(self.params, first, last)
            self.next_stage = Stage(self.params, *self.params.stages[number + 1]) if not self.stage.final else None
            self.processing = self.params.timing == "processing"
            # timing: event on a quiet input: processing-time ticks settle the deadlines event time has passed
            self.clock = (QuietClock(self.params.idle_timeout_ms, watermark_delay_ms)
                          if not self.processing and self.params.idle_timeout_ms is not None else None)
            self.ticking: set[str] = set()  # partitions with a quiet-input tick pending
            # background cleanup needs a JVM gateway that a cluster TaskManager's Python lacks:
            # expired entries go on read and in full snapshots instead
            ttl = state_ttl(self.params.state_ttl_ms)
            buffer = MapStateDescriptor("staged", Types.LONG(), Types.STRING())
            released = MapStateDescriptor("released", Types.STRING(), Types.LONG())
            buffer.enable_time_to_live(ttl)
            released.enable_time_to_live(ttl)
            self.buffer = runtime_context.get_map_state(buffer)
            self.released_state = runtime_context.get_map_state(released)
            self.partitions: dict[str, Partition] = {}  # partition key -> its index, over the state of that key
            self.fields: dict[tuple[int, str], str] = {}  # (level, class key) -> published_fields
            self.class_ncp: dict[tuple[int, str], float] = {}  # NCP of a class's published form, for the current spans
            group = runtime_context.get_metrics_group().add_group("k_anonymity").add_group("view", view_name)
            group = group.add_group("stage", str(number))
            self.buffered = BatchedCounter(group.counter("buffered"), every=256)
            self.released = {level: BatchedCounter(group.add_group("level", str(level)).counter("released"), every=256)
                             for level in range(first, last + 1)}
            self.promoted = BatchedCounter(group.counter("promoted"), every=256)
            self.suppressed = BatchedCounter(group.counter("suppressed"), every=256)
            self.tallies = [self.buffered, self.promoted, self.suppressed, *self.released.values()]
            self.longest_wait = 0
            self.ncp_total, self.ncp_count, self.seen = 0.0, 0, 0
            self.spans = SpanTracker(self.params)
            # counters, not gauges: PyFlink workaround [gauges] in operators.flink_compat.
            # The running mean NCP is ncp_micro / ncp_records.
            self.longest_wait_counter = group.counter("longest_wait_ms")
            self.ncp_micro = BatchedCounter(group.counter("ncp_micro"), every=256_000_000)
            self.ncp_records = BatchedCounter(group.counter("ncp_records"), every=256)
            self.tallies += [self.ncp_micro, self.ncp_records]
            if self.shortcut_token is not None:
                # chained operators all open before the first record comes
                self.registered = _register_first_stage(self.shortcut_token, view_name,
                                                        task_attempt(runtime_context), self)

        def publish_released(self, record: tuple, keys: tuple[str, ...], now: int):
            """What :meth:`process_element` would publish at once for a staged record, or None to send it here.

            The protect operator calls it in this stage's thread, before it hands the record over
            (:func:`released_shortcut`): a record whose finest class is released is published as
            :meth:`Stage.on_record` passes it, with the same metrics, without crossing into this
            operator. Only the partitions in memory are read: keyed state is this operator's
            current key's, not the record's. Anything else, an expired class too, comes here.
            """
            part = self.partitions.get(keys[-1])
            if part is None or not self.stage.finest_released(part, keys[0], now):
                return None
            for out in self._publish([(record, self.stage.first, keys[0])], now):
                return out

        def _partition(self, key: str, now: int) -> Partition:
            part = self.partitions.get(key)
            if part is None:
                if len(self.partitions) >= CACHE_LIMIT:
                    self.partitions = {k: p for k, p in self.partitions.items() if not p.empty()}
                records = ((rid, decode_staged(text)[0]) for rid, text in self.buffer.items())
                part = self.stage.rebuild(records, self.released_state.items(), now)
                self.partitions[key] = part
                if self.clock is not None and part.records:
                    # restored records: so an input that stays quiet after the restore still meets their deadlines
                    self.clock.restored(max(r[EVENT_TIME] for r in part.records.values()), now)
            return part

        def _write(self, part: Partition, service) -> None:
            """Write the partition's journal through to keyed state and timers."""
            puts, removes, marks, unmarks = part.writes()
            if puts:
                # the record alone: rebuild() recomputes its class keys, so keys in state would only
                # make every checkpoint larger (a key per level of the stage)
                put_all(self.buffer, {rid: encode_staged(record, ()) for rid, record in puts})
            for rid in removes:
                self.buffer.remove(rid)
            for name in unmarks:
                self.released_state.remove(name)
            for name, at in marks:
                self.released_state.put(name, at)
            for timer in part.armed:
                if self.processing:
                    service.register_processing_time_timer(timer)
                else:
                    service.register_event_time_timer(timer)
            if self.processing and part.records and not part.flush_armed:
                # PyFlink workaround [end of input] in operators.flink_compat
                service.register_event_time_timer(FLUSH_TIMER)
                part.flush_armed = True
            self.buffered.add(len(puts))
            part.clear_journal()

        def _publish(self, releases: list[Release], now: int):
            for record, level, key in releases:
                fields = self.fields.get((level, key))
                if fields is None:
                    if len(self.fields) >= CACHE_LIMIT:
                        self.fields.clear()
                    fields = self.fields[level, key] = published_fields(self.params, orjson.loads(key))
                self.seen += 1
                if self.seen <= SPAN_WARMUP or self.seen % SPAN_SAMPLE == 0:
                    if self.spans.see(orjson.loads(record[QIS])):
                        self.class_ncp.clear()
                cost = self.class_ncp.get((level, key))
                if cost is None:
                    if len(self.class_ncp) >= CACHE_LIMIT:
                        self.class_ncp.clear()
                    # one record stands for its class: the generalized form fixes every QI's NCP
                    cost = self.class_ncp[level, key] = ncp(self.params, level, orjson.loads(record[QIS]),
                                                            self.spans.spans)
                self.ncp_total += cost
                self.ncp_count += 1
                self.ncp_micro.add(int(cost * 1e6))
                self.ncp_records.add()
                if self.processing and now - record[ENTERED] > self.longest_wait:
                    self.longest_wait_counter.inc(now - record[ENTERED] - self.longest_wait)
                    self.longest_wait = now - record[ENTERED]
                self.released[level].add()
                out = publish(self.params, record, level, (), fields)
                yield out if self.envelope is None else self.envelope(*out, True)

        def process_element(self, payload, ctx):
            # payload: encode_staged(record, its class keys in this stage), or a bundle of them [bundles]; all
            # of this partition, whose key is every record's last
            now = now_ms()
            part = key = None
            releases: list[Release] = []
            for one in unbundle(payload):
                record, keys = decode_staged(one)
                if part is None:
                    key = keys[-1]
                    part = self._partition(key, now)
                releases += self.stage.on_record(part, record, keys, now)
                if self.clock is not None:
                    self.clock.saw(record[EVENT_TIME], now)
            if part.added or part.removed or part.marked or part.unmarked or part.armed:
                self._write(part, ctx.timer_service())
            if self.clock is not None and part.records and key not in self.ticking:
                self._tick(key, now, ctx.timer_service())
            yield from self._publish(releases, now)

        def _tick(self, key: str, now: int, service) -> None:
            tick = self.clock.tick_ms
            service.register_processing_time_timer((now // tick + 1) * tick)  # aligned: one per tick and key
            self.ticking.add(key)

        def on_timer(self, timestamp, ctx):
            now = now_ms()
            part = self._partition(ctx.get_current_key(), now)
            if ctx.time_domain() == TimeDomain.EVENT_TIME and timestamp >= FLUSH_TIMER:
                published, leaving = self.stage.flush(part, now)
                part.flush_armed = False
            elif ctx.time_domain() == TimeDomain.PROCESSING_TIME and self.clock is not None:
                # a quiet-input tick: the deadlines that event time, carried on by the wall clock, has passed
                key = ctx.get_current_key()
                self.ticking.discard(key)
                quiet_time = self.clock.event_time(now)
                published, leaving = (self.stage.on_deadline(part, quiet_time, now) if quiet_time is not None
                                     else ([], []))
                if part.records:
                    self._tick(key, now, ctx.timer_service())
            else:
                published, leaving = self.stage.on_deadline(part, timestamp, now)
            self._write(part, ctx.timer_service())
            yield from self._publish(published, now)
            for record in leaving:
                if self.next_stage is None:
                    self.suppressed.add()
                    self.ncp_total += 1.0
                    self.ncp_count += 1
                    self.ncp_micro.add(1_000_000)
                    self.ncp_records.add()
                    out = suppress(record)
                    yield self.suppress_tag, out if self.envelope is None else self.envelope(*out, True)
                else:
                    self.promoted.add()
                    keys = self.next_stage.end_keys(orjson.loads(record[QIS]))
                    yield self.promote_tag, self.row(keys[-1], encode_staged(record, keys))
            for tally in self.tallies:
                tally.flush()

        def close(self) -> None:
            if self.registered is not None:
                _unregister_first_stage(self.registered, self)
            for tally in getattr(self, "tallies", ()):
                tally.flush()

    return StageFunction()


def attach(stream, params: KAnonymityParams, *, view_name: str):
    """Wire the cascade onto a stream of k-anonymity tuples (tests, benchmarks, other jobs).

    Parameters
    ----------
    stream : DataStream
        ``(key | None, headers JSON, protected value JSON without the QIs, subject,
        raw QIs JSON, event time ms)``, typed ``Types.TUPLE([STRING x 5, LONG])``.
    params : KAnonymityParams
        From :meth:`KAnonymityParams.from_policy`.
    view_name : str
        Used in operator names, uids and metric groups.

    Returns
    -------
    released, suppressed : DataStream, DataStream
        Both ``Types.TUPLE([STRING key, STRING headers JSON, STRING value JSON])``, as
        :func:`attach_staged` with ``lines=False``.

    A Python function stages each tuple (:class:`Stager`), as the job's protect operator does
    for its own records, then :func:`attach_staged` runs the cascade. As in the job, at one
    subtask in thread mode it publishes a record of a class the first stage has released itself
    (:class:`ReleasedShortcut`).
    """
    import uuid

    from pyflink.common import Row
    from pyflink.datastream import OutputTag, ProcessFunction

    from operators.flink_compat import keyed_by_first_field, side_output, thread_mode

    staged_type, out_type = _types(False)
    token = uuid.uuid4().hex if params.timing == "processing" and thread_mode(stream) else None
    released_id = f"kanon-{view_name}-released-in-stamp"

    class Stamp(ProcessFunction):
        def open(self, runtime_context) -> None:
            self.stager = Stager(params)
            self.shortcut = ReleasedShortcut(token, view_name, task_attempt(runtime_context)) if token else None
            # made here, not captured: a used TypeInformation (and a tag holding one) keeps a JVM handle
            self.tag = OutputTag(released_id, _types(False)[1])

        def process_element(self, record, ctx):
            key, headers, value, subject, qis, event_ms = record
            now = now_ms()
            record, keys = self.stager.staged(key, headers, value, subject, orjson.loads(qis), event_ms, now)
            published = self.shortcut(record, keys, now) if self.shortcut else None
            if published is None:
                yield Row(keys[-1], encode_staged(record, keys))
            else:
                yield self.tag, published

    staged = (stream.process(Stamp(), output_type=staged_type).name(f"k-anon {view_name} stamp")
              .uid(f"kanon-{view_name}-stamp"))
    keyed = keyed_by_first_field(staged, staged_type, bundle=f"kanon-{view_name}-bundle-0")
    released, suppressed = attach_staged(keyed, params, view_name=view_name,
                                         lines=False, shortcut_token=token)
    if token:
        released = released.union(side_output(staged, OutputTag(released_id, out_type)))
    return released, suppressed


def attach_staged(keyed, params: KAnonymityParams, *, view_name: str, lines: bool, watermark_delay_ms: int = 0,
                  slot_group: str | None = None, shortcut_token: str | None = None):
    """Wire the cascade onto a keyed stream of staged records.

    Parameters
    ----------
    keyed : KeyedStream
        ``Row(partition key, payload)``: the last of :meth:`Stager.staged`'s keys and
        :func:`encode_staged` of its record and keys, keyed in Java on the first field by
        :func:`operators.flink_compat.keyed_by_first_field`, bundled or not.
    params : KAnonymityParams
    view_name : str
        Used in operator names, uids and metric groups.
    lines : bool
        Emit finished JSON Lines (``STRING``) for a sink that takes them, instead of
        ``(key, headers, value)`` tuples: no encoding step after the cascade.
    watermark_delay_ms : int
        With ``timing: event``: the watermark's out-of-orderness, where the quiet-input clock starts.
    slot_group : str or None
        The slot sharing group of the cascade's stages (None: the job's default group).
    shortcut_token : str or None
        The job's token for :func:`released_shortcut`: the operator that stages the records may
        publish those of a released class itself, when the first stage runs in its thread.

    Returns
    -------
    released, suppressed : DataStream, DataStream
        A released value holds the generalized QIs under their names and its headers a
        ``k_level``; a suppressed one holds the raw QIs (as sensitive as the input) and a
        ``k_suppressed`` header.

    A promoted record goes to the next stage as a ``(partition key, payload)`` side output,
    bundled and keyed in Java: a record crosses into each stage it visits once, with the others
    of its bundle [bundles].
    """
    from pyflink.datastream import OutputTag

    from operators.flink_compat import keyed_side_output, side_output

    staged_type, out_type = _types(lines)
    released_streams, suppressed = [], None
    suppress_tag = OutputTag(f"kanon-{view_name}-suppress", out_type)
    current = keyed
    for number in range(len(params.stages)):
        promote_tag = OutputTag(f"kanon-{view_name}-promote-{number}", staged_type)
        function = _stage_function(params, number, view_name, promote_tag.tag_id, suppress_tag.tag_id, lines,
                                   watermark_delay_ms, shortcut_token)
        released = (current.process(function, output_type=out_type)
                    .name(f"k-anon {view_name} stage {number}").uid(f"kanon-{view_name}-stage-{number}"))
        if slot_group:
            released.slot_sharing_group(slot_group)
        released_streams.append(released)
        if number + 1 < len(params.stages):
            current = keyed_side_output(released, promote_tag, staged_type, bundle=f"kanon-{view_name}-bundle-{number + 1}")
        else:
            suppressed = side_output(released, suppress_tag)
    out = released_streams[0] if len(released_streams) == 1 else released_streams[0].union(*released_streams[1:])
    return out, suppressed
