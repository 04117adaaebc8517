"""Local processes and ports: what the Flink cluster and the Kafka broker helpers share.

``free_port`` picks a port, ``pid_alive`` and ``signal_pid`` look at and signal one
process, ``terminate`` stops a set of processes: SIGTERM first, SIGKILL for those
still there after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["free_port", "pid_alive", "signal_pid", "terminate"]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill 0; /proc tells them apart.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def terminate(live_pids: Callable[[], list[int]], timeout: float, *, kill_wait: float, poll: float = 0.1) -> None:
    """Stop the processes ``live_pids()`` lists: SIGTERM, then SIGKILL to those left after ``timeout`` s.

    ``live_pids`` is called again while waiting, so it should list only processes
    still running (and reap its own children). After SIGKILL, waits up to
    ``kill_wait`` s for them to go.
    """
    pids = live_pids()
    if not pids:
        return
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
    if _wait_gone(live_pids, timeout, poll):
        return
    for pid in live_pids():
        signal_pid(pid, signal.SIGKILL)
    _wait_gone(live_pids, kill_wait, poll)


def _wait_gone(live_pids: Callable[[], list[int]], timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_pids():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
