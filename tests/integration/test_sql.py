"""Flink SQL: conf/sql/mask_customer_events.sql against the policy's masked view, on files and on Kafka."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flink_jobs import cli
from flink_jobs.kafka_tools import consume, ensure_topics, produce_file
from flink_jobs.policy import load_policy
from flink_jobs.protect import DLQ, Protector
from flink_jobs.sql_job import build_table_env, split_statements, substitute
from tests.support.leak_scan import pii_values
from udfs.keyring import Keyring, load_keyring

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SQL_FILE = ROOT / "conf/sql/mask_customer_events.sql"
POLICY = ROOT / "conf/policies/customer-events.yaml"
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
CLI = str(Path(sys.executable).with_name("flink-anonymizer"))  # the console script users run


@pytest.fixture(scope="module")
def keyring_ref(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sql-keys") / "keyring.json"
    Keyring.generate().save(path)
    return f"file:{path}"


def _lines(limit: int | None = None) -> list[str]:
    lines = [line for line in SAMPLE.read_text().split("\n") if line.strip()]
    return lines[:limit] if limit else lines


def policy_path(lines: list[str], keyring_ref: str) -> tuple[list[dict], list[str]]:
    """The masked view by the policy job's core: (masked values, the raw lines it protected)."""
    policy = load_policy(POLICY)
    protector = Protector(policy.document, str(POLICY))
    protector.open(load_keyring(keyring_ref))
    masked, protected = [], []
    for number, line in enumerate(lines, 1):
        routed = protector.process(f"line {number}", None, line)
        if any(r.channel == DLQ for r in routed):
            continue
        (value,) = [json.loads(r.value[2]) for r in routed if r.channel == "masked"]
        # SQL cannot tell a null field from an absent one and leaves both out (see the SQL file)
        masked.append({k: v for k, v in value.items() if v is not None})
        protected.append(line)
    return masked, protected


def differing_fields(expected: list[dict], got: list[dict]) -> Counter:
    """field name -> records where the two differ (names only: the values are customer data)."""
    diff: Counter = Counter()
    for want, have in zip(expected, got, strict=True):
        for name in set(want) | set(have):
            if want.get(name) != have.get(name):
                diff[name] += 1
    return diff


def test_the_sql_file_and_the_policy_give_identical_masked_records(tmp_path, keyring_ref):
    lines = _lines(2000)
    expected, protected = policy_path(lines, keyring_ref)
    assert sum("items" in r for r in expected) > 50 and sum("address" in r for r in expected) > 200
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join(protected) + "\n")

    # the file's own statements, with a file in place of the Kafka source and the INSERT's query collected
    create_source, _, insert = split_statements(SQL_FILE.read_text())
    source_ddl = re.sub(r"WITH \(.*\)\s*$", f"WITH ('connector' = 'filesystem', 'path' = '{source}', "
                        "'format' = 'json', 'json.ignore-parse-errors' = 'true')",
                        substitute(create_source, {}), flags=re.DOTALL)
    assert "'connector' = 'filesystem'" in source_ddl
    query = re.sub(r"^\s*INSERT INTO \w+", "", substitute(insert, {}))
    assert query.lstrip().startswith("SELECT")

    t_env = build_table_env(keyring_ref, checkpoint_interval_ms=0, kafka=False)
    t_env.execute_sql(source_ddl)
    with t_env.execute_sql(query).collect() as results:
        rows = [(row[0], row[1]) for row in results]

    got = [json.loads(value) for _, value in rows]
    assert [r["customerId"] for r in got] == [r["customerId"] for r in expected]
    assert differing_fields(expected, got) == Counter()
    assert [key for key, _ in rows] == [r["customerId"] for r in expected]
    # the compared fields are really protected, not passed through
    raw = [json.loads(line) for line in protected]
    assert all(g["card"] != r["card"] and len(g["card"]) == 16 for g, r in zip(got, raw, strict=True))
    assert sum(g["name"] != r["name"] for g, r in zip(got, raw, strict=True)) > len(raw) * 0.9


