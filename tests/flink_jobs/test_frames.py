"""The protect operator's frames [frames], in plain Python: reading a frame, positions, and the handover.

The Java side (``FrameLines``) and a whole job over frames are in ``tests/integration/test_frames.py``.
"""

from __future__ import annotations

from pyflink.common import Row

from flink_jobs.protect_stream import Handover, LinePositions
from operators.flink_compat import BUNDLE_SEPARATOR, unbundle, unframe


def test_a_frame_gives_its_first_number_and_every_line_blank_ones_too():
    assert unframe("41\n{\"a\": 1}\n\n  \n{\"b\": 2}") == (41, ['{"a": 1}', "", "  ", '{"b": 2}'])
    assert unframe("7\n") == (7, [""])  # one blank line


def test_one_file_numbers_its_lines_from_one():
    positions = LinePositions()
    assert [positions(n) for n in (1, 2, 10_000)] == ["line 1", "line 2", "line 10000"]
    assert LinePositions([("", -1)])(5) == "line 5"


def test_a_folders_numbers_run_on_from_file_to_file():
    # three files of 3, 1 and 2 lines, read one after another
    positions = LinePositions([("a.jsonl ", 3), ("b.jsonl ", 1), ("c/d.jsonl ", 2)])
    assert [positions(n) for n in range(1, 7)] == [
        "a.jsonl line 1", "a.jsonl line 2", "a.jsonl line 3", "b.jsonl line 1", "c/d.jsonl line 1", "c/d.jsonl line 2"]


def test_an_empty_file_in_a_folder_takes_no_number():
    positions = LinePositions([("a ", 2), ("empty ", 0), ("b ", 2)])
    assert [positions(n) for n in range(1, 5)] == ["a line 1", "a line 2", "b line 1", "b line 2"]


def test_the_handover_joins_each_channels_lines_in_order():
    handover = Handover()
    for line in ("m1", "m2", "m3"):
        handover.line("masked", line)
    handover.line("dlq", "d1")
    assert dict(handover.items()) == {"masked": "m1\nm2\nm3", "dlq": "d1"}


def test_the_handover_joins_a_keyed_channels_payloads_per_key_as_a_bundle():
    handover = Handover()
    for key, payload in (("k1", "a"), ("k2", "b"), ("k1", "c"), ("k1", "d")):
        handover.keyed("kanon", key, payload)
    handover.keyed("other", "k1", "e")  # another channel with the same key is another group
    out = list(handover.items())
    assert len(out) == 3
    assert all(isinstance(row, Row) for _tag, row in out)
    groups = {(tag, row[0]): unbundle(row[1]) for tag, row in out}
    assert groups == {("kanon", "k1"): ["a", "c", "d"], ("kanon", "k2"): ["b"], ("other", "k1"): ["e"]}
    assert BUNDLE_SEPARATOR not in dict(out)["other"][1]


def test_a_timed_group_carries_its_latest_event_time():
    handover = Handover()
    for key, payload, ms in (("3", "a", 5_000), ("3", "b", 9_000), ("3", "c", 7_000), ("4", "d", 1_000)):
        handover.keyed("dp", key, payload, ms)
    timed = {row[0]: (unbundle(row[1]), ms) for _tag, (row, ms) in handover.items()}
    assert timed == {"3": (["a", "b", "c"], 9_000), "4": (["d"], 1_000)}


def test_a_call_of_one_record_hands_over_what_it_did_before_frames():
    handover = Handover()
    handover.line("masked", "m")
    handover.keyed("kanon", "k", "p")
    handover.keyed("dp", "7", "q", 42)
    out = list(handover.items())
    assert out[0] == ("masked", "m")
    assert out[1][0] == "kanon" and tuple(out[1][1]) == ("k", "p")
    assert out[2][0] == "dp" and tuple(out[2][1][0]) == ("7", "q") and out[2][1][1] == 42
    assert list(Handover().items()) == []
