"""DP aggregates: records/s of the plain core and of the Flink operators, and error against stated std.

Run: ``.venv/bin/python -m bench.dp_aggregates [--records 200000] [--flink-records 300000] [--png out.png]``.
The PNG (relative error against epsilon) goes to ``bench/dp_aggregates.png`` unless ``--png ''``;
it is drawn here, without matplotlib, which the project does not depend on.

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

from bench.full_job import jvm_cpu_seconds
from operators.dp.core import ContributionBounder, GroupReleaser, window_starts
from operators.dp.mechanisms import make_random
from operators.dp.params import DpParams

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
    windows: dict[int, list] = {}
    for (_, start), window in buffers.items():
        windows.setdefault(start, []).append(window)
    totals = {(group, start): acc for start, held in windows.items()
              for group, acc in bounder.totals(held).items()}
    releaser = GroupReleaser(params)
    released = sum(releaser.release(g, s, acc) is not None for (g, s), acc in totals.items())
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(
        f"core: {len(rows):,} records, {len(buffers):,} subject-windows, {len(totals)} group-windows, "
        f"{released} released: {len(rows) / elapsed:,.0f} records/s wall, {len(rows) / cpu:,.0f} records per CPU second"
    )
    return len(rows) / elapsed


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

    from operators.dp.flink import attach

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
    cpu = jvm_cpu_seconds(pid)
    result = env.execute("dp-bench" if params else "noop-bench")
    return result.get_net_runtime() / 1000, jvm_cpu_seconds(pid) - cpu


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
        write_png(png, series)
        print(f"wrote {png}")


# ---------------------------------------------------------------------------
# a dependency-free PNG line chart (matplotlib is not a dependency of the project)
# ---------------------------------------------------------------------------
# fmt: off
_FONT = {  # 3 x 5 pixel glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "=": "000111000111000", " ": "000000000000000", "a": "000011101101011", "c": "000111100100111",
    "e": "010101111100011", "g": "111100101101111", "i": "010000010010010", "l": "110010010010111",
    "m": "000111111101101", "n": "000110101101101", "o": "000111101101111", "p": "000111101111100",
    "r": "000110100100100", "s": "000111110011111", "t": "010111010010011", "u": "000101101101111",
    "v": "000101101101010", "w": "000101101111111", "x": "000101010101101", "h": "100100111101101",
    "f": "011010111010010", "y": "000101111001111", "d": "001001111101111",
}
# fmt: on


class _Canvas:
    """An RGB raster with lines, squares and 3 x 5 text, written as an 8-bit PNG."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = (py * self.width + px) * 3
                    self.pixels[i : i + 3] = bytes(rgb)

    def line(self, x0: float, y0: float, x1: float, y1: float, rgb: tuple[int, int, int], dashed: bool = False) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for k in range(steps + 1):
            if dashed and (k // 6) % 2:
                continue
            t = k / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), rgb, 2)

    def text(self, x: int, y: int, text: str, rgb: tuple[int, int, int] = (0, 0, 0), scale: int = 2) -> None:
        for n, char in enumerate(text):
            glyph = _FONT.get(char, _FONT[" "])
            for r in range(5):
                for c in range(3):
                    if glyph[r * 3 + c] == "1":
                        self.dot(x + (n * 4 + c) * scale, y + r * scale, rgb, scale)

    def png(self) -> bytes:
        import struct
        import zlib

        raw = b"".join(b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_png(path: str, series: dict[int, list[tuple[float, float, float]]]) -> None:
    """Relative RMS error against epsilon, log-log: solid count, dashed mean, one colour per group size."""
    width, height, left, right, top, bottom = 640, 420, 70, 200, 30, 50
    canvas = _Canvas(width, height)
    x_lo, x_hi, y_lo, y_hi = math.log10(0.1), math.log10(10), -5.0, 1.0

    def px(eps: float) -> float:
        return left + (math.log10(eps) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(err: float) -> float:
        v = min(max(math.log10(max(err, 1e-12)), y_lo), y_hi)
        return height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    grey, black = (200, 200, 200), (0, 0, 0)
    for exp in range(int(y_lo), int(y_hi) + 1):
        canvas.line(left, py(10.0**exp), width - right, py(10.0**exp), grey)
        canvas.text(8, round(py(10.0**exp)) - 5, f"1e{exp}" if exp else "1")
    for eps in (0.1, 1.0, 10.0):
        canvas.line(px(eps), top, px(eps), height - bottom, grey)
        canvas.text(round(px(eps)) - 8, height - bottom + 10, f"{eps:g}")
    canvas.line(left, height - bottom, width - right, height - bottom, black)
    canvas.line(left, top, left, height - bottom, black)
    canvas.text(left + 120, height - 20, "epsilon per window")
    canvas.text(left, 8, "relative rms error")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
    for row, (n, points) in enumerate(sorted(series.items())):
        rgb = colours[row % len(colours)]
        for metric, dashed in ((1, False), (2, True)):
            xy = [(px(p[0]), py(p[metric])) for p in points]
            for (x0, y0), (x1, y1) in zip(xy, xy[1:], strict=False):
                canvas.line(x0, y0, x1, y1, rgb, dashed)
            for x, y in xy:
                canvas.dot(round(x) - 3, round(y) - 3, rgb, 7)
            y_key = top + 20 + (row * 2 + metric - 1) * 22
            canvas.line(width - right + 15, y_key + 4, width - right + 45, y_key + 4, rgb, dashed)
            canvas.text(width - right + 52, y_key, f"{'count' if metric == 1 else 'mean'} n={n}")
    Path(path).write_bytes(canvas.png())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--flink-records", type=int, default=300_000, help="0 skips the Flink runs")
    parser.add_argument("--records-per-subject-window", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--png", default=str(Path(__file__).with_suffix(".png")), help="'' writes none")
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
