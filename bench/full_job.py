"""The whole shipped three-view job against the masked view alone, through the command line.

Both run ``flink-anonymizer run`` (thread mode, p=1, file sink) on the same generated events.
Each policy runs at two sizes, and the marginal rate is the difference in records over the
difference in wall time, so job start (JVM, interpreter, operator open) cancels out:

    marginal rate = (n_large - n_small) / (t_large - t_small)

It prints both marginal rates and their ratio (DESIGN target: >= 0.5), each view alone too with
``--views``, and the load average, since other builds may share the machine. ``--pairs`` adds each
pair of views, and sets each pair's and the whole job's time per record beside the sum of its views
alone: where they match, combining views costs nothing and the ratio rests on each view's own cost.
``--one-by-one`` adds the whole job and the stateful views with ``--bundle-size 1``: each record
handed to each keyed Python stage alone, as before the job bundled them [bundles].

With ``--rounds R`` every shape runs R times, every other round in reverse order, and each figure is
the median of its rounds, with every round's rate beside it: a view whose extra records take a few
seconds moves by a third between two runs on a shared machine.

Beside each rate it prints the JVM's marginal CPU time per record (thread mode runs the Python
operators inside it) and how many cores that kept busy: a job at one core while two are free is
held by one thread (the interpreter's GIL), not by the machine.

``--k 10`` sets the anonymized view's k (the shipped policy has 5), for the k-anonymity target at k = 10.

    .venv/bin/python bench/full_job.py --n 300000 [--small 50000] [--views | --pairs] [--rounds 3] [--k 10]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.samples.generate_events import iter_events  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402

POLICY = ROOT / "conf/policies/customer-events.yaml"
#: the shipped policy's views, in its order
VIEWS = tuple(yaml.safe_load(POLICY.read_text())["views"])
CLI = str(Path(sys.executable).with_name("flink-anonymizer"))


def write_events(path: Path, n: int) -> int:
    with open(path, "w") as fh:
        lines = 0
        for line in iter_events(n, seed=11, malformed=n // 1000):
            fh.write(line + "\n")
            lines += 1
    return lines


def write_policy(folder: Path, views: list[str] | None, k: int | None = None) -> Path:
    """The shipped policy, with only ``views`` (None: all), and with ``k`` in its k-anonymity views if given."""
    document = yaml.safe_load(POLICY.read_text())
    if views is not None:
        document["views"] = {name: document["views"][name] for name in views}
    for view in document["views"].values():
        if k is not None and "k_anonymity" in view:
            view["k_anonymity"]["k"] = k
    path = folder / f"{'-'.join(views or ['all'])}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _java_child(parent: int) -> int | None:
    """The pid of the JVM the command line started (its child process named java), if it runs yet."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if name == "java" and int(fields[1]) == parent:
            return int(text.split()[0])
    return None


