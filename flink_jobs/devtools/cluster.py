"""A standalone Flink cluster from the pip-installed distribution, on loopback.

``apache-flink`` ships a whole Flink distribution inside the ``pyflink`` package (``bin/``,
``lib/``, ``opt/``, ``conf/``). This module renders ``conf/flink/config.yaml`` into a state
folder (default ``.local/flink``) with absolute paths and the chosen ports, then starts one
JobManager (``bin/jobmanager.sh start``) and N TaskManagers (``bin/taskmanager.sh start``) with
``FLINK_CONF_DIR`` pointing at the rendered folder and ``FLINK_LIB_DIR`` at ``<state>/lib``
(the distribution's jars plus ``opt/flink-python``, see :func:`_link_lib`). Logs go to ``<state>/log``, pid files to
``<state>/run``, checkpoints and savepoints to ``<state>/checkpoints`` and ``<state>/savepoints``.

::

    python -m flink_jobs.devtools.cluster up        # JobManager + 1 TaskManager, REST on 127.0.0.1:8081
    python -m flink_jobs.devtools.cluster status
    python -m flink_jobs.devtools.cluster down

The tests use :func:`start_cluster` on free ports in a temporary folder, and
:func:`taskmanager_pids`, :func:`kill_taskmanager` and :func:`add_taskmanager` for the failure test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from flink_jobs.devtools.processes import free_port, signal_pid, terminate

__all__ = [
    "Cluster",
    "ClusterError",
    "DEFAULT_STATE_DIR",
    "PROJECT_ROOT",
    "add_taskmanager",
    "flink_home",
    "free_port",
    "kill_taskmanager",
    "load_cluster",
    "rest_get",
    "start_cluster",
    "stop_cluster",
    "taskmanager_pids",
    "wait_for_taskmanagers",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_TEMPLATE = PROJECT_ROOT / "conf" / "flink" / "config.yaml"
DEFAULT_STATE_DIR = PROJECT_ROOT / ".local" / "flink"
_CLUSTER_FILE = "cluster.json"
# The daemon scripts pass "--configDir <dir>" to every JVM they start: a unique mark of this cluster.
_TM_MAIN = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
_JM_MAIN = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped; the message says where to look."""


@dataclass
class Cluster:
    """A running (or last started) standalone cluster, as saved in ``<state_dir>/cluster.json``."""

    state_dir: str
    conf_dir: str
    rest_port: int
    rpc_port: int
    taskmanagers: int

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def log_dir(self) -> Path:
        return Path(self.state_dir) / "log"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.state_dir) / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return Path(self.state_dir) / "savepoints"


def flink_home() -> Path:
    """The Flink distribution inside the installed ``pyflink`` package."""
    import pyflink

    home = Path(pyflink.__file__).resolve().parent
    if not (home / "bin" / "jobmanager.sh").exists():
        raise ClusterError(f"no Flink distribution under {home} (expected bin/jobmanager.sh); reinstall apache-flink")
    return home


def render_conf(state_dir: Path, *, rest_port: int, rpc_port: int, overrides: dict[str, Any] | None = None,
                template: Path = CONF_TEMPLATE) -> Path:
    """Write ``<state_dir>/conf/`` (config.yaml with absolute paths and ports, plus the log4j files).

    Parameters
    ----------
    state_dir : pathlib.Path
        The cluster's folder; created if missing.
    rest_port, rpc_port : int
        The REST and JobManager RPC ports, both on 127.0.0.1.
    overrides : dict, optional
        Any other Flink settings, applied last (flat keys).
    template : pathlib.Path
        The config to render (default ``conf/flink/config.yaml``).

    Returns
    -------
    pathlib.Path
        The rendered conf folder, for ``FLINK_CONF_DIR``.
    """
    state_dir = state_dir.resolve()
    text = template.read_text()
    text = (text.replace("@STATE_DIR@", str(state_dir)).replace("@PYTHON@", _venv_python())
            .replace("@PROJECT@", str(PROJECT_ROOT)))
    settings = yaml.safe_load(text) or {}
    settings.update({"rest.port": rest_port, "jobmanager.rpc.port": rpc_port})
    settings.update(overrides or {})
    conf_dir = state_dir / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("log", "run", "tmp", "upload", "checkpoints", "savepoints"):
        (state_dir / sub).mkdir(exist_ok=True)
    dist_conf = flink_home() / "conf"
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties", "logback.xml"):
        if (dist_conf / name).exists():
            shutil.copy(dist_conf / name, conf_dir / name)
    # the project's own files in conf/flink/ win over the distribution's (config.yaml is rendered)
    for extra in template.parent.iterdir():
        if extra.is_file() and extra.name != "config.yaml":
            shutil.copy(extra, conf_dir / extra.name)
    # quoted by yaml itself: values such as "0" must stay strings for Flink's port-range options
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(settings, default_flow_style=False, sort_keys=False))
    _link_lib(state_dir / "lib")
    (conf_dir / "workers").write_text("127.0.0.1\n")
    (conf_dir / "masters").write_text(f"127.0.0.1:{rest_port}\n")
    return conf_dir


