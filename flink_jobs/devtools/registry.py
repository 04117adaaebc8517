"""A Confluent-compatible schema registry on 127.0.0.1: Apicurio Registry 2.4.2.Final, storage in memory.

``conf/registry/pom.xml`` builds it from Maven Central only (``mvn -s conf/registry/settings.xml``,
which mirrors every repository to Central: Apicurio's POMs declare repositories that are not
reachable here) into ``conf/registry/target/`` (gitignored)::

    java -Xmx256m -XX:+UseSerialGC -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port=PORT
         -jar conf/registry/target/apicurio-registry-local-0-runner.jar

The Confluent API is at ``http://127.0.0.1:PORT/apis/ccompat/v6`` (:attr:`Registry.url`); the
registry answers ``/health/ready`` when it takes requests. Every schema is lost when it stops.

``python -m flink_jobs.devtools.registry up|down|status`` (``make registry-up`` / ``registry-down``)
runs one detached, its pid and port in ``--data-dir``; :func:`start_registry` a child that dies
with the caller (the test fixture).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from flink_jobs.devtools.processes import (
    LoggedChild,
    down_and_status,
    free_port,
    java_executable,
    running_state,
    server_parser,
    spawn_logged,
)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "conf" / "registry"
RUNNER = PROJECT / "target" / "apicurio-registry-local-0-runner.jar"
_STAMP = PROJECT / "target" / ".stamp"
_STATE_FILE = "registry.json"
_LOG_FILE = "registry.log"
CCOMPAT = "/apis/ccompat/v6"
#: Apicurio's own API, which its serializers and Kafka Connect converter speak
NATIVE = "/apis/registry/v2"


class RegistryError(RuntimeError):
    """The registry could not be built or started; the message holds the end of its log."""


@dataclass
class Registry(LoggedChild):
    """A running registry started by :func:`start_registry` (or found by :func:`running_registry`)."""

    LOG_FILE = _LOG_FILE
    port: int
    folder: Path
    pid: int
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``--schema-registry`` takes."""
        return self.base + CCOMPAT

    @property
    def native_url(self) -> str:
        """Apicurio's own API: what its Kafka Connect converter takes (``connect_worker.avro_converter``)."""
        return self.base + NATIVE

    def ready(self) -> bool:
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(self.base + "/health/ready", timeout=5) as resp:
                return resp.status == 200
        return False

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; safe to call twice. Forgets the state file."""
        super().stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / _STATE_FILE).unlink()


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([PROJECT / "pom.xml", PROJECT / "settings.xml", *(PROJECT / "src").rglob("*.java")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build(force: bool = False, timeout: float = 900) -> Path:
    """Build the registry with Maven (a no-op while ``conf/registry`` is unchanged); returns the runner jar."""
    want = _sources_digest()
    if not force and RUNNER.exists() and _STAMP.exists() and _STAMP.read_text().strip() == want:
        return RUNNER
    cmd = ["mvn", "-s", str(PROJECT / "settings.xml"), "-f", str(PROJECT / "pom.xml"), "-B", "-q",
           "-Dstyle.color=never", "-DskipTests", "package"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RegistryError("mvn not found; install Maven (apt-get install maven) and a JDK 17") from None
    if done.returncode != 0 or not RUNNER.exists():
        raise RegistryError(f"building the registry failed (mvn exit {done.returncode}):\n"
                            + "\n".join((done.stdout + done.stderr).splitlines()[-30:]))
    _STAMP.write_text(want + "\n")
    return RUNNER


def start_registry(folder: Path, port: int | None = None, *, timeout: float = 120, detach: bool = False,
                   heap: str = "256m") -> Registry:
    """Build if needed, start the registry on 127.0.0.1 and wait until ``/health/ready`` answers."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    jar = build()
    port = port or free_port()
    cmd = [java_executable(), f"-Xmx{heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
           "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}", "-jar", str(jar)]
    proc = spawn_logged(cmd, folder, _LOG_FILE, detach=detach)
    registry = Registry(port=port, folder=folder, pid=proc.pid, _process=proc)
    if detach:
        (folder / _STATE_FILE).write_text(json.dumps({"pid": proc.pid, "port": port}))
    registry.wait_ready(registry.ready, timeout, f"the registry at {registry.base}", RegistryError)
    return registry


def running_registry(folder: Path) -> Registry | None:
    """The detached registry started from ``folder``, if it still runs."""
    folder = Path(folder).resolve()
    state = running_state(folder, _STATE_FILE)
    return None if state is None else Registry(port=int(state["port"]), folder=folder, pid=int(state["pid"]))


def _cmd_up(args: argparse.Namespace) -> int:
    running = running_registry(args.data_dir)
    if running is not None:
        if args.port and args.port != running.port:
            print(f"a registry already runs from {running.folder} on port {running.port} (pid {running.pid}), "
                  f"not on {args.port}; run `down` first", file=sys.stderr)
            return 1
        print(f"schema registry already running at {running.url} (pid {running.pid})")
        return 0
    try:
        t0 = time.monotonic()
        registry = start_registry(args.data_dir, args.port, timeout=args.timeout, detach=True)
    except RegistryError as exc:
        print(f"registry-up: {exc}", file=sys.stderr)
        return 1
    print(f"schema registry running at {registry.url} (pid {registry.pid}, log {registry.log_file}, "
          f"ready in {time.monotonic() - t0:.1f} s; schemas are kept in memory only)")
    return 0


_cmd_down, _cmd_status = down_and_status(running_registry, "schema registry", "schema registry",
                                         lambda r: r.url, "registry-down")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flink_jobs.devtools.registry {up,down,status}``."""
    parser, _ = server_parser("flink_jobs.devtools.registry", "Start or stop a local Confluent-compatible schema "
                              "registry (Apicurio Registry, in memory) on 127.0.0.1.", "a registry",
                              (_cmd_up, _cmd_down, _cmd_status), up_help="build if needed and start a detached registry",
                              down_help="stop the registry started from --data-dir (its schemas are lost)",
                              up_timeout=180, default_dir=".local/registry", dir_help="folder for its log and pid file")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
