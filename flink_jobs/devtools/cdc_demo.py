"""``make cdc-demo``: PostgreSQL, Debezium and the job, with the views beside the raw change events.

The chain, every part real and on 127.0.0.1:

    PostgreSQL (wal_level=logical)  a table of customers; inserts, updates and deletes
      ─▶ Kafka Connect + Debezium   change events into shop.public.customers (JSON, or with --avro keys
                                    and values Avro through the schema registry; tombstones on delete)
      ─▶ protect_stream              conf/policies/customers-cdc.yaml: one protected view per audience
      ─▶ customers-cdc.support, customers-cdc.analytics, shop.public.customers.dlq

:class:`CdcChain` starts the table and the connector on a running server and broker; the
tests' fixture uses it too. ``main`` starts a server and a broker in a temporary folder, the
chain, the job, makes some changes, prints each raw event beside its views, and stops it all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flink_jobs.devtools.connect_worker import ConnectWorker, start_worker
from flink_jobs.kafka_tools import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "conf/policies/customers-cdc.yaml"
TABLE_DDL = """CREATE TABLE IF NOT EXISTS customers (
    id serial PRIMARY KEY, customer_id text NOT NULL, name text, email text, ssn text, phone text,
    zip text, tier text, updated_at timestamptz DEFAULT now())"""
#: the first customers, read by Debezium's snapshot (op "r")
SEED = [
    ("CUST200001", "Grace Hopper", "grace.hopper@example.com", "219-09-9999", "+1-212-555-0101", "10001", "gold"),
    ("CUST200002", "Alan Turing", "alan.turing@example.org", "078-05-1120", "+1-415-555-0102", "94105", "silver"),
    ("CUST200003", "Katherine Johnson", "kjohnson@example.net", "457-55-5462", "+1-757-555-0103", "23666", "gold"),
]
NEW = ("CUST200004", "Edsger Dijkstra", "ewd@example.com", "323-45-6789", "+1-512-555-0104", "78701", "bronze")


@dataclass
class CdcChain:
    """A customers table in ``database`` and a Debezium connector streaming it to ``topic``."""

    database_url: str
    topic: str
    worker: ConnectWorker
    connector: str

    def execute(self, sql: str, params: tuple = ()) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(sql, params)

    def insert(self, row: tuple) -> None:
        self.execute("INSERT INTO customers (customer_id, name, email, ssn, phone, zip, tier) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s)", row)

    def changes(self) -> None:
        """An insert, an update of a customer's email and tier, and a delete."""
        self.insert(NEW)
        self.execute("UPDATE customers SET email = %s, tier = %s, updated_at = now() WHERE customer_id = %s",
                     ("grace@navy.example.mil", "platinum", SEED[0][0]))
        self.execute("DELETE FROM customers WHERE customer_id = %s", (SEED[1][0],))

    def stop(self) -> None:
        self.worker.stop()


