"""One keyed Python operator for the first stage of every stateful view of a job.

A job with a k-anonymous and a DP view would otherwise run two keyed Python operators on
every record: k-anonymity's stage 0 and DP's stage 1. In thread mode each is a task thread
calling into the one interpreter of the TaskManager, and the two contend for its GIL with the
protect operator: side by side, the two views together cost more per record than the sum of
each view alone. Here both stages run in one task, one call into Python per record.

Each view's first stage is the function it would run alone (``stage_function``,
``bound_contributions``), given a one-character view code:

- the protect operator emits ``(Row(code + key, code + payload), event ms)`` for every stateful
  view on one side output, which Java timestamps and keys (:func:`keyed_event_time_side_output`);
- this operator strips the code from the payload and hands it to that view's function, whose
  context answers ``get_current_key()`` with the key as the view's stage knows it;
- each view names its state with its code, so views never share a state, and what a view's
  function emits on its own main output goes out on the view's side output here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: the first view code; each stateful view of a policy takes the next character
FIRST_CODE = 0xE000  # Unicode's private use area: never a character a key or payload starts with


def view_code(index: int) -> str:
    return chr(FIRST_CODE + index)


@dataclass
class ViewStage:
    """One view's first stage inside the shared operator."""

    code: str
    function: Any  # a KeyedProcessFunction, as the view would run it alone
    #: the side output for what ``function`` emits on its main output; None: the shared operator's main output
    output_tag_id: str | None
    output_type: Callable[[], Any]  # made fresh in each process: a used type info holds a JVM handle
    #: the view's key from the shared key (without the code): str for k-anonymity, int for DP's buckets
    parse_key: Callable[[str], Any]
    #: the view's name where its metric names would collide with another view's (DP's carry no view)
    metrics_view: str | None = None


class _ViewContext:
    """A keyed context as the view's function expects it: its own key, without the view code."""

    __slots__ = ("_ctx", "_parse")

    def __init__(self, ctx: Any, parse: Callable[[str], Any]) -> None:
        self._ctx, self._parse = ctx, parse

    def get_current_key(self) -> Any:
        return self._parse(self._ctx.get_current_key()[1:])

    def __getattr__(self, name: str) -> Any:  # timer_service, time_domain, timestamp
        return getattr(self._ctx, name)


class _ViewRuntimeContext:
    """The operator's runtime context, with metrics under the view's name where views would collide."""

    def __init__(self, runtime_context: Any, metrics_view: str | None) -> None:
        self._runtime_context, self._metrics_view = runtime_context, metrics_view

    def get_metrics_group(self) -> Any:
        group = self._runtime_context.get_metrics_group()
        return group if self._metrics_view is None else group.add_group("view", self._metrics_view)

    def __getattr__(self, name: str) -> Any:  # state, subtask index, job parameters
        return getattr(self._runtime_context, name)


def shared_first_stage(stages: list[ViewStage]) -> Any:
    """The ``KeyedProcessFunction`` that runs ``stages``, dispatching each record by its view code."""
    from pyflink.datastream import KeyedProcessFunction, OutputTag

    class SharedFirstStage(KeyedProcessFunction):
        def __init__(self) -> None:
            self.stages = stages

        def open(self, runtime_context: Any) -> None:
            self.functions: dict[str, Any] = {}
            self.parsers: dict[str, Callable[[str], Any]] = {}
            self.tags: dict[str, Any] = {}
            for stage in self.stages:
                stage.function.open(_ViewRuntimeContext(runtime_context, stage.metrics_view))
                self.functions[stage.code] = stage.function
                self.parsers[stage.code] = stage.parse_key
                self.tags[stage.code] = (None if stage.output_tag_id is None
                                         else OutputTag(stage.output_tag_id, stage.output_type()))
            self.tag_type = OutputTag
            self.contexts: dict[tuple[int, str], _ViewContext] = {}  # PyFlink passes the same context objects

        def _context(self, ctx: Any, code: str) -> _ViewContext:
            view_ctx = self.contexts.get((id(ctx), code))
            if view_ctx is None or view_ctx._ctx is not ctx:
                view_ctx = self.contexts[id(ctx), code] = _ViewContext(ctx, self.parsers[code])
            return view_ctx

        def _route(self, code: str, items: Iterable[Any] | None) -> Iterable[Any]:
            if items is None:
                return
            tag = self.tags[code]
            if tag is None:
                yield from items
                return
            tag_type = self.tag_type
            for item in items:
                # the view's own side outputs stay as they are; its main output becomes its side output here
                yield item if type(item) is tuple and len(item) == 2 and isinstance(item[0], tag_type) else (tag, item)

        def process_element(self, value: str, ctx: Any) -> Iterable[Any]:
            code = value[0]
            return self._route(code, self.functions[code].process_element(value[1:], self._context(ctx, code)))

        def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any]:
            code = ctx.get_current_key()[0]
            return self._route(code, self.functions[code].on_timer(timestamp, self._context(ctx, code)))

        def close(self) -> None:
            for function in self.functions.values() if hasattr(self, "functions") else ():
                if hasattr(function, "close"):
                    function.close()

    return SharedFirstStage()
