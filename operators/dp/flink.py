"""The DP view's Flink stages: thin keyed wrappers of :mod:`operators.dp.core`.

This is the only module of the package that imports PyFlink, and only inside its functions.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import zlib
from collections.abc import Iterable
from typing import Any

from operators.dp.core import (
    BUCKETS,
    BudgetLedger,
    ContributionBounder,
    GroupReleaser,
    SubjectWindow,
    decode_contribution,
    decode_vector,
    decode_window,
    encode_contribution,
    encode_vector,
    encode_window,
    window_starts,
)
from operators.dp.mechanisms import make_random
from operators.dp.params import DpParams
from operators.flink_compat import BatchedCounter, put_all, state_ttl, subtask_index, unbundle
from operators.quiet_clock import QuietClock

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Flink wrappers
# ---------------------------------------------------------------------------
def attach(
    stream: Any,
    params: DpParams,
    *,
    view_name: str,
    policy_id: str,
    policy_hash: str,
    random_state: int | None = None,
    watermark_delay_ms: int = 0,
) -> Any:
    """Add the DP aggregation of one view to a stream of contribution tuples (tests, benchmarks, other jobs).

    Parameters
    ----------
    stream : DataStream
        ``(subject, group_json, values_json, event_time_ms)`` with event-time
        timestamps and watermarks already assigned.
    params, view_name, policy_id, policy_hash, random_state, watermark_delay_ms
        As :func:`attach_keyed`.

    Returns
    -------
    DataStream
        As :func:`attach_keyed`.

    A Python map encodes each tuple (:func:`~operators.dp.core.encode_contribution`), as the
    job's protect operator does for its own records, and the stream is keyed in Java.
    """
    from pyflink.common import Row

    from operators.flink_compat import keyed_by_first_field

    def encode(record):
        return Row(*encode_contribution(*record))

    rows = stream.map(encode, output_type=contribution_row_type()).name(f"dp-encode[{view_name}]").uid(
        f"dp/{view_name}/encode")
    keyed = keyed_by_first_field(rows, contribution_row_type(), bundle=f"dp/{view_name}/bundle")
    return attach_keyed(keyed, params, view_name=view_name,
                        policy_id=policy_id, policy_hash=policy_hash, random_state=random_state,
                        watermark_delay_ms=watermark_delay_ms)


def contribution_row_type() -> Any:
    """``Row(bucket, payload)``: stage 1's input before it is keyed on the bucket."""
    from pyflink.common.typeinfo import Types

    return Types.ROW([Types.INT(), Types.STRING()])


def partial_sum_type() -> Any:
    """``Row(group_json, payload)``: a partial sum from stage 1 to stage 2, which is keyed on the group."""
    from pyflink.common.typeinfo import Types

    return Types.ROW([Types.STRING(), Types.STRING()])


def encode_partial_sum(group_json: str, start: int, vector: str) -> str:
    """Stage 2's payload: one string crosses, not a tuple (group JSON holds no raw control character).

    The group is in it as well as in the key: stage 2 then reads it without asking the JVM for its key.
    """
    return f"{group_json}\x1f{start}\x1f{vector}"


def decode_partial_sum(payload: str) -> tuple[str, int, str]:
    group_json, start, vector = payload.split("\x1f")
    return group_json, int(start), vector


