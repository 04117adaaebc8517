"""A real Prometheus server on 127.0.0.1 that scrapes given targets every second: Debian's ``prometheus``.

Nothing here stands in for Prometheus: the binary is Debian's package (``apt-get install prometheus``,
found on PATH), run as::

    prometheus --config.file=FOLDER/prometheus.yml --storage.tsdb.path=FOLDER/data
               --web.listen-address=127.0.0.1:PORT

with a config that scrapes each ``HOST:PORT`` target (a job's ``--metrics-port``) every second under
the job name ``flink-anonymizer``. It answers ``/-/ready`` when it takes queries;
:meth:`Prometheus.query` asks its HTTP API (``/api/v1/query``).

``python -m flink_jobs.devtools.prometheus up|down|status`` (``make prometheus-up`` /
``prometheus-down``) runs one detached, its pid and port in ``--data-dir``; :func:`start_prometheus`
a child that dies with the caller (the test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flink_jobs.devtools.processes import LoggedChild, down_and_status, free_port, running_state, server_parser, spawn_logged

__all__ = ["JOB_NAME", "Prometheus", "PrometheusError", "prometheus_executable", "running_prometheus",
           "start_prometheus", "write_config"]

JOB_NAME = "flink-anonymizer"
_STATE_FILE = "prometheus.json"
_CONFIG_FILE = "prometheus.yml"


class PrometheusError(RuntimeError):
    """Prometheus could not be found, started or asked; the message says why (and holds the end of its log)."""


def prometheus_executable() -> str:
    """The ``prometheus`` on PATH; PrometheusError naming the Debian package when there is none."""
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusError("`prometheus` not found on PATH: install Debian's package "
                              "(apt-get install prometheus); .ci/run does")
    return found


def write_config(folder: Path, targets: list[str], interval: str = "1s") -> Path:
    """``FOLDER/prometheus.yml``: one scrape job, ``flink-anonymizer``, on ``targets`` every ``interval``."""
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": JOB_NAME, "static_configs": [{"targets": list(targets)}]}],
    }
    path = Path(folder) / _CONFIG_FILE
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Prometheus(LoggedChild):
    """A running Prometheus started by :func:`start_prometheus` (or found by :func:`running_prometheus`)."""

    LOG_FILE = "prometheus.log"
    port: int
    folder: Path
    pid: int
    targets: list[str] = field(default_factory=list)
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as resp:
                return resp.status == 200
        return False

    def api(self, path: str, **params: str) -> Any:
        """``data`` of an answer of the HTTP API (``path`` like ``/api/v1/query``); PrometheusError if it fails."""
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=10) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{address}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"{address}: {exc}") from None
        if answer.get("status") != "success":
            raise PrometheusError(f"{address}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` evaluates to now: ``[{"metric": {labels}, "value": [time, "value"]}]``."""
        return self.api("/api/v1/query", query=expr)["result"]

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; safe to call twice. Forgets the state file."""
        super().stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / _STATE_FILE).unlink()


def start_prometheus(folder: Path, targets: list[str], port: int | None = None, *, timeout: float = 60,
                     detach: bool = False) -> Prometheus:
    """Write the config, start Prometheus on 127.0.0.1 (storage in ``FOLDER/data``) and wait for ``/-/ready``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    binary = prometheus_executable()
    config = write_config(folder, targets)
    port = port or free_port()
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}"]
    proc = spawn_logged(cmd, folder, Prometheus.LOG_FILE, detach=detach)
    server = Prometheus(port=port, folder=folder, pid=proc.pid, targets=list(targets), _process=proc)
    if detach:
        (folder / _STATE_FILE).write_text(json.dumps({"pid": proc.pid, "port": port, "targets": list(targets)}))
    server.wait_ready(server.ready, timeout, f"prometheus at {server.url}", PrometheusError, poll=0.2)
    return server


def running_prometheus(folder: Path) -> Prometheus | None:
    """The detached Prometheus started from ``folder``, if it still runs."""
    folder = Path(folder).resolve()
    state = running_state(folder, _STATE_FILE)
    if state is None:
        return None
    return Prometheus(port=int(state["port"]), folder=folder, pid=int(state["pid"]),
                      targets=list(state.get("targets", [])))


def _cmd_up(args: argparse.Namespace) -> int:
    targets = args.target or ["127.0.0.1:9249"]
    running = running_prometheus(args.data_dir)
    if running is not None:
        if (args.port and args.port != running.port) or sorted(targets) != sorted(running.targets):
            print(f"a Prometheus already runs from {running.folder} on port {running.port} (pid {running.pid}), "
                  f"scraping {', '.join(running.targets)}; run `down` first", file=sys.stderr)
            return 1
        print(f"Prometheus already running at {running.url} (pid {running.pid})")
        return 0
    t0 = time.monotonic()
    try:
        server = start_prometheus(args.data_dir, targets, args.port, timeout=args.timeout, detach=True)
    except PrometheusError as exc:
        print(f"prometheus-up: {exc}", file=sys.stderr)
        return 1
    print(f"Prometheus running at {server.url} (pid {server.pid}, scraping {', '.join(targets)} every 1 s "
          f"as job {JOB_NAME}, log {server.log_file}, ready in {time.monotonic() - t0:.1f} s)")
    return 0


_cmd_down, _cmd_status = down_and_status(running_prometheus, "Prometheus", "Prometheus", lambda p: p.url,
                                         "prometheus-down")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flink_jobs.devtools.prometheus {up,down,status}``."""
    parser, up = server_parser("flink_jobs.devtools.prometheus", "Start or stop a local Prometheus (Debian's "
                               "package) on 127.0.0.1 that scrapes a job's --metrics-port every second.", "a Prometheus",
                               (_cmd_up, _cmd_down, _cmd_status), up_help="start a detached Prometheus scraping --target",
                               down_help="stop the Prometheus started from --data-dir (keeps its data)", up_timeout=60,
                               default_dir=".local/prometheus", dir_help="folder for its config, data, log and pid file")
    up.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                    help="a metrics port to scrape; repeat for more (default: 127.0.0.1:9249)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
