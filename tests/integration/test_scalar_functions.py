"""Each transform family as a PyFlink ScalarFunction in a real Table job, against its plain Python core."""

from __future__ import annotations

import pytest

from udfs import registry
from udfs.keyring import Keyring, load_keyring

pytestmark = pytest.mark.integration

ROWS = [
    ("CUST12345", "John Doe", "john.doe@example.com", "123-45-6789", "4111111111111111", "+1-415-555-0134",
     "94102", 34, "2024-03-15T10:30:00Z", "12 Main St", "San Francisco"),
    ("CUST67890", "Ana María Gómez", "ana.gomez@corp.example.org", "987-65-4321", "5500005555555559",
     "(212) 555-0199", "10001", 61, "2024-03-16T23:59:59Z", "9 Elm Ave", "New York"),
]
COLUMNS = ["customerId", "name", "email", "ssn", "card", "phone", "zip", "age", "ts", "street", "city"]

# (function name, transform, params, column, result type): one per family and variant
CASES = [
    ("f_keep", "keep", {}, "zip", "STRING"),  # keep
    ("f_null", "null", {}, "zip", "STRING"),  # null
    ("f_redact", "redact", {}, "name", "STRING"),  # redaction
    ("f_email", "mask.email", {}, "email", "STRING"),  # partial masks
    ("f_last4", "mask.keep_last", {"n": 4}, "ssn", "STRING"),
    ("f_first4", "mask.keep_first", {"n": 4}, "card", "STRING"),
    ("f_phone", "mask.phone", {}, "phone", "STRING"),
    ("f_name", "substitute.person_name", {}, "name", "STRING"),  # substitution, keyed
    ("f_fake_email", "substitute.email", {}, "email", "STRING"),
    ("f_street", "substitute.street_address", {}, "street", "STRING"),
    ("f_city", "substitute.city", {}, "city", "STRING"),
    ("f_pseudo", "pseudonymize.hmac_sha256", {"prefix": "cus_"}, "customerId", "STRING"),  # pseudonym
    ("f_siv", "encrypt.aes_siv", {}, "card", "STRING"),  # deterministic encryption
    ("f_gcm", "encrypt.aes_gcm", {}, "card", "STRING"),  # randomized encryption
    ("f_ff1", "fpe.ff1", {"format": "card"}, "card", "STRING"),  # format-preserving encryption
    ("f_ff3", "fpe.ff3_1", {"format": "ssn"}, "ssn", "STRING"),
    ("f_trunc", "generalize.truncate", {"keep": 3}, "zip", "STRING"),  # generalization
    ("f_range", "generalize.range", {"width": 10}, "age", "STRING"),
    ("f_day", "generalize.date", {"to": "day"}, "ts", "STRING"),
]


def test_every_family_runs_as_a_scalar_function_and_matches_its_core(tmp_path):
    from pyflink.table import DataTypes, StreamTableEnvironment
    from pyflink.table.expressions import call, col

    from flink_jobs.protect_stream import JobOptions, make_env
    from udfs.flink import scalar_function

    Keyring.generate().save(tmp_path / "keyring.json")
    ref = f"file:{tmp_path / 'keyring.json'}"
    env = make_env(JobOptions(keyring_ref=ref, checkpoint_interval_ms=0))
    t_env = StreamTableEnvironment.create(env)
    types = {"STRING": DataTypes.STRING(), "BIGINT": DataTypes.BIGINT()}
    for function, name, params, _, result in CASES:
        t_env.create_temporary_function(
            function, scalar_function(name, params, domain="test", keyring_ref=ref, result_type=types[result]))
    table = t_env.from_elements(ROWS, DataTypes.ROW(
        [DataTypes.FIELD(c, DataTypes.BIGINT() if c == "age" else DataTypes.STRING()) for c in COLUMNS]))
    selected = table.select(*[call(function, col(column)).alias(function) for function, _, _, column, _ in CASES])
    with selected.execute().collect() as results:
        rows = [tuple(row) for row in results]
    assert len(rows) == len(ROWS)

    keyring = load_keyring(ref)
    for raw, row in zip(ROWS, rows, strict=True):
        values = dict(zip(COLUMNS, raw, strict=True))
        for (_, name, params, column, _), got in zip(CASES, row, strict=True):
            transform = registry.get(name)(params, domain="test")
            transform.open(keyring)
            if transform.deterministic:
                assert got == transform.apply(values[column]), name
            else:
                # randomized: not equal to a second run, but it decrypts to the input
                assert got != transform.apply(values[column]) and transform.invert(got) == values[column], name
            if transform.reversible:
                assert transform.invert(got) == values[column], name


def test_a_value_that_does_not_fit_gives_null_not_the_value(tmp_path):
    from pyflink.table import DataTypes, StreamTableEnvironment
    from pyflink.table.expressions import call, col

    from flink_jobs.protect_stream import JobOptions, make_env
    from udfs.flink import scalar_function

    Keyring.generate().save(tmp_path / "keyring.json")
    ref = f"file:{tmp_path / 'keyring.json'}"
    env = make_env(JobOptions(keyring_ref=ref, checkpoint_interval_ms=0))
    t_env = StreamTableEnvironment.create(env)
    t_env.create_temporary_function("ff1_card", scalar_function("fpe.ff1", {"format": "card"}, keyring_ref=ref))
    table = t_env.from_elements([("4111",), ("4111111111111111",)], DataTypes.ROW([DataTypes.FIELD("card", DataTypes.STRING())]))
    with table.select(call("ff1_card", col("card"))).execute().collect() as results:
        got = [row[0] for row in results]
    assert got[0] is None  # too short for FF1: refused, and the raw value is not passed through
    assert got[1] is not None and len(got[1]) == 16 and got[1] != "4111111111111111"


