"""Windowed shuffling: permute chosen columns across the records of a window.

In a view of a policy::

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

from operators.dp_aggregates import parse_duration
from udfs.registry import ParamError

__all__ = ["BLOCK_KEYS", "SMALL_WINDOW", "Shuffler", "ShuffleParams", "attach"]

BLOCK_KEYS = ("columns", "window", "timeout", "min_size", "small_window", "max_hold", "partition_by", "state_ttl")
SMALL_WINDOW = ("suppress", "hold")
#: header set on a suppressed record, so the side output says why
SUPPRESSED_HEADER = "shuffle_suppressed"

Record = tuple[str | None, str, str]  # (key, headers JSON, value JSON)


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
            window_ms = parse_duration(window, "window")
        else:
            raise ParamError("window", "missing: a count or a duration", "100 or 30s")
        timeout_ms = parse_duration(block["timeout"], "timeout") if "timeout" in block else None
        if timeout_ms is not None and count is None:
            raise ParamError("timeout", "only count windows take a timeout", "drop it, or use a count window")
        min_size = block.get("min_size", 2)
        if isinstance(min_size, bool) or not isinstance(min_size, int):
            raise ParamError("min_size", "must be an integer", "an integer >= 2")
        partition_by = block.get("partition_by")
        if partition_by is not None and not isinstance(partition_by, str):
            raise ParamError("partition_by", "must be a field name", "a field such as region")
        max_hold_ms = parse_duration(block.get("max_hold", "5m"), "max_hold")
        default_ttl = max(3_600_000, 10 * max(window_ms or 0, timeout_ms or 0, max_hold_ms))  # suppress ignores max_hold
        state_ttl_ms = parse_duration(block["state_ttl"], "state_ttl") if "state_ttl" in block else default_ttl
        return cls(columns=tuple(columns), count=count, window_ms=window_ms, timeout_ms=timeout_ms,
                   min_size=min_size, small_window=block.get("small_window", "suppress"),
                   max_hold_ms=max_hold_ms, partition_by=partition_by, state_ttl_ms=state_ttl_ms)


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

    def partition(self, value_json: str) -> str:
        """The window key of a record: its ``partition_by`` value as JSON, or ``""``."""
        if self.params.partition_by is None:
            return ""
        return json.dumps(json.loads(value_json).get(self.params.partition_by), sort_keys=True)

    def shuffle(self, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Permute each column across ``values`` (in place, and returned)."""
        for column in self.params.columns:
            holders = [v for v in values if column in v]
            column_values = [v[column] for v in holders]
            self.random.shuffle(column_values)
            for holder, new in zip(holders, column_values, strict=True):
                holder[column] = new
        return values

    def close(self, entries: Sequence[tuple[Record, int]], now_ms: int
              ) -> tuple[list[Record], list[Record], list[tuple[Record, int]]]:
        """Close a window of ``(record, entered ms)`` entries.

        Returns
        -------
        shuffled, suppressed, held
            Records to release, records to send to the suppressed output (with a
            ``shuffle_suppressed`` header; their values are raw), and entries to carry
            into the next window.
        """
        if len(entries) >= self.params.min_size:
            values = self.shuffle([json.loads(record[2]) for record, _ in entries])
            # the window's arrival order is not kept either: it would tie records back to their values
            order = list(range(len(entries)))
            self.random.shuffle(order)
            out = [(entries[i][0][0], entries[i][0][1], json.dumps(values[i], separators=(",", ":")))
                   for i in order]
            return out, [], []
        if self.params.small_window == "hold":
            held = [e for e in entries if now_ms - e[1] < self.params.max_hold_ms]
            expired = [e for e in entries if now_ms - e[1] >= self.params.max_hold_ms]
            return [], [_suppressed(record, "held too long") for record, _ in expired], held
        return [], [_suppressed(record, "window too small") for record, _ in entries], []


def _suppressed(record: Record, reason: str) -> Record:
    headers = json.loads(record[1]) if record[1] else {}
    headers[SUPPRESSED_HEADER] = reason
    return (record[0], json.dumps(headers, separators=(",", ":")), record[2])


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
    partition = Shuffler(params, random=_NoRandom()).partition
    keyed = stream.key_by(lambda record: partition(record[2]), key_type=Types.STRING())
    # (partition JSON) -> buffered (record, entered ms) in list state, closed by count or timer
    shuffled = (keyed.process(function, output_type=out_type)
                .name(f"shuffle {view_name}").uid(f"shuffle-{view_name}"))
    return shuffled, shuffled.get_side_output(suppress_tag)


class _NoRandom:
    """Stands in for a random source where only :meth:`Shuffler.partition` is used (picklable)."""


def _shuffle_function(params: ShuffleParams, suppress_tag):  # noqa: ANN001, ANN202 - PyFlink types
    from pyflink.common.time import Time
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.state import ListStateDescriptor, StateTtlConfig, ValueStateDescriptor

    class ShuffleFunction(KeyedProcessFunction):
        """Buffer a partition's records; shuffle and release them when the window closes."""

        def __init__(self) -> None:
            self.params = params

        def open(self, runtime_context: Any) -> None:
            # random generators are made here, on the worker, never pickled
            self.core = Shuffler(self.params)
            ttl = (StateTtlConfig.new_builder(Time.milliseconds(self.params.state_ttl_ms))
                   .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                   .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                   .build())
            buffer = ListStateDescriptor("buffer", Types.STRING())
            # (records buffered, timer due ms or 0)
            header = ValueStateDescriptor("header", Types.TUPLE([Types.INT(), Types.LONG()]))
            buffer.enable_time_to_live(ttl)
            header.enable_time_to_live(ttl)
            self.buffer = runtime_context.get_list_state(buffer)
            self.header = runtime_context.get_state(header)

        def process_element(self, record, ctx):  # noqa: ANN001, ANN201
            now = ctx.timer_service().current_processing_time()
            size, due = self.header.value() or (0, 0)
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
            if due != timestamp:
                return  # a window that already closed by count
            yield from self._close(ctx, timestamp, 0)

        def _close(self, ctx, now: int, due: int):  # noqa: ANN001, ANN202
            if due:
                ctx.timer_service().delete_processing_time_timer(due)
            entries = [_decode(text) for text in self.buffer.get()]
            shuffled, suppressed, held = self.core.close(entries, now)
            self.buffer.clear()
            yield from shuffled
            for record in suppressed:
                yield suppress_tag, record
            if held:
                self.buffer.update([_encode(record, entered) for record, entered in held])
                # held records wait for the next window; without a timer they would wait forever
                wait = self.params.window_ms or self.params.timeout_ms or self.params.max_hold_ms
                due = now + wait
                ctx.timer_service().register_processing_time_timer(due)
                self.header.update((len(held), due))
            else:
                self.header.clear()

    return ShuffleFunction()
