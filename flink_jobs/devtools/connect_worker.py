"""A standalone Kafka Connect worker with Debezium's PostgreSQL connector, on 127.0.0.1.

It runs from the jars ``conf/fetch_jars.sh`` puts in ``jars/connect/`` (Kafka Connect 4.3.0 and
``io.debezium:debezium-connector-postgres`` 3.6.1.Final, from Maven Central through
``conf/connect/pom.xml``)::

    java -cp 'jars/connect/*' org.apache.kafka.connect.cli.ConnectStandalone worker.properties

Everything it writes (``worker.properties``, ``log4j2.properties``, its offsets and ``connect.log``)
lives in one folder. Connectors are added through its REST API, and :func:`start_worker` waits
until the worker answers; :meth:`ConnectWorker.add_postgres_connector` until Debezium's task runs.

Change events are JSON without Connect's schema wrapper (``schemas.enable=false``); a delete is
followed by a tombstone (``tombstones.on.delete``), so compacted topics forget the row. With
:func:`avro_converter` a connector writes its keys and values as Avro in Confluent's wire format instead,
through Apicurio's converter (``io.apicurio:apicurio-registry-utils-converter``) and a registry.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs.devtools.processes import LoggedChild, die_with_parent, free_port, java_executable

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JARS_DIR = ROOT / "jars" / "connect"
_LOG_FILE = "connect.log"
_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:connect.log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.reflections.name = org.reflections
logger.reflections.level = error
"""


def avro_converter(registry_url: str, *, keys: bool = True) -> dict[str, str]:
    """Connector settings: values, and keys unless ``keys`` is False, as Avro in Confluent's wire format.

    ``registry_url`` is Apicurio's own API (:attr:`flink_jobs.devtools.registry.Registry.native_url`). The
    converter registers each value schema under ``<topic>-value`` (and each key schema under
    ``<topic>-key``) and frames each record with a magic byte and the 4-byte content id, the id the
    registry's Confluent-compatible API serves schemas by (``/schemas/ids/{id}``), so a reader that
    knows only that API decodes them. With ``keys=False`` keys are JSON (Connect's ``JsonConverter``).
    """
    settings = {} if keys else {"key.converter": "org.apache.kafka.connect.json.JsonConverter",
                                "key.converter.schemas.enable": "false"}
    for part in ("key", "value") if keys else ("value",):
        prefix = f"{part}.converter.apicurio.registry."
        settings |= {
            f"{part}.converter": "io.apicurio.registry.utils.converter.AvroConverter",
            prefix + "url": registry_url,
            prefix + "auto-register": "true",
            prefix + "as-confluent": "true",           # magic byte + 4-byte id (Apicurio's own framing has 8 bytes)
            prefix + "use-id": "contentId",            # the id space of the Confluent-compatible API
            prefix + "headers.enabled": "false",       # the id in the record's frame, not in record headers
        }
    return settings


class ConnectError(RuntimeError):
    """The worker or a connector could not be started; the message holds the end of its log."""


