"""The DP aggregate operators in a real MiniCluster (thread mode, parallelism 1, checkpoints every 500 ms),
event time over several windows."""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from flink_jobs.devtools.processes import free_port
from operators.dp.flink import attach
from operators.dp.params import DpParams
from tests.integration import restart
from tests.support.dp_expect import event_ms

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_710_460_800_000  # 2024-03-15T00:00:00Z, a window boundary
WINDOWS = 4
#: subjects per region; each subject stays in its region and buys 1-3 times per window
REGIONS = {"us-west": 400, "us-east": 250, "eu": 150, "tiny": 1}
FLOOD = 2000  # records one subject pours into us-west in window 0
PUBLIC_EMPTY = "nowhere"
#: |error| bound, in standard deviations, that geometric (Laplace-like) noise of that std
#: exceeds with probability 1e-6 per release: P(|L| > t) = exp(-t / b) and std = b * sqrt(2)
TAIL_SIGMAS = math.log(1e6) / math.sqrt(2)  # about 9.8


def synthetic() -> tuple[list[tuple[str, str, str, int]], dict[tuple[str, int], int]]:
    """Input tuples in event-time order, and the true number of subjects per (region, window)."""
    rng = random.Random(42)
    rows, truth = [], defaultdict(int)
    for w in range(WINDOWS):
        start = T0 + w * MINUTE
        for region, n in REGIONS.items():
            for s in range(n):
                truth[(region, start)] += 1
                for _ in range(rng.randint(1, 3)):
                    amount = round(rng.uniform(1, 200), 2)
                    rows.append(
                        (
                            f"{region}-{s}",
                            json.dumps([region]),
                            json.dumps({"purchaseAmount": amount}),
                            start + rng.randrange(MINUTE),
                        )
                    )
    truth[("us-west", T0)] += 1
    rows += [("flooder", '["us-west"]', '{"purchaseAmount": 1000000}', T0 + i % MINUTE) for i in range(FLOOD)]
    rows.sort(key=lambda r: r[3])
    return rows, truth


def watch_checkpoints(port: int, stop: threading.Event, completed: dict[str, int]) -> None:
    """Poll the MiniCluster's REST API for the number of completed checkpoints of each job."""
    base = f"http://127.0.0.1:{port}"
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"{base}/jobs", timeout=1) as response:
                jobs = json.load(response)["jobs"]
            for job in jobs:
                with urllib.request.urlopen(f"{base}/jobs/{job['id']}/checkpoints", timeout=1) as response:
                    counts = json.load(response)["counts"]
                completed[job["id"]] = max(completed.get(job["id"], 0), counts["completed"])
        except (OSError, ValueError, KeyError):
            pass  # not up yet, or shutting down
        stop.wait(0.1)