def start_chain(server: Any, bootstrap: str, folder: Path, *, database: str = "shop", prefix: str = "shop",
                seed: bool = True, converters: dict[str, str] | None = None) -> CdcChain:
    """Create the table (seeded), start a Connect worker and Debezium's connector; events go to ``<prefix>.public.customers``.

    ``server`` is a running :class:`flink_jobs.devtools.pg_local.LocalPostgres` (it sets ``wal_level=logical``).
    ``converters`` are the connector's converter settings (default: the worker's JSON;
    :func:`~flink_jobs.devtools.connect_worker.avro_converter` for Avro through a registry).
    """
    import psycopg

    url = server.create_database(database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        # the whole old row in `before` of updates and deletes, not only the key
        conn.execute("ALTER TABLE customers REPLICA IDENTITY FULL")
    topic = f"{prefix}.public.customers"
    ensure_topics(bootstrap, [topic], config={"cleanup.policy": "compact"})
    chain = CdcChain(url, topic, start_worker(folder / "connect", bootstrap), connector=f"{prefix}-customers")
    try:
        if seed:
            for row in SEED:
                chain.insert(row)
        chain.worker.add_postgres_connector(chain.connector, port=server.port, database=database, user="anon",
                                            topic_prefix=prefix, tables=["public.customers"], extra=converters)
    except BaseException:
        chain.stop()
        raise
    return chain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.devtools.cdc_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=str(POLICY))
    parser.add_argument("--avro", action="store_true",
                        help="change events, keys and values, as Avro through a schema registry (Apicurio's converter; "
                        "the policy's source.format becomes debezium-avro)")
    args = parser.parse_args(argv)

    import yaml

    from flink_jobs.avro_format import AvroCodec, RegistrySchemaStore
    from flink_jobs.devtools.connect_worker import avro_converter
    from flink_jobs.devtools.kafka_broker import start_broker
    from flink_jobs.devtools.pg_local import LocalPostgres, free_port
    from flink_jobs.devtools.registry import start_registry
    from flink_jobs.kafka_job import build_kafka_job, prepare_topics
    from flink_jobs.kafka_tools import consume
    from flink_jobs.keyring_ref import resolve_keyring
    from flink_jobs.policy import compile_policy

    folder = Path(tempfile.mkdtemp(prefix="anon-cdc-"))
    # its own folder right under /tmp: run as root, the server runs as the postgres user, who must reach it
    pg_folder = tempfile.mkdtemp(prefix="anon-cdc-pg-")
    server = LocalPostgres(pg_folder, free_port(), durable=False)
    broker = chain = job = registry = None
    try:
        print("starting PostgreSQL (wal_level=logical) and a Kafka broker ...", file=sys.stderr)
        server.start()
        broker = start_broker(folder / "kafka", timeout=90)
        document = yaml.safe_load(Path(args.policy).read_text())
        codec = None
        if args.avro:
            print("starting the schema registry (Apicurio) ...", file=sys.stderr)
            registry = start_registry(folder / "registry", timeout=240)
            document["source"].update(format="debezium-avro", schema=registry.url)
        print("starting Kafka Connect with Debezium's PostgreSQL connector ...", file=sys.stderr)
        chain = start_chain(server, broker.bootstrap, folder,
                            converters=avro_converter(registry.native_url) if registry else None)
        if registry:
            # the converter registered the envelope with the snapshot; the raw events are shown decoded
            subject = f"{chain.topic}-value"
            store = RegistrySchemaStore(registry.url)
            deadline = time.monotonic() + 60
            while store.latest(subject) is None and time.monotonic() < deadline:
                time.sleep(1)
            codec = AvroCodec(store, subject)
        keyring, reference = resolve_keyring(None, dev=True)
        policy = compile_policy(document, file=args.policy, keyring=keyring)
        if policy.source_topic != chain.topic:
            raise SystemExit(f"the policy reads {policy.source_topic}, the connector writes {chain.topic}")
        prepare_topics(broker.bootstrap, policy, create=True)
        env = build_kafka_job(policy, reference, bootstrap=broker.bootstrap, delivery="at-least-once",
                              group_id=f"cdc-demo-{time.time_ns()}")
        job = env.execute_async(f"protect_stream[{policy.id}] cdc demo")
        print("job running; inserting, updating and deleting customers ...", file=sys.stderr)
        chain.changes()
        # snapshot reads, one insert, one update, one delete and its tombstone
        expected = len(SEED) + 4
        views = {name: [] for name in policy.views}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(len(v) < expected for v in views.values()):
            time.sleep(2)
            views = {name: consume(broker.bootstrap, view.topic, timeout=5, isolation="read_uncommitted")
                     for name, view in policy.views.items()}
        raw = consume(broker.bootstrap, chain.topic, timeout=5)
        for index, event in enumerate(raw):
            key = codec.decode_key(event.raw_key.decode("latin-1")) if codec and event.raw_key else event.key
            print(f"\n== change {index + 1}: raw ({chain.topic}{', Avro' if codec else ''}) key {key}")
            value = event.value
            if codec and event.raw_value is not None:
                value = json.dumps(codec.decode(event.raw_value.decode("latin-1")), default=str)
            print(_show(value))
            for name, records in views.items():
                if index < len(records):
                    print(f"-- {name} key {records[index].key}\n{_show(records[index].value)}")
        print(f"\ndead letters: {len(consume(broker.bootstrap, policy.dlq_topic, timeout=5))}")
        return 0
    finally:
        if job is not None:
            job.cancel().result()
        if chain is not None:
            chain.stop()
        if registry is not None:
            registry.stop()
        if broker is not None:
            broker.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)


def _show(value: str | None) -> str:
    if value is None:
        return "   (tombstone)"
    try:
        event = json.loads(value)
    except ValueError:
        return "   " + value[:200]
    return "\n".join(f"   {part}: {json.dumps(event.get(part))}" for part in ("op", "before", "after"))


if __name__ == "__main__":
    sys.exit(main())