def test_an_unknown_transform_or_a_bad_parameter_fails_when_the_function_is_made():
    from udfs.flink import scalar_function
    from udfs.registry import ParamError

    with pytest.raises(KeyError):
        scalar_function("mask.nothing")
    with pytest.raises(ParamError):
        scalar_function("generalize.range", {"width": -1})


def test_register_all_makes_every_transform_a_sql_function_with_params_in_the_sql_text(tmp_path):
    from pyflink.table import StreamTableEnvironment

    from flink_jobs.protect_stream import JobOptions, make_env
    from udfs.flink import register, register_all, sql_transforms

    Keyring.generate().save(tmp_path / "keyring.json")
    ref = f"file:{tmp_path / 'keyring.json'}"
    env = make_env(JobOptions(keyring_ref=ref, checkpoint_interval_ms=0))
    t_env = StreamTableEnvironment.create(env)
    names = register_all(t_env, ref)
    assert set(names) == {*sql_transforms(), "protect_json"}
    assert set(names) <= set(t_env.list_user_defined_functions())
    # a policy field spec, registered as it is written in the policy
    register(t_env, "masked_card", {"fpe": "ff1", "format": "card", "domain": "card_number"}, keyring_ref=ref)

    t_env.execute_sql("CREATE TEMPORARY VIEW people AS SELECT * FROM (VALUES "
                      "('john.doe@example.com', '123-45-6789', '4111111111111111', 34, 'CUST12345')) "
                      "AS T(email, ssn, card, age, customerId)")
    query = ("SELECT mask_email(email), mask_keep_last(ssn, '{n: 2}'), generalize_range(age, '{width: 10}'), "
             "fpe_ff1(card, '{format: card, domain: card_number}'), masked_card(card), "
             "pseudonymize_hmac_sha256(customerId, '{prefix: cus_, domain: customer_id}'), "
             "encrypt_aes_siv(card), redact(email) FROM people")
    with t_env.execute_sql(query).collect() as results:
        (row,) = [tuple(r) for r in results]

    keyring = load_keyring(ref)

    def core(name, params, value, domain):
        transform = registry.get(name)(params, domain=domain)
        transform.open(keyring)
        return transform.apply(value)

    assert row == (
        core("mask.email", {}, "john.doe@example.com", "email"),
        core("mask.keep_last", {"n": 2}, "123-45-6789", "keep_last"),  # not the default n
        core("generalize.range", {"width": 10}, 34, "range"),
        core("fpe.ff1", {"format": "card"}, "4111111111111111", "card_number"),
        core("fpe.ff1", {"format": "card"}, "4111111111111111", "card_number"),  # the same key and domain
        core("pseudonymize.hmac_sha256", {"prefix": "cus_"}, "CUST12345", "customer_id"),
        core("encrypt.aes_siv", {}, "4111111111111111", "aes_siv"),  # a function's default domain: its variant
        core("redact", {}, "john.doe@example.com", "redact"),
    )
    assert row[3].isdigit() and row[3] != "4111111111111111"


def test_a_policy_view_registered_field_by_field_gives_what_the_policy_gives(tmp_path):
    from pyflink.table import StreamTableEnvironment

    from flink_jobs.policy import load_policy
    from flink_jobs.protect_stream import JobOptions, make_env
    from udfs.flink import register_fields
    from udfs.record import apply_view

    Keyring.generate().save(tmp_path / "keyring.json")
    ref = f"file:{tmp_path / 'keyring.json'}"
    env = make_env(JobOptions(keyring_ref=ref, checkpoint_interval_ms=0))
    t_env = StreamTableEnvironment.create(env)
    policy = load_policy("conf/policies/customer-events.yaml", keyring=load_keyring(ref))
    names = register_fields(t_env, policy.document["views"]["masked"]["fields"], prefix="masked_", keyring_ref=ref)
    assert {"masked_name", "masked_email", "masked_ssn", "masked_card", "masked_phone", "masked_address_street"} == set(names)

    record = dict(zip(COLUMNS, ROWS[0], strict=True))
    t_env.execute_sql("CREATE TEMPORARY VIEW people AS SELECT * FROM (VALUES "
                      f"('{record['name']}', '{record['email']}', '{record['ssn']}', '{record['card']}', "
                      f"'{record['phone']}', '{record['street']}')) AS T(name, email, ssn, card, phone, street)")
    query = ("SELECT masked_name(name), masked_email(email), masked_ssn(ssn), masked_card(card), masked_phone(phone), "
             "masked_address_street(street) FROM people")
    with t_env.execute_sql(query).collect() as results:
        (row,) = [tuple(r) for r in results]

    policy.open(load_keyring(ref))
    raw = {k: record[k] for k in ("name", "email", "ssn", "card", "phone")} | {"address": {"street": record["street"]}}
    masked = apply_view(policy.views["masked"].tree, raw, [])
    assert row == (masked["name"], masked["email"], masked["ssn"], masked["card"], masked["phone"],
                   masked["address"]["street"])
