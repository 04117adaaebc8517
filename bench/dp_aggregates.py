"""DP aggregates: records/s of the plain core and of the Flink operators, and error against stated std.

Run: ``.venv/bin/python -m bench.dp_aggregates [--records 200000] [--flink-records 200000] [--png out.png]``.
Prints figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import sysconfig
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from operators.dp_aggregates import (
    ContributionBounder,
    DictStore,
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


def synthetic(n: int, seed: int = 1) -> list[tuple[str, str, str, int]]:
    rng = random.Random(seed)
    t0 = 1_710_460_800_000
    rows = []
    for i in range(n):
        subject = rng.randrange(n // 4)
        rows.append(
            (
                f"c{subject}",
                json.dumps([REGIONS[subject % len(REGIONS)]]),
                json.dumps({"purchaseAmount": round(rng.uniform(1, 300), 2)}),
                t0 + i * 3,  # 200k records span 10 one-minute windows
            )
        )
    return rows


def core_throughput(params: DpParams, rows) -> float:
    """Stage 1 and stage 2 cores in one process, as a local backend would run them."""
    t = time.perf_counter()
    bounder = ContributionBounder(params)
    rng = make_random(None)
    buffers: dict[tuple[str, int], tuple[int, DictStore]] = {}
    for subject, group, values, ts in rows:
        for start in window_starts(params, ts):
            key = (subject, start)
            entry = buffers.get(key)
            if entry is None:
                entry = buffers[key] = (bounder.new_salt(rng), DictStore())
            bounder.offer(entry[1], entry[0], group, bounder.vector(values), rng)
    # (subject, window) -> kept groups; now stage 2
    totals: dict[tuple[str, int], list[float]] = {}
    for (_, start), (_, store) in buffers.items():
        for group, vector in bounder.finish(store):
            totals[(group, start)] = merge(totals.get((group, start)), vector)
    releaser = GroupReleaser(params)
    released = sum(releaser.release(g, s, acc) is not None for (g, s), acc in totals.items())
    elapsed = time.perf_counter() - t
    print(f"core: {len(rows)} records, {len(totals)} group-windows, {released} released: {len(rows) / elapsed:,.0f} records/s")
    return len(rows) / elapsed


def flink_throughput(params: DpParams, rows) -> float:
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import StreamExecutionEnvironment

    from operators.dp_aggregates import attach

    class EventTime(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value[3]

    conf = Configuration()
    conf.set_string("python.execution-mode", "thread")
    conf.set_string("python.executable", sys.executable)
    root = str(Path(__file__).resolve().parents[1])
    conf.set_string("python.pythonpath", f"{root}:{sysconfig.get_paths()['purelib']}")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    source_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
    stream = env.from_collection(rows, type_info=source_type).assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(5)).with_timestamp_assigner(EventTime())
    )
    out = attach(stream, params, view_name="bench", policy_id="bench", policy_hash="-")
    t = time.perf_counter()
    with out.execute_and_collect("dp-bench") as results:
        n_out = sum(1 for _ in results)
    elapsed = time.perf_counter() - t
    print(
        f"flink (thread mode, parallelism 1, incl. job start): {len(rows)} records -> {n_out} releases: "
        f"{len(rows) / elapsed:,.0f} records/s ({elapsed:.1f} s)"
    )
    return len(rows) / elapsed


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
    parser.add_argument("--flink-records", type=int, default=200_000, help="0 skips the Flink run")
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    params = DpParams.from_policy(BLOCK)
    rows = synthetic(args.records)
    core = core_throughput(params, rows)
    if args.flink_records:
        flink = flink_throughput(params, rows[: args.flink_records])
        print(f"flink / core: {flink / core:.2f}")
    error_table(args.png)


if __name__ == "__main__":
    main()
