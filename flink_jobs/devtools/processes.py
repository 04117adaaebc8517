"""Local processes and ports: what the Flink cluster and the Kafka broker helpers share.

``free_port`` picks a port, ``pid_alive`` and ``signal_pid`` look at and signal one
process, ``terminate`` stops a set of processes: SIGTERM first, SIGKILL for those
still there after a timeout. ``LoggedChild`` is what a started JVM's handle shares
(the Kafka Connect worker, the schema registry), ``tail`` the end of a log, and
``down_and_status`` the ``down`` and ``status`` commands of a detached server (``server_parser``
the parser of its ``up``, ``down`` and ``status``), ``spawn_logged``
and ``LoggedChild.wait_ready`` the start of one (the registry, Prometheus);
``java_executable`` and ``die_with_parent`` start the JVMs of the broker, the Connect worker and
the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LoggedChild", "die_with_parent", "down_and_status", "free_port", "java_executable", "pid_alive",
           "running_state", "server_parser", "signal_pid", "spawn_logged", "tail", "terminate"]

HOST = "127.0.0.1"


def java_executable() -> str:
    """The ``java`` of ``JAVA_HOME``, else the one on PATH; FileNotFoundError when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise FileNotFoundError("`java` not found: a JDK 17 is needed on PATH or in JAVA_HOME")
    return java


def die_with_parent() -> None:
    """For ``preexec_fn``: runs in the child between fork and exec and asks Linux to SIGTERM it when the parent exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


#: where free_port looks: below the kernel's ephemeral range (Linux's default starts at 32768)
_LISTEN_PORTS = (10_000, 32_768)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LISTEN_PORTS[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server that binds it later.

    It is drawn below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is
    also what every outgoing connection gets, and on a busy machine one took a MiniCluster's
    REST port between this pick and the JVM's bind (BindException). Out of that range, only a
    server that asks for the very same port can.
    """
    import random

    low, high = _LISTEN_PORTS[0], min(_LISTEN_PORTS[1], _ephemeral_low())
    for _ in range(200 if high > low else 0):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below: any free port
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


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log ("" when there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class LoggedChild:
    """For a dataclass with ``pid``, ``folder`` and ``_process`` (None when found by pid): one process, its log.

    ``LOG_FILE`` is the name of its log in ``folder``.
    """

    LOG_FILE = "process.log"
    pid: int
    folder: Path
    _process: subprocess.Popen | None

    @property
    def log_file(self) -> Path:
        return self.folder / self.LOG_FILE

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_file, lines)

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; safe to call twice."""
        terminate(lambda: [self.pid] if self.alive() else [], timeout, kill_wait=10)

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str, error: type[Exception],
                   poll: float = 0.3) -> None:
        """Wait until ``ready()``; if the process exits or ``timeout`` s pass, stop it and raise ``error``.

        ``what`` names it in the message ("the registry at http://..."), which ends with its log's last lines.
        """
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if not self.alive():
                    raise error(f"{what} exited; last lines of {self.log_file}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise error(f"{what} did not become ready within {timeout:g} s; "
                                f"last lines of {self.log_file}:\n{self.log_tail()}")
                time.sleep(poll)
        except BaseException:
            self.stop(timeout=10)
            raise


def spawn_logged(cmd: list[str], folder: Path, log_file: str, *, detach: bool) -> subprocess.Popen:
    """Start ``cmd`` in ``folder``, its output appended to ``folder/log_file``.

    ``detach``: in a session of its own, to outlive the caller (``make ...-up``); else it dies with the caller.
    """
    with open(folder / log_file, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
                                start_new_session=detach, preexec_fn=None if detach else die_with_parent)


def down_and_status(find: Callable[[Path], Any], what: str, name: str, address: Callable[[Any], str],
                    command: str) -> tuple[Callable[[Any], int], Callable[[Any], int]]:
    """The ``down`` and ``status`` commands (``args.data_dir``, ``args.timeout``) of a detached server.

    ``find(data_dir)`` is the running server or None; it has ``pid``, ``stop(timeout=)`` and ``alive()``.
    ``what`` names it when none runs ("Kafka broker"), ``name`` when one does ("Kafka", at ``address(it)``),
    ``command`` prefixes the error ("kafka-down").
    """

    def running_or_say(data_dir: Path) -> Any:
        running = find(data_dir)
        if running is None:
            print(f"no {what} running from {Path(data_dir).resolve()}")
        return running

    def cmd_down(args: Any) -> int:
        running = running_or_say(args.data_dir)
        if running is None:
            return 0
        running.stop(timeout=args.timeout)
        if running.alive():
            print(f"{command}: {what} pid {running.pid} did not exit", file=sys.stderr)
            return 1
        print(f"{name} at {address(running)} stopped (pid {running.pid})")
        return 0

    def cmd_status(args: Any) -> int:
        running = running_or_say(args.data_dir)
        if running is None:
            return 1
        print(f"{name} running at {address(running)} (pid {running.pid})")
        return 0

    return cmd_down, cmd_status


def running_state(folder: Path, state_file: str) -> dict | None:
    """The JSON state (with ``pid``) a detached server wrote in ``folder``, if that process still runs."""
    try:
        state = json.loads((Path(folder) / state_file).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if pid_alive(int(state["pid"])) else None


def server_parser(module: str, description: str, what: str, commands: tuple[Callable, Callable, Callable], *,
                  up_help: str, down_help: str, up_timeout: float, default_dir: str,
                  dir_help: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser of ``python -m MODULE {up,down,status}`` for a detached server, and its ``up`` sub-parser.

    ``commands`` are the ``up``, ``down`` and ``status`` functions; ``what`` names the server in the
    ``status`` help ("a registry"). Each command takes ``--data-dir`` (default ``default_dir``); ``up``
    takes ``--port`` and ``--timeout`` (default ``up_timeout``), ``down`` ``--timeout``; a caller
    adds its own arguments to the ``up`` parser.
    """
    cmd_up, cmd_down, cmd_status = commands
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help=up_help)
    up.add_argument("--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: a free port)")
    up.add_argument("--timeout", type=float, default=up_timeout,
                    help=f"seconds to wait until it is ready (default: {up_timeout:g})")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help=down_help)
    down.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL (default: 30)")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help=f"exit 0 if {what} runs from --data-dir")
    status.set_defaults(func=cmd_status)
    for p in (up, down, status):
        p.add_argument("--data-dir", type=Path, default=Path(default_dir), help=f"{dir_help} (default: {default_dir})")
    return parser, up


def _wait_gone(live_pids: Callable[[], list[int]], timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_pids():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
