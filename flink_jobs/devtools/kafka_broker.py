"""A single-node KRaft Kafka broker on 127.0.0.1, for local runs, the demo and the tests.

The broker runs from the jars that ``conf/fetch_jars.sh`` puts in ``jars/kafka/``::

    java -cp 'jars/kafka/*' kafka.tools.StorageTool format ...   # once per data dir
    java -cp 'jars/kafka/*' kafka.Kafka server.properties

Everything it writes (``server.properties``, ``log4j2.properties``, the partition
logs in ``data/``, its own log ``broker.log``, and ``broker.pid`` when detached)
lives in one data folder, so removing that folder removes the broker's state.

From Python::

    broker = start_broker(tmp_path / "kafka")
    try:
        use(broker.bootstrap)          # "127.0.0.1:PORT"
    finally:
        broker.stop()

From make (detaches, idempotent)::

    python -m flink_jobs.devtools.kafka_broker up --data-dir .local/kafka --port 9092
    python -m flink_jobs.devtools.kafka_broker down --data-dir .local/kafka
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flink_jobs.devtools.processes import die_with_parent, down_and_status, free_port, java_executable, pid_alive, terminate

__all__ = [
    "Broker",
    "BrokerError",
    "DEFAULT_JARS_DIR",
    "free_port",
    "main",
    "running_broker",
    "start_broker",
]

DEFAULT_JARS_DIR = Path(__file__).resolve().parents[2] / "jars" / "kafka"
HOST = "127.0.0.1"
_PID_FILE = "broker.pid"
_STATE_FILE = "broker.json"
_LOG_FILE = "broker.log"


class BrokerError(RuntimeError):
    """The broker could not be started, reached or stopped."""


@dataclass
class Broker:
    """A running broker started by :func:`start_broker`.

    Attributes
    ----------
    port : int
        The PLAINTEXT listener port on 127.0.0.1.
    controller_port : int
        The KRaft controller listener port on 127.0.0.1.
    data_dir : pathlib.Path
        The folder that holds the broker's configuration, partition logs and ``broker.log``.
    pid : int
        The broker JVM's process id.
    """

    port: int
    controller_port: int
    data_dir: Path
    pid: int
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """The broker's own log (stdout and stderr of the JVM)."""
        return self.data_dir / _LOG_FILE

    def alive(self) -> bool:
        """Whether the broker process is still running."""
        if self._process is not None:
            return self._process.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker: SIGTERM for a controlled shutdown, SIGKILL if it has not exited in `timeout` s.

        Safe to call twice. Removes the pid file if there is one.
        """
        terminate(lambda: [self.pid] if self.alive() else [], timeout, kill_wait=10)
        for name in (_PID_FILE, _STATE_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / name).unlink()


def start_broker(
    data_dir: Path,
    port: int | None = None,
    timeout: float = 60,
    *,
    controller_port: int | None = None,
    jars_dir: Path = DEFAULT_JARS_DIR,
    detach: bool = False,
    heap: str = "512m",
) -> Broker:
    """Start a single-node KRaft broker and wait until it answers a metadata request.

    Parameters
    ----------
    data_dir : pathlib.Path
        Folder for the configuration, the partition logs and ``broker.log``. Created if missing.
        An already formatted folder is reused, with its topics.
    port : int, optional
        The client port on 127.0.0.1. A free one is picked when omitted.
    timeout : float
        Seconds to wait for the broker to answer.
    controller_port : int, optional
        The KRaft controller port. A free one is picked when omitted.
    jars_dir : pathlib.Path
        The folder with the broker jars (``bash conf/fetch_jars.sh`` fills it).
    detach : bool
        Start the JVM in its own session and write ``broker.pid``, so it outlives this process
        (``make kafka-up``). Otherwise it is a child that dies with its parent, even a killed one
        (on Linux, with the parent *thread*: start it from a thread that lives as long as you need it).
    heap : str
        The JVM's ``-Xmx``.

    Returns
    -------
    Broker
        The running broker. Call :meth:`Broker.stop` when done.

    Raises
    ------
    BrokerError
        The jars or ``java`` are missing, a port is taken, formatting failed, or the broker exited
        or did not answer within `timeout`. The message holds the last lines of ``broker.log``.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    jars_dir = Path(jars_dir).resolve()
    if not any(jars_dir.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"no Kafka broker jars in {jars_dir}; fetch them with `make jars` (bash conf/fetch_jars.sh)")
    try:
        java = java_executable()
    except FileNotFoundError as exc:
        raise BrokerError(str(exc)) from None
    port = port or free_port()
    controller_port = controller_port or free_port()
    for p in (port, controller_port):
        if _port_open(p):
            raise BrokerError(f"port {HOST}:{p} is already in use; pick another with --port or stop what listens there")

    props = data_dir / "server.properties"
    props.write_text(_server_properties(data_dir / "data", port, controller_port))
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    classpath = f"{jars_dir}/*"
    jvm = [java, f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}"]
    log_path = data_dir / _LOG_FILE

    # Formatting writes meta.properties; a folder formatted before keeps its cluster id and topics.
    if not (data_dir / "data" / "meta.properties").exists():
        fmt = subprocess.run(
            [*jvm, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if fmt.returncode != 0:
            tail = "\n".join((fmt.stdout + fmt.stderr).strip().splitlines()[-20:])
            raise BrokerError(f"kafka.tools.StorageTool format failed (exit {fmt.returncode}) in {data_dir}:\n{tail}")

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*jvm, "-cp", classpath, "kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=detach,
            # An attached broker dies with its parent even when that is killed (no finalizers run).
            preexec_fn=None if detach else die_with_parent,
        )
    broker = Broker(port=port, controller_port=controller_port, data_dir=data_dir, pid=proc.pid, _process=proc)
    if detach:
        (data_dir / _PID_FILE).write_text(f"{proc.pid}\n")
        (data_dir / _STATE_FILE).write_text(json.dumps({"pid": proc.pid, "port": port, "controller_port": controller_port}))
    try:
        _wait_ready(broker, timeout)
    except BaseException:
        broker.stop(timeout=10)
        raise
    return broker


def running_broker(data_dir: Path) -> Broker | None:
    """The detached broker whose pid file is in `data_dir`, if that process is still alive."""
    data_dir = Path(data_dir).resolve()
    try:
        state = json.loads((data_dir / _STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not pid_alive(state["pid"]):
        return None
    return Broker(port=state["port"], controller_port=state["controller_port"], data_dir=data_dir, pid=state["pid"])


def log_tail(data_dir: Path, lines: int = 30) -> str:
    """The last `lines` lines of the broker log in `data_dir` ("" if there is none)."""
    try:
        text = (Path(data_dir) / _LOG_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(broker: Broker, timeout: float) -> None:
    # TCP first: an AdminClient pointed at a closed port logs a refusal on stderr every retry.
    deadline = time.monotonic() + timeout
    while not _port_open(broker.port):
        _check_not_dead(broker)
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka broker did not open {broker.bootstrap} within {timeout:g} s; last lines of "
                f"{broker.log_file}:\n{log_tail(broker.data_dir)}"
            )
        time.sleep(0.2)
    from confluent_kafka.admin import AdminClient  # imported late: `down` and `--help` work without it

    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    last: Exception | None = None
    while time.monotonic() < deadline:
        _check_not_dead(broker)
        try:
            md = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while the controller elects itself
            last = exc
        time.sleep(0.2)
    raise BrokerError(
        f"Kafka broker at {broker.bootstrap} did not answer a metadata request within {timeout:g} s "
        f"({last}); last lines of {broker.log_file}:\n{log_tail(broker.data_dir)}"
    )


def _check_not_dead(broker: Broker) -> None:
    if not broker.alive():
        code = broker._process.poll() if broker._process is not None else "?"
        raise BrokerError(
            f"Kafka broker exited (code {code}) before it was ready; last lines of "
            f"{broker.log_file}:\n{log_tail(broker.data_dir)}"
        )


def _server_properties(log_dir: Path, port: int, controller_port: int) -> str:
    return f"""\
# Written by flink_jobs.devtools.kafka_broker; rewritten at every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Topics are created on purpose (kafka_tools.ensure_topics), so a typo never makes a new one.
auto.create.topics.enable=false
# Flink's transactional sink defaults to a 1 h transaction timeout; the broker's default cap is 15 min.
transaction.max.timeout.ms=3600000
# Small machine: few threads.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.retention.hours=168
"""


_LOG4J2 = """\
# Written by flink_jobs.devtools.kafka_broker: INFO to stdout (redirected to broker.log), chatty loggers at WARN.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = WARN
logger.log.name = kafka.log.LogCleaner
logger.log.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
# Every client and the broker itself dump their whole configuration at INFO.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.kconfig.name = kafka.server.KafkaConfig
logger.kconfig.level = WARN
"""


def _cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding; one starting
    # with "-" would be read as a CLI flag, which Kafka's own Uuid.randomUuid() also avoids.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _cmd_up(args: argparse.Namespace) -> int:
    running = running_broker(args.data_dir)
    if running is not None:
        if args.port and args.port != running.port:
            print(
                f"a broker already runs from {running.data_dir} on {running.bootstrap} (pid {running.pid}), "
                f"not on port {args.port}; run `down` first",
                file=sys.stderr,
            )
            return 1
        print(f"Kafka already running at {running.bootstrap} (pid {running.pid}, data {running.data_dir})")
        return 0
    try:
        t0 = time.monotonic()
        broker = start_broker(args.data_dir, args.port, args.timeout, jars_dir=args.jars_dir, detach=True)
    except BrokerError as exc:
        print(f"kafka-up: {exc}", file=sys.stderr)
        return 1
    print(
        f"Kafka running at {broker.bootstrap} (pid {broker.pid}, data {broker.data_dir}, "
        f"log {broker.log_file}, ready in {time.monotonic() - t0:.1f} s)"
    )
    return 0


_cmd_down, _cmd_status = down_and_status(running_broker, "Kafka broker", "Kafka", lambda b: b.bootstrap, "kafka-down")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flink_jobs.devtools.kafka_broker {up,down,status}``."""
    parser = argparse.ArgumentParser(
        prog="python -m flink_jobs.devtools.kafka_broker",
        description="Start or stop a single-node KRaft Kafka broker on 127.0.0.1 (for make kafka-up / kafka-down).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=Path(".local/kafka"),
            help="folder for the broker's config, data, log and pid file (default: .local/kafka)",
        )

    up = sub.add_parser(
        "up",
        help="start a detached broker (does nothing if one already runs from --data-dir)",
        description="Start a detached broker; does nothing if one already runs from --data-dir.",
    )
    data_dir_arg(up)
    up.add_argument("--port", type=int, default=None, help="client port on 127.0.0.1 (default: a free port)")
    up.add_argument("--timeout", type=float, default=60, help="seconds to wait until it answers (default: 60)")
    up.add_argument("--jars-dir", type=Path, default=DEFAULT_JARS_DIR, help=f"broker jars (default: {DEFAULT_JARS_DIR})")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser(
        "down",
        help="stop the broker started from --data-dir (keeps its data)",
        description="Stop the broker started from --data-dir; its data stays for the next `up`.",
    )
    data_dir_arg(down)
    down.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL (default: 30)")
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser(
        "status",
        help="exit 0 if a broker runs from --data-dir",
        description="Print the address of the broker running from --data-dir; exit 1 if none.",
    )
    data_dir_arg(status)
    status.set_defaults(func=_cmd_status)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
