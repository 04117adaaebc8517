"""Windowed shuffling: permute chosen columns across the records of a window.

In a view of a policy (``views.<name>.shuffle``, beside its ``fields``)::

    shuffle:
      columns: [zip, age]          # each permuted on its own, across the window's records
      window: 100                  # a count; or a duration (30s, 1m): a processing-time window
      timeout: 30s                 # count windows only: close a partial window after this long
      min_size: 10                 # a smaller window is never shuffled in the clear ...
      small_window: suppress       # ... its records are suppressed (side output), or "hold":
      max_hold: 5m                 #     carried into the next window, suppressed past max_hold
      partition_by: region         # shuffle within a partition (default: one window for all)
      state_ttl: 1h                # buffered records expire from state after this

Each column gets its own uniformly random permutation (Fisher-Yates over
:class:`secrets.SystemRandom`), so the value of a column is no longer tied to the
rest of its record, while the multiset of every column per window is kept:
counts, sums and distributions over a window are exact. The operator is not
deterministic. A record lacking a column keeps lacking it; the column's values
move among the records that have it.

When a bounded input ends (and in Flink's BATCH mode, when a partition's records are
done), each partition's last window closes: shuffled and released if it holds
``min_size`` records, else suppressed, held records included, since no next window comes.

Shape of the data: ``(key, headers JSON, value JSON)`` tuples in and out, like the
job's record views. The plain-Python core (:class:`Shuffler`) holds the logic; the
Flink wrapper (:func:`attach`) keeps the buffer in typed, TTL-bound keyed state.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from operators.flink_compat import FLUSH_TIMER, now_ms, state_ttl
from udfs.durations import parse_duration
from udfs.errors import ParamError
from udfs.record import Record

__all__ = ["BLOCK_KEYS", "SMALL_WINDOW", "WINDOW_HEADER", "Shuffler", "ShuffleParams", "attach", "partition_key"]

BLOCK_KEYS = ("columns", "window", "timeout", "min_size", "small_window", "max_hold", "partition_by", "state_ttl")
SMALL_WINDOW = ("suppress", "hold")
#: header set on a suppressed record, so the side output says why
SUPPRESSED_HEADER = "shuffle_suppressed"
#: header set on a released record: a random id shared by the records shuffled together
WINDOW_HEADER = "shuffle_window"


@dataclass(frozen=True)
class ShuffleParams:
    """A view's ``shuffle:`` block, checked.

    Parameters
    ----------
    columns : tuple of str
        Top-level fields of the value whose values are permuted.
    count : int or None
        Records per window; None for a time window.
    window_ms : int or None
        Length of a processing-time window; None for a count window.
    timeout_ms : int or None
        A count window closes early after this long (None: only at ``count``).
    min_size : int
        Fewest records a window must hold to be shuffled and released.
    small_window : {"suppress", "hold"}
        What happens to the records of a smaller window.
    max_hold_ms : int
        With ``hold``: a record held longer than this is suppressed.
    partition_by : str or None
        Field whose value keys the windows.
    state_ttl_ms : int
        Time to live of buffered records in Flink state.
    """

    columns: tuple[str, ...]
    count: int | None = None
    window_ms: int | None = None
    timeout_ms: int | None = None
    min_size: int = 2
    small_window: str = "suppress"
    max_hold_ms: int = 300_000
    partition_by: str | None = None
    state_ttl_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if not self.columns or not all(isinstance(c, str) and c for c in self.columns):
            raise ParamError("columns", "must be a non-empty list of field names", "[zip, age]")
        if (self.count is None) == (self.window_ms is None):
            raise ParamError("window", "give a count or a duration", "100 or 30s")
        if self.count is not None and self.count < 2:
            raise ParamError("window", "a count window needs at least 2 records", "an integer >= 2")
        for name, ms in (("window", self.window_ms), ("timeout", self.timeout_ms), ("max_hold", self.max_hold_ms)):
            if ms is not None and ms <= 0:
                raise ParamError(name, "must be longer than 0", "a positive duration such as 500ms, 30s or 1m")
        if self.min_size < 2:
            raise ParamError("min_size", "must be at least 2: one record shuffled is itself", "an integer >= 2")
        if self.count is not None and self.min_size > self.count:
            raise ParamError("min_size", "is above the window's count", f"at most {self.count}")
        if self.small_window not in SMALL_WINDOW:
            raise ParamError("small_window", f"unknown value {self.small_window!r}", ", ".join(SMALL_WINDOW))
        held = self.max_hold_ms if self.small_window == "hold" else 0
        longest = max(self.window_ms or 0, self.timeout_ms or 0, held)
        if self.state_ttl_ms <= longest:
            raise ParamError("state_ttl", "must be longer than the window, timeout and max_hold",
                             "a duration such as 1h")

    @classmethod
    def from_policy(cls, block: Any) -> ShuffleParams:
        """Check a view's ``shuffle:`` block; raise :class:`ParamError` naming the key at fault."""
        if not isinstance(block, Mapping):
            raise ParamError("", "must be a mapping", "{columns: [zip], window: 100, min_size: 10}")
        unknown = sorted(set(block) - set(BLOCK_KEYS))
        if unknown:
            raise ParamError(str(unknown[0]), "unknown key", ", ".join(BLOCK_KEYS))
        columns = block.get("columns")
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, list):
            raise ParamError("columns", "missing or not a list", "[zip, age]")
        window = block.get("window")
        count = window_ms = None
        if isinstance(window, int) and not isinstance(window, bool):
            count = window
        elif isinstance(window, str):
            window_ms = parse_duration(window, "window", minimum_ms=1)
        else:
            raise ParamError("window", "missing: a count or a duration", "100 or 30s")
        timeout_ms = parse_duration(block["timeout"], "timeout", minimum_ms=1) if "timeout" in block else None
        if timeout_ms is not None and count is None:
            raise ParamError("timeout", "only count windows take a timeout", "drop it, or use a count window")
        min_size = block.get("min_size", 2)
        if isinstance(min_size, bool) or not isinstance(min_size, int):
            raise ParamError("min_size", "must be an integer", "an integer >= 2")
        partition_by = block.get("partition_by")
        if partition_by is not None and not isinstance(partition_by, str):
            raise ParamError("partition_by", "must be a field name", "a field such as region")
        max_hold_ms = parse_duration(block.get("max_hold", "5m"), "max_hold", minimum_ms=1)
        default_ttl = max(3_600_000, 10 * max(window_ms or 0, timeout_ms or 0, max_hold_ms))  # suppress ignores max_hold
        state_ttl_ms = (parse_duration(block["state_ttl"], "state_ttl", minimum_ms=1)
                        if "state_ttl" in block else default_ttl)
        return cls(columns=tuple(columns), count=count, window_ms=window_ms, timeout_ms=timeout_ms,
                   min_size=min_size, small_window=block.get("small_window", "suppress"),
                   max_hold_ms=max_hold_ms, partition_by=partition_by, state_ttl_ms=state_ttl_ms)