def jvm_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a JVM, which in thread mode also runs the Python functions."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed_run(policy: Path, events: Path, out: Path, keyring: str, mode: str,
              bundle_size: int | None = None) -> tuple[float, float]:
    """Wall seconds of one run, and the CPU seconds of its JVM (read until it exits; NaN off Linux)."""
    started = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall the run
    bundles = [] if bundle_size is None else ["--bundle-size", str(bundle_size)]
    process = subprocess.Popen([CLI, "run", "--policy", str(policy), "--input", str(events), "--output", str(out),
                                "--keyring", keyring, "--execution-mode", mode, "--quiet", *bundles],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    jvm, cpu = None, math.nan
    while process.poll() is None and time.perf_counter() - started < 3600:
        try:
            jvm = jvm or _java_child(process.pid)
            cpu = jvm_cpu_seconds(jvm) if jvm else cpu
        except OSError:
            pass  # the JVM has just exited: its last reading stands
        time.sleep(0.2)
    process.wait(timeout=60)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        log.seek(0)
        raise SystemExit(f"{policy.name} failed:\n{log.read()[-4000:]}")
    return elapsed, cpu


class Run(NamedTuple):
    """One shape at both sizes: wall seconds and JVM CPU seconds of the small and the large run."""

    small_s: float
    large_s: float
    small_cpu: float
    large_cpu: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300_000, help="events in the large run (default 300,000)")
    parser.add_argument("--small", type=int, default=None, help="events in the small run (default n / 6)")
    parser.add_argument("--views", action="store_true", help="also each stateful view alone")
    parser.add_argument("--pairs", action="store_true", help="also each pair of views (implies --views)")
    parser.add_argument("--one-by-one", action="store_true",
                        help="also the whole job (and with --views each stateful view) with --bundle-size 1: "
                        "every record handed to each keyed Python stage alone")
    parser.add_argument("--execution-mode", default="thread", choices=["thread", "process"])
    parser.add_argument("--rounds", type=int, default=1, help="runs of every shape, interleaved; medians (default 1)")
    parser.add_argument("--k", type=int, default=None, help="k of the anonymized view (default: the policy's, 5)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    small = args.small or args.n // 6

    work = Path(tempfile.mkdtemp(prefix="bench-full-"))
    try:
        sizes = {}
        for name, n in (("small", small), ("large", args.n)):
            sizes[name] = (work / f"{name}.jsonl", write_events(work / f"{name}.jsonl", n))
        keyring = work / "keyring.json"
        Keyring.generate().save(keyring)
        ref = f"file:{keyring}"
        shapes = [("masked view alone", ["masked"]), ("whole three-view job", None)]
        if args.views or args.pairs:
            shapes += [("anonymized view alone", ["anonymized"]), ("aggregated view alone", ["aggregated"])]
        if args.pairs:
            shapes += [(" + ".join(pair), list(pair)) for pair in itertools.combinations(VIEWS, 2)]
        if args.one_by_one:
            shapes += [(f"{label}, one by one", views) for label, views in shapes[1:4]]
        print(f"{sizes['small'][1]:,} and {sizes['large'][1]:,} events, {args.execution_mode} mode, p=1, "
              f"through `flink-anonymizer run`, {args.rounds} round(s), k = {args.k or 'as in the policy'}; "
              f"load average before: {os.getloadavg()[0]:.2f}")
        # the first run of a session pays for cold caches (jars, bytecode, page cache): a small run
        # that took longer than the large one gave a negative marginal rate. One untimed run first.
        timed_run(write_policy(work, ["masked"]), sizes["small"][0], work / "out-warm-up", ref, args.execution_mode)
        shutil.rmtree(work / "out-warm-up", ignore_errors=True)
        extra = sizes["large"][1] - sizes["small"][1]
        runs: dict[str, list[Run]] = {label: [] for label, _ in shapes}
        for round_index in range(args.rounds):
            # every other round in reverse, so no shape always runs first or last
            for label, views in (shapes if round_index % 2 == 0 else shapes[::-1]):
                policy = write_policy(work, views, args.k)
                measured = {}
                for size, (events, _) in sizes.items():
                    measured[size] = timed_run(policy, events, work / f"out-{policy.stem}-{size}", ref,
                                               args.execution_mode, 1 if label.endswith("one by one") else None)
                    shutil.rmtree(work / f"out-{policy.stem}-{size}", ignore_errors=True)
                runs[label].append(Run(measured["small"][0], measured["large"][0],
                                       measured["small"][1], measured["large"][1]))
        rates = {}
        for label, _ in shapes:
            walls = [max(1e-9, run.large_s - run.small_s) for run in runs[label]]
            cpus = [run.large_cpu - run.small_cpu for run in runs[label]]
            marginal = [extra / wall for wall in walls]
            rates[label] = statistics.median(marginal)
            large_s = statistics.median(run.large_s for run in runs[label])
            spread = f"   rounds {', '.join(f'{rate:,.0f}' for rate in marginal)}" if args.rounds > 1 else ""
            print(f"  {label:<24} marginal {rates[label]:>9,.0f} records/s ({1e6 / rates[label]:5.1f} us)   "
                  f"JVM CPU {1e6 * statistics.median(cpus) / extra:6.1f} us/record, "
                  f"{statistics.median(cpu / wall for cpu, wall in zip(cpus, walls, strict=True)):.2f} cores busy   "
                  f"(runs {statistics.median(run.small_s for run in runs[label]):.1f} s and {large_s:.1f} s; "
                  f"{sizes['large'][1] / large_s:,.0f} records/s with job start){spread}")
        masked = rates["masked view alone"]
        print(f"  ratio whole job / masked  {rates['whole three-view job'] / masked:>6.2f}   (target >= 0.5)")
        for label in ("anonymized view alone", "aggregated view alone"):
            if label in rates:
                print(f"  ratio {label.split()[0]} / masked  {rates[label] / masked:>6.2f}")
        for label in rates:
            if label.endswith(", one by one"):
                bundled = label.removesuffix(", one by one")
                print(f"  {bundled}: bundled / one by one  {rates[bundled] / rates[label]:>6.2f}")
        if args.pairs:
            # the views add up when a pair's wall time per record is the sum of its two views' alone
            alone = {views[0]: 1e6 / rates[label] for label, views in shapes if views and len(views) == 1}
            for label, views in shapes:
                if views and len(views) == 2:
                    print(f"  {label:<24} {1e6 / rates[label]:5.1f} us per record; its views alone add up to "
                          f"{alone[views[0]] + alone[views[1]]:5.1f} us")
            print(f"  whole three-view job     {1e6 / rates['whole three-view job']:5.1f} us per record; "
                  f"the three views alone add up to {sum(alone.values()):5.1f} us")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
