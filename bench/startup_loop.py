"""Start the same job N times in a row through the command line: does every start finish in time?

Each run is ``flink-anonymizer run --policy P --input SAMPLE --output DIR --keyring file:...
--execution-mode MODE --quiet``, a fresh client process (its own JVM and MiniCluster) in its own
process group, where P is ``conf/policies/customer-events.yaml`` reduced to one view
(``--view masked|anonymized|aggregated``) or the whole policy (``--view all``), as
``tests/integration/test_startup.py`` builds it. A run that has not ended within ``--timeout``
seconds (default 120, the bound of issue 14) is killed with its process group and counts as a
failure; so does a non-zero exit, or an exit 0 that left a view of the policy without records.

It prints one line per run, then how many of N finished within the bound, the min / median / max
time of those that did, each failure's last stderr lines, and the load average before and after
(other builds may share the machine). Exit status 0 only when all N finished.

    .venv/bin/python bench/startup_loop.py --n 100 --view aggregated --execution-mode thread
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from udfs.keyring import Keyring  # noqa: E402

POLICY = ROOT / "conf/policies/customer-events.yaml"
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
# the console script, as a user runs it
CLI = str(Path(sys.executable).with_name("flink-anonymizer"))
VIEWS = ("masked", "anonymized", "aggregated")


def write_policy(folder: Path, view: str) -> Path:
    document = yaml.safe_load(POLICY.read_text())
    if view != "all":
        document["views"] = {view: document["views"][view]}
    path = folder / f"{view}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _lines(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(sum(1 for line in f.open() if line.strip())
               for f in folder.rglob("*.jsonl") if not f.name.startswith("."))


def one_run(args: list[str], timeout: float) -> tuple[str | None, float, str]:
    """Run the CLI once; returns (None or why it failed, seconds, stderr)."""
    started = time.monotonic()
    proc = subprocess.Popen([CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        failure = None if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and the JVM it started
        _, err = proc.communicate()
        failure = f"did not end within {timeout:g} s (killed)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return failure, time.monotonic() - started, err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="starts in a row (default 20; the issue's loop is 100)")
    parser.add_argument("--view", choices=[*VIEWS, "all"], default="all",
                        help="the one view to keep from the shipped policy, or all three (default all)")
    parser.add_argument("--execution-mode", choices=("thread", "process"), default="thread")
    parser.add_argument("--timeout", type=float, default=120, help="seconds one run may take (default 120)")
    parser.add_argument("--startup-timeout", type=float, help="passed to `run` (its own default when omitted)")
    parser.add_argument("--input", type=Path, default=SAMPLE, help="JSON Lines input (default: the shipped sample)")
    parser.add_argument("--tail", type=int, default=15, help="stderr lines shown per failure (default 15)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    times: list[float] = []
    failures: list[tuple[int, str, float, str]] = []
    try:
        keyring = work / "keyring.json"
        Keyring.generate().save(keyring)
        policy = write_policy(work, args.view)
        views = VIEWS if args.view == "all" else (args.view,)
        print(f"{args.n} runs of `flink-anonymizer run`, view {args.view}, {args.execution_mode} mode, "
              f"input {args.input.name}, bound {args.timeout:g} s each; load average before: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for i in range(1, args.n + 1):
            out = work / f"out-{i}"
            cli_args = ["run", "--policy", str(policy), "--input", str(args.input), "--output", str(out),
                        "--keyring", f"file:{keyring}", "--execution-mode", args.execution_mode, "--quiet"]
            if args.startup_timeout is not None:
                cli_args += ["--startup-timeout", f"{args.startup_timeout:g}"]
            failure, elapsed, err = one_run(cli_args, args.timeout)
            if failure is None:
                empty = [v for v in views if _lines(out / v) == 0]
                if empty:
                    failure = f"exit 0 but no records in {', '.join(empty)}"
            if failure is None:
                times.append(elapsed)
            else:
                failures.append((i, failure, elapsed, err))
            print(f"  run {i:>3}/{args.n}: {elapsed:6.1f} s  {failure or 'ok'}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        print(f"{len(times)} of {args.n} finished within {args.timeout:g} s", end="")
        if times:
            print(f": min {min(times):.1f} s, median {statistics.median(times):.1f} s, max {max(times):.1f} s")
        else:
            print()
        for i, failure, elapsed, err in failures:
            tail = "\n".join(f"      {line}" for line in err.rstrip().splitlines()[-args.tail:]) or "      (no stderr)"
            print(f"  run {i} failed after {elapsed:.1f} s: {failure}; last stderr lines:\n{tail}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures and len(times) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