def _link_lib(lib: Path) -> None:
    """``<state>/lib``: the distribution's lib/ plus opt/flink-python, as symlinks (FLINK_LIB_DIR).

    Thread mode loads pemja's native library. From a per-job class loader (flink-python shipped
    with each job) the second job on a TaskManager fails with ``NoSuchFieldException:
    loadedLibraryNames``; from the TaskManager's own class path it is loaded once. The pip
    distribution itself is left untouched (the venv is shared).
    """
    home = flink_home()
    lib.mkdir(parents=True, exist_ok=True)
    for old in lib.iterdir():
        old.unlink()
    for jar in [*sorted((home / "lib").glob("*.jar")), *sorted((home / "opt").glob("flink-python-*.jar"))]:
        (lib / jar.name).symlink_to(jar)


def _venv_python() -> str:
    # the venv's interpreter even when called through a symlink-resolving launcher
    venv = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _daemon_env(cluster: Cluster) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLINK_CONF_DIR": cluster.conf_dir,
        "FLINK_LOG_DIR": str(cluster.log_dir),
        "FLINK_PID_DIR": str(Path(cluster.state_dir) / "run"),
        "FLINK_LIB_DIR": str(Path(cluster.state_dir) / "lib"),
    })
    if "JAVA_HOME" not in env and shutil.which("java") is None:
        raise ClusterError("no java on PATH and JAVA_HOME unset; install a JDK 17")
    return env


