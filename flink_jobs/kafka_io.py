"""Kafka source and sink for the jobs, through the Table API Kafka connector.

Why the Table API: PyFlink's DataStream ``KafkaSource`` cannot hand a record's partition and
offset to Python, and its ``KafkaSink`` cannot write headers. The SQL connector can, with
metadata columns, and a table converts to and from a ``DataStream`` at no cost to the
rest of the job, which stays in the DataStream API.

A job wires them like this::

    env = StreamExecutionEnvironment.get_execution_environment(conf)
    add_connector_jars(env)                          # best before the table environment is created
    env.enable_checkpointing(10_000)                 # exactly-once commits on checkpoints
    t_env = StreamTableEnvironment.create(env)

    raw = kafka_source(env, t_env, bootstrap=b, topic="raw", group_id="anon", start="earliest",
                       read_committed=True)           # (position, key, value, timestamp_ms)
    masked = raw.map(protect, output_type=SINK_TYPE)  # (key, headers_json, value)

    sinks = t_env.create_statement_set()
    kafka_sink(t_env, masked, bootstrap=b, topic="masked", delivery="exactly-once",
               transactional_id_prefix="anon-masked", statement_set=sinks)
    kafka_sink(t_env, dlq, ..., statement_set=sinks)
    sinks.attach_as_datastream()                     # the INSERTs join the DataStream graph
    env.execute("protect_stream")                    # one job runs sources, Python and all sinks

``attach_as_datastream()`` must come after the last ``kafka_sink`` call and before
``env.execute()``; it empties the statement set. Calling ``statement_set.execute()`` instead
would submit the sinks as a separate job without the DataStream parts that do not feed them.

Both adapters add one Python ``map`` (Row to tuple, tuple to Row). PyFlink chains it with the
caller's neighbouring Python functions, so it costs no extra hand-over between Java and Python.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.table import StatementSet, StreamTableEnvironment
from pyflink.table.expressions import col

from operators.flink_compat import pipeline_jars

__all__ = [
    "DEFAULT_JARS_DIR",
    "SINK_TYPE",
    "SOURCE_TYPE",
    "add_connector_jars",
    "connector_jar_urls",
    "kafka_sink",
    "kafka_source",
]

DEFAULT_JARS_DIR = Path(__file__).resolve().parents[1] / "jars" / "flink"

#: Records out of :func:`kafka_source`: ("topic/partition/offset", key or None, raw value, Kafka timestamp in ms).
SOURCE_TYPE = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG()])
#: Records into :func:`kafka_sink`: (key or None, headers as a JSON object of str -> str, value).
SINK_TYPE = Types.TUPLE([Types.STRING(), Types.STRING(), Types.STRING()])

_SINK_ROW_TYPE = Types.ROW_NAMED(
    ["k", "headers", "v"],
    [Types.STRING(), Types.MAP(Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())), Types.STRING()],
)
#: the same for a binary value (Avro): the value's bytes
_SINK_ROW_TYPE_BYTES = Types.ROW_NAMED(
    ["k", "headers", "v"],
    [Types.STRING(), Types.MAP(Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
#: and for a binary key too (a binary source's dead letters): the key's bytes
_SINK_ROW_TYPE_ALL_BYTES = Types.ROW_NAMED(
    ["k", "headers", "v"],
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.MAP(Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())),
     Types.PRIMITIVE_ARRAY(Types.BYTE())],
)
_STARTS = {"earliest": "earliest-offset", "latest": "latest-offset", "group-offsets": "group-offsets"}
_DELIVERIES = {"exactly-once", "at-least-once"}
# The broker caps transaction.timeout.ms at transaction.max.timeout.ms (15 min by default); the
# connector would ask for 1 h and every transactional producer would be refused on a stock broker.
_TRANSACTION_TIMEOUT_MS = "900000"


def connector_jar_urls(jars_dir: Path = DEFAULT_JARS_DIR) -> list[str]:
    """``file://`` URLs of the Flink Kafka connector jar(s), for ``env.add_jars``.

    Raises
    ------
    FileNotFoundError
        No ``flink-sql-connector-kafka-*.jar`` in `jars_dir`; ``make jars`` fetches it.
    """
    jars = sorted(Path(jars_dir).resolve().glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no flink-sql-connector-kafka jar in {jars_dir}; fetch it with `make jars` (bash conf/fetch_jars.sh)"
        )
    return [j.as_uri() for j in jars]


def add_connector_jars(env: StreamExecutionEnvironment, jars_dir: Path = DEFAULT_JARS_DIR) -> None:
    """Add the Kafka connector to `env` once (later calls are no-ops).

    Best called before ``StreamTableEnvironment.create(env)``: a table environment resolves
    connectors with the class loader current at its creation. :func:`kafka_source` and
    :func:`kafka_sink` call this themselves and, when the jar was missing, also ``ADD JAR`` it
    to their table environment, so forgetting it costs only a slower build (about 3 s).
    """
    _add_jars(env, None, jars_dir)


def _add_jars(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment | None, jars_dir: Path = DEFAULT_JARS_DIR) -> None:
    wanted = connector_jar_urls(jars_dir)
    missing = [u for u in wanted if u not in pipeline_jars(env._j_stream_execution_environment)]
    if not missing:
        return
    env.add_jars(*missing)
    if t_env is not None:
        # Added after the table environment was made: its planner would not find the 'kafka'
        # factory, so register the jar with its own class loader too.
        for url in missing:
            t_env.execute_sql(f"ADD JAR '{_sql_str(url)}'")


def kafka_source(
    env: StreamExecutionEnvironment,
    t_env: StreamTableEnvironment,
    *,
    bootstrap: str,
    topic: str,
    group_id: str,
    start: str = "earliest",
    read_committed: bool = True,
    bounded: bool = False,
    properties: dict[str, str] | None = None,
    name: str | None = None,
    binary: bool = False,
) -> DataStream:
    """A stream of the raw records of a Kafka topic.

    Parameters
    ----------
    env, t_env : StreamExecutionEnvironment, StreamTableEnvironment
        The job's environments (`t_env` created from `env`).
    bootstrap : str
        ``HOST:PORT``.
    topic : str
        The topic to read.
    group_id : str
        Consumer group; offsets are committed to it on every completed checkpoint.
    start : {"earliest", "latest", "group-offsets"}
        Where a fresh start begins. ``group-offsets`` resumes from the group's committed offsets
        (and from the earliest offset for partitions it never committed). A restore from a
        checkpoint or savepoint always resumes from the offsets in that snapshot.
    read_committed : bool
        Skip records of open and aborted transactions (``isolation.level=read_committed``).
    bounded : bool
        Stop at the offsets that are the latest when the job starts, so the job ends (tests, backfills).
    properties : dict, optional
        Extra Kafka consumer properties (``{"security.protocol": "SSL"}``), without the ``properties.`` prefix.
    name : str, optional
        Base for the table name, operator name and uid (default: ``kafka-source-<topic>``).

    Returns
    -------
    DataStream
        Records of :data:`SOURCE_TYPE`: ``("topic/partition/offset", key or None, value, timestamp_ms)``.
        Key and value are the record bytes decoded as UTF-8 (the ``raw`` format: never parsed,
        so a malformed JSON value arrives intact; bytes that are not UTF-8 become U+FFFD).
        A tombstone's value is None. With ``binary`` (Avro) the key's and the value's bytes arrive
        as Latin-1 text, one character per byte, so they cross every STRING channel of the job
        unchanged (a key may be Avro too: ``AvroCodec.decode_key`` reads it).
    """
    if start not in _STARTS:
        raise ValueError(f"start must be one of {', '.join(_STARTS)}, not {start!r}")
    _add_jars(env, t_env)
    name = name or f"kafka-source-{topic}"
    table = _table_name(name)
    options = {
        "properties.group.id": group_id,
        "properties.isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "scan.startup.mode": _STARTS[start],
        # Only consulted for group-offsets on partitions without a committed offset.
        "properties.auto.offset.reset": "earliest",
    }
    if bounded:
        options["scan.bounded.mode"] = "latest-offset"
    _create_table(
        t_env, table, topic, bootstrap, options, properties,
        """`kafka_topic` STRING METADATA FROM 'topic' VIRTUAL,
            `kafka_partition` INT METADATA FROM 'partition' VIRTUAL,
            `kafka_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
            `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL""",
        key_type="BYTES" if binary else "STRING", value_type="BYTES" if binary else "STRING",
    )
    rows = t_env.to_data_stream(
        t_env.sql_query(
            f"SELECT CONCAT(`kafka_topic`, '/', CAST(`kafka_partition` AS STRING), '/', CAST(`kafka_offset` AS STRING)),"
            f" `k`, `v`, `kafka_ts` FROM `{table}`"
        )
    )
    # No SQL function turns a TIMESTAMP_LTZ into epoch milliseconds, so the Python map does it.
    to_tuple = _source_row_to_tuple_binary if binary else _source_row_to_tuple
    return rows.map(to_tuple, output_type=SOURCE_TYPE).name(f"{name}-to-tuple").uid(f"{name}-to-tuple")


def kafka_sink(
    t_env: StreamTableEnvironment,
    stream: DataStream,
    *,
    bootstrap: str,
    topic: str,
    delivery: str,
    transactional_id_prefix: str,
    statement_set: StatementSet,
    properties: dict[str, str] | None = None,
    name: str | None = None,
    binary: bool = False,
    binary_key: bool = False,
    rows_ready: bool = False,
) -> StatementSet:
    """Write a stream of ``(key, headers_json, value)`` to a Kafka topic, as an INSERT in a statement set.

    Parameters
    ----------
    t_env : StreamTableEnvironment
        The job's table environment.
    stream : DataStream
        Records of :data:`SINK_TYPE`: key (None for no key; the partition is then chosen by
        Kafka's sticky partitioner), headers as a JSON object string of str -> str (None or "" for
        none), value (None for a tombstone). Keys and values are written as UTF-8.
    bootstrap : str
        ``HOST:PORT``.
    topic : str
        The target topic; it must exist (``kafka_tools.ensure_topics``).
    delivery : {"exactly-once", "at-least-once"}
        ``exactly-once`` writes in Kafka transactions committed on each checkpoint: the caller
        must enable checkpointing, and readers must use ``read_committed`` to see only committed
        records (they see them one checkpoint interval late).
    transactional_id_prefix : str
        Prefix of the transactional ids; unique per sink and per job on the cluster, and stable
        across restarts of the job, so a restart can abort the transactions it left open.
    statement_set : StatementSet
        The set that collects all of the job's sinks (``t_env.create_statement_set()``). Required,
        because a sink left in a set nobody attaches is silently dropped: the job runs without it.
    properties : dict, optional
        Extra Kafka producer properties, without the ``properties.`` prefix.
    name : str, optional
        Base for the table name, operator name and uid (default: ``kafka-sink-<topic>``).
    binary : bool
        The value is bytes (Avro), carried as Latin-1 text.
    binary_key : bool
        With ``binary``, the key is bytes too, carried as Latin-1 text: a binary source's dead
        letters keep the raw key (an Avro key among them).
    rows_ready : bool
        `stream` already holds the table's rows (:func:`sink_row`, typed :func:`sink_row_type`), as
        the job's protect operator emits them: the sink adds no Python step of its own.

    Returns
    -------
    StatementSet
        `statement_set`, with this sink's INSERT added. Call ``attach_as_datastream()`` on it
        once all sinks are added, then ``env.execute()``.
    """
    if delivery not in _DELIVERIES:
        raise ValueError(f"delivery must be one of {', '.join(sorted(_DELIVERIES))}, not {delivery!r}")
    _add_jars(stream.get_execution_environment(), t_env)
    name = name or f"kafka-sink-{topic}"
    table = _table_name(name)
    options = {"sink.delivery-guarantee": delivery}
    if delivery == "exactly-once":
        options["sink.transactional-id-prefix"] = transactional_id_prefix
        options["properties.transaction.timeout.ms"] = _TRANSACTION_TIMEOUT_MS
    binary_key = binary and binary_key
    _create_table(t_env, table, topic, bootstrap, options, properties, "`headers` MAP<STRING, BYTES> METADATA",
                  key_type="BYTES" if binary_key else "STRING", value_type="BYTES" if binary else "STRING")
    if rows_ready and not binary:
        rows = stream  # already the table's rows (:func:`sink_row`): no Python step here
    else:
        # with binary (Avro), the value is Latin-1 text, one character per byte: written as those bytes
        to_row, row_type = ((_sink_tuple_to_row_all_binary, _SINK_ROW_TYPE_ALL_BYTES) if binary_key
                            else (_sink_tuple_to_row_binary, _SINK_ROW_TYPE_BYTES) if binary
                            else (_sink_tuple_to_row, _SINK_ROW_TYPE))
        rows = stream.map(to_row, output_type=row_type).name(f"{name}-to-row").uid(f"{name}-to-row")
    # Physical columns first, then the writable metadata column, as the sink table declares them.
    statement_set.add_insert(table, t_env.from_data_stream(rows).select(col("k"), col("v"), col("headers")))
    return statement_set


def _source_row_to_tuple(row: Row) -> tuple[str, str, str, int]:
    # "" is "no key", -1 "no timestamp": PyFlink workaround [no None] in operators.flink_compat
    timestamp = _epoch_ms(row[3])
    return row[0], row[1] or "", row[2] or "", -1 if timestamp is None else timestamp


def _source_row_to_tuple_binary(row: Row) -> tuple[str, str, str, int]:
    position, _, _, timestamp = _source_row_to_tuple(Row(row[0], None, None, row[3]))
    return position, _latin1(row[1]), _latin1(row[2]), timestamp


def _latin1(data: Any) -> str:
    # bytes as text, one character per byte; "" for none (PyFlink workaround [no None])
    return bytes(data).decode("latin-1") if data is not None else ""


def _epoch_ms(ts: Any) -> int | None:
    # a java.time.Instant, a pyflink Instant or a datetime: PyFlink workaround [instants] in operators.flink_compat
    if ts is None:
        return None
    if hasattr(ts, "toEpochMilli"):
        return int(ts.toEpochMilli())
    if hasattr(ts, "to_epoch_milli"):
        return int(ts.to_epoch_milli())
    return int(ts.timestamp() * 1000)


def sink_row_type() -> Any:
    """``Row(k, headers, v)``: what a Kafka sink table takes (made fresh: a used type info holds a JVM handle)."""
    return Types.ROW_NAMED(
        ["k", "headers", "v"],
        [Types.STRING(), Types.MAP(Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())), Types.STRING()],
    )


#: headers JSON -> Kafka headers; a view's headers repeat on every record, a dead letter's do not
_HEADERS: dict[str, dict[str, bytes]] = {}
_HEADERS_LIMIT = 1024


def sink_row(key: str | None, headers: str | None, value: str | None) -> Row:
    """A ``(key, headers JSON, value)`` record as the Kafka sink table's row ("" is no key, or a tombstone)."""
    hdrs = _HEADERS.get(headers or "")
    if hdrs is None:
        hdrs = {}
        for k, v in (json.loads(headers) if headers else {}).items():
            if v is not None:
                hdrs[str(k)] = (v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))).encode()
        if len(_HEADERS) < _HEADERS_LIMIT:
            _HEADERS[headers or ""] = hdrs
    return Row(k=key or None, headers=hdrs, v=value or None)  # "" is a tombstone (PyFlink workaround [no None])


