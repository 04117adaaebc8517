"""A local PostgreSQL for the token vault: ``initdb`` and ``pg_ctl`` into a folder, on loopback only.

It serves ``make vault-up`` (``python -m flink_jobs.devtools.pg_local up --data-dir .local/pg``)
and the tests' session fixture. The server comes from Debian's ``postgresql``
package (``apt-get install -y postgresql``); its binaries are found on ``PATH`` or
under ``/usr/lib/postgresql/<version>/bin``.

The server listens on 127.0.0.1 only, with no Unix socket, and trusts loopback
connections for the superuser ``anon``: it is a development and test server,
never a production one.

PostgreSQL refuses to run as root. Run as root (as CI does), the helper runs
``initdb`` and ``pg_ctl`` as the ``postgres`` system user through ``runuser``
(creating that user with ``useradd --system`` if it is missing) and gives it the
data folder. That folder's parents must then be searchable by that user, which is
why the tests put it under ``/tmp`` rather than pytest's private ``tmp_path``.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from flink_jobs.devtools.processes import free_port

__all__ = ["LocalPostgres", "PostgresSetupError", "find_binary", "free_port"]

SUPERUSER = "anon"
SERVICE_USER = "postgres"
DEFAULT_PORT = 5433  # not 5432: a system PostgreSQL may already hold it


class PostgresSetupError(RuntimeError):
    """The local server cannot be set up or started; the message says what to do."""


def find_binary(name: str) -> str:
    """Path of a PostgreSQL server binary (``initdb``, ``pg_ctl``): on PATH, else the newest Debian one."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return candidates[-1]
    raise PostgresSetupError(f"{name} not found: install the PostgreSQL server (apt-get install -y postgresql)")


class LocalPostgres:
    """One server in ``data_dir``, on ``127.0.0.1:port``.

    Parameters
    ----------
    data_dir : path
        The cluster folder (created by :meth:`init`).
    port : int
        Loopback TCP port.
    durable : bool
        False turns fsync and synchronous commit off: faster, for throw-away test servers.
    """

    def __init__(self, data_dir: str | os.PathLike[str], port: int = DEFAULT_PORT, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.durable = durable

    # -- running as root ----------------------------------------------------------------------
    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _command(self, *argv: str) -> list[str]:
        if not self._as_root():
            return list(argv)
        # initdb and postgres refuse root: drop to the service user for every server command
        return ["runuser", "-u", SERVICE_USER, "--", *argv]

    def _ensure_service_user(self) -> None:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                           check=True)
        entry = pwd.getpwnam(SERVICE_USER)
        for parent in self.data_dir.parents:
            if parent.exists() and not os.stat(parent).st_mode & 0o001:
                raise PostgresSetupError(
                    f"{parent} is not searchable by the '{SERVICE_USER}' user the server runs as under root; "
                    "put the data folder elsewhere (e.g. under /tmp)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(*argv), capture_output=True, text=True, timeout=timeout, cwd="/")

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """``initdb`` the folder (once) and configure loopback-only TCP on :attr:`port`."""
        if self.initialized:
            self._configure()
            return
        if self._as_root():
            self._ensure_service_user()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        done = self._run(find_binary("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                         "--encoding=UTF8", "--locale=C", "--no-instructions")
        if done.returncode != 0:
            raise PostgresSetupError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        self._configure()

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",  # TCP on loopback only: no socket file to share
            "max_connections": "100",
            # logical decoding, for Debezium's change data capture (make cdc-demo, the CDC tests)
            "wal_level": "logical",
            "max_replication_slots": "8",
            "max_wal_senders": "8",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        # an include file of ours: initdb's postgresql.conf stays as it was written
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf = self.data_dir / "postgresql.conf"
        if self._as_root():
            # the service user owns the folder; root may still write into it
            (self.data_dir / "anon.conf").write_text(text)
            os.chown(self.data_dir / "anon.conf", *_ids(SERVICE_USER))
        else:
            (self.data_dir / "anon.conf").write_text(text)
        current = conf.read_text()
        if "include_if_exists = 'anon.conf'" not in current:
            conf.write_text(current + "\ninclude_if_exists = 'anon.conf'\n")

    def running(self) -> bool:
        if not self.initialized:
            return False
        return self._run(find_binary("pg_ctl"), "-D", str(self.data_dir), "status").returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections (idempotent)."""
        if not self.initialized:
            self.init()
        if self.running():
            return
        log = self.data_dir / "server.log"
        done = self._run(find_binary("pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60", "start")
        if done.returncode != 0:
            tail = log.read_text()[-800:] if log.exists() else done.stderr
            raise PostgresSetupError(f"pg_ctl start failed ({done.returncode}); server log ends:\n{tail}")
        self._wait_for_port()

    def _wait_for_port(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise PostgresSetupError(f"the server did not listen on 127.0.0.1:{self.port} within {timeout:g} s")

    def stop(self) -> None:
        """Stop the server (fast shutdown); nothing happens when it is not running."""
        if self.running():
            self._run(find_binary("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    # -- databases ------------------------------------------------------------------------------
    def url(self, database: str = "vault") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` if missing; return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def main(argv: list[str] | None = None) -> int:
    """``python -m flink_jobs.devtools.pg_local {up,down,status}``: the local vault server."""
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.devtools.pg_local",
                                     description="Start or stop a local PostgreSQL for the token vault, on loopback.")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--data-dir", default=".local/pg", help="cluster folder (default: .local/pg)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"loopback port (default: {DEFAULT_PORT})")
    parser.add_argument("--database", default="vault", help="database to create (default: vault)")
    args = parser.parse_args(argv)
    return run_action(args.action, args.data_dir, args.port, args.database)


def run_action(action: str, data_dir: str, port: int, database: str = "vault") -> int:
    server = LocalPostgres(data_dir, port)
    try:
        if action == "up":
            server.start()
            url = server.create_database(database)
            print(f"PostgreSQL vault running in {server.data_dir} on 127.0.0.1:{port}\n"
                  f"  export ANON_VAULT={url}")
        elif action == "down":
            server.stop()
            print(f"PostgreSQL in {server.data_dir} stopped")
        else:
            state = "running" if server.running() else "stopped"
            print(f"PostgreSQL in {server.data_dir}: {state}")
            return 0 if state == "running" else 3
    except PostgresSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
