"""The Java framer before the protect operator [frames]: what the operator receives, and a whole job over frames.

The framer tests run a real MiniCluster in thread mode: lines go through
:func:`operators.flink_compat.framed_lines`, and a Python function says what each call received.
No line may be lost, repeated, reordered or numbered wrong. The job tests run the command line on
the bundled sample: the views and dead letters (with their positions) must not depend on how the
lines were framed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from flink_jobs import cli
from operators import flink_compat
from tests.integration import restart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
N = 2000


def lines_file(folder: Path) -> tuple[Path, list[str]]:
    """A text file of N lines, some blank, some with spaces: every line is a line to the framer."""
    lines = ["" if i % 97 == 0 else f'{{"i": {i}, "text": "a b\\tc"}}' if i % 13 else "  " for i in range(N)]
    path = folder / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def frames(source: Path | None = None, *, bundle_size: int | None = None, bundle_ms: int | None = None,
           batch: bool = False, pace_ms: float = 0) -> list[tuple[int, list[str]]]:
    """``(first line's number, lines)`` of every frame the function after the framer received, in order.

    From the file ``source``, or else from N paced numbers made into lines by a Python map.
    """
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource

    config = restart.thread_mode_config()
    if bundle_size is not None:
        config.set_string("python.fn-execution.bundle.size", str(bundle_size))
    if bundle_ms is not None:
        config.set_string("python.fn-execution.bundle.time", str(bundle_ms))
    if batch:
        config.set_string("execution.runtime-mode", "BATCH")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    if batch:
        env.set_runtime_mode(RuntimeExecutionMode.BATCH)
    if source is not None:
        file_source = FileSource.for_record_stream_format(StreamFormat.text_line_format(), str(source)).build()
        lines = env.from_source(file_source, WatermarkStrategy.no_watermarks(), "lines")
    else:
        numbers = env.from_source(NumberSequenceSource(0, N - 1), WatermarkStrategy.no_watermarks(), "numbers")

        def line(i):
            time.sleep(pace_ms / 1000)
            return f"n{i}"

        lines = numbers.map(line, output_type=Types.STRING())
    framed = flink_compat.framed_lines(lines, "test-frames")
    # the number, then the lines as they came: a frame's own text, which holds no other separator
    said = framed.map(lambda frame: frame, output_type=Types.STRING())
    with said.execute_and_collect("frames-test") as results:
        return [flink_compat.unframe(frame) for frame in results]


def assert_every_line_once_in_order_and_numbered(got: list[tuple[int, list[str]]], lines: list[str]) -> None:
    assert [line for _first, frame in got for line in frame] == lines
    number = 1
    for first, frame in got:
        assert first == number, "a frame's number is the position of its first line"
        number += len(frame)


def test_lines_come_in_frames_of_the_bundle_size_numbered_from_one(tmp_path):
    path, lines = lines_file(tmp_path)
    got = frames(path, bundle_size=70, bundle_ms=60_000)
    assert_every_line_once_in_order_and_numbered(got, lines)
    assert max(len(frame) for _first, frame in got) == 70
    assert len(got) == -(-N // 70)


def test_the_bundle_time_lets_a_frame_go_before_it_is_full():
    # about 3 s of input at 1.5 ms a line, frames of up to a million lines that wait 50 ms
    got = frames(bundle_size=1_000_000, bundle_ms=50, pace_ms=1.5)
    assert_every_line_once_in_order_and_numbered(got, [f"n{i}" for i in range(N)])
    assert len(got) > 10


def test_the_end_of_input_lets_the_last_frame_go(tmp_path):
    path, lines = lines_file(tmp_path)
    got = frames(path, bundle_size=1_000_000, bundle_ms=3_600_000)
    assert_every_line_once_in_order_and_numbered(got, lines)
    assert len(got) == 1


def test_a_batch_job_frames_its_lines_by_size_and_end_of_input(tmp_path):
    path, lines = lines_file(tmp_path)
    got = frames(path, bundle_size=300, batch=True)
    assert_every_line_once_in_order_and_numbered(got, lines)
    assert [len(frame) for _first, frame in got] == [300] * (N // 300) + [N % 300]


def test_without_the_jar_each_line_is_a_frame_and_it_says_so(monkeypatch, caplog, tmp_path):
    path, lines = lines_file(tmp_path)
    monkeypatch.setattr(flink_compat, "BUNDLE_JAR", tmp_path / "missing.jar")
    with caplog.at_level(logging.WARNING, logger=flink_compat.__name__):
        got = frames(path, bundle_size=70)
    assert_every_line_once_in_order_and_numbered(got, lines)
    assert all(len(frame) == 1 for _first, frame in got)
    assert "missing.jar is missing (make jars builds it)" in caplog.text


def _cli_run(tmp_path_factory, keyring_ref: str, source: Path, name: str, *options: str) -> Path:
    out = tmp_path_factory.mktemp(name)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
        status = cli.main(["run", "--quiet", *options, "--policy", str(POLICY), "--input", str(source),
                           "--output", str(out), "--keyring", keyring_ref])
    assert status == 0, f"the run failed or its counts do not balance:\n{stdout.getvalue()}"
    return out


def _lines(out: Path, channel: str) -> Counter:
    lines: Counter = Counter()
    for file in sorted((out / channel).rglob("*.jsonl")):
        lines.update(line for line in file.read_text().splitlines() if line)
    return lines


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The sample in three files of one folder, of sizes no frame size below divides evenly."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("frames-folder")
    (path / "a.jsonl").write_text("".join(lines[:3331]))
    (path / "b.jsonl").write_text("".join(lines[3331:3338]))
    (path / "c.jsonl").write_text("".join(lines[3338:]))
    return path


@pytest.mark.parametrize("input_kind", ["file", "folder"])
def test_the_views_and_dead_letters_do_not_depend_on_the_frame_size(tmp_path_factory, keyring_ref, folder,
                                                                     input_kind):
    source = SAMPLE if input_kind == "file" else folder
    # frames of one line (as before frames), of 7 lines (frames across files), and of the default 1,000
    runs = [_cli_run(tmp_path_factory, keyring_ref, source, f"frames-{input_kind}-{size}", *options)
            for size, options in (("1", ("--bundle-size", "1")), ("7", ("--bundle-size", "7")), ("default", ()))]
    for channel in ("masked", "dlq"):
        one, *others = (_lines(out, channel) for out in runs)
        assert sum(one.values()) > 0
        for other in others:
            assert other == one, f"{channel} differs with another frame size"
    dead = _lines(runs[0], "dlq")
    assert sum(dead.values()) > 0 and all('"position":' in line for line in dead)
    for out in runs:  # the stateful views account for every record whatever the frames
        assert sum(_lines(out, "anonymized").values()) + sum(_lines(out, "anonymized.suppressed").values()) \
            == sum(_lines(runs[0], "masked").values())
