"""The SQL side without a JVM: function names, parameters in SQL text, the statement splitter, the CLI's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flink_jobs import cli
from flink_jobs.sql_job import SqlFileError, Statement, reason, split_statements, substitute
from udfs.flink import JsonRulesFunction, parse_params, parse_spec, sql_name, sql_transforms
from udfs.keyring import Keyring
from udfs.record import apply_view
from udfs.registry import ParamError

ROOT = Path(__file__).resolve().parents[2]
SQL_FILE = ROOT / "conf/sql/mask_customer_events.sql"


# -- names ------------------------------------------------------------------------

@pytest.mark.parametrize(("transform", "prefix", "expected"), [
    ("mask.email", "", "mask_email"),  # family.variant -> family_variant
    ("redact", "", "redact"),  # a family without variant keeps its name
    ("pseudonymize.hmac_sha256", "anon_", "anon_pseudonymize_hmac_sha256"),  # a prefix avoids clashes
])
def test_a_transform_is_named_in_sql_by_its_name_with_underscores(transform, prefix, expected):
    assert sql_name(transform, prefix) == expected


def test_every_transform_sql_can_call_is_registered_and_the_others_are_not():
    names = sql_transforms()
    assert names["mask_email"] == "mask.email" and names["fpe_ff1"] == "fpe.ff1"
    assert names["substitute_person_name"] == "substitute.person_name"
    # plain SQL does these (select, leave out, NULL), and tokens need the whole record
    assert not {"keep", "keep_integer", "drop", "null", "tokenize_vault"} & set(names)


def test_the_module_for_create_function_holds_every_sql_function():
    from udfs import sql_functions

    assert set(sql_functions.__all__) == {*sql_transforms(), "protect_json"}
    assert sql_functions.mask_email._func.keyring_ref == "env:ANON_KEYRING"


# -- parameters --------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("mask.email", ("mask.email", {})),  # a bare name
    ({"mask": "keep_last", "n": 4}, ("mask.keep_last", {"n": 4})),  # a policy field spec
    ({"n": 4, "mask": "keep_last"}, ("mask.keep_last", {"n": 4})),  # the family need not come first
])
def test_a_policy_field_spec_gives_the_transform_and_its_params(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", [{"n": 4}, {}, 12])  # no family; empty; not a spec
def test_a_spec_that_names_no_transform_is_refused(spec):
    with pytest.raises(ParamError):
        parse_spec(spec)


@pytest.mark.parametrize(("text", "expected"), [
    ("{n: 4}", {"n": 4}),  # YAML flow, as in a policy
    ('{"format": "card", "domain": "card_number"}', {"format": "card", "domain": "card_number"}),  # JSON
    ("", {}),  # nothing
])
def test_params_in_sql_text_are_a_yaml_mapping(text, expected):
    assert parse_params(text) == expected


@pytest.mark.parametrize("text", ["[1, 2]", "{n: [", "4"])  # a list; broken; a scalar
def test_params_that_are_not_a_mapping_are_refused(text):
    with pytest.raises(ParamError):
        parse_params(text)


def test_protect_json_rules_apply_the_policy_below_one_field_and_deny_the_rest():
    function = JsonRulesFunction()
    function._loaded_keyring = Keyring.generate()  # what open() would load from the reference
    field, tree = function.compile('{"items[*].card": {fpe: ff1, format: card, domain: card_number}, '
                                   '"items[*].sku": keep}')
    items = [{"sku": "A-1", "card": "4111111111111111", "note": "call me"}]
    protected = apply_view(tree, {field: items}, [])
    assert field == "items"
    assert protected["items"][0]["sku"] == "A-1" and "note" not in protected["items"][0]
    assert protected["items"][0]["card"] != "4111111111111111" and len(protected["items"][0]["card"]) == 16


class _FakeFunctionContext:
    """What JsonRulesFunction.open() asks of Flink's FunctionContext: a metric group with counters."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def get_metric_group(self):
        return self

    def counter(self, name):
        context = self

        class Counter:
            def inc(self, n=1):
                context.counts[name] = context.counts.get(name, 0) + n

        return Counter()


