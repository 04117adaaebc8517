"""What PyFlink's building blocks cost per record, side by side: the model the stateful views' cost adds up from.

Run ``python -m bench.crossings`` (``--help`` for sizes). Each pipeline reads a Java number
sequence at one subtask in thread mode and goes one step further than the one before it:

- ``call``: a Python process function that emits nothing (the source and one Python call);
- ``string``: it emits an 80-character string, as the protect operator emits the masked view;
- ``row``: it emits ``Row(INT, STRING)``;
- ``timed row``: it emits ``(Row(INT, STRING), LONG)``, as protect emits a stateful view's input on
  event time (timestamps are assigned in Java from the second field);
- ``keyed``: the row, keyed in Java on its first field (:func:`operators.flink_compat.keyed_by_first_field`,
  chained at one subtask) into a keyed Python function that does nothing;
- ``keyed put``: that function also puts the record in a TTL'd ``MapState``, as DP stage 1 does per record.

Each figure is the marginal JVM CPU per record (the Python functions run in the JVM in thread
mode) between a small and a large run, so job start is left out; rounds interleave the pipelines,
so a load that comes and goes falls on all of them. Benchmarks print figures; they assert nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.full_job import jvm_cpu_seconds  # noqa: E402

PAYLOAD = '"CUST580421"\x1f["us-west"]\x1f{"purchaseAmount":14.04}\x1f1710460800000\x1f' + "x" * 16
PIPELINES = ("call", "string", "row", "timed row", "keyed", "keyed put")


def run(kind: str, n: int, pid: int) -> float:
    """JVM CPU seconds of one bounded run of ``kind`` over ``n`` records."""
    from pyflink.common import Configuration, Row, Types, WatermarkStrategy
    from pyflink.datastream import KeyedProcessFunction, ProcessFunction, StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import Sink
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource
    from pyflink.datastream.state import MapStateDescriptor
    from pyflink.java_gateway import get_gateway

    from operators.flink_compat import keyed_by_first_field, state_ttl

    row_type = Types.ROW([Types.INT(), Types.STRING()])

    class Emit(ProcessFunction):
        def process_element(self, i, ctx):
            if kind == "call":
                return
            if kind == "string":
                yield PAYLOAD
            elif kind == "timed row":
                yield Row(i % 64, PAYLOAD), i
            else:
                yield Row(i % 64, PAYLOAD)

    class Stage(KeyedProcessFunction):
        def open(self, ctx):
            descriptor = MapStateDescriptor("records", Types.STRING(), Types.STRING())
            descriptor.enable_time_to_live(state_ttl(3_600_000))
            self.state = ctx.get_map_state(descriptor)

        def process_element(self, payload, ctx):
            if kind == "keyed put":
                self.state.put(payload[:12], payload)
            return
            yield  # a generator, as PyFlink expects

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.pythonpath", f"{ROOT}:{sysconfig.get_paths()['purelib']}")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    numbers = env.from_source(NumberSequenceSource(0, n - 1), WatermarkStrategy.no_watermarks(), "numbers")
    out_type = {"call": Types.STRING(), "string": Types.STRING(),
                "timed row": Types.TUPLE([row_type, Types.LONG()])}.get(kind, row_type)
    emitted = numbers.process(Emit(), output_type=out_type).name("emit")
    if kind.startswith("keyed"):
        emitted = keyed_by_first_field(emitted, row_type).process(Stage(), output_type=Types.STRING()).name("stage")
    emitted.sink_to(Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()))
    cpu = jvm_cpu_seconds(pid)
    env.execute(f"crossings-{kind}")
    return jvm_cpu_seconds(pid) - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000, help="records of the small run (default 100000)")
    parser.add_argument("--n", type=int, default=500_000, help="records of the large run (default 500000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every pipeline (default 2)")
    args = parser.parse_args(argv)
    from pyflink.java_gateway import get_gateway

    pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()  # the MiniCluster runs in this JVM
    run("string", args.small, pid)  # warm the JVM and the interpreter up
    print(f"marginal JVM CPU per record, {args.n - args.small:,} records between runs of {args.small:,} and "
          f"{args.n:,}; thread mode, p=1; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'round':>5} " + " ".join(f"{kind:>10}" for kind in PIPELINES) + "   (us per record)")
    for number in range(args.rounds):
        costs = {}
        for kind in PIPELINES:
            costs[kind] = 1e6 * (run(kind, args.n, pid) - run(kind, args.small, pid)) / (args.n - args.small)
        print(f"{number:>5} " + " ".join(f"{costs[kind]:>10.2f}" for kind in PIPELINES), flush=True)
        pairs = zip(PIPELINES, PIPELINES[1:], strict=False)
        steps = [f"{later} +{costs[later] - costs[earlier]:.2f}" for earlier, later in pairs]
        print(f"{'':>5} each step over the one before: " + ", ".join(steps) + f"; load {os.getloadavg()[0]:.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