def _script(cluster: Cluster, script: str, *args: str, timeout: float = 60) -> None:
    cmd = ["bash", str(flink_home() / "bin" / script), *args]
    done = subprocess.run(cmd, env=_daemon_env(cluster), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ClusterError(f"{script} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-800:]}"
                           f"; logs in {cluster.log_dir}")


def rest_get(cluster: Cluster | str, path: str, timeout: float = 5) -> Any:
    """GET ``path`` from the cluster's REST API and parse the JSON answer."""
    base = cluster.rest_url if isinstance(cluster, Cluster) else cluster.rstrip("/")
    with urllib.request.urlopen(base + path, timeout=timeout) as resp:
        return json.load(resp)


def start_cluster(state_dir: Path | str = DEFAULT_STATE_DIR, *, rest_port: int = 8081, rpc_port: int = 6123,
                  taskmanagers: int = 1, overrides: dict[str, Any] | None = None, timeout: float = 120) -> Cluster:
    """Start a JobManager and `taskmanagers` TaskManagers, and wait until all have registered.

    Parameters
    ----------
    state_dir : path
        Folder for the rendered conf, logs, pid files, checkpoints and savepoints.
    rest_port, rpc_port : int
        Ports on 127.0.0.1 (0 picks a free one).
    taskmanagers : int
        TaskManagers to start (each with the slots of ``taskmanager.numberOfTaskSlots``).
    overrides : dict, optional
        Extra Flink settings for this cluster.
    timeout : float
        Seconds to wait for the REST API and the TaskManagers.

    Returns
    -------
    Cluster
        Also saved to ``<state_dir>/cluster.json`` for ``status`` and ``down``.

    Raises
    ------
    ClusterError
        A port is taken, a script failed, or the cluster did not come up in time.
    """
    state_dir = Path(state_dir).resolve()
    existing = load_cluster(state_dir)
    if existing is not None and _jvm_pids(existing, _JM_MAIN):
        raise ClusterError(f"a cluster from {state_dir} is already running at {existing.rest_url}; stop it first")
    rest_port = rest_port or free_port()
    rpc_port = rpc_port or free_port()
    for port in (rest_port, rpc_port):
        if not _port_free(port):
            raise ClusterError(f"port 127.0.0.1:{port} is in use; pick another with --rest-port/--rpc-port")
    conf_dir = render_conf(state_dir, rest_port=rest_port, rpc_port=rpc_port, overrides=overrides)
    cluster = Cluster(state_dir=str(state_dir), conf_dir=str(conf_dir), rest_port=rest_port, rpc_port=rpc_port,
                      taskmanagers=taskmanagers)
    (state_dir / _CLUSTER_FILE).write_text(json.dumps(asdict(cluster), indent=2))
    try:
        _script(cluster, "jobmanager.sh", "start")
        for _ in range(taskmanagers):
            _script(cluster, "taskmanager.sh", "start")
        wait_for_taskmanagers(cluster, taskmanagers, timeout=timeout)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def load_cluster(state_dir: Path | str = DEFAULT_STATE_DIR) -> Cluster | None:
    """The cluster last started from `state_dir`, or None."""
    path = Path(state_dir).resolve() / _CLUSTER_FILE
    if not path.exists():
        return None
    return Cluster(**json.loads(path.read_text()))


def wait_for_taskmanagers(cluster: Cluster, count: int, timeout: float = 90) -> list[dict]:
    """Wait until the REST API answers and at least `count` TaskManagers are registered.

    Returns
    -------
    list of dict
        The ``/taskmanagers`` entries.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not _jvm_pids(cluster, _JM_MAIN):
            raise ClusterError(f"the JobManager exited; see {cluster.log_dir}/*standalonesession*.log")
        try:
            tms = rest_get(cluster, "/taskmanagers")["taskmanagers"]
            if len(tms) >= count:
                return tms
            last = f"{len(tms)} of {count} TaskManagers registered"
        except (OSError, ValueError) as exc:
            last = f"REST API not answering ({exc.__class__.__name__})"
        time.sleep(0.5)
    raise ClusterError(f"cluster at {cluster.rest_url} not ready within {timeout:g} s: {last}; logs in {cluster.log_dir}")


def add_taskmanager(cluster: Cluster, *, wait: bool = True, timeout: float = 90) -> int:
    """Start one more TaskManager; return its pid (after it registered, with `wait`)."""
    before = set(_jvm_pids(cluster, _TM_MAIN))
    # by id, not by count: a TaskManager just killed may still be listed until its heartbeat times out
    known = {tm["id"] for tm in _registered_taskmanagers(cluster)}
    _script(cluster, "taskmanager.sh", "start")
    deadline = time.monotonic() + 20
    new: set[int] = set()
    while not new and time.monotonic() < deadline:
        new = set(_jvm_pids(cluster, _TM_MAIN)) - before
        time.sleep(0.2)
    if not new:
        raise ClusterError(f"the new TaskManager did not start; logs in {cluster.log_dir}")
    deadline = time.monotonic() + timeout
    while wait and not {tm["id"] for tm in _registered_taskmanagers(cluster)} - known:
        if time.monotonic() > deadline:
            raise ClusterError(f"the new TaskManager did not register within {timeout:g} s; logs in {cluster.log_dir}")
        time.sleep(0.5)
    return new.pop()


def _registered_taskmanagers(cluster: Cluster) -> list[dict]:
    try:
        return rest_get(cluster, "/taskmanagers")["taskmanagers"]
    except (OSError, ValueError):
        return []


def taskmanager_pids(cluster: Cluster) -> list[int]:
    """Pids of this cluster's live TaskManager JVMs (found by their ``--configDir``)."""
    return _jvm_pids(cluster, _TM_MAIN)


def kill_taskmanager(cluster: Cluster, pid: int | None = None, sig: int = signal.SIGKILL, *,
                     reap_workers: bool = True) -> int:
    """Kill one TaskManager of this cluster by pid (default: the oldest), with SIGKILL by default.

    With `reap_workers`, the Python workers it had started (process mode: a shell, beam_boot and
    a tee per worker) are terminated after it, as they would die with a lost machine; left alone
    they outlive the JVM as orphans.

    Returns
    -------
    int
        The pid that was killed, once it is gone.
    """
    pids = taskmanager_pids(cluster)
    if pid is None:
        if not pids:
            raise ClusterError("no TaskManager of this cluster is running")
        pid = pids[0]
    elif pid not in pids:
        raise ClusterError(f"pid {pid} is not a TaskManager of the cluster at {cluster.rest_url}")
    workers = _descendants(pid) if reap_workers else []
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for worker in workers:
        signal_pid(worker, signal.SIGKILL)
    return pid


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def stop_cluster(cluster: Cluster | None = None, state_dir: Path | str = DEFAULT_STATE_DIR, timeout: float = 30) -> bool:
    """Stop every TaskManager and the JobManager of the cluster; True if something was running.

    The daemon scripts stop what their pid files list; any JVM of this cluster still alive after
    that (a TaskManager started by hand, a pid file lost) gets SIGTERM, then SIGKILL at `timeout`.
    """
    cluster = cluster or load_cluster(state_dir)
    if cluster is None:
        return False
    running = bool(_jvm_pids(cluster, _JM_MAIN) or _jvm_pids(cluster, _TM_MAIN))
    for script in ("taskmanager.sh", "jobmanager.sh"):
        try:
            _script(cluster, script, "stop-all", timeout=timeout)
        except (ClusterError, subprocess.TimeoutExpired):
            pass  # the sweep below finishes the job
    terminate(lambda: _jvm_pids(cluster, _TM_MAIN) + _jvm_pids(cluster, _JM_MAIN), timeout, kill_wait=0.5, poll=0.3)
    return running


def _jvm_pids(cluster: Cluster, main_class: str) -> list[int]:
    """Live JVMs running `main_class` with this cluster's conf dir, oldest first."""
    mark = cluster.conf_dir.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        if main_class.encode() in args and mark in args:
            found.append((started, int(entry.name)))
    return [pid for _, pid in sorted(found)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def overview(cluster: Cluster) -> dict:
    """``/overview``: TaskManagers, slots, and jobs by state."""
    return rest_get(cluster, "/overview")


# --- CLI -------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    overrides = {}
    try:
        if args.metrics_port:
            overrides = cluster_metrics_config(args.metrics_port, args.taskmanagers)
        cluster = start_cluster(args.state_dir, rest_port=args.rest_port, rpc_port=args.rpc_port,
                                taskmanagers=args.taskmanagers, overrides=overrides, timeout=args.timeout)
    except (ClusterError, ValueError) as exc:
        print(f"cluster up: {exc}", file=sys.stderr)
        return 1
    info = overview(cluster)
    print(f"Flink cluster up: REST/web UI {cluster.rest_url}, {info['taskmanagers']} TaskManager(s), "
          f"{info['slots-total']} slots; conf {cluster.conf_dir}, logs {cluster.log_dir}")
    if overrides:
        print(f"Prometheus: http://127.0.0.1:PORT/metrics on ports {overrides['metrics.reporter.prom.port']} "
              "(the JobManager and each TaskManager take the first free one)")
    return 0


def cluster_metrics_config(ports: str, taskmanagers: int) -> dict[str, str]:
    """The reporter settings for ``up --metrics-port``: one port per process, so one port becomes a range.

    A standalone cluster loads the reporter as a plugin from its Flink home's ``plugins/``.
    """
    from flink_jobs.metrics import parse_ports, prometheus_config

    first, last = parse_ports(ports)
    if first == last:
        # the JobManager, each TaskManager, and room for the ones add_taskmanager starts later
        last = min(65535, first + taskmanagers + 2)
    return prometheus_config(f"{first}-{last}")


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.state_dir)
    if cluster is None:
        print(f"no cluster was started from {args.state_dir}", file=sys.stderr)
        return 0
    was_running = stop_cluster(cluster)
    print("Flink cluster stopped" if was_running else "Flink cluster was not running", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.state_dir)
    if cluster is None:
        print(f"no cluster was started from {args.state_dir}")
        return 3
    jm = _jvm_pids(cluster, _JM_MAIN)
    tms = taskmanager_pids(cluster)
    print(f"JobManager pid {jm[0] if jm else '-'}, TaskManager pids {', '.join(map(str, tms)) or '-'}")
    try:
        info = overview(cluster)
    except (OSError, ValueError):
        print(f"REST API at {cluster.rest_url}: not answering")
        return 1
    print(f"REST API at {cluster.rest_url}: Flink {info.get('flink-version')}, {info['taskmanagers']} TaskManager(s), "
          f"{info['slots-available']}/{info['slots-total']} slots free, jobs running {info['jobs-running']}, "
          f"finished {info['jobs-finished']}, cancelled {info['jobs-cancelled']}, failed {info['jobs-failed']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flink_jobs.devtools.cluster",
        description="Start, stop and inspect a standalone Flink cluster on 127.0.0.1, from the pip-installed "
        "distribution, configured by conf/flink/config.yaml.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def state_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help="folder for conf, logs, pids, checkpoints and savepoints (default: .local/flink)")

    up = sub.add_parser("up", help="start a JobManager and TaskManagers",
                        description="Render conf/flink/config.yaml into STATE_DIR/conf and start one JobManager "
                        "and N TaskManagers; wait until all are registered.")
    state_arg(up)
    up.add_argument("--rest-port", type=int, default=8081, help="REST API and web UI port (default 8081; 0 = free)")
    up.add_argument("--rpc-port", type=int, default=6123, help="JobManager RPC port (default 6123; 0 = free)")
    up.add_argument("--taskmanagers", type=int, default=1, help="TaskManagers to start (default 1)")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for the cluster (default 120)")
    up.add_argument("--metrics-port", metavar="PORT[-PORT]",
                    help="turn on Flink's Prometheus reporter: the JobManager and each TaskManager serve "
                    "/metrics on a port of this range (one port P means P to P+TaskManagers+2)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop the cluster", description="Stop every TaskManager and the JobManager "
                          "of the cluster started from STATE_DIR (checkpoints and savepoints stay).")
    state_arg(down)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser("status", help="processes, slots and jobs",
                            description="Show the cluster's processes and what its REST API reports.")
    state_arg(status)
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