def test_protect_json_keeps_a_bounded_number_of_compiled_rules_texts():
    import udfs.flink
    import udfs.record

    function = JsonRulesFunction()
    function.open(_FakeFunctionContext())
    bound = JsonRulesFunction.MAX_RULES_TEXTS
    assert 0 < bound <= 64
    for i in range(3 * bound):  # rules from a column: every row a different text
        rules = f'{{"items[*].f{i}": keep}}'
        assert function.eval(f'[{{"f{i}": "x", "other": "y"}}]', rules) == f'[{{"f{i}":"x"}}]'
        assert len(function._trees) <= bound
    # a repeated text is served from the cache, not compiled again
    function.compile = None  # would fail if called
    last = f'{{"items[*].f{3 * bound - 1}": keep}}'
    assert function.eval(f'[{{"f{3 * bound - 1}": "z"}}]', last) == f'[{{"f{3 * bound - 1}":"z"}}]'
    # apply_view is imported with the module, not on every eval()
    assert udfs.flink.apply_view is udfs.record.apply_view


@pytest.mark.parametrize("rules", [
    '{"items[*].sku": keep, "address.zip": keep}',  # two fields
    '{}',  # no rule
    '{"items[*].card": {fpe: ff9}}',  # unknown transform
    # reads two other fields of the record, which protect_json does not have
    '{"address.geo": {generalize: geohash, precision: 5, lat_field: lat, lon_field: lon}}',
])
def test_protect_json_rules_that_do_not_fit_are_refused(rules):
    with pytest.raises((ParamError, KeyError)):
        JsonRulesFunction().compile(rules)


# -- the statement splitter -----------------------------------------------------------

def test_statements_split_on_semicolons_outside_quotes_and_comments_with_their_lines():
    text = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (a STRING) WITH ('k' = 'a;b');\n"
        "\n"
        "/* block; comment\n spanning lines */ SELECT 'it''s; fine', \"x;y\", `c;d` FROM t;\n"
        "SELECT 1"
    )
    statements = split_statements(text)
    assert [(s.number, s.line) for s in statements] == [(1, 2), (2, 5), (3, 6)]
    assert statements[0].text == "CREATE TABLE t (a STRING) WITH ('k' = 'a;b')"
    assert statements[1].text == "SELECT 'it''s; fine', \"x;y\", `c;d` FROM t"
    assert statements[2].text == "SELECT 1"


def test_optimizer_hints_stay_in_the_statement_and_comments_do_not():
    (statement,) = split_statements("SELECT /*+ OPTIONS('a'='b') */ x -- trailing; comment\nFROM t;")
    assert statement.text == "SELECT /*+ OPTIONS('a'='b') */ x \nFROM t"


def test_a_statement_set_block_is_one_statement():
    text = "EXECUTE STATEMENT SET BEGIN\nINSERT INTO a SELECT 1;\nINSERT INTO b SELECT 2;\nEND;\nSELECT 3;"
    statements = split_statements(text)
    assert len(statements) == 2
    assert statements[0].text == "EXECUTE STATEMENT SET BEGIN\nINSERT INTO a SELECT 1;\nINSERT INTO b SELECT 2;\nEND"
    assert (statements[1].number, statements[1].line) == (2, 5)


@pytest.mark.parametrize(("text", "where"), [
    ("SELECT 1;\nSELECT 'open", "line 2"),  # a quote never closed
    ("SELECT 1 /* open", "line 1"),  # a comment never closed
    ("STATEMENT SET BEGIN\nINSERT INTO a SELECT 1;", "line 1"),  # no END
])
def test_what_cannot_be_split_is_refused_with_its_line(text, where):
    with pytest.raises(SqlFileError, match=where):
        split_statements(text)


def test_placeholders_take_set_values_then_defaults_and_a_missing_one_names_its_statement():
    statement = Statement(3, 12, "SELECT '${a}', '${b:-two}', '${c:-}' FROM ${t}")
    assert substitute(statement, {"a": "one", "t": "x"}) == "SELECT 'one', 'two', '' FROM x"
    assert substitute(statement, {"a": "1", "b": "2", "t": "x"}) == "SELECT '1', '2', '' FROM x"
    with pytest.raises(SqlFileError, match=r"statement 3 \(line 12\): no value for \$\{a\}, \$\{t\}"):
        substitute(statement, {})


