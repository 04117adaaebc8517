"""Helpers of the local Flink tests: a thread-mode configuration, and for the restart-from-a-retained-checkpoint
tests a paced source, a checkpointing environment and file sink, a cancel mid-stream and the committed lines."""

from __future__ import annotations

import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any


def committed_lines(out_dir: Path) -> list[Any]:
    """The JSON lines of the committed part files: in-progress and pending ones are hidden (".part-...")."""
    lines = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def retained_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints``, or None."""
    done = [p.parent for p in checkpoints.glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def cancel_after_checkpoints(client: Any, checkpoints: Path, count: int = 3, timeout_s: float = 120) -> None:
    """Cancel the job once checkpoint ``count`` is complete (or after ``timeout_s``), while it still holds state."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        latest = retained_checkpoint(checkpoints)
        if latest is not None and int(latest.name.split("-")[1]) >= count:
            break
        time.sleep(0.1)
    client.cancel().result()


def thread_mode_config(*, small_bundles: bool = False) -> Any:
    """A local job's ``Configuration``: Python functions in thread mode, run by this venv's interpreter.

    A failing job fails at once: without a restart strategy Flink restarts a checkpointing job again
    and again, and the test would wait for its timeout instead of seeing the error.

    With ``small_bundles``, the latency tuning of the job: small bundles, or a record waits for its
    bundle to fill.
    """
    from pyflink.common import Configuration

    config = Configuration()
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("restart-strategy.type", "none")
    if small_bundles:
        config.set_string("python.fn-execution.bundle.size", "50")
        config.set_string("python.fn-execution.bundle.time", "20")
    # the embedded interpreter needs the project and the venv's packages (pemja) on its path
    root = str(Path(__file__).resolve().parents[2])
    config.set_string("python.pythonpath", f"{root}:{sysconfig.get_paths()['purelib']}")
    return config


def checkpointing_env(checkpoints: Path, restore: str | None, checkpoint_ms: int) -> Any:
    """A parallelism-1 environment that checkpoints every ``checkpoint_ms`` into ``checkpoints``, keeps them
    on cancel, and restores ``restore`` (a checkpoint path) when given."""
    from pyflink.datastream import StreamExecutionEnvironment

    config = thread_mode_config(small_bundles=True)
    config.set_string("execution.checkpointing.dir", checkpoints.as_uri())
    config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    if restore is not None:
        config.set_string("execution.state-recovery.path", restore)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    env.enable_checkpointing(checkpoint_ms)
    return env


def paced_rows(env: Any, rows: list[tuple], row_type: Any, pace_ms: float) -> Any:
    """``rows`` as a stream, one every ``pace_ms``, from a number sequence source (it checkpoints its position)."""
    from pyflink.common import WatermarkStrategy
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource

    def row(i):
        time.sleep(pace_ms / 1000)
        return rows[i]

    numbers = env.from_source(NumberSequenceSource(0, len(rows) - 1), WatermarkStrategy.no_watermarks(), "numbers")
    return numbers.uid("numbers").map(row, output_type=row_type).name("rows").uid("rows")


def file_sink(out_dir: Path) -> Any:
    """A row-format ``FileSink`` of strings into ``out_dir`` that commits its part files on each checkpoint."""
    from pyflink.common import Encoder
    from pyflink.datastream.connectors.file_system import FileSink, RollingPolicy

    return (FileSink.for_row_format(str(out_dir), Encoder.simple_string_encoder())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy()).build())


def stop_then_restore(build_env: Any, out_dir: Path, checkpoints: Path, job_name: str, *, total: int) -> tuple[int, Path]:
    """Run the job ``build_env(pace_ms, restore)`` paced, cancel it mid-stream, then run it again from its checkpoint.

    The first run (15 ms a record) is cancelled once a few checkpoints hold state, before it has committed
    ``total`` lines (asserted); the second (unpaced) restores the newest retained checkpoint and runs to
    the end. Returns the count of lines the first run committed and the checkpoint restored.
    """
    client = build_env(15.0, None).execute_async(f"{job_name}-1")
    cancel_after_checkpoints(client, checkpoints)
    first = len(committed_lines(out_dir))
    latest = retained_checkpoint(checkpoints)
    assert latest is not None
    assert first < total, "the first run was meant to stop mid-stream"
    build_env(0.0, str(latest)).execute(f"{job_name}-2")
    return first, latest