@dataclass
class ConnectWorker(LoggedChild):
    """A running worker started by :func:`start_worker`."""

    LOG_FILE = _LOG_FILE
    rest_port: int
    folder: Path
    pid: int
    bootstrap: str
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def request(self, path: str, method: str = "GET", body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def add_postgres_connector(self, name: str, *, port: int, database: str, user: str, topic_prefix: str,
                               tables: list[str], slot: str | None = None, timeout: float = 120,
                               extra: dict[str, str] | None = None) -> dict:
        """Add Debezium's PostgreSQL connector (``pgoutput``, no server plugin) and wait until its task runs.

        The server needs ``wal_level=logical`` (:mod:`flink_jobs.devtools.pg_local` sets it). Tables are
        ``schema.table``; their events go to ``<topic_prefix>.<schema>.<table>``.
        """
        config = {
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": "127.0.0.1",
            "database.port": str(port),
            "database.user": user,
            "database.password": "unused-the-local-server-trusts-loopback",
            "database.dbname": database,
            "topic.prefix": topic_prefix,
            "plugin.name": "pgoutput",
            "slot.name": slot or f"anon_{name}".replace("-", "_").lower(),
            "publication.name": f"anon_{name}_pub".replace("-", "_").lower(),
            "publication.autocreate.mode": "filtered",
            "table.include.list": ",".join(tables),
            "tombstones.on.delete": "true",
            "snapshot.mode": "initial",
            # the whole old row in `before` of updates and deletes (REPLICA IDENTITY FULL is set by the caller)
            "decimal.handling.mode": "double",
            **(extra or {}),
        }
        try:
            self.request("/connectors", "POST", {"name": name, "config": config})
        except urllib.error.HTTPError as exc:
            raise ConnectError(f"adding connector {name} failed: HTTP {exc.code} "
                               f"{exc.read().decode(errors='replace')[:800]}") from None
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                status = self.request(f"/connectors/{name}/status") or {}
                tasks = status.get("tasks") or []
                states = [status.get("connector", {}).get("state")] + [t.get("state") for t in tasks]
                if "FAILED" in states:
                    trace = next((t.get("trace", "") for t in tasks if t.get("state") == "FAILED"),
                                 status.get("connector", {}).get("trace", ""))
                    raise ConnectError(f"connector {name} failed: {trace[:1500]}")
                if tasks and all(s == "RUNNING" for s in states):
                    return status
            time.sleep(0.5)
        raise ConnectError(f"connector {name} did not run within {timeout:g} s (status {status}); "
                           f"last lines of {self.log_file}:\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if not self.alive():
            raise ConnectError(f"the Connect worker exited; last lines of {self.log_file}:\n{self.log_tail()}")


def start_worker(folder: Path, bootstrap: str, *, rest_port: int | None = None, timeout: float = 120,
                 jars_dir: Path = DEFAULT_JARS_DIR, heap: str = "384m") -> ConnectWorker:
    """Start a standalone worker against ``bootstrap`` and wait until its REST API answers.

    The worker is a child that dies with this process (Linux), like the test broker.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    jars_dir = Path(jars_dir).resolve()
    if not any(jars_dir.glob("connect-runtime-*.jar")) or not any(jars_dir.glob("debezium-connector-postgres-*.jar")):
        raise ConnectError(f"no Kafka Connect or Debezium jars in {jars_dir}; fetch them with `make jars` "
                           "(bash conf/fetch_jars.sh)")
    rest_port = rest_port or free_port()
    props = folder / "worker.properties"
    props.write_text("\n".join([
        f"bootstrap.servers={bootstrap}",
        f"listeners=http://127.0.0.1:{rest_port}",
        "rest.advertised.host.name=127.0.0.1",
        "key.converter=org.apache.kafka.connect.json.JsonConverter",
        "value.converter=org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable=false",
        "value.converter.schemas.enable=false",
        f"offset.storage.file.filename={folder / 'offsets.dat'}",
        "offset.flush.interval.ms=1000",
        # every jar is on the class path: no plugin folders to scan
        "plugin.discovery=only_scan",
        "",
    ]))
    log4j = folder / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    cmd = [java_executable(), f"-Xmx{heap}", "-Xms64m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={log4j}", f"-Dconnect.log.file={folder / _LOG_FILE}",
           "-cp", f"{jars_dir}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(props)]
    with open(folder / "stdout.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
                                preexec_fn=die_with_parent)
    worker = ConnectWorker(rest_port=rest_port, folder=folder, pid=proc.pid, bootstrap=bootstrap, _process=proc)
    deadline = time.monotonic() + timeout
    try:
        while True:
            worker._check_alive()
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                if worker.request("/", timeout=5).get("version"):
                    return worker
            if time.monotonic() > deadline:
                raise ConnectError(f"the Connect worker did not answer at {worker.url} within {timeout:g} s; "
                                   f"last lines of {worker.log_file}:\n{worker.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        worker.stop(timeout=10)
        raise