def partition_key(params: ShuffleParams, value_json: str) -> str:
    """The window key of a record: its ``partition_by`` value as JSON, or ``""``."""
    if params.partition_by is None:
        return ""
    return json.dumps(json.loads(value_json).get(params.partition_by), sort_keys=True)


class Shuffler:
    """The plain core: close a window of buffered records into shuffled, suppressed and held ones.

    Parameters
    ----------
    params : ShuffleParams
    random : random.Random, optional
        Source of the permutations. Secure (:class:`secrets.SystemRandom`) by default;
        tests may pass a seeded one.
    """

    def __init__(self, params: ShuffleParams, *, random: Any | None = None) -> None:
        self.params = params
        self.random = random if random is not None else secrets.SystemRandom()

    def shuffle(self, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Permute each column across ``values`` (in place, and returned)."""
        for column in self.params.columns:
            holders = [v for v in values if column in v]
            column_values = [v[column] for v in holders]
            self.random.shuffle(column_values)
            for holder, new in zip(holders, column_values, strict=True):
                holder[column] = new
        return values

    def close(self, entries: Sequence[tuple[Record, int]], now_ms: int, *, final: bool = False
              ) -> tuple[list[Record], list[Record], list[tuple[Record, int]]]:
        """Close a window of ``(record, entered ms)`` entries.

        Parameters
        ----------
        entries : sequence of (record, entered ms)
        now_ms : int
            When the window closes (held records older than ``max_hold`` are suppressed).
        final : bool
            The input has ended: no next window will come, so nothing is held.

        Returns
        -------
        shuffled, suppressed, held
            Records to release (each with a ``shuffle_window`` header, the same random id
            for a window's records, so a reader knows what was shuffled together), records
            to send to the suppressed output (with a ``shuffle_suppressed`` header; their
            values are raw), and entries to carry into the next window.
        """
        if len(entries) >= self.params.min_size:
            values = self.shuffle([json.loads(record[2]) for record, _ in entries])
            # the window's arrival order is not kept either: it would tie records back to their values
            order = list(range(len(entries)))
            self.random.shuffle(order)
            window = f"{self.random.getrandbits(64):016x}"
            out = [(entries[i][0][0], _with_header(entries[i][0][1], WINDOW_HEADER, window),
                    json.dumps(values[i], separators=(",", ":"))) for i in order]
            return out, [], []
        if self.params.small_window == "hold" and final:
            return [], [_suppressed(record, "end of input") for record, _ in entries], []
        if self.params.small_window == "hold":
            held = [e for e in entries if now_ms - e[1] < self.params.max_hold_ms]
            expired = [e for e in entries if now_ms - e[1] >= self.params.max_hold_ms]
            return [], [_suppressed(record, "held too long") for record, _ in expired], held
        return [], [_suppressed(record, "window too small") for record, _ in entries], []


def _with_header(headers_json: str, name: str, value: str) -> str:
    headers = json.loads(headers_json) if headers_json else {}
    headers[name] = value
    return json.dumps(headers, separators=(",", ":"))


def _suppressed(record: Record, reason: str) -> Record:
    return (record[0], _with_header(record[1], SUPPRESSED_HEADER, reason), record[2])


def _encode(record: Record, entered: int) -> str:
    return json.dumps([record[0], record[1], record[2], entered], separators=(",", ":"))


def _decode(text: str) -> tuple[Record, int]:
    key, headers, value, entered = json.loads(text)
    return (key, headers, value), entered


def attach(stream, params: ShuffleParams, *, view_name: str):  # noqa: ANN001, ANN201 - PyFlink types
    """Shuffle a stream of ``(key, headers JSON, value JSON)`` tuples window by window.

    Parameters
    ----------
    stream : DataStream
        Typed ``Types.TUPLE([STRING, STRING, STRING])``.
    params : ShuffleParams
        From :meth:`ShuffleParams.from_policy`.
    view_name : str
        Used in operator names and uids.

    Returns
    -------
    shuffled, suppressed : DataStream, DataStream
        Both ``(key, headers JSON, value JSON)``. Suppressed values are unshuffled and
        as sensitive as the input: route them like dead letters.
    """
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import OutputTag

    out_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()])
    suppress_tag = OutputTag(f"shuffle-{view_name}-suppressed", Types.TUPLE([Types.STRING()] * 3))
    function = _shuffle_function(params, suppress_tag)
    keyed = stream.key_by(lambda record: partition_key(params, record[2]), key_type=Types.STRING())
    # (partition JSON) -> buffered (record, entered ms) in list state, closed by count or timer
    shuffled = (keyed.process(function, output_type=out_type)
                .name(f"shuffle {view_name}").uid(f"shuffle-{view_name}"))
    return shuffled, shuffled.get_side_output(suppress_tag)


def _shuffle_function(params: ShuffleParams, suppress_tag):  # noqa: ANN001, ANN202 - PyFlink types
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedProcessFunction, TimeDomain
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    class ShuffleFunction(KeyedProcessFunction):
        """Buffer a partition's records; shuffle and release them when the window closes.

        A window closes by count, or by its processing-time timer (a time window, a count
        window's timeout, held records' next try). Processing-time timers never fire once a
        bounded input has ended, so a non-empty buffer also holds an event-time timer at
        :data:`FLUSH_TIMER`, which the final watermark fires: the last window closes then,
        and nothing is held past it. In BATCH mode every timer of a partition fires when its
        records are done, under the final watermark, so there too the last window closes
        with ``final``, whichever of its timers fires first.
        """

        def __init__(self) -> None:
            self.params = params

        def open(self, runtime_context: Any) -> None:
            # random generators are made here, on the worker, never pickled
            self.core = Shuffler(self.params)
            ttl = state_ttl(self.params.state_ttl_ms)
            buffer = ListStateDescriptor("buffer", Types.STRING())
            # (records buffered, timer due ms or 0)
            header = ValueStateDescriptor("header", Types.TUPLE([Types.INT(), Types.LONG()]))
            buffer.enable_time_to_live(ttl)
            header.enable_time_to_live(ttl)
            self.buffer = runtime_context.get_list_state(buffer)
            self.header = runtime_context.get_state(header)

        def process_element(self, record, ctx):  # noqa: ANN001, ANN201
            now = now_ms()
            size, due = self.header.value() or (0, 0)
            if size == 0:
                ctx.timer_service().register_event_time_timer(FLUSH_TIMER)
            self.buffer.add(_encode((record[0], record[1], record[2]), now))
            size += 1
            if self.params.count is not None and size >= self.params.count:
                yield from self._close(ctx, now, due)
                return
            if not due:
                wait = self.params.window_ms or self.params.timeout_ms
                if wait:
                    due = now + wait
                    ctx.timer_service().register_processing_time_timer(due)
            self.header.update((size, due))

        def on_timer(self, timestamp: int, ctx):  # noqa: ANN001, ANN201
            size, due = self.header.value() or (0, 0)
            if ctx.time_domain() == TimeDomain.EVENT_TIME:
                if size and timestamp >= FLUSH_TIMER:
                    yield from self._close(ctx, now_ms(), due, final=True)
                return
            if size and due == timestamp:  # else a window that already closed by count or at the end
                # BATCH mode fires a partition's timers when its records are done, under the final
                # watermark: the input has ended for this partition, so nothing can be held
                final = ctx.timer_service().current_watermark() >= FLUSH_TIMER
                yield from self._close(ctx, timestamp, 0, final=final)

        def _close(self, ctx, now: int, due: int, final: bool = False):  # noqa: ANN001, ANN202
            service = ctx.timer_service()
            if due:
                service.delete_processing_time_timer(due)
            entries = [_decode(text) for text in self.buffer.get()]
            shuffled, suppressed, held = self.core.close(entries, now, final=final)
            self.buffer.clear()
            yield from shuffled
            for record in suppressed:
                yield suppress_tag, record
            if held:
                self.buffer.update([_encode(record, entered) for record, entered in held])
                # held records wait for the next window; without a timer they would wait forever
                wait = self.params.window_ms or self.params.timeout_ms or self.params.max_hold_ms
                due = now + wait
                service.register_processing_time_timer(due)
                self.header.update((len(held), due))
            else:
                self.header.clear()
                if not final:
                    service.delete_event_time_timer(FLUSH_TIMER)

    return ShuffleFunction()
