"""DP aggregates: records/s of the plain core and of the Flink operators, and error against stated std.

Run: ``.venv/bin/python -m bench.dp_aggregates [--records 200000] [--flink-records 300000] [--png out.png]``.

The Flink figures come from one run of two jobs on the same pre-written text file
(FileSource, parallelism 1, thread mode, checkpoints every 2 s as protect_stream
runs): a no-op pipeline (parse each line into the DP input tuple, assign event
time, discard) and the same pipeline with the DP operators after it. The ratio of
the two, and the DP operators' own rate (records over the extra time they add),
are printed. Prints figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from operators.dp_aggregates import (
    ContributionBounder,
    DpParams,
    GroupReleaser,
    make_random,
    merge,
    window_starts,
)

BLOCK = {
    "window": "1m",
    "group_by": ["region"],
    "epsilon": 1.0,
    "max_groups_per_subject": 1,
    "max_contributions_per_group": 2,
    "metrics": ["count", {"sum": "purchaseAmount", "bounds": [0, 1000]}, {"mean": "purchaseAmount", "bounds": [0, 1000]}],
}
REGIONS = [f"r{i}" for i in range(20)]
T0 = 1_710_460_800_000
WINDOWS = 10


def synthetic(n: int, subjects: int, seed: int = 1) -> list[tuple[str, str, str, int]]:
    """``n`` records in event-time order over 10 one-minute windows, from ``subjects`` customers."""
    rng = random.Random(seed)
    step = WINDOWS * 60_000 / n
    rows = []
    for i in range(n):
        subject = rng.randrange(subjects)
        rows.append(
            (
                f"c{subject}",
                json.dumps([REGIONS[subject % len(REGIONS)]]),
                json.dumps({"purchaseAmount": round(rng.uniform(1, 300), 2)}),
                T0 + int(i * step),
            )
        )
    return rows


def core_throughput(params: DpParams, rows) -> float:
    """Stage 1 and stage 2 cores in one process, as a local backend would run them."""
    t, cpu = time.perf_counter(), time.process_time()
    bounder = ContributionBounder(params)
    rng = make_random(None)
    buffers = {}
    for subject, group, values, ts in rows:
        vector = None
        for start in window_starts(params, ts):
            key = (subject, start)
            window = buffers.get(key)
            if window is None:
                window = buffers[key] = bounder.new_window(rng)
            if vector is None:
                vector = bounder.vector(values)
            bounder.offer(window, group, vector)
    # (subject, window) -> kept groups; now stage 2
    totals: dict[tuple[str, int], list[float]] = {}
    for (_, start), window in buffers.items():
        for group, vector in bounder.finish(window):
            totals[(group, start)] = merge(totals.get((group, start)), vector)
    releaser = GroupReleaser(params)
    released = sum(releaser.release(g, s, acc) is not None for (g, s), acc in totals.items())
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(
        f"core: {len(rows):,} records, {len(buffers):,} subject-windows, {len(totals)} group-windows, "
        f"{released} released: {len(rows) / elapsed:,.0f} records/s wall, {len(rows) / cpu:,.0f} records per CPU second"
    )
    return len(rows) / elapsed


def _jvm_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the JVM, which in thread mode also runs the Python functions."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _flink_job(path: str, params: DpParams | None, keyed: bool = False) -> tuple[float, float]:
    """Net runtime and JVM CPU seconds of one job: file -> parse -> event time -> [DP operators] -> discard.

    ``keyed`` (without params): key by subject into an empty KeyedProcessFunction instead,
    the least any keyed Python stage costs.
    """
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import KeyedProcessFunction, MapFunction, StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
    from pyflink.java_gateway import get_gateway

    from operators.dp_aggregates import attach

    class Parse(MapFunction):
        def map(self, line):
            subject, group, values, ts = line.split("\t")
            return subject, group, values, int(ts)

    class EventTime(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value[3]

    class Nothing(KeyedProcessFunction):
        def process_element(self, value, ctx):
            return
            yield

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.fn-execution.bundle.size", "1000")
    conf.set_string("python.fn-execution.bundle.time", "100")
    conf.set_string("execution.checkpointing.interval", "2000ms")
    root = str(Path(__file__).resolve().parents[1])
    conf.set_string("python.pythonpath", f"{root}:{sysconfig.get_paths()['purelib']}")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.enable_checkpointing(2000)
    env.set_parallelism(1)
    source = FileSource.for_record_stream_format(StreamFormat.text_line_format(), path).build()
    row_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
    stream = (
        env.from_source(source, WatermarkStrategy.no_watermarks(), "file")
        .map(Parse(), output_type=row_type)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(5)).with_timestamp_assigner(EventTime())
        )
    )
    if params is not None:
        stream = attach(stream, params, view_name="bench", policy_id="bench", policy_hash="-")
    elif keyed:
        stream = stream.key_by(lambda r: r[0], key_type=Types.STRING()).process(Nothing(), output_type=Types.STRING())
    sink = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    stream._j_data_stream.sinkTo(sink)
    pid = get_gateway().jvm.ProcessHandle.current().pid()
    cpu = _jvm_cpu_seconds(pid)
    result = env.execute("dp-bench" if params else "noop-bench")
    return result.get_net_runtime() / 1000, _jvm_cpu_seconds(pid) - cpu


def flink_throughput(params: DpParams, rows, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "input.txt")
        with open(path, "w") as fh:
            fh.writelines("\t".join(map(str, row)) + "\n" for row in rows)
        n = len(rows)
        noop, keyed, dp = [], [], []
        _flink_job(path, None)  # warm the JVM: the first job in a process runs slower
        for _ in range(repeats):  # interleaved, so a busy moment on the machine hits all three
            noop.append(_flink_job(path, None))
            keyed.append(_flink_job(path, None, keyed=True))
            dp.append(_flink_job(path, params))
    (t_noop, c_noop), (t_keyed, c_keyed), (t_dp, c_dp) = min(noop), min(keyed), min(dp)
    print(f"flink, thread mode, parallelism 1, file source, checkpoints every 2 s, {n:,} records, best of {repeats}:")
    print(f"  no-op pipeline (parse, event time, discard): {n / t_noop:,.0f} records/s ({t_noop:.2f} s, {c_noop:.2f} CPU s)")
    print(f"  same + key_by(subject), empty keyed function: {n / t_keyed:,.0f} records/s ({t_keyed:.2f} s, {c_keyed:.2f} CPU s)")
    print(f"  same pipeline + DP operators:                {n / t_dp:,.0f} records/s ({t_dp:.2f} s, {c_dp:.2f} CPU s)")
    print(f"  ratio DP / no-op: {t_noop / t_dp:.2f} by wall time, {c_noop / c_dp:.2f} by CPU time")
    print(f"  ratio DP / keyed no-op: {t_keyed / t_dp:.2f} by wall time, {c_keyed / c_dp:.2f} by CPU time")
    for what, base_t, base_c in (("DP operators alone", t_noop, c_noop), ("empty keyed stage alone", t_noop, c_noop)):
        total_t, total_c = (t_dp, c_dp) if what.startswith("DP") else (t_keyed, c_keyed)
        for label, base, total in (("wall", base_t, total_t), ("CPU", base_c, total_c)):
            extra = total - base
            own = f"{n / extra:,.0f} records/s" if extra > 0 else "not measurable (no extra time)"
            print(f"  {what} (records / extra {label} time): {own}")
    named = (("no-op", noop), ("keyed", keyed), ("DP", dp))
    runs = {name: [(round(a, 2), round(b, 2)) for a, b in times] for name, times in named}
    print(f"  all runs (s, CPU s): {runs}")


def error_table(png: str | None) -> None:
    """Relative error of count and mean at several epsilons and group sizes, and error vs stated std."""
    print("\nrelative error (RMS over 300 releases), public group, mean of values uniform in [0, 1000]")
    print(f"{'epsilon':>8} {'group':>7} {'count rel':>10} {'mean rel':>10} {'count rms/std':>14} {'sum rms/std':>12}")
    series = defaultdict(list)
    for eps in (0.1, 1.0, 10.0):
        params = DpParams.from_policy({**BLOCK, "epsilon": eps, "public_groups": ["a"]})
        releaser = GroupReleaser(params, random_state=0)
        for n in (100, 1_000, 10_000):
            true_mean = 500.0
            acc = [float(n), float(n), n * true_mean, float(n), 0.0]  # mean slots centred on mid = 500
            outs = [releaser.release('["a"]', 0, acc) for _ in range(300)]
            count = np.array([o["count"]["value"] for o in outs], dtype=float)
            total = np.array([o["purchaseAmount_sum"]["value"] for o in outs])
            mean = np.array([o["purchaseAmount_mean"]["value"] for o in outs])
            c_rel = math.sqrt(np.mean((count - n) ** 2)) / n
            m_rel = math.sqrt(np.mean((mean - true_mean) ** 2)) / true_mean
            c_ratio = math.sqrt(np.mean((count - n) ** 2)) / outs[0]["count"]["std"]
            s_ratio = math.sqrt(np.mean((total - n * true_mean) ** 2)) / outs[0]["purchaseAmount_sum"]["std"]
            series[n].append((eps, c_rel, m_rel))
            print(f"{eps:>8} {n:>7} {c_rel:>10.4f} {m_rel:>10.4f} {c_ratio:>14.3f} {s_ratio:>12.3f}")
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no PNG written")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, points in series.items():
            ax.loglog([p[0] for p in points], [p[1] for p in points], "o-", label=f"count, group of {n}")
            ax.loglog([p[0] for p in points], [p[2] for p in points], "s--", label=f"mean, group of {n}")
        ax.set_xlabel("epsilon per window")
        ax.set_ylabel("relative RMS error")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--flink-records", type=int, default=300_000, help="0 skips the Flink runs")
    parser.add_argument("--records-per-subject-window", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    params = DpParams.from_policy(BLOCK)

    def rows_for(n: int):
        subjects = max(1, int(n / WINDOWS / args.records_per_subject_window))
        return synthetic(n, subjects)

    core_throughput(params, rows_for(args.records))
    if args.flink_records:
        flink_throughput(params, rows_for(args.flink_records), args.repeats)
    error_table(args.png)


if __name__ == "__main__":
    main()
