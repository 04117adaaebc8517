"""k-anonymity benchmark: throughput of the cascade, and its information loss against offline Mondrian.

Run ``python -m bench.k_anonymity`` (``--help`` for sizes). For k in 5, 10 and 20 it
prints, side by side in one run:

- records/s of the plain-Python cascade (:class:`operators.k_anonymity.LocalCascade`,
  simulated clock) on the same synthetic stream, by wall clock and per CPU second (the
  cores are shared, so the CPU figure is the steadier);
- the share suppressed and the share released at each level;
- the mean NCP of the published stream and of a strict multidimensional Mondrian
  (LeFevre et al. 2006) run offline on the same records, and the ratio between them;
  also Mondrian run on each ``max_delay`` window of records alone ("window M."), and the
  "floor": the NCP if every record were released at level 0, the finest the hierarchies
  allow, which no cascade over these hierarchies can beat;
- with ``--flink``, records/s of the Flink cascade in a MiniCluster (``--execution-mode``,
  thread by default; ``--parallelism``), with the job's bundles and one record at a time, next to
  a no-op pipeline and an empty keyed Python stage on the same input; ``--flink-rounds R`` runs
  the four R times, interleaved, and prints the medians with every round's rate.

The policy's hierarchies (``--hierarchy``) start as issue 5's examples do (age exact,
zip 5 digits, geohash 6). ``deep`` takes two more steps each before ``*``; ``binary``, the
default, does too and doubles the age range at each step (2, 4, ... 64), so a record that
needs a coarser age pays less for it. The path (``--path data``, the default) is
cheapest-first with each step priced on the data's spans, as a policy author would set it
from a sample.

The stream is simulated at each ``--rate`` (default 1,000 and 10,000 events/s). The rate
times ``max_delay`` is how many records the cascade can ever see at once (30,000 or
300,000 at 30 s), while offline Mondrian sees the whole stream: the NCP ratio depends on
it, and the bench prints it for each rate.

Both NCPs are measured the same way, as the width of the interval a published value
covers over the data's span on each numeric attribute, as Mondrian's max - min (age
``30-34`` is 4 wide, zip prefix ``941**`` 99), averaged over age, zip and location (the
mean of latitude and longitude); a suppressed record, or a ``*``, costs 1. Benchmarks
print figures; they assert nothing.

References
----------
.. [1] K. LeFevre, D. J. DeWitt, R. Ramakrishnan, "Mondrian multidimensional
   k-anonymity", ICDE 2006.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.full_job import jvm_cpu_seconds  # noqa: E402
from operators.k_anonymity import KAnonymityParams, LocalCascade  # noqa: E402

FIELDS = {"customerId": "keep", "purchaseAmount": "keep"}


PATH: str | list = "data"
#: the hierarchies of issue 5's examples (age exact, zip 5, geohash 6 first), or one step coarser at the start
HIERARCHIES = {
    "fine": {
        "age": ["exact", {"range": 5}, {"range": 10}, {"range": 20}, "*"],
        "zip": [{"truncate": 5}, {"truncate": 4}, {"truncate": 3}, {"truncate": 2}, "*"],
        "location": [{"geohash": 6}, {"geohash": 5}, {"geohash": 4}, {"geohash": 3}, "*"],
    },
    "deep": {
        "age": ["exact", {"range": 5}, {"range": 10}, {"range": 20}, {"range": 40}, "*"],
        "zip": [{"truncate": 5}, {"truncate": 4}, {"truncate": 3}, {"truncate": 2}, {"truncate": 1}, "*"],
        "location": [{"geohash": 6}, {"geohash": 5}, {"geohash": 4}, {"geohash": 3}, {"geohash": 2}, {"geohash": 1}, "*"],
    },
    # as deep, but age ranges double at each step: finer steps, so fewer records pay for a coarse one
    "binary": {
        "age": ["exact", {"range": 2}, {"range": 4}, {"range": 8}, {"range": 16}, {"range": 32}, {"range": 64}, "*"],
        "zip": [{"truncate": 5}, {"truncate": 4}, {"truncate": 3}, {"truncate": 2}, {"truncate": 1}, "*"],
        "location": [{"geohash": 6}, {"geohash": 5}, {"geohash": 4}, {"geohash": 3}, {"geohash": 2}, {"geohash": 1}, "*"],
    },
    # as binary, with location on a lat/lon grid whose cell doubles at each step
    "grid": {
        "age": ["exact", {"range": 2}, {"range": 4}, {"range": 8}, {"range": 16}, {"range": 32}, {"range": 64}, "*"],
        "zip": [{"truncate": 5}, {"truncate": 4}, {"truncate": 3}, {"truncate": 2}, {"truncate": 1}, "*"],
        "location": [*({"grid": round(0.01 * 2**i, 2)} for i in range(11)), "*"],
    },
    "coarse": {
        "age": [{"range": 5}, {"range": 10}, {"range": 20}, "*"],
        "zip": [{"truncate": 4}, {"truncate": 3}, {"truncate": 2}, "*"],
        "location": [{"geohash": 5}, {"geohash": 4}, {"geohash": 3}, "*"],
    },
}
HIERARCHY = "binary"


def policy_block(k: int, max_delay: str) -> dict:
    levels = HIERARCHIES[HIERARCHY]
    return {
        "path": PATH,
        "k": k,
        "quasi_identifiers": {
            "age": {"hierarchy": levels["age"]},
            "zip": {"hierarchy": levels["zip"]},
            "location": {"lat_field": "lat", "lon_field": "lon", "hierarchy": levels["location"]},
        },
        "max_delay": max_delay,
    }


def synthetic(n: int, seed: int, subjects: int, rate: float):
    """Columns of a customer stream with US-like geography.

    A zip's first digit picks a region and its first three digits an area inside it, so
    zip prefixes and locations nest as they do in the real data; zips are Zipf-popular,
    ages around 40, and each subject lives at one zip and sends several events.
    """
    rng = np.random.default_rng(seed)
    region_lat, region_lon = rng.uniform(28, 46, 10), rng.uniform(-120, -72, 10)
    areas = rng.choice(np.arange(100, 1000), size=120, replace=False)
    area_lat = region_lat[areas // 100] + rng.normal(0, 1.5, len(areas))
    area_lon = region_lon[areas // 100] + rng.normal(0, 2.0, len(areas))
    area_of_zip = rng.integers(0, len(areas), 600)
    zip_codes = areas[area_of_zip] * 100 + rng.integers(0, 100, 600)
    zip_lat = area_lat[area_of_zip] + rng.normal(0, 0.1, 600)
    zip_lon = area_lon[area_of_zip] + rng.normal(0, 0.1, 600)
    popularity = 1.0 / np.arange(1, 601) ** 1.1
    home = rng.choice(600, size=subjects, p=popularity / popularity.sum())
    age = np.clip(rng.normal(40, 14, subjects), 18, 90).astype(int)
    subject = rng.integers(0, subjects, n)
    zi = home[subject]
    return {
        "subject": subject,
        "age": age[subject],
        "zip": zip_codes[zi],
        "lat": zip_lat[zi] + rng.normal(0, 0.02, n),
        "lon": zip_lon[zi] + rng.normal(0, 0.02, n),
        "t": (np.arange(n) * 1000.0 / rate).astype(np.int64),
    }


def staged(data, i: int) -> tuple:
    qis = {"age": int(data["age"][i]), "zip": str(data["zip"][i]),
           "location": {"lat": float(data["lat"][i]), "lon": float(data["lon"][i])}}
    subject = f"s{data['subject'][i]}"
    value = json.dumps({"id": i, "customerId": subject, "purchaseAmount": 12.5})
    t = int(data["t"][i])
    return (None, "{}", value, subject, json.dumps(qis), t, t)


def spans(data) -> dict[str, float]:
    return {name: float(data[name].max() - data[name].min()) for name in ("age", "zip", "lat", "lon")}


def step_ncp(lv, span: dict[str, float]) -> float:
    """NCP of one QI published at one hierarchy step, as interval width over the data's span."""
    # the integers a published age or zip covers, as Mondrian's max - min: 30-34 is 4 wide, 941** 99
    if lv.kind == "star":
        return 1.0
    if lv.kind == "exact":
        return 0.0
    if lv.kind == "range":
        return min(1.0, (lv.arg - 1) / span["age"])
    if lv.kind == "truncate":
        return min(1.0, (10 ** (5 - lv.arg) - 1) / span["zip"])
    if lv.kind == "grid":
        lon_w = lat_w = lv.arg
    else:
        bits = 5 * lv.arg
        lon_w, lat_w = 360.0 / 2 ** ((bits + 1) // 2), 180.0 / 2 ** (bits // 2)
    return (min(1.0, lat_w / span["lat"]) + min(1.0, lon_w / span["lon"])) / 2


def level_ncp(params: KAnonymityParams, level: int | None, span: dict[str, float]) -> float:
    """NCP of a record published at ``level`` (None: suppressed), the mean over QIs of :func:`step_ncp`."""
    if level is None:
        return 1.0
    steps = params.steps(level)
    return sum(step_ncp(lv, span) for lv in steps) / len(steps)


def data_path(span: dict[str, float]) -> list[dict[str, int]]:
    """The cheapest-first path with each step priced on the data's spans, as a policy author would
    set it from a sample (``cheapest_first`` in the operator has only the policy to price steps by)."""
    qis = KAnonymityParams.from_policy({**policy_block(2, "1s"), "path": "lockstep"}, FIELDS).quasi_identifiers
    vector = [0] * len(qis)
    path = [dict(zip(("age", "zip", "location"), vector, strict=True))]
    while any(i < len(qi.levels) - 1 for i, qi in zip(vector, qis, strict=True)):
        def cost(q: int) -> float:
            return step_ncp(qis[q].levels[vector[q] + 1], span) - step_ncp(qis[q].levels[vector[q]], span)

        best = min((q for q in range(len(qis)) if vector[q] < len(qis[q].levels) - 1), key=cost)
        vector[best] += 1
        path.append(dict(zip(("age", "zip", "location"), vector, strict=True)))
    return path


def mondrian_ncp(data, k: int, span: dict[str, float]) -> float:
    """Strict multidimensional Mondrian on (age, zip, lat, lon), k counted in distinct subjects; mean NCP."""
    columns = np.stack([data["age"].astype(float), data["zip"].astype(float), data["lat"], data["lon"]], axis=1)
    scale = np.array([span["age"], span["zip"], span["lat"], span["lon"]])
    subject = data["subject"]
    total = 0.0
    stack = [np.arange(len(subject))]
    while stack:
        part = stack.pop()
        rows = columns[part]
        low, high = rows.min(axis=0), rows.max(axis=0)
        widths = (high - low) / scale
        split = False
        for dim in np.argsort(-widths):  # widest normalized dimension first
            if widths[dim] == 0:
                break
            values = rows[:, dim]
            median = np.median(values)
            left = values <= median if np.any(values > median) else values < median
            if not left.any() or left.all():
                continue
            if len(np.unique(subject[part[left]])) >= k and len(np.unique(subject[part[~left]])) >= k:
                stack.append(part[left])
                stack.append(part[~left])
                split = True
                break
        if not split:
            age, zip_, lat, lon = widths
            total += len(part) * (age + zip_ + (lat + lon) / 2) / 3
    return total / len(subject)


def windowed_mondrian_ncp(data, k: int, span: dict[str, float], window: int) -> float:
    """Mondrian run on each run of ``window`` consecutive records alone: what a ``max_delay`` lets a stream see at once."""
    n = len(data["age"])
    total = 0.0
    for start in range(0, n, window):
        part = {name: column[start:start + window] for name, column in data.items()}
        total += mondrian_ncp(part, k, span) * len(part["age"])
    return total / n


def bench_core(data, k: int, max_delay: str, span) -> dict:
    params = KAnonymityParams.from_policy(policy_block(k, max_delay), FIELDS)
    records = [staged(data, i) for i in range(len(data["age"]))]
    cascade = LocalCascade(params)
    start, cpu = time.perf_counter(), time.process_time()
    for record in records:
        cascade.push(record, record[6])
    cascade.flush()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    levels = [r[0] for r in cascade.released]
    counts = np.bincount(levels, minlength=params.levels) if levels else np.zeros(params.levels)
    stream_ncp = (sum(level_ncp(params, lv, span) * c for lv, c in enumerate(counts))
                  + len(cascade.suppressed)) / len(records)
    waits = [r[4] for r in cascade.released] + [r[3] for r in cascade.suppressed]
    return {"rate": len(records) / elapsed, "cpu_rate": len(records) / cpu, "suppressed": len(cascade.suppressed) / len(records),
            "levels": counts / len(records), "ncp": stream_ncp, "metric_ncp": cascade.mean_ncp,
            "longest_wait": max(waits), "max_delay": params.max_delay_ms}


def bench_flink(data, k: int, max_delay: str, parallelism: int,
                execution_mode: str = "thread") -> dict[str, tuple[float, float]]:
    """Records/s, and records per CPU second, of four pipelines on the same source and MiniCluster settings.

    ``noop`` maps each row to an output tuple; ``keyed`` keys by subject into an empty
    Python ``KeyedProcessFunction`` (the least any keyed Python stage costs, a call per record);
    ``cascade`` is :func:`operators.k_anonymity.attach` with the job's bundles of 1,000 records or
    100 ms; ``one by one`` is the same cascade with a bundle size of 1, a call per record and stage.
    The source is a Java number sequence mapped to the staged tuples (``from_collection`` ships
    and decodes rows slowly). Each rate counts
    from the first record the source map sees, so the job start is left out, to the end of
    the job; checkpoints run every 2 s, as in the job. The CPU figure is the JVM's user +
    system time over the same span (in thread mode the Python functions run in it), so it
    holds when other processes share the cores and the wall-clock rate does not. In process
    mode the Python functions run in worker processes the JVM's CPU time leaves out, so
    only the wall-clock rate is given (the CPU figure is NaN).
    """
    import tempfile

    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.datastream import KeyedProcessFunction, StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import Sink
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource
    from pyflink.java_gateway import get_gateway

    from operators.k_anonymity import attach

    params = KAnonymityParams.from_policy(policy_block(k, max_delay), FIELDS)
    n = len(data["age"])
    # event times 0..n: with processing timing they only ride along
    # process mode cannot encode None in a STRING field: no key is "", as in the job
    rows = [("", *staged(data, i)[1:6]) for i in range(n)]
    in_type = Types.TUPLE([Types.STRING()] * 5 + [Types.LONG()])
    out_type = Types.TUPLE([Types.STRING()] * 3)
    marks = Path(tempfile.mkdtemp(prefix="kanon-bench-"))
    pid = get_gateway().jvm.java.lang.ProcessHandle.current().pid()

    class Empty(KeyedProcessFunction):
        def process_element(self, value, ctx):
            yield value[0], value[1], value[2]

    def run(kind: str) -> tuple[float, float]:
        config = Configuration()
        config.set_string("python.execution-mode", execution_mode)
        config.set_string("python.executable", sys.executable)
        config.set_string("python.client.executable", sys.executable)
        config.set_string("python.pythonpath", f"{ROOT}:{sysconfig.get_paths()['purelib']}")
        # as the job on a cluster: checkpoints to files (the JobManager's memory takes 5 MB, less than a
        # 30 s buffer), and a failure fails the run instead of restarting it unseen
        config.set_string("execution.checkpointing.dir", (marks / f"checkpoints-{kind}").as_uri())
        config.set_string("restart-strategy.type", "none")
        # the job's file-run bundles; "one by one" hands each record to each stage alone [bundles]
        config.set_string("python.fn-execution.bundle.size", "1" if kind == "one by one" else "1000")
        config.set_string("python.fn-execution.bundle.time", "100")
        env = StreamExecutionEnvironment.get_execution_environment(config)
        env.set_parallelism(parallelism)
        env.enable_checkpointing(2000)
        mark = marks / kind

        def row(i):
            if i == 0 and not mark.exists():  # thread mode: this runs inside the JVM, so its pid is the JVM's
                cpu = jvm_cpu_seconds(pid) if execution_mode == "thread" else math.nan
                mark.write_text(f"{time.time()!r} {cpu!r}")
            return rows[i]

        numbers = env.from_source(NumberSequenceSource(0, n - 1), WatermarkStrategy.no_watermarks(), "numbers")
        stream = numbers.map(row, output_type=in_type).name("rows").uid("rows")
        discard = Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
        if kind in ("cascade", "one by one"):
            released, suppressed = attach(stream, params, view_name="bench")
            released.sink_to(discard).name("discard released").uid("discard-released")
            suppressed.sink_to(discard).name("discard suppressed").uid("discard-suppressed")
        elif kind == "keyed":
            (stream.key_by(lambda r: r[3], key_type=Types.STRING()).process(Empty(), output_type=out_type)
             .name("empty keyed").sink_to(discard))
        else:
            stream.map(lambda r: (r[0], r[1], r[2]), output_type=out_type).name("noop").sink_to(discard)
        env.execute(f"{kind}-bench")
        wall, cpu = (float(x) for x in mark.read_text().split())
        return n / (time.time() - wall), n / (jvm_cpu_seconds(pid) - cpu) if execution_mode == "thread" else math.nan

    return {kind: run(kind) for kind in ("noop", "keyed", "cascade", "one by one")}


def main(argv: list[str] | None = None) -> int:
    global PATH, HIERARCHY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="records in the stream (default 200000)")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="k values (default 5 10 20)")
    parser.add_argument("--subjects", type=int, default=50_000, help="distinct subjects (default 50000)")
    parser.add_argument("--rate", type=float, nargs="+", default=[1000.0, 10000.0],
                        help="simulated events per second; one table row per rate and k (default 1000 10000)")
    parser.add_argument("--max-delay", default="30s", help="max_delay of the policy (default 30s)")
    parser.add_argument("--flink", action="store_true", help="also time the Flink cascade in a MiniCluster")
    parser.add_argument("--flink-n", type=int, default=50_000, help="records for the Flink run (default 50000)")
    parser.add_argument("--flink-rounds", type=int, default=1,
                        help="runs of the four Flink pipelines, interleaved; each figure is then their median (default 1)")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink parallelism (default 1)")
    parser.add_argument("--execution-mode", choices=("thread", "process"), default="thread",
                        help="PyFlink execution mode of the Flink runs (default thread)")
    parser.add_argument("--path", default=PATH, choices=("data", "cheapest_first", "lockstep"),
                        help="the cascade's route through the lattice (default data: cheapest first, priced on the data)")
    parser.add_argument("--hierarchy", default=HIERARCHY, choices=tuple(HIERARCHIES),
                        help="fine: issue 5's examples (age exact, zip 5, geohash 6 first); deep: fine and two steps more "
                             "before *; binary (default): deep with the age range doubling at each step; grid: binary with "
                             "location on a lat/lon grid doubling from 0.01 degrees; coarse: one step "
                             "coarser at the start")
    parser.add_argument("--no-core", action="store_true", help="skip the core and Mondrian table")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.flink_rounds < 1:
        parser.error("--flink-rounds must be at least 1")
    PATH, HIERARCHY = "lockstep", args.hierarchy

    print(f"{args.n} records, {args.subjects} subjects, max_delay {args.max_delay}, path {args.path}, "
          f"{args.hierarchy} hierarchies")
    print(f"{'k':>3} {'events/s':>8} {'core rec/s':>11} {'rec/CPU-s':>10} {'suppressed':>10} {'NCP':>6} "
          f"{'Mondrian':>8} {'ratio':>6} {'window M.':>9} {'floor':>6} {'metric NCP':>10} {'longest wait':>12}"
          "  released per level")
    data = None
    mondrian: dict[int, float] = {}  # offline Mondrian ignores event times: one run per k serves every rate
    for rate in [] if args.no_core else args.rate:
        data = synthetic(args.n, args.seed, args.subjects, rate)
        span = spans(data)
        PATH = data_path(span) if args.path == "data" else args.path
        max_delay_ms = KAnonymityParams.from_policy(policy_block(2, args.max_delay), FIELDS).max_delay_ms
        window = int(rate * max_delay_ms / 1000)
        for k in args.k:
            core = bench_core(data, k, args.max_delay, span)
            if k not in mondrian:
                mondrian[k] = mondrian_ncp(data, k, span)
            windowed = windowed_mondrian_ncp(data, k, span, window)
            # every record released at level 0, the finest the hierarchies allow: no grid cascade can do better
            floor = level_ncp(KAnonymityParams.from_policy(policy_block(k, args.max_delay), FIELDS), 0, span)
            per_level = " ".join(f"{share:.2f}" for share in core["levels"])
            ratio = core["ncp"] / mondrian[k] if mondrian[k] else math.inf
            print(f"{k:>3} {rate:>8,.0f} {core['rate']:>11,.0f} {core['cpu_rate']:>10,.0f} {core['suppressed']:>10.3%} "
                  f"{core['ncp']:>6.3f} {mondrian[k]:>8.3f} {ratio:>6.2f} {windowed:>9.3f} {floor:>6.3f} "
                  f"{core['metric_ncp']:>10.3f} {core['longest_wait']:>9} ms  {per_level}", flush=True)
    if data is None or args.flink:
        data = synthetic(args.n, args.seed, args.subjects, args.rate[0])
        PATH = data_path(spans(data)) if args.path == "data" else args.path
    if args.flink:
        small = {name: column[: args.flink_n] for name, column in data.items()}
        # the machine's load moves a single run by a fifth: rounds interleave the pipelines, and the medians are read
        rounds = [bench_flink(small, 10, args.max_delay, args.parallelism, args.execution_mode)
                  for _ in range(args.flink_rounds)]
        rates = {kind: (statistics.median(r[kind][0] for r in rounds), statistics.median(r[kind][1] for r in rounds))
                 for kind in rounds[0]}
        print(f"Flink MiniCluster, k=10, {args.flink_n} records, parallelism {args.parallelism}, {args.execution_mode} mode "
              "(wall: from the first record to the job's end; CPU: per JVM CPU second, Python included)"
              + (f"; medians of {len(rounds)} rounds" if len(rounds) > 1 else ""))
        for kind, (wall, cpu) in rates.items():
            each = ", ".join(f"{r[kind][0]:,.0f}" for r in rounds)
            print(f"  {kind:<10} {wall:>9,.0f} rec/s wall {cpu:>9,.0f} rec/CPU-s   "
                  f"vs no-op: {wall / rates['noop'][0]:.2f} wall, {cpu / rates['noop'][1]:.2f} CPU"
                  + (f"   rounds {each}" if len(rounds) > 1 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