def run_job(params: DpParams, rows, random_state, tmp_path: Path) -> list[tuple[str, dict, dict]]:
    """Run the operators with checkpoints every 500 ms (they must snapshot in thread mode).

    The REST API shows that checkpoints completed while the job ran, and any failed
    checkpoint fails the job (no tolerated failures, no restarts).
    """
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import MapFunction, StreamExecutionEnvironment

    class EventTime(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value[3]

    class Throttle(MapFunction):
        """Slows the source a little, so checkpoints complete while the DP operators hold state."""

        def __init__(self, every: int, pause_s: float) -> None:
            self.every, self.pause_s, self.n = every, pause_s, 0

        def map(self, value):
            import time

            self.n += 1
            if self.n % self.every == 0:
                time.sleep(self.pause_s)
            return value

    port = free_port()
    conf = restart.thread_mode_config()
    conf.set_string("rest.port", str(port))
    conf.set_string("execution.checkpointing.interval", "500ms")
    conf.set_string("execution.checkpointing.dir", (tmp_path / "checkpoints").as_uri())
    conf.set_string("execution.checkpointing.tolerable-failed-checkpoints", "0")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.enable_checkpointing(500)
    env.set_parallelism(1)
    source_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
    stream = (
        env.from_collection(rows, type_info=source_type)
        .map(Throttle(every=max(1, len(rows) // 20), pause_s=0.15), output_type=source_type)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(5)).with_timestamp_assigner(EventTime())
        )
    )
    out = attach(stream, params, view_name="aggregated", policy_id="test-policy", policy_hash="abc123", random_state=random_state)
    stop, completed = threading.Event(), {}
    watcher = threading.Thread(target=watch_checkpoints, args=(port, stop, completed), daemon=True)
    watcher.start()
    try:
        with out.execute_and_collect("dp-flink-test") as results:
            collected = [(key, json.loads(headers), json.loads(value)) for key, headers, value in results]
    finally:
        stop.set()
        watcher.join()
    # 20 pauses of 150 ms: checkpoints complete while the operators hold state
    assert completed and max(completed.values()) >= 2, completed
    return collected


def base_block(**extra):
    return {
        "window": "1m",
        "group_by": ["region"],
        "epsilon": 1.0,
        "max_groups_per_subject": 1,
        "metrics": ["count", {"sum": "purchaseAmount", "bounds": [0, 200]}, {"mean": "purchaseAmount", "bounds": [0, 200]}],
        **extra,
    }


def check_release(value: dict, headers: dict, truth: dict, params: DpParams) -> float:
    """Common checks on one release; returns its count error in standard deviations."""
    start = value["window_start"]
    assert start.endswith(":00.000Z") and value["window_end"] > start
    assert (value["epsilon"], value["mechanism"]) == (1.0, "laplace")
    assert value["delta"] == params.window_delta
    assert headers["policy_id"] == "test-policy" and headers["policy_hash"] == "abc123"
    for name in ("count", "purchaseAmount_sum", "purchaseAmount_mean"):
        assert value[name]["std"] > 0 and len(value[name]["ci95"]) == 2
    assert 0 <= value["purchaseAmount_mean"]["value"] <= 200
    return (value["count"]["value"] - truth) / value["count"]["std"]


def window_index(value: dict) -> int:
    return (event_ms(value["window_start"]) - T0) // MINUTE


def test_public_groups_release_every_window_near_the_truth_with_bounded_flood(tmp_path):
    rows, truth = synthetic()
    params = DpParams.from_policy(base_block(public_groups=["us-west", "us-east", "eu", PUBLIC_EMPTY], total_epsilon=3.0))
    out = run_job(params, rows, random_state=1, tmp_path=tmp_path)

    by_window = defaultdict(dict)
    z = []
    for key, headers, value in out:
        by_window[window_index(value)][value["region"]] = (headers, value)
        assert key == json.dumps([value["region"]])
    # total_epsilon 3 stops the view after three windows of epsilon 1
    assert sorted(by_window) == [0, 1, 2]
    for w, groups in by_window.items():
        assert set(groups) == {"us-west", "us-east", "eu", PUBLIC_EMPTY}  # "tiny" is not public: dropped
        for region, (headers, value) in groups.items():
            true = truth.get((region, T0 + w * MINUTE), 0)
            z.append(check_release(value, headers, true, params))
            assert abs(z[-1]) < TAIL_SIGMAS, (w, region)
            assert headers["epsilon_spent"] == pytest.approx(w + 1.0)
    # the errors are the size the releases state: mean square z about 1 (12 Laplace-like draws)
    assert 0.05 < sum(x * x for x in z) / len(z) < 4
    # the flooder's 2000 records of 1,000,000 move the window-0 sum by at most its bound, 200
    west0 = by_window[0]["us-west"][1]["purchaseAmount_sum"]
    true_sum_bound = truth[("us-west", T0)] * 200
    assert west0["value"] < true_sum_bound + 4 * west0["std"]


def test_private_selection_hides_a_lone_subject_and_runs_differ(tmp_path):
    rows, truth = synthetic()
    params = DpParams.from_policy(base_block(delta=1e-6))
    first = run_job(params, rows, random_state=None, tmp_path=tmp_path / "first")
    second = run_job(params, rows, random_state=None, tmp_path=tmp_path / "second")

    counts, z = [], []
    for out in (first, second):
        released = {(window_index(v), v["region"]): (h, v) for _, h, v in out}
        # the one-subject region never passes the threshold; the big ones always do
        assert not any(region == "tiny" for _, region in released)
        assert {r for _, r in released} == {"us-west", "us-east", "eu"}
        assert {w for w, _ in released} == set(range(WINDOWS))
        for (w, region), (headers, value) in released.items():
            z.append(check_release(value, headers, truth[(region, T0 + w * MINUTE)], params))
            assert abs(z[-1]) < TAIL_SIGMAS
            assert headers["epsilon_spent"] == pytest.approx(w + 1.0)
        counts.append(sorted((k, v["count"]["value"]) for k, (_, v) in released.items()))
    assert 0.05 < sum(x * x for x in z) / len(z) < 4
    # secure randomness: two runs over the same input give different noise
    assert counts[0] != counts[1]


# -- restart from a retained checkpoint ----------------------------------------------
RESTART_BLOCK = {
    "window": "1s",
    "group_by": ["region"],
    # so large that the noise is nil: geometric noise on counts is 0 with probability 1 - 2e-217
    "epsilon": 1000.0,
    "public_groups": ["a", "b", "c"],
    "metrics": ["count", {"sum": "v", "bounds": [0, 100]}],
}
#: |Laplace(100 / 500)| stays below this with probability 1 - 1e-10
SUM_TOLERANCE = (100 / 500) * math.log(1e10)


def restart_rows(n: int) -> list[tuple[str, str, str, int]]:
    """Two records 20 ms apart per subject (same window, same value), 25 subjects per 1 s window."""
    return [(f"s{i // 2}", json.dumps(["abc"[(i // 2) % 3]]), json.dumps({"v": (i // 2) % 50}), T0 + i * 20) for i in range(n)]


def restart_truth(rows) -> dict[tuple[str, int], tuple[int, float]]:
    """(region, window start) -> (subjects, sum of one value per subject)."""
    seen, truth = set(), defaultdict(lambda: [0, 0.0])
    for subject, group, values, ts in rows:
        start = ts - ts % 1000
        if (subject, start) in seen:
            continue
        seen.add((subject, start))
        acc = truth[(json.loads(group)[0], start)]
        acc[0] += 1
        acc[1] += json.loads(values)["v"]
    return {k: (c, s) for k, (c, s) in truth.items()}


def restart_env(rows, out_dir: Path, checkpoints: Path, *, pace_ms: float, restore: str | None):
    """The DP operators between a number sequence source (it checkpoints its position) and a FileSink."""
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner

    class EventTime(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value[3]

    env = restart.checkpointing_env(checkpoints, restore, 500)
    row_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
    stream = (
        restart.paced_rows(env, rows, row_type, pace_ms)
        .assign_timestamps_and_watermarks(WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(EventTime()))
        .uid("event-time")
    )
    params = DpParams.from_policy(RESTART_BLOCK)
    out = attach(stream, params, view_name="aggregated", policy_id="test-policy", policy_hash="abc123")
    lines = out.map(lambda r: json.dumps(list(r)), output_type=Types.STRING()).uid("lines")
    lines.sink_to(restart.file_sink(out_dir)).uid("files")
    return env


def committed(out_dir: Path) -> list[tuple[str, dict, dict]]:
    return [(key, json.loads(headers), json.loads(value)) for key, headers, value in restart.committed_lines(out_dir)]


def test_a_restart_from_a_retained_checkpoint_loses_no_contribution_and_keeps_the_spend(tmp_path):
    rows = restart_rows(600)  # 12 windows of 1 s, 25 subjects each
    truth = restart_truth(rows)
    out_dir, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    # stop mid-stream, once a few checkpoints hold open windows (600 records take 9 s to read)
    first, latest = restart.stop_then_restore(
        lambda pace_ms, restore: restart_env(rows, out_dir, checkpoints, pace_ms=pace_ms, restore=restore),
        out_dir, checkpoints, "dp-restart", total=len(truth),
    )
    released = committed(out_dir)
    by_window = {}
    for _key, headers, value in released:
        window = (value["region"], T0 + round((window_ms(value) - T0) / 1000) * 1000)
        assert window not in by_window, f"released twice: {window}"
        by_window[window] = (headers, value)
    # every group and window exactly once across both runs, with the true count and sum
    assert set(by_window) == set(truth)
    for window, (count, total) in truth.items():
        headers, value = by_window[window]
        assert value["count"]["value"] == count, window
        assert abs(value["v_sum"]["value"] - total) < SUM_TOLERANCE, window
        # the spend went on from the checkpoint: window k (from 0) has spent (k + 1) x epsilon
        assert headers["epsilon_spent"] == pytest.approx(((window[1] - T0) // 1000 + 1) * 1000.0)
    print(f"first run committed {first} releases, restored from {latest.name}, total {len(released)}")


def window_ms(value: dict) -> int:
    return event_ms(value["window_start"])


# -- late records ----------------------------------------------------------------------
def watch_metric(port: int, suffix: str, stop: threading.Event, seen: list[float]) -> None:
    """Poll the MiniCluster's REST API for the largest value of every operator metric named ``*suffix``."""
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=1) as response:
            return json.load(response)

    while not stop.is_set():
        try:
            for job in get("/jobs")["jobs"]:
                for vertex in get(f"/jobs/{job['id']}")["vertices"]:
                    path = f"/jobs/{job['id']}/vertices/{vertex['id']}/metrics"
                    names = [m["id"] for m in get(path) if m["id"].endswith(suffix)]
                    if names:
                        values = get(f"{path}?get={','.join(names)}")
                        seen.append(sum(float(m["value"]) for m in values))
        except (OSError, ValueError, KeyError):
            pass  # not up yet, or shutting down
        stop.wait(0.1)


def test_late_records_are_dropped_counted_and_never_released():
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource

    # 300 subjects over three windows (100 each), then 50 new subjects back in window 0, two windows
    # after it closed, then one record whose pause lets the metric reach the REST API before the end
    on_time = [(f"s{i}", '["a"]', '{"v": 1}', T0 + i * 600) for i in range(300)]
    late = [(f"late{i}", '["a"]', '{"v": 1}', T0 + i) for i in range(50)]
    tail = [("tail", '["a"]', '{"v": 1}', T0 + 3 * MINUTE)]
    rows = on_time + late + tail
    pauses = {len(on_time) - 1: 1.0, len(rows) - 1: 2.5}  # row index -> seconds to sleep before passing it on

    class EventTime(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value[3]

    def pace(i):
        time.sleep(pauses.get(i, 0.0))  # the periodic watermark (200 ms) passes the on-time rows first
        return rows[i]

    port = free_port()
    # small bundles: a bundle goes by count here, since the sleeps above hold the task thread that would
    # fire its timer, and the late records must reach stage 1 before the tail's pause
    conf = restart.thread_mode_config(small_bundles=True)
    conf.set_string("rest.port", str(port))
    conf.set_string("metrics.fetcher.update-interval", "100")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    row_type = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
    # a FLIP-27 source runs in the task's mailbox thread, so the watermark timer fires between two records
    # (from_collection's source thread may emit the late rows before the timer gets the checkpoint lock)
    numbers = env.from_source(NumberSequenceSource(0, len(rows) - 1), WatermarkStrategy.no_watermarks(), "numbers")
    stream = numbers.map(pace, output_type=row_type).assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(5)).with_timestamp_assigner(EventTime())
    )
    block = {**RESTART_BLOCK, "window": "1m", "public_groups": ["a"], "metrics": ["count"]}
    out = attach(stream, DpParams.from_policy(block), view_name="aggregated", policy_id="p", policy_hash="h")
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_metric, args=(port, "dp_late_records_dropped", stop, seen), daemon=True)
    watcher.start()
    try:
        with out.execute_and_collect("dp-late-test") as results:
            released = [json.loads(value) for _key, _headers, value in results]
    finally:
        stop.set()
        watcher.join()
    counts = {window_ms(v): v["count"]["value"] for v in released}
    # window 0 holds its 100 on-time subjects and none of the 50 late ones
    assert counts == {T0: 100, T0 + MINUTE: 100, T0 + 2 * MINUTE: 100, T0 + 3 * MINUTE: 1}, sorted(counts.items())
    assert seen and max(seen) == len(late), seen
