"""The quiet-input clock: event time carried on by the wall clock once the input goes quiet, and after a restore."""

from operators.quiet_clock import QuietClock


def test_event_time_follows_the_wall_clock_only_once_the_input_is_quiet():
    clock = QuietClock(idle_timeout_ms=10_000, delay_ms=5_000)
    assert clock.event_time(1_000_000) is None  # nothing seen
    clock.saw(500_000, now_ms=1_000_000)
    assert clock.event_time(1_009_999) is None  # still within the idle timeout
    assert clock.event_time(1_010_000) == 500_000 - 5_000 + 10_000
    clock.saw(400_000, now_ms=1_020_000)  # an older event time moves the arrival, not the event time
    assert clock.event_time(1_030_000) == 500_000 - 5_000 + 10_000


def test_a_restored_clock_counts_the_quiet_from_the_restore_and_keeps_the_latest_event_time():
    clock = QuietClock(idle_timeout_ms=10_000, delay_ms=0)
    clock.restored(700_000, now_ms=2_000_000)
    assert clock.event_time(2_005_000) is None  # quiet since the restore only, not since 1970
    assert clock.event_time(2_010_000) == 710_000
    clock.restored(600_000, now_ms=2_020_000)  # another key's older state neither moves it back nor restarts it
    assert clock.event_time(2_020_000) == 720_000
    clock.saw(900_000, now_ms=2_030_000)
    clock.restored(800_000, now_ms=2_031_000)
    assert clock.event_time(2_040_000) == 910_000


def test_without_an_idle_timeout_only_the_watermark_closes():
    clock = QuietClock(idle_timeout_ms=None, delay_ms=0)
    clock.restored(700_000, now_ms=2_000_000)
    assert clock.event_time(9_000_000) is None
