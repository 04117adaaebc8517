"""Which windows a live DP view must release from a sample, computed from the raw lines.

Private group selection rightly suppresses a group whose noisy subject count falls under its
threshold, so a window of few subjects (the sample's last, cut short) may release nothing: the
budget gate still charges it. A test that a running job releases its windows can therefore demand
only the windows with a group far above the threshold, and that every window was charged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

from operators.dp.core import laplace_threshold
from operators.dp.params import DpParams

#: Laplace scales above the selection threshold: a group this large is suppressed with probability ½e⁻¹²
MARGIN_SCALES = 12


def event_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def single_group_subjects(lines: list[str], window_ms: int, group_field: str, subject_field: str,
                          time_field: str = "timestamp") -> dict[tuple[int, str], int]:
    """Per (window start, group): the subjects seen in that group only, within the window.

    A subject seen in several groups of a window counts in none: the operator keeps only
    ``max_groups_per_subject`` of them, so this is a lower bound of what it counts.
    """
    groups: dict[tuple[int, str], set[str]] = defaultdict(set)
    for line in lines:
        try:
            record = json.loads(line)
            ms = event_ms(str(record[time_field]))
            groups[(ms - ms % window_ms, str(record[group_field]))].add(str(record[subject_field]))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    seen_in: dict[tuple[int, str], int] = defaultdict(int)
    for (start, _), subjects in groups.items():
        for subject in subjects:
            seen_in[(start, subject)] += 1
    return {key: sum(1 for s in subjects if seen_in[(key[0], s)] == 1) for key, subjects in groups.items()}


def windows_surely_released(counts: dict[tuple[int, str], int], params: DpParams) -> set[int]:
    """The window starts with a group whose subject count is ``MARGIN_SCALES`` noise scales above the threshold."""
    eps, delta = params.plan["selection"]
    groups = params.max_groups_per_subject
    sure = laplace_threshold(eps, delta, groups) + MARGIN_SCALES * groups / eps
    return {start for (start, _), subjects in counts.items() if subjects >= sure}


def every_window_decided(operators: dict, released: int, charged_micro: int, groups: int,
                         view: str = "aggregated") -> bool:
    """Whether a running job has charged every window, and its counters agree with the topic.

    ``operators`` is :func:`flink_jobs.cli.submit.job_status`'s; ``released`` the distinct (window,
    group) pairs the view's topic holds; ``groups`` the pairs of the sample. Flink's metrics lag
    the records, so a test waits on this rather than reading them once.
    """
    noisy = operators.get(f"dp-noisy-aggregate[{view}]", {})
    spent = operators.get(f"dp-budget-gate[{view}]", {}).get("epsilon spent", 0)
    decided = noisy.get("groups released", 0) + noisy.get("groups suppressed", 0)
    return spent >= charged_micro - 1 and noisy.get("groups released", 0) == released and decided == groups
