"""The k-anonymous view's state and checkpoints on a paced stream: does state stay bounded?

The Flink cascade (:func:`operators.k_anonymity.attach`, k=10, the bench's ``binary``
hierarchies, ``max_delay`` 30 s, processing timing) runs in a MiniCluster on a Java number
sequence mapped to staged records, paced at ``--rate`` events/s for ``--seconds``, with
checkpoints every ``--checkpoint-interval`` to files. While it runs, Flink's REST API is
polled for each completed checkpoint's full state size and end-to-end duration; the bench
prints them over time with the rate the job actually kept. State should level off once
``max_delay`` has passed: a buffered record leaves by its deadline, and a released class by
its ``state_ttl``.

    .venv/bin/python -m bench.kanon_state --rate 10000 --seconds 90
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.k_anonymity import FIELDS, data_path, policy_block, spans, staged, synthetic  # noqa: E402
from operators.k_anonymity import KAnonymityParams  # noqa: E402


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
        return json.load(response)


def _records_taken(base: str, job_id: str, vertices: list[dict]) -> int:
    """Records the cascade has taken in: its stamp operator's ``numRecordsIn`` metric.

    At p=1 the cascade's stages are chained onto the source (``reinterpretAsKeyedStream``), so no
    vertex reads its records from the network, and a vertex's ``read-records`` stays 0. The
    operator's own counter holds wherever it is chained, and the stamp sees every record, those of
    a released class that it publishes itself too.
    """
    for vertex in vertices:
        path = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
        ids = [m["id"] for m in _get(base, path) if m["id"].endswith(".numRecordsIn") and "stamp" in m["id"]]
        if ids:
            return sum(int(float(m["value"])) for m in _get(base, f"{path}?get={','.join(ids)}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    import bench.k_anonymity as kbench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="events per second offered (default 10000)")
    parser.add_argument("--seconds", type=int, default=90, help="how long the stream runs (default 90)")
    parser.add_argument("--subjects", type=int, default=200_000, help="distinct subjects (default 200000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-delay", default="30s")
    parser.add_argument("--checkpoint-interval", type=int, default=5000, help="ms (default 5000)")
    args = parser.parse_args(argv)

    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import Sink
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource
    from pyflink.java_gateway import get_gateway

    from flink_jobs.devtools.processes import free_port
    from operators.k_anonymity import attach

    n = int(args.rate * args.seconds)
    data = synthetic(n, 7, args.subjects, args.rate)
    kbench.PATH = data_path(spans(data))
    params = KAnonymityParams.from_policy(policy_block(args.k, args.max_delay), FIELDS)
    rows = [("", *staged(data, i)[1:6]) for i in range(n)]
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="kanon-state-"))
    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("python.pythonpath", f"{ROOT}:{sysconfig.get_paths()['purelib']}")
    config.set_string("execution.checkpointing.dir", (work / "checkpoints").as_uri())
    config.set_string("restart-strategy.type", "none")
    config.set_string("rest.bind-port", str(port))
    config.set_string("rest.address", "127.0.0.1")
    config.set_string("rest.bind-address", "127.0.0.1")
    config.set_string("metrics.fetcher.update-interval", "1000")  # the REST API's metrics are 10 s old by default
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    env.enable_checkpointing(args.checkpoint_interval)
    rate = args.rate
    clock: dict[str, float] = {}

    def paced(i):
        # the first record fixes the start; each later one waits for its slot at the offered rate
        start = clock.setdefault("start", time.time())
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        return rows[i]

    in_type = Types.TUPLE([Types.STRING()] * 5 + [Types.LONG()])
    numbers = env.from_source(NumberSequenceSource(0, n - 1), WatermarkStrategy.no_watermarks(), "numbers")
    stream = numbers.map(paced, output_type=in_type).name("paced").uid("paced")
    discard = Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
    released, suppressed = attach(stream, params, view_name="bench")
    released.sink_to(discard).name("discard released").uid("discard-released")
    suppressed.sink_to(discard).name("discard suppressed").uid("discard-suppressed")

    base = f"http://127.0.0.1:{port}"
    print(f"k={args.k}, max_delay {args.max_delay}, {args.rate:,.0f} events/s offered for {args.seconds} s "
          f"({n:,} records, {args.subjects:,} subjects), checkpoints every {args.checkpoint_interval} ms, "
          f"thread mode, p=1; load average {os.getloadavg()[0]:.2f}")
    print(f"{'t (s)':>6} {'checkpoint':>10} {'state MB':>9} {'duration ms':>11} {'records in':>11} {'rec/s kept':>10}")
    print("(rec/s kept: records taken since the first poll that saw any, over the time since)")
    job = env.execute_async("kanon-state")
    job_id = str(job.get_job_id())
    # the kept rate counts from the first poll that saw records: job start is left out, and the
    # REST API's metrics lag by up to a second, which a rate over one checkpoint interval would not absorb
    started, seen, first_in = time.time(), set(), None
    sizes = []
    while not job.get_job_execution_result().done():
        time.sleep(2)
        try:
            history = _get(base, f"/jobs/{job_id}/checkpoints").get("history", [])
            vertices = _get(base, f"/jobs/{job_id}")["vertices"]
        except OSError:
            continue
        records_in = _records_taken(base, job_id, vertices)
        if first_in is None and records_in:
            first_in = (time.time(), records_in)
        for checkpoint in sorted(history, key=lambda c: c["id"]):
            if checkpoint["status"] == "COMPLETED" and checkpoint["id"] not in seen:
                seen.add(checkpoint["id"])
                now = time.time()
                kept = (records_in - first_in[1]) / (now - first_in[0]) if first_in and now > first_in[0] else 0.0
                size = checkpoint.get("checkpointed_size", checkpoint.get("state_size", 0)) / 1e6
                full = checkpoint.get("state_size", 0) / 1e6
                sizes.append(full)
                print(f"{now - started:>6.0f} {checkpoint['id']:>10} {full:>9.1f} "
                      f"{checkpoint['end_to_end_duration']:>11,} {records_in:>11,} {kept:>10,.0f}"
                      + ("" if abs(size - full) < 0.05 else f"  (incremental {size:.1f} MB)"), flush=True)
    job.get_job_execution_result().result()
    if sizes:
        print(f"state: largest {max(sizes):.1f} MB, last {sizes[-1]:.1f} MB; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