def test_the_shipped_sql_file_splits_into_two_tables_and_one_insert_with_defaults_for_every_placeholder():
    statements = split_statements(SQL_FILE.read_text())
    assert [s.text.split("(")[0].split()[:3] for s in statements] == [
        ["CREATE", "TEMPORARY", "TABLE"], ["CREATE", "TEMPORARY", "TABLE"], ["INSERT", "INTO", "masked_customer_events"]]
    for statement in statements:
        assert "${" not in substitute(statement, {})


# -- the command line ---------------------------------------------------------------------

def test_sql_help_names_the_placeholders_and_the_function_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sql", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--set NAME=VALUE" in out and "bootstrap_servers" in out and "mask_email" in out


def test_sql_dry_run_prints_the_statements_as_written(capsys):
    status = cli.main(["sql", str(SQL_FILE), "--dry-run", "--set", "bootstrap_servers=kafka:9092"])
    out = capsys.readouterr().out
    assert status == 0
    assert "'properties.bootstrap.servers' = '${bootstrap_servers:-localhost:9092}'" in out
    assert "-- statement 3 (line " in out and "kafka:9092" not in out


SECRET_SQL = """CREATE TEMPORARY TABLE src (a STRING) WITH (
  'connector' = 'jdbc', 'username' = '${user:-anon}', 'password' = '${password}'
);
SET 'custom.token' = '${token}';
INSERT INTO sink SELECT a FROM src;
"""


def test_sql_dry_run_never_prints_a_set_value(tmp_path, capsys):
    (tmp_path / "q.sql").write_text(SECRET_SQL)
    status = cli.main(["sql", str(tmp_path / "q.sql"), "--dry-run", "--set", "password=hunter2-S3cret",
                       "--set", "token=tok-98765", "--set", "user=alice-dba"])
    captured = capsys.readouterr()
    assert status == 0
    for secret in ("hunter2-S3cret", "tok-98765", "alice-dba"):
        assert secret not in captured.out and secret not in captured.err
    assert "'password' = '${password}'" in captured.out and "SET 'custom.token' = '${token}'" in captured.out
    assert "-- statement 3 (line 5)" in captured.out


class _FakeTableEnv:
    """Just enough of a TableEnvironment for run_statements: records what Flink would be given."""

    def __init__(self):
        self.executed, self.config = [], {}

    def get_config(self):
        return self

    def set(self, key, value):
        self.config[key] = value

    def execute_sql(self, text):
        self.executed.append(text)
        return self

    def get_job_client(self):
        return None


def test_run_statements_echoes_statements_as_written_and_never_a_set_value():
    from flink_jobs.sql_job import run_statements

    # the secret on the statement's first line, where the echo looks
    text = "CREATE TEMPORARY TABLE t (a STRING) WITH ('password' = '${password}');\n" + SECRET_SQL
    echoed: list[str] = []
    t_env = _FakeTableEnv()
    run_statements(t_env, split_statements(text), {"password": "hunter2-S3cret", "token": "tok-98765"},
                   echo=echoed.append)
    assert len(echoed) == 4 and echoed[0].startswith("statement 1 (line 1): CREATE TEMPORARY TABLE t")
    assert "'${password}'" in echoed[0] and "'${token}'" in echoed[2]
    assert not any("hunter2-S3cret" in line or "tok-98765" in line for line in echoed)
    # Flink itself still gets the values
    assert "'password' = 'hunter2-S3cret'" in t_env.executed[0] and t_env.config == {"custom.token": "tok-98765"}


@pytest.mark.parametrize(("argv", "message"), [
    (["sql", "missing.sql"], "SQL file missing.sql does not exist"),  # no such file
    (["sql", "{file}", "--set", "novalue"], "--set takes NAME=VALUE"),  # a --set without =
    (["sql", "{empty}"], "holds no SQL statement"),  # only comments
    (["sql", "{unclosed}"], "line 2: a ' quote is never closed"),  # cannot be split
    (["sql", "{placeholder}", "--dry-run"], "statement 1 (line 1): no value for ${topic}"),  # no value
])
def test_sql_errors_say_what_is_wrong_and_where(tmp_path, capsys, argv, message):
    files = {"file": "SELECT 1;", "empty": "-- nothing\n", "unclosed": "SELECT 1;\nSELECT 'x",
             "placeholder": "SELECT '${topic}';"}
    for name, text in files.items():
        (tmp_path / f"{name}.sql").write_text(text)
    argv = [a.format(**{name: str(tmp_path / f"{name}.sql") for name in files}) for a in argv]
    status = cli.main(argv)
    assert status == 2
    assert message in capsys.readouterr().err


