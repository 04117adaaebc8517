"""Masked view throughput against a no-op pipeline, side by side in one run.

Both pipelines read the same generated events from a file and write JSON Lines
through the same file sink, in thread mode:

- no-op: parse each record's JSON and serialize it again (into the same JSON Lines envelope);
- masked: the protect_stream job with the masked view of conf/policies/customer-events.yaml.

It prints records per second for each and their ratio (target in the README's Performance table: >= 0.7),
then, with ``--scaling``, the masked view at parallelism 2 against 1.

    .venv/bin/python bench/masked_view.py --n 1000000 [--scaling]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml
from pyflink.common import Types
from pyflink.datastream import MapFunction

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.samples.generate_events import iter_events  # noqa: E402
from flink_jobs.policy import compile_policy  # noqa: E402
from flink_jobs.protect_stream import FileInput, FileOutput, JobOptions, build, make_env  # noqa: E402
from operators.flink_compat import unframe  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402
from udfs.record import envelope_line  # noqa: E402


class ParseAndDump(MapFunction):
    """The no-op: what any JSON-in, JSON-out Python pipeline pays, and nothing else.

    It takes the frames of lines the job's file source yields, as the protect operator does, and
    writes each frame's lines as one string.
    """

    def map(self, frame: str) -> str:
        return "\n".join(self.dump(line) for line in unframe(frame)[1])

    @staticmethod
    def dump(raw: str) -> str:
        try:
            return envelope_line(None, "{}", orjson.dumps(orjson.loads(raw)).decode(), True)
        except orjson.JSONDecodeError:
            return envelope_line(None, "{}", raw, False)


def run_noop(events: Path, out: Path, parallelism: int, keyring_ref: str) -> float:
    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism)
    env = make_env(options)
    raw = FileInput(str(events)).open_source(env)
    mapped = raw.map(ParseAndDump(), output_type=Types.STRING()).name("noop").uid("noop")
    FileOutput(str(out)).write(mapped, "noop", "noop", encoded=True)
    started = time.perf_counter()
    env.execute("bench-noop")
    return time.perf_counter() - started


def run_masked(events: Path, out: Path, parallelism: int, keyring_ref: str) -> float:
    document = yaml.safe_load((ROOT / "conf/policies/customer-events.yaml").read_text())
    document["views"] = {"masked": document["views"]["masked"]}
    policy = compile_policy(document, file="bench-masked")
    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism)
    env = make_env(options)
    build(env, policy, FileInput(str(events)), FileOutput(str(out)), options)
    started = time.perf_counter()
    env.execute("bench-masked")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="events to generate (default 1,000,000)")
    parser.add_argument("--scaling", action="store_true", help="also run the masked view at parallelism 2")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-masked-"))
    try:
        events = work / "events.jsonl"
        with open(events, "w") as fh:
            for line in iter_events(args.n, seed=11, malformed=args.n // 1000):
                fh.write(line + "\n")
        keyring_path = work / "keyring.json"
        Keyring.generate().save(keyring_path)
        ref = f"file:{keyring_path}"
        total = args.n + args.n // 1000
        print(f"{total:,} events, thread mode, parallelism 1 (times include job start, same for both)")
        noop = run_noop(events, work / "noop", 1, ref)
        masked = run_masked(events, work / "masked1", 1, ref)
        print(f"  no-op (parse + dump)  {total / noop:>10,.0f} records/s  ({noop:.1f} s)")
        print(f"  masked view           {total / masked:>10,.0f} records/s  ({masked:.1f} s)")
        print(f"  ratio masked / no-op  {noop / masked:>10.2f}   (target >= 0.70)")
        if args.scaling:
            masked2 = run_masked(events, work / "masked2", 2, ref)
            print(f"  masked view, p=2      {total / masked2:>10,.0f} records/s  ({masked2:.1f} s)")
            print(f"  ratio p=2 / p=1       {masked / masked2:>10.2f}   (target >= 1.7; this machine has 2 cores)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