def attach_keyed(
    keyed: Any,
    params: DpParams,
    *,
    view_name: str,
    policy_id: str,
    policy_hash: str,
    random_state: int | None = None,
    watermark_delay_ms: int = 0,
    slot_group: str | None = None,
) -> Any:
    """Add the DP aggregation of one view to a keyed stream of contributions.

    Parameters
    ----------
    keyed : KeyedStream
        Payloads of :func:`~operators.dp.core.encode_contribution`, keyed by the subject's
        bucket, with event-time timestamps and watermarks already assigned.
    params : DpParams
    view_name, policy_id, policy_hash : str
        Name operators and uids; go into the headers of every release.
    random_state : int or None
        Tests only: seeds the noise (per subtask). ``None`` uses the secure generator.
    watermark_delay_ms : int
        The out-of-orderness the watermark allows: the quiet-input fallback
        (``params.idle_timeout_ms``) starts its clock from the last event time minus this.
    slot_group : str or None
        The slot sharing group of the three stages (None: the job's default group).

    Returns
    -------
    DataStream
        ``(group_json, headers_json, value_json)``; headers hold ``policy_id``,
        ``policy_hash``, ``view``, ``epsilon_spent`` and ``delta_spent``.

    Notes
    -----
    Vectors travel and rest as ``STRING`` (comma-joined floats), never as
    ``Types.LIST``: PyFlink workaround [list state] in :mod:`operators.flink_compat`.
    """
    from pyflink.common.typeinfo import Types

    from operators.flink_compat import keyed_by_first_field

    bound_contributions, noisy_aggregate, budget_gate = _stages()
    uid = f"dp/{view_name}"
    bounded = (
        keyed.process(bound_contributions(params, random_state, watermark_delay_ms), output_type=partial_sum_type())
        .name(f"dp-bound-contributions[{view_name}]")
        .uid(f"{uid}/bound-contributions")
    )
    # Row(group_json, encode_partial_sum(...)) one per bucket, window and group, bundled and keyed on the group
    # in Java (the key type is ROW<STRING>, as PyFlink's key_by with a STRING key made it: savepoints restore)
    released = (
        keyed_by_first_field(bounded, partial_sum_type(), bundle=f"{uid}/partial-sums-bundle")
        .process(
            noisy_aggregate(params, random_state, watermark_delay_ms),
            output_type=Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()]),
        )
        .name(f"dp-noisy-aggregate[{view_name}]")
        .uid(f"{uid}/noisy-aggregate")
    )
    # (group_json, window_start, release_json) one per released group and window
    gated = (
        released.key_by(lambda r: view_name, key_type=Types.STRING())
        .process(
            budget_gate(params, view_name, policy_id, policy_hash),
            output_type=Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()]),
        )
        .name(f"dp-budget-gate[{view_name}]")
        .uid(f"{uid}/budget-gate")
    )
    if slot_group:
        for stage in (bounded, released, gated):
            stage.slot_sharing_group(slot_group)
    # (group_json, headers_json, value_json)
    return gated


_MAX_WATERMARK = 2**63 - 1  # Flink's end-of-input watermark is Long.MAX_VALUE
#: marks a contribution that stage 1 sent because its input went quiet, not because the watermark passed
QUIET = "~"
#: the state key under which stage 1 keeps the last window start it closed on a quiet input
_CLOSED_KEY = "\x1fclosed"
#: the state key under which stage 1 keeps the latest event time it had seen at its last quiet-input check
_SEEN_KEY = "\x1fseen"
#: what the budget gate logs, once per subtask, when a (window, group) comes to it a second time
GATE_REFUSAL = "a window's group came to the gate a second time"


#: entries kept in stage 2's write-through cache before it is emptied (state still holds them)
CACHE_LIMIT = 200_000
#: (subject, window) buffers one stage-1 subtask holds at most (a few hundred bytes each)
BUFFER_LIMIT = 2_000_000