def test_functions_declared_by_module_path_take_their_keys_from_anon_keyring(tmp_path, keyring_ref):
    """CREATE TEMPORARY FUNCTION ... LANGUAGE PYTHON in a real job, run by `flink-anonymizer sql --no-register`."""
    lines = _lines(300)
    expected, protected = policy_path(lines, keyring_ref)
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join(protected) + "\n")
    out = tmp_path / "out"
    functions = ["substitute_person_name", "mask_email", "mask_keep_last", "fpe_ff1", "mask_phone", "protect_json"]
    declared = "\n".join(f"CREATE TEMPORARY FUNCTION {f} AS 'udfs.sql_functions.{f}' LANGUAGE PYTHON;"
                         for f in functions)
    create_source, _, insert = split_statements(SQL_FILE.read_text())
    source_ddl = re.sub(r"WITH \(.*\)\s*$", "WITH ('connector' = 'filesystem', 'path' = '${input}', "
                        "'format' = 'json')", create_source.text, flags=re.DOTALL)
    sink_ddl = ("CREATE TEMPORARY TABLE masked_customer_events (`key` STRING, `value` STRING) "
                "WITH ('connector' = 'filesystem', 'path' = '${output}', 'format' = 'json')")
    script = tmp_path / "declared.sql"
    script.write_text(f"{declared}\n{source_ddl};\n{sink_ddl};\n{insert.text};\n")

    env = {**os.environ, "ANON_KEYRING": load_keyring(keyring_ref).to_json()}
    done = subprocess.run(
        [CLI, "sql", str(script), "--no-register", "--checkpoint-interval", "500",
         "--set", f"input={source}", "--set", f"output={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for file in sorted(out.rglob("*")) if file.is_file() and not file.name.startswith(".")
            for line in file.read_text().splitlines() if line.strip()]
    got = [json.loads(row["value"]) for row in rows]
    assert len(got) == len(expected)
    # part files roll on checkpoints, so compare as multisets of whole records
    assert Counter(json.dumps(v, sort_keys=True) for v in got) == Counter(
        json.dumps(v, sort_keys=True) for v in expected)


def test_without_anon_keyring_a_keyed_function_fails_the_job_and_names_what_is_missing(tmp_path):
    source = tmp_path / "raw.jsonl"
    source.write_text('{"card": "4111111111111111"}\n')
    script = tmp_path / "nokey.sql"
    script.write_text(
        "CREATE TEMPORARY FUNCTION fpe_ff1 AS 'udfs.sql_functions.fpe_ff1' LANGUAGE PYTHON;\n"
        f"CREATE TEMPORARY TABLE raw_cards (card STRING) WITH ('connector' = 'filesystem', 'path' = '{source}', "
        "'format' = 'json');\n"
        "CREATE TEMPORARY TABLE sink (card STRING) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO sink SELECT fpe_ff1(card, '{format: card}') FROM raw_cards;\n")
    keyring = tmp_path / "keyring.json"
    Keyring.generate().save(keyring)
    env = {k: v for k, v in os.environ.items() if k != "ANON_KEYRING"}
    done = subprocess.run(
        [CLI, "sql", str(script), "--no-register", "--keyring", f"file:{keyring}",
         "--checkpoint-interval", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "statement 4 (line 4)" in done.stderr and "ANON_KEYRING" in done.stderr
    assert "4111111111111111" not in done.stderr


def test_flink_anonymizer_sql_masks_a_kafka_topic_like_the_policy_without_raw_pii(kafka_broker, keyring_ref, capsys):
    source_topic, sink_topic = "sql-raw-customer-events", "sql-masked-customer-events"
    produced = produce_file(kafka_broker.bootstrap, source_topic, SAMPLE)
    ensure_topics(kafka_broker.bootstrap, [sink_topic], create=True)
    status = cli.main([
        "sql", str(SQL_FILE), "--keyring", keyring_ref, "--checkpoint-interval", "1000",
        "--set", f"bootstrap_servers={kafka_broker.bootstrap}", "--set", f"source_topic={source_topic}",
        "--set", f"sink_topic={sink_topic}", "--set", "bounded_mode=latest-offset",
        "--set", "group_id=test-sql", "--set", "transactional_id_prefix=test-sql-masked"])
    assert status == 0, capsys.readouterr().err[-3000:]
    records = consume(kafka_broker.bootstrap, sink_topic, timeout=30)

    lines = _lines()
    assert produced == len(lines)
    expected, _ = policy_path(lines, keyring_ref)
    got = [r.json() for r in records]
    # every record the policy protects is in the topic, identical; the policy's dead letters that SQL
    # reads anyway (typed columns convert "37" to 37) are the only extra records
    canonical = Counter(json.dumps(v, sort_keys=True) for v in got)
    missing = Counter(json.dumps(v, sort_keys=True) for v in expected) - canonical
    assert sum(missing.values()) == 0, f"{sum(missing.values())} policy records not in the SQL output"
    assert len(expected) <= len(got) <= len(lines)
    assert all(r.key == r.json().get("customerId") for r in records)

    text = "\n".join(r.value for r in records)
    assert not [v for v in pii_values(lines) if v in text]


def test_a_statement_flink_refuses_is_named_by_number_and_line_in_the_file(tmp_path, keyring_ref, capsys):
    script = tmp_path / "bad.sql"
    script.write_text(
        "-- two good statements, then a column that does not exist on the third's second line\n"
        "CREATE TEMPORARY TABLE people (name STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '1');\n"
        "CREATE TEMPORARY TABLE sink (name STRING) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO sink\n"
        "SELECT mask_email(nmae) FROM people;\n")
    status = cli.main(["sql", str(script), "--keyring", keyring_ref, "--checkpoint-interval", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "statement 3 (line 4; error at line 5, column " in err and "nmae" in err


def test_a_set_value_that_flinks_refusal_quotes_is_shown_by_its_placeholder(tmp_path, keyring_ref, capsys):
    # Flink names an unknown connector identifier in its error: the --set value would be printed
    script = tmp_path / "secret.sql"
    script.write_text("CREATE TEMPORARY TABLE t (a STRING) WITH ('connector' = '${connector}');\n"
                      "INSERT INTO t SELECT 'x';\n")
    status = cli.main(["sql", str(script), "--keyring", keyring_ref, "--checkpoint-interval", "0",
                       "--set", "connector=hunter2-S3cret"])
    err = capsys.readouterr().err
    assert status == 2
    assert "statement 2 (line 2" in err and "'${connector}'" in err
    assert "hunter2-S3cret" not in err


def test_bad_parameters_in_the_sql_text_fail_the_job_naming_the_transform_not_a_value(tmp_path, keyring_ref, capsys):
    script = tmp_path / "params.sql"
    script.write_text(
        "CREATE TEMPORARY TABLE people (ssn STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '3');\n"
        "CREATE TEMPORARY TABLE sink (ssn STRING) WITH ('connector' = 'blackhole');\n"
        "INSERT INTO sink SELECT mask_keep_last(ssn, '{n: -1}') FROM people;\n")
    status = cli.main(["sql", str(script), "--keyring", keyring_ref, "--checkpoint-interval", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "statement 3 (line 3): its job failed" in err and "mask.keep_last" in err and "must be at least" in err


def test_set_statement_sets_and_queries_run_as_in_the_sql_client(tmp_path, keyring_ref, capfd):
    out = tmp_path / "out"
    script = tmp_path / "script.sql"
    script.write_text(
        "SET 'parallelism.default' = '1';\n"
        "CREATE TEMPORARY TABLE people (email STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '5');\n"
        "CREATE TEMPORARY TABLE a (email STRING) WITH ('connector' = 'blackhole');\n"
        f"CREATE TEMPORARY TABLE b (email STRING) WITH ('connector' = 'filesystem', 'path' = '{out}', "
        "'format' = 'raw');\n"
        "EXECUTE STATEMENT SET BEGIN\n"
        "  INSERT INTO a SELECT mask_email(email) FROM people;\n"
        "  INSERT INTO b SELECT redact(email) FROM people;\n"
        "END;\n"
        "SELECT mask_email('john.doe@example.com');\n")
    status = cli.main(["sql", str(script), "--keyring", keyring_ref, "--checkpoint-interval", "0"])
    captured = capfd.readouterr()
    assert status == 0, captured.err[-2000:]
    assert "j***@example.com" in captured.out  # the query's rows are printed
    assert "6 statement(s) run, 1 job(s) finished" in captured.err
    written = [line for f in out.rglob("*") if f.is_file() and not f.name.startswith(".")
               for line in f.read_text().splitlines()]
    assert len(written) == 5 and all(line == written[0] for line in written)  # redacted to one marker