def _sink_tuple_to_row(record: tuple) -> Row:
    return sink_row(*record)


def _sink_tuple_to_row_binary(record: tuple) -> Row:
    row = _sink_tuple_to_row(record)
    return Row(k=row.k, headers=row.headers, v=row.v.encode("latin-1") if row.v else None)


def _sink_tuple_to_row_all_binary(record: tuple) -> Row:
    row = _sink_tuple_to_row_binary(record)
    return Row(k=row.k.encode("latin-1") if row.k else None, headers=row.headers, v=row.v)


_seq = 0


def _table_name(base: str) -> str:
    # Temporary tables share one namespace per table environment; a counter keeps two sources
    # or sinks on the same topic apart.
    global _seq
    _seq += 1
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', base)}_{_seq}"


def _create_table(
    t_env: StreamTableEnvironment,
    table: str,
    topic: str,
    bootstrap: str,
    options: dict[str, str],
    properties: dict[str, str] | None,
    metadata_columns: str,
    key_type: str = "STRING",
    value_type: str = "STRING",
) -> None:
    """``CREATE TEMPORARY TABLE`` of a Kafka topic: raw key ``k``, raw value ``v``, then `metadata_columns`.

    `options` are the source's or sink's own; `properties` (without the ``properties.`` prefix)
    come last, so the caller's Kafka client properties win.
    """
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": bootstrap,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        # With key.fields set, the value format must not also claim the key column.
        "value.fields-include": "EXCEPT_KEY",
        **options,
    }
    options.update({f"properties.{k}": v for k, v in (properties or {}).items()})
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE `{table}` (
            `k` {key_type},
            `v` {value_type},
            {metadata_columns}
        ) WITH ({_with(options)})"""
    )


def _with(options: dict[str, str]) -> str:
    return ", ".join(f"'{_sql_str(k)}' = '{_sql_str(v)}'" for k, v in options.items())


def _sql_str(s: str) -> str:
    return str(s).replace("'", "''")