@functools.cache
def _stages() -> tuple[type, type, type]:
    """The three keyed stages: classes on PyFlink's ``KeyedProcessFunction``, made when a job is built.

    So importing this module imports no PyFlink (a worker, a test or a bench without a job does not
    pay for it), as in :mod:`operators.k_anonymity.flink`.
    """
    from pyflink.datastream.functions import KeyedProcessFunction as _KeyedProcess

    class _SeededProcess(_KeyedProcess):
        """A keyed stage that draws noise: not deterministic, seeded per subtask from ``random_state``.

        With ``random_state`` None every subtask seeds from fresh entropy; otherwise the seed is
        ``random_state * 1000 + seed_offset + subtask index``, so stages and subtasks draw apart.
        """

        #: keeps this stage's seeds apart from the other stage's for the same subtask
        seed_offset = 0

        def __init__(self, params: DpParams, random_state: int | None, watermark_delay_ms: int = 0) -> None:
            self.params = params
            self.random_state = random_state
            self.watermark_delay_ms = watermark_delay_ms

        def is_deterministic(self) -> bool:
            return False

        def subtask_seed(self, ctx: Any) -> int | None:
            return None if self.random_state is None else self.random_state * 1000 + self.seed_offset + subtask_index(ctx)


    class _BoundContributions(_SeededProcess):
        r"""Stage 1: keyed by subject bucket; bounds each (subject, window) and sends per-group partial sums.

        Keying by a bucket of subjects (:data:`BUCKETS` of them), not by subject, gives one
        event-time timer per bucket and window instead of one per subject, and one
        stage-2 record per bucket, window and group instead of one per subject.

        State: ``buffers``, a ``MapState`` of the bucket from ``"<window start>\x1f<subject>"``
        to the encoded :class:`SubjectWindow`, written through at the end of every call that
        changes a buffer (a call takes one record or a bundle of them), so a checkpoint holds every
        open window's contributions. A
        copy of the bucket's buffers lives in ``self.buckets`` (``{bucket: {window start:
        {subject: SubjectWindow}}}``), so records never read state; a bucket's copy is
        loaded from state the first time this subtask sees the bucket, which after a
        restore brings back what the checkpoint held. When a bucket's window timer
        fires, its buffers are bounded, summed per group and sent to stage 2, and their
        entries removed.

        A record for a window whose release time the watermark has passed is late:
        dropped and counted. At most ``BUFFER_LIMIT`` (subject, window) buffers are held
        per subtask; a new one beyond that is dropped and counted
        (``dp_records_dropped_buffer_full``), never sent early.
        """

        def open(self, ctx: Any) -> None:
            from pyflink.common import Row
            from pyflink.common.typeinfo import Types
            from pyflink.datastream.state import MapStateDescriptor

            self.row = Row
            self.rng = make_random(self.subtask_seed(ctx))
            self.core = ContributionBounder(self.params)
            buffers = MapStateDescriptor("subject_windows", Types.STRING(), Types.STRING())
            buffers.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
            self.state = ctx.get_map_state(buffers)
            self.buckets: dict[int, dict[int, dict[str, SubjectWindow]]] = {}
            self.held = 0  # (subject, window) buffers in self.buckets
            metrics = ctx.get_metrics_group()
            self.late = metrics.counter("dp_late_records_dropped")
            self.full = metrics.counter("dp_records_dropped_buffer_full")
            self.records = BatchedCounter(metrics.counter("dp_records_in"))
            # public-group markers already sent per window; duplicates after a restore are harmless
            self.announced: set[int] = set()
            self.tumbling = self.params.slide_ms is None
            self.window_ms = self.params.window_ms
            self.clock = QuietClock(self.params.idle_timeout_ms, self.watermark_delay_ms)
            self.closed: dict[int, int] = {}  # bucket -> last window start closed on a quiet input
            self.seen_marks: dict[int, str] = {}  # bucket -> its _SEEN_KEY entry in state
            self.ticking: set[int] = set()  # buckets with a quiet-input timer pending

        def _windows(self, bucket: int, ctx: Any) -> dict[int, dict[str, SubjectWindow]]:
            """The bucket's open windows; the first call per bucket loads them from state (after a restore)."""
            windows = self.buckets.get(bucket)
            if windows is None:
                windows = self.buckets[bucket] = {}
                for key, text in self.state.items():
                    if key == _CLOSED_KEY:
                        self.closed[bucket] = int(text)
                        continue
                    if key == _SEEN_KEY:
                        self.seen_marks[bucket] = text
                        self.clock.restored(int(text), int(time.time() * 1000))
                        continue
                    start, subject = key.split("\x1f", 1)
                    start = int(start)
                    subjects = windows.get(start)
                    if subjects is None:
                        subjects = windows[start] = {}
                        # restored with the state; registering it again is harmless
                        ctx.timer_service().register_event_time_timer(self.params.release_time(start))
                    subjects[subject] = decode_window(text)
                    self.held += 1
            return windows

        def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
            # value: one contribution, or a bundle of this bucket's [bundles]
            windows = None
            changed: dict[str, SubjectWindow] = {}  # state key -> its buffer, written once per call
            # the wall clock without a call into the JVM, once per call; only a quiet-input clock reads it
            now = int(time.time() * 1000) if self.clock.idle_ms is not None else 0
            for payload in unbundle(value):
                subject, group_json, values_json, ts = decode_contribution(payload)
                if windows is None:
                    bucket = zlib.crc32(subject.encode()) % BUCKETS  # the current key (encode_contribution), no JVM call
                    windows = self.buckets.get(bucket)
                    if windows is None:
                        windows = self._windows(bucket, ctx)
                self._contribute(bucket, windows, subject, group_json, values_json, ts, now, ctx, changed)
            if changed:
                put_all(self.state, {key: encode_window(window) for key, window in changed.items()})
            return
            yield  # a generator, as PyFlink expects

        def _contribute(self, bucket: int, windows: dict[int, dict[str, SubjectWindow]], subject: str,
                        group_json: str, values_json: str, ts: int, now: int, ctx: Any,
                        changed: dict[str, SubjectWindow]) -> None:
            """One record into its (subject, window) buffers; ``changed`` gathers those to write through to state."""
            self.records.add()
            if self.clock.idle_ms is not None:
                self.clock.saw(ts, now)
                if bucket not in self.ticking:
                    self._tick(bucket, now, ctx)
            starts = (ts - ts % self.window_ms,) if self.tumbling else window_starts(self.params, ts)
            vector = None
            for start in starts:
                subjects = windows.get(start)
                if subjects is None:
                    subjects = self._open_window(windows, start, bucket, ctx)
                    if subjects is None:
                        continue  # later than the allowed lateness
                window = subjects.get(subject)
                if window is None:
                    if self.held >= BUFFER_LIMIT:
                        self.full.inc()
                        continue
                    window = subjects[subject] = self.core.new_window(self.rng)
                    self.held += 1
                if vector is None:
                    vector = self.core.vector(values_json)
                if self.core.offer(window, group_json, vector):
                    changed[f"{start}\x1f{subject}"] = window

        def _open_window(self, windows: dict[int, Any], start: int, bucket: int,
                         ctx: Any) -> dict[str, SubjectWindow] | None:
            """A window this bucket has no buffers for yet; None when the window is closed."""
            if start <= self.closed.get(bucket, -(2**63)):
                self.late.inc()  # closed on a quiet input
                return None
            release = self.params.release_time(start)
            # an open window's timer has not fired, so only a new one asks the JVM for the watermark. The
            # watermark alone decides: a released window's timer fired, so the watermark is past it; and
            # BATCH mode, which fires a key's timers when its records end, starts each key at the lowest one
            if release <= ctx.timer_service().current_watermark():
                self.late.inc()
                return None
            ctx.timer_service().register_event_time_timer(release)
            subjects = windows[start] = {}
            return subjects

        def _tick(self, bucket: int, now: int, ctx: Any) -> None:
            # aligned to the tick, so every bucket checks at the same instant and stage 2 sees them together
            tick = self.clock.tick_ms
            ctx.timer_service().register_processing_time_timer((now // tick + 1) * tick)
            self.ticking.add(bucket)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any]:
            from pyflink.datastream import TimeDomain

            p = self.params
            self.records.flush()
            bucket = ctx.get_current_key()
            if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
                yield from self._on_quiet(bucket, timestamp, ctx)
                return
            start = timestamp - p.allowed_lateness_ms - p.window_ms + 1
            yield from self._flush(bucket, start, ctx)

        def _forget(self, bucket: int, start: int, subjects: dict[str, SubjectWindow],
                    windows: dict[int, dict[str, SubjectWindow]]) -> None:
            """Remove a flushed window's buffers from the bucket's state, in as few calls into the JVM as it takes.

            A window is flushed when the watermark passes it, so the bucket's next window has mostly just
            opened: clearing the bucket and writing its few other entries again takes two calls where
            removing the flushed window's buffers takes one per subject. ``windows`` no longer holds ``start``.
            """
            marks = {}
            if bucket in self.closed:
                marks[_CLOSED_KEY] = str(self.closed[bucket])
            if bucket in self.seen_marks:
                marks[_SEEN_KEY] = self.seen_marks[bucket]
            rest = sum(map(len, windows.values())) + len(marks)
            if rest >= len(subjects):
                for subject in subjects:
                    self.state.remove(f"{start}\x1f{subject}")
                return
            self.state.clear()
            if rest:
                marks.update((f"{s}\x1f{subject}", encode_window(window))
                             for s, held in windows.items() for subject, window in held.items())
                put_all(self.state, marks)

        def _on_quiet(self, bucket: int, now: int, ctx: Any) -> Iterable[Any]:
            """A quiet-input check: close the bucket's windows that the wall clock has carried past."""
            self.ticking.discard(bucket)
            windows = self._windows(bucket, ctx)
            event_time = self.clock.event_time(now)
            if event_time is not None:
                watermark = ctx.timer_service().current_watermark()
                for start in sorted(windows):
                    release = self.params.release_time(start)
                    if watermark < release <= event_time:
                        self.closed[bucket] = max(start, self.closed.get(bucket, start))
                        self.state.put(_CLOSED_KEY, str(self.closed[bucket]))
                        yield from self._flush(bucket, start, ctx, marker=QUIET)
            if windows:
                if self.clock.max_event is not None:
                    # so a restore on an input that stays quiet still has a clock to close these windows by
                    self.seen_marks[bucket] = str(self.clock.max_event)
                    self.state.put(_SEEN_KEY, self.seen_marks[bucket])
                self._tick(bucket, now, ctx)

        def _flush(self, bucket: int, start: int, ctx: Any, marker: str = "") -> Iterable[Any]:
            """Bound, sum per group and send one window of the bucket; ``marker`` flags a quiet-input close."""
            p = self.params
            windows = self._windows(bucket, ctx)
            subjects = windows.pop(start, None)
            if subjects:
                self.held -= len(subjects)
                self._forget(bucket, start, subjects, windows)
                for group_json, acc in self.core.totals(subjects.values()).items():
                    yield self.row(group_json, encode_partial_sum(group_json, start, marker + encode_vector(acc)))
            if p.public_groups and start not in self.announced:
                self.announced.add(start)
                self.announced = {s for s in self.announced if s >= start - p.window_ms}
                zero = marker + encode_vector(self.core.zero())
                for group_json in p.public_groups:
                    yield self.row(group_json, encode_partial_sum(group_json, start, zero))


    class _NoisyAggregate(_SeededProcess):
        """Stage 2: keyed by group; sums contributions per window and releases them with noise.

        Window totals live in a ``MapState`` (window start -> comma-joined floats) behind
        a write-through cache, as in stage 1: written once per call for each window it changed (a
        call takes one partial sum or a bundle of the group's).
        """

        seed_offset = 500

        def open(self, ctx: Any) -> None:
            from pyflink.common.typeinfo import Types
            from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

            self.core = GroupReleaser(self.params, self.subtask_seed(ctx))
            windows = MapStateDescriptor("group_windows", Types.LONG(), Types.STRING())
            windows.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
            self.windows = ctx.get_map_state(windows)
            self.cache: dict[tuple[str, int], list[float]] = {}
            self.zero = ContributionBounder(self.params).zero()
            metrics = ctx.get_metrics_group()
            self.late = metrics.counter("dp_late_contributions_dropped")
            self.released = metrics.counter("dp_groups_released")
            self.suppressed = metrics.counter("dp_groups_suppressed")
            self.not_public = metrics.counter("dp_groups_not_public_dropped")
            # the last window start released, per group: a contribution to it or an earlier window is late.
            # The watermark cannot tell after a restore, where it starts over from the lowest value (the
            # state keeps its first name, "quiet_closed", so savepoints of earlier versions restore)
            released_through = ValueStateDescriptor("quiet_closed", Types.LONG())
            released_through.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
            self.released_through = ctx.get_state(released_through)
            # window start -> wall ms of its last quiet contribution: in state, so a restore still releases them
            quiet_seen = MapStateDescriptor("quiet_contributed", Types.LONG(), Types.LONG())
            quiet_seen.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
            self.quiet_seen = ctx.get_map_state(quiet_seen)
            self.settle_ms = 2 * QuietClock(self.params.idle_timeout_ms, 0).tick_ms

        def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
            # value: one partial sum, or a bundle of this group's [bundles]: every bucket's part of a window
            # comes in the same watermark's timers, so a window's parts mostly arrive in one call
            changed: dict[int, list[float]] = {}  # window start -> its total, written once per call
            for payload in unbundle(value):
                group_json, start, vector = decode_partial_sum(payload)
                quiet = vector.startswith(QUIET)
                if quiet:
                    vector = vector[1:]
                if self.params.public_groups is not None and group_json not in self.core.public:
                    self.not_public.inc()  # with public groups, other groups are never released
                    continue
                acc = changed.get(start) or self._open(group_json, start, ctx)
                if acc is None:
                    continue
                for i, v in enumerate(decode_vector(vector)):
                    acc[i] += v
                changed[start] = acc
                if quiet:
                    # stage 1 closed this window on a quiet input: release it once every bucket has sent its part
                    now = int(time.time() * 1000)
                    if not self.quiet_seen.contains(start):
                        ctx.timer_service().register_processing_time_timer(now + self.settle_ms)
                    self.quiet_seen.put(start, now)
            if changed:
                put_all(self.windows, {start: encode_vector(acc) for start, acc in changed.items()})
            return
            yield

        def _open(self, group_json: str, start: int, ctx: Any) -> list[float] | None:
            """The group's running total of a window, from the cache, state, or new; None when the window is late."""
            acc = self.cache.get((group_json, start))
            if acc is None:
                text = self.windows.get(start)
                if text is not None:
                    acc = decode_vector(text)  # restored, or evicted from the cache
                else:
                    release = self.params.release_time(start)
                    through = self.released_through.value()
                    if release <= ctx.timer_service().current_watermark() or (through is not None and start <= through):
                        self.late.inc()
                        return None
                    ctx.timer_service().register_event_time_timer(release)
                    acc = list(self.zero)
                self._cache(group_json, start, acc)
            return acc

        def _cache(self, group_json: str, start: int, acc: list[float]) -> None:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[(group_json, start)] = acc

        def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any]:
            from pyflink.datastream import TimeDomain

            p = self.params
            group_json = ctx.get_current_key()
            if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
                for start, last in list(self.quiet_seen.items()):
                    if timestamp - last < self.settle_ms:
                        ctx.timer_service().register_processing_time_timer(last + self.settle_ms)
                        continue
                    self.quiet_seen.remove(start)
                    yield from self._release(group_json, start)
                return
            start = timestamp - p.allowed_lateness_ms - p.window_ms + 1
            released = False
            for out in self._release(group_json, start):
                released = True
                yield out
            if not released:
                return
            # a public group is released for every window after its first, busy or not
            if p.public_groups is not None and ctx.timer_service().current_watermark() < _MAX_WATERMARK:
                nxt = start + p.slide
                if (group_json, nxt) not in self.cache and self.windows.get(nxt) is None:
                    acc = list(self.zero)
                    self.windows.put(nxt, encode_vector(acc))
                    self._cache(group_json, nxt, acc)
                    ctx.timer_service().register_event_time_timer(p.release_time(nxt))

        def _release(self, group_json: str, start: int) -> Iterable[Any]:
            """Noise and release one open window of the group (nothing when it is already released)."""
            # timers fire in event-time order, so every earlier window of the group is released too
            through = self.released_through.value()
            if through is None or start > through:
                self.released_through.update(start)
            acc = self.cache.pop((group_json, start), None)
            if acc is None:
                text = self.windows.get(start)
                if text is None:
                    return
                acc = decode_vector(text)
            self.windows.remove(start)
            out = self.core.release(group_json, start, acc)
            if out is None:
                self.suppressed.inc()
                # the gate must still charge this window: suppressing spent budget too
                yield group_json, start, ""
            else:
                self.released.inc()
                yield group_json, start, json.dumps(out)


    class _BudgetGate(_KeyedProcess):
        """Keyed by view; charges each window to the view's budget and stops at ``total_epsilon``.

        It is also the last guard of "no window released twice": it remembers each (window, group)
        it let through, in keyed state, and refuses another release of it, whatever sent it (a
        second noisy release of a window would spend its epsilon again, uncharged).
        """

        def __init__(self, params: DpParams, view_name: str, policy_id: str, policy_hash: str) -> None:
            self.params = params
            self.view_name = view_name
            self.policy_id = policy_id
            self.policy_hash = policy_hash

        def open(self, ctx: Any) -> None:
            from pyflink.common.typeinfo import Types
            from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

            self.ledger = BudgetLedger(self.params)
            # no TTL: forgetting the spend would let the view spend its budget again
            self.first = ctx.get_state(ValueStateDescriptor("first_window", Types.LONG()))
            self.last = ctx.get_state(ValueStateDescriptor("last_window", Types.LONG()))
            # "window start \x1f group" -> 1 once released (or suppressed): kept as long as any stage
            # keeps a buffer of that window
            released = MapStateDescriptor("released_groups", Types.STRING(), Types.BYTE())
            released.enable_time_to_live(state_ttl(self.params.state_ttl_ms))
            self.released = ctx.get_map_state(released)
            metrics = ctx.get_metrics_group()
            self.refused = metrics.counter("dp_releases_refused_budget")
            self.duplicates = metrics.counter("dp_releases_refused_duplicate")
            # a counter raised to the spend, not a gauge: PyFlink workaround [gauges] in operators.flink_compat.
            # It starts at 0 in a restored job and catches up at its first release.
            self.spent_counter = metrics.counter("dp_epsilon_spent_micro")
            self.spent_micro = 0
            self.warned = False
            self.warned_duplicate = False

        def process_element(self, value: Any, ctx: Any) -> Iterable[Any]:
            group_json, start, value_json = value
            released_key = f"{start}\x1f{group_json}"
            if self.released.contains(released_key):
                self.duplicates.inc()
                if not self.warned_duplicate:
                    self.warned_duplicate = True
                    log.warning("dp view %s: %s; refused (policy %s)", self.view_name, GATE_REFUSAL, self.policy_id)
                return
            first, last = self.first.value(), self.last.value()
            # charge every window between the earliest and the latest one computed
            first = start if first is None else min(first, start)
            last = start if last is None else max(last, start)
            if not self.ledger.allows(first, last):
                self.refused.inc()
                if not self.warned:
                    self.warned = True
                    log.warning(
                        "dp view %s: total_epsilon %.6g reached; releases stopped (policy %s)",
                        self.view_name,
                        self.params.total_epsilon,
                        self.policy_id,
                    )
                return
            self.first.update(first)
            self.last.update(last)
            self.released.put(released_key, 1)
            eps, delta = self.ledger.spent(first, last)
            micro = int(eps * 1e6)
            if micro > self.spent_micro:
                self.spent_counter.inc(micro - self.spent_micro)
                self.spent_micro = micro
            if not value_json:
                return  # a suppressed group: charged, not released
            headers = {
                "policy_id": self.policy_id,
                "policy_hash": self.policy_hash,
                "view": self.view_name,
                "epsilon_spent": eps,
                "delta_spent": delta,
            }
            yield group_json, json.dumps(headers), value_json

    return _BoundContributions, _NoisyAggregate, _BudgetGate