def test_sql_without_a_keyring_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANON_KEYRING", raising=False)
    (tmp_path / "q.sql").write_text("SELECT 1;")
    status = cli.main(["sql", str(tmp_path / "q.sql")])
    assert status == 2 and "--keyring" in capsys.readouterr().err


def test_the_shipped_sql_file_applies_the_same_transforms_as_the_policy_masked_view():
    """Each transform of the policy's masked view appears in the SQL file under its SQL name."""
    from flink_jobs.policy import load_policy
    from udfs.record import leaves

    policy = load_policy(ROOT / "conf/policies/customer-events.yaml")
    sql = SQL_FILE.read_text()
    for leaf in leaves(policy.views["masked"].tree):
        name = leaf.transform.name
        if name.startswith("keep"):
            continue
        if "." in leaf.path:  # nested: a protect_json rule in policy syntax
            family, variant = name.split(".")
            assert f'"{leaf.path}": {{{family}: {variant}' in sql, leaf.path
        else:
            assert f"{sql_name(name)}({leaf.path}" in sql, leaf.path


def test_a_running_jobs_java_cause_is_reported_without_what_it_quotes_from_a_record():
    cause = ValueError('java.lang.NumberFormatException: For input string: "078-05-1120" '
                       "[Source: (byte[])\"{\"ssn\": \"078-05-1120\"}\"; line: 1]")
    said = reason(cause, running=True)
    assert "NumberFormatException" in said and "078-05-1120" not in said
    # a Python transform's last traceback line is this project's own, value-free message
    traceback = ValueError("Traceback (most recent call last):\n  File x\nRuntimeError: mask.email failed: "
                           "KeyError (message withheld)")
    assert reason(traceback, running=True) == "RuntimeError: mask.email failed: KeyError (message withheld)"


class _RefusingTableEnv(_FakeTableEnv):
    """Refuses every statement, quoting it back as Flink's validation errors do."""

    def execute_sql(self, text):
        raise ValueError(f"org.apache.flink.table.api.ValidationException: Unable to create a source for: {text}")


def test_a_refused_statement_error_never_prints_a_set_value():
    from flink_jobs.sql_job import SqlFileError, run_statements

    text = "CREATE TEMPORARY TABLE t (a STRING) WITH ('password' = '${password}', 'parallelism' = '${p}');"
    with pytest.raises(SqlFileError) as caught:
        run_statements(_RefusingTableEnv(), split_statements(text), {"password": "hunter2-S3cret", "p": "1"})
    message = str(caught.value)
    assert message.startswith("statement 1 (line 1")
    assert "hunter2-S3cret" not in message and "'${password}'" in message
    assert "'parallelism' = '1'" in message  # a short value is no secret, and stays readable


@pytest.mark.parametrize("spec", [
    "keep", "mask.email", {"mask": "keep_last", "n": 4}, {"n": 4, "mask": "keep_last"},
    {"fpe": "ff1", "format": "card", "domain": "card_number"}, {"generalize": "date", "to": "hour"},
])
def test_the_policy_loader_and_sql_read_a_spec_the_same_way(spec):
    from flink_jobs.policy import compile_transform

    problems: list = []
    transform = compile_transform(spec, "views.v.fields.f", "f", problems)
    assert problems == [] and transform is not None
    name, params = parse_spec(spec)
    assert type(transform).name == name


@pytest.mark.parametrize(("spec", "problem"), [
    (12, "a transform is a name or a mapping"),
    ({"mask": 4}, "'mask' needs a variant name, got int"),
    ({"mask": "emial"}, "unknown transform 'mask.emial'"),
])
def test_a_bad_spec_is_refused_with_the_same_words_by_the_policy_loader_and_sql(spec, problem):
    from flink_jobs.policy import compile_transform

    problems: list = []
    assert compile_transform(spec, "views.v.fields.f", "f", problems) is None
    assert problems[0].problem == problem
    with pytest.raises(ParamError) as caught:
        parse_spec(spec)
    assert caught.value.problem == problem
