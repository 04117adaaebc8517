"""Policy loading and checking: one test per error message, ids and hashes."""

from __future__ import annotations

import copy
import textwrap

import pytest

from flink_jobs.policy import PolicyError, Problem, compile_policy, load_policy
from udfs.durations import parse_duration
from udfs.keyring import Keyring

BASE = {
    "version": 1,
    "source": {"topic": "raw-customer-events", "format": "json", "timestamp_field": "timestamp"},
    "subject_field": "customerId",
    "views": {
        "masked": {
            "sink": {"topic": "masked-customer-events"},
            "fields": {
                "customerId": {"pseudonymize": "hmac_sha256"},
                "email": {"mask": "email"},
                "ssn": {"mask": "keep_last", "n": 4},
                "age": {"generalize": "range", "width": 10},
                "address.zip": {"generalize": "truncate", "keep": 3},
                "items[*].card": {"encrypt": "aes_siv"},
                "timestamp": "keep",
            },
        }
    },
}


def doc(**changes) -> dict:
    """The base policy with top-level keys replaced (None deletes one)."""
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def with_fields(**fields) -> dict:
    out = doc()
    out["views"]["masked"]["fields"] = fields
    return out


def problems(document, keyring: Keyring | None = None) -> list[Problem]:
    with pytest.raises(PolicyError) as exc:
        compile_policy(document, file="p.yaml", keyring=keyring)
    return exc.value.problems


def only_problem(document, keyring: Keyring | None = None) -> Problem:
    found = problems(document, keyring)
    assert len(found) == 1, found
    return found[0]


# -- the happy path ----------------------------------------------------------------------------------
def test_a_good_policy_compiles_with_its_views_and_required_fields():
    policy = compile_policy(doc(), file="conf/policies/customer-events.yaml")
    assert policy.id == "customer-events"
    assert policy.source_topic == "raw-customer-events" and policy.dlq_topic == "raw-customer-events.dlq"
    assert policy.required_fields == ("customerId", "timestamp")
    assert policy.watermark_delay_ms == 5000 and policy.delivery == "exactly-once"
    assert list(policy.views) == ["masked"] and policy.views["masked"].topic == "masked-customer-events"
    assert sorted(t.name for t in policy.transforms()) == sorted([
        "pseudonymize.hmac_sha256", "mask.email", "mask.keep_last", "generalize.range",
        "generalize.truncate", "encrypt.aes_siv", "keep",
    ])


def test_the_policy_id_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "orders-v2.yaml"
    path.write_text("version: 1\nsource: {topic: t, timestamp_field: ts}\nsubject_field: s\n"
                    "views: {v: {sink: {topic: o}, fields: {s: keep}}}\n")
    assert load_policy(path).id == "orders-v2"
    assert compile_policy(doc(id="orders"), file=str(path)).id == "orders"


def test_the_policy_hash_changes_when_the_policy_changes():
    before = compile_policy(doc()).hash
    changed = doc()
    changed["views"]["masked"]["fields"]["ssn"]["n"] = 3
    assert compile_policy(doc()).hash == before  # stable for the same document
    assert compile_policy(changed).hash != before
    assert compile_policy(doc(description="same rules, new words")).hash != before
    assert len(before) == 16 and int(before, 16) >= 0


def test_the_hash_ignores_yaml_comments_and_key_order(tmp_path):
    one, two = tmp_path / "a.yaml", tmp_path / "b.yaml"
    one.write_text("version: 1\nsubject_field: s\nsource: {topic: t, timestamp_field: ts}\n"
                   "views: {v: {sink: {topic: o}, fields: {s: keep}}}\n")
    two.write_text("# a comment\nsource: {timestamp_field: ts, topic: t}\nversion: 1\nsubject_field: s  # who\n"
                   "views: {v: {fields: {s: keep}, sink: {topic: o}}}\n")
    assert load_policy(one).hash == load_policy(two).hash


def test_every_problem_is_reported_at_once():
    bad = doc(version=2, subject_field=None)
    bad["views"]["masked"]["fields"]["age"]["width"] = -1
    assert [p.path for p in problems(bad)] == ["version", "subject_field", "views.masked.fields.age.width"]


def test_a_problem_renders_file_path_problem_and_allowed():
    with pytest.raises(PolicyError) as exc:
        compile_policy(doc(version=2), file="conf/p.yaml")
    assert str(exc.value) == "conf/p.yaml: version: unsupported version 2 (allowed: 1)"
    assert exc.value.file == "conf/p.yaml"


# -- one test per error message -------------------------------------------------------------------------
def test_when_the_document_is_not_a_mapping_then_refused():
    p = only_problem(["version", 1])
    assert (p.path, p.problem) == ("", "the policy must be a mapping")
    assert p.allowed.startswith("keys: version, id, description, source")


def test_when_a_top_level_key_is_unknown_then_refused():
    p = only_problem(doc(viewz={}))
    assert (p.path, p.problem) == ("viewz", "unknown key")
    assert p.allowed == "version, id, description, source, subject_field, views, plugins, delivery"


def test_when_version_is_not_1_then_refused():
    assert only_problem(doc(version="1")) == Problem("version", "unsupported version '1'", "1")


def test_when_plugins_is_not_a_list_of_names_then_refused():
    assert only_problem(doc(plugins="my_udfs")) == Problem(
        "plugins", "must be a list of module names", "e.g. [my_company.udfs]")


def test_when_a_plugin_module_cannot_be_imported_then_refused():
    assert only_problem(doc(plugins=["json", "no_such_company.udfs"])) == Problem(
        "plugins[1]", "cannot import 'no_such_company.udfs' (no_such_company not found)",
        "a module on the Python path of the job and its workers")


def test_when_source_is_missing_then_refused():
    found = problems(doc(source=None))
    assert found[0] == Problem("source", "missing or not a mapping", "{topic: ..., format: json, timestamp_field: ...}")


def test_when_a_source_key_is_unknown_then_refused():
    assert only_problem(doc(source={**BASE["source"], "partitions": 3})) == Problem(
        "source.partitions", "unknown key",
        "topic, format, timestamp_field, required_fields, key_field, watermark_delay, schema_changes, schema")


def test_when_source_topic_is_missing_then_refused():
    assert only_problem(doc(source={"timestamp_field": "timestamp"})) == Problem(
        "source.topic", "missing", "the raw topic's name")


def test_when_source_format_is_unknown_then_refused():
    assert only_problem(doc(source={**BASE["source"], "format": "protobuf"})) == Problem(
        "source.format", "unsupported format 'protobuf'", "json, debezium-json, avro, debezium-avro")


def test_when_timestamp_field_is_missing_then_refused():
    assert only_problem(doc(source={"topic": "raw"})) == Problem(
        "source.timestamp_field", "missing", "the field holding the event time (ISO-8601)")


def test_when_required_fields_is_not_a_list_of_names_then_refused():
    assert only_problem(doc(source={**BASE["source"], "required_fields": "email"})) == Problem(
        "source.required_fields", "must be a list of field names", "e.g. [customerId]")


@pytest.mark.parametrize(
    "delay",
    [
        "5 minutes",  # words
        "-5s",  # negative
        True,  # a bool
    ],
)
def test_when_watermark_delay_is_not_a_duration_then_refused(delay):
    p = only_problem(doc(source={**BASE["source"], "watermark_delay": delay}))
    assert p.path == "source.watermark_delay" and p.allowed == "a duration such as 500ms, 30s, 5m, 1h"


def test_when_subject_field_is_missing_then_refused():
    assert only_problem(doc(subject_field=None)) == Problem(
        "subject_field", "missing", "the field that says whose data a record is, e.g. customerId")


def test_when_delivery_mode_is_unknown_then_refused():
    assert only_problem(doc(delivery="exactly-twice")) == Problem(
        "delivery", "unknown mode 'exactly-twice'", "exactly-once, at-least-once")


def test_when_views_are_missing_then_refused():
    assert only_problem(doc(views={})) == Problem(
        "views", "missing or empty", "a mapping of view name to {sink, fields} or {sink, differential_privacy}")


def test_when_an_entry_under_views_is_not_a_view_then_refused():
    bad = doc()
    bad["views"]["colour"] = "blue"
    assert only_problem(bad) == Problem("views.colour", "must be a mapping",
                                        "keys: description, sink, fields, k_anonymity, differential_privacy, shuffle")


def test_when_a_view_key_is_unknown_then_refused():
    bad = doc()
    bad["views"]["masked"]["filter"] = "age > 18"
    assert only_problem(bad) == Problem(
        "views.masked.filter", "unknown key", "description, sink, fields, k_anonymity, differential_privacy, shuffle")


def test_when_a_sink_key_is_unknown_then_refused():
    bad = doc()
    bad["views"]["masked"]["sink"]["partitions"] = 3
    assert only_problem(bad) == Problem("views.masked.sink.partitions", "unknown key", "topic, compacted, format")


def test_when_a_sink_has_no_topic_then_refused():
    bad = doc()
    bad["views"]["masked"]["sink"] = {"compacted": True}
    assert only_problem(bad) == Problem(
        "views.masked.sink", "missing or without a topic", "{topic: masked-customer-events}")


@pytest.mark.parametrize(
    "fields_and_dp",
    [
        {"fields": {"a": "keep"}, "differential_privacy": {"window": "1m"}},  # both
        {},  # neither
    ],
)
def test_when_a_view_has_both_or_neither_of_fields_and_dp_then_refused(fields_and_dp):
    bad = doc()
    bad["views"]["masked"] = {"sink": {"topic": "out"}, **fields_and_dp}
    assert only_problem(bad) == Problem(
        "views.masked", "needs exactly one of 'fields' and 'differential_privacy'",
        "fields for a record view, differential_privacy for an aggregate view")


@pytest.mark.parametrize(
    "fields",
    [
        {},  # empty
        ["email"],  # a list
    ],
)
def test_when_fields_is_not_a_non_empty_mapping_then_refused(fields):
    bad = doc()
    bad["views"]["masked"]["fields"] = fields
    assert only_problem(bad) == Problem("views.masked.fields", "must be a non-empty mapping of field path to transform",
                                        "e.g. {email: {mask: email}, customerId: keep}")


def test_when_a_field_path_has_bad_syntax_then_refused():
    assert only_problem(with_fields(**{"items[0].card": "keep"})) == Problem(
        "views.masked.fields.items[0].card", "segment 'items[0]' is not a field name, optionally followed by [*]",
        "dotted names with optional [*], e.g. address.zip, items[*].card")


def test_when_two_field_paths_overlap_then_refused():
    assert only_problem(with_fields(address="keep", **{"address.zip": "keep"})) == Problem(
        "views.masked.fields", "address.zip overlaps another rule for the same field",
        "dotted names with optional [*], e.g. items[*].card")


def test_when_a_transform_is_unknown_then_refused_with_a_suggestion():
    p = only_problem(with_fields(email={"mask": "emial"}))
    assert (p.path, p.problem) == ("views.masked.fields.email", "unknown transform 'mask.emial'")
    assert p.allowed.startswith("did you mean mask.email")
    assert "? known: " in p.allowed and "mask.keep_last" in p.allowed.split("known: ")[1]


def test_when_an_unknown_transform_is_far_from_any_name_then_only_the_known_ones_are_listed():
    p = only_problem(with_fields(email="zzzz"))
    assert p.problem == "unknown transform 'zzzz'" and p.allowed.startswith("known: ")


def test_when_a_family_has_no_variant_name_then_refused():
    p = only_problem(with_fields(email={"mask": 4}))
    assert (p.path, p.problem) == ("views.masked.fields.email", "'mask' needs a variant name, got int")
    assert "mask.email" in p.allowed and "mask.keep_last" in p.allowed


@pytest.mark.parametrize(
    "spec",
    [
        5,  # a number
        {},  # an empty mapping
        ["keep"],  # a list
    ],
)
def test_when_a_transform_is_neither_a_name_nor_a_mapping_then_refused(spec):
    assert only_problem(with_fields(email=spec)) == Problem(
        "views.masked.fields.email", "a transform is a name or a mapping", "keep, drop, null, {mask: email}, ...")


def test_when_a_parameter_is_unknown_then_refused():
    assert only_problem(with_fields(ssn={"mask": "keep_last", "n": 4, "colour": "red"})) == Problem(
        "views.masked.fields.ssn.colour", "unknown parameter for mask.keep_last", "n, char, min_length, domain, key_id")


def test_when_range_width_is_negative_then_refused():
    assert only_problem(with_fields(age={"generalize": "range", "width": -10})) == Problem(
        "views.masked.fields.age.width", "must be a positive number, got -10", "a number > 0, such as 10")


def test_when_keep_last_n_reaches_min_length_then_refused():
    assert only_problem(with_fields(ssn={"mask": "keep_last", "n": 9, "min_length": 9})) == Problem(
        "views.masked.fields.ssn.n", "keep_last 9 would reveal whole values of length 9", "n smaller than min_length (9)")


def test_the_family_may_come_after_its_parameters():
    policy = compile_policy(with_fields(ssn={"n": 4, "mask": "keep_last"}))
    assert [t.name for t in policy.transforms()] == ["mask.keep_last"]


def test_when_the_keyring_lacks_a_purpose_then_refused():
    ring = Keyring.generate(["siv"])
    p = only_problem(with_fields(customerId={"pseudonymize": "hmac_sha256"}), keyring=ring)
    assert p.path == "views.masked.fields.customerId"
    assert p.problem == ("keyring <memory> has no active 'pseudonym' key; add one with: "
                         "flink-anonymizer keys rotate --purpose pseudonym --keyring ...")
    assert p.allowed == "add a 'pseudonym' key"


def test_when_a_named_key_id_is_not_in_the_keyring_then_refused():
    ring = Keyring.generate(["pseudonym"])
    p = only_problem(with_fields(customerId={"pseudonymize": "hmac_sha256", "key_id": "pseudonym-old"}), keyring=ring)
    assert p == Problem("views.masked.fields.customerId.key_id", "keyring <memory> has no key with id 'pseudonym-old'",
                        ring.active["pseudonym"])
    for key in ring.keys.values():
        assert key.material.hex() not in str(p)


def test_when_a_named_key_id_is_for_another_purpose_then_refused():
    ring = Keyring.generate(["pseudonym", "encrypt"])
    p = only_problem(with_fields(customerId={"pseudonymize": "hmac_sha256", "key_id": ring.active["encrypt"]}),
                     keyring=ring)
    assert p.problem == f"key {ring.active['encrypt']!r} is for 'encrypt', not 'pseudonym'"


def test_with_a_complete_keyring_the_policy_compiles_and_opens():
    ring = Keyring.generate()
    policy = compile_policy(doc(), keyring=ring)
    policy.open(ring)
    masked = policy.views["masked"]
    assert masked.tree is not None and masked.is_record_view


# -- files ---------------------------------------------------------------------------------------------------
def test_when_the_yaml_is_broken_then_the_line_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        source: {topic: raw, timestamp_field: ts}
        views: {masked: {sink: {topic: out}
        subject_field: customerId
        """))
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    (p,) = exc.value.problems
    assert p.problem.startswith("not valid YAML at line 4, column ")
    assert p.allowed == "a YAML mapping"
    assert str(exc.value).startswith(f"{path}: <top>: not valid YAML at line 4")


def test_when_the_file_does_not_exist_then_refused(tmp_path):
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "nope.yaml")
    assert exc.value.problems == [Problem("", "file not found", "a path to a YAML policy")]
    assert str(exc.value) == f"{tmp_path / 'nope.yaml'}: <top>: file not found (allowed: a path to a YAML policy)"


def test_an_empty_file_is_not_a_policy(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert exc.value.problems[0].problem == "the policy must be a mapping"


def test_the_example_masked_policy_in_conf_is_valid():
    policy = load_policy("conf/policies/customer-events-masked.yaml", keyring=Keyring.generate())
    assert policy.views


# -- durations -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("500ms", 500),  # milliseconds
        ("30s", 30_000),  # seconds
        ("1.5s", 1_500),  # a fraction
        ("5m", 300_000),  # minutes
        ("1h", 3_600_000),  # hours
        ("1d", 86_400_000),  # days
        (2, 2_000),  # a plain number is seconds
    ],
)
def test_policy_durations_parse(raw, ms):
    assert parse_duration(raw, "duration") == ms


# -- shuffle ---------------------------------------------------------------------------------------------
SHUFFLE_FIELDS = {"customerId": "keep", "zip": "keep", "age": "keep", "region": "keep", "timestamp": "keep",
                  "card": "drop"}


def with_shuffle(block, **view) -> dict:
    out = with_fields(**SHUFFLE_FIELDS)
    out["views"]["masked"]["shuffle"] = block
    out["views"]["masked"].update(view)
    return out


def test_a_shuffle_block_compiles_into_the_views_parameters():
    block = {"columns": ["zip", "age"], "window": 50, "timeout": "10s", "min_size": 10, "small_window": "hold",
             "max_hold": "2m", "partition_by": "region"}
    shuffle = compile_policy(with_shuffle(block)).views["masked"].shuffle
    assert (shuffle.columns, shuffle.count, shuffle.timeout_ms, shuffle.min_size) == (("zip", "age"), 50, 10_000, 10)
    assert (shuffle.small_window, shuffle.max_hold_ms, shuffle.partition_by) == ("hold", 120_000, "region")
    assert compile_policy(with_fields(**SHUFFLE_FIELDS)).views["masked"].shuffle is None


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ({"columns": ["zip"], "window": 1}, "views.masked.shuffle.window"),  # a window of one record
        ({"columns": ["zip"]}, "views.masked.shuffle.window"),  # no window
        ({"columns": [], "window": 10}, "views.masked.shuffle.columns"),  # nothing to shuffle
        ({"columns": ["zip"], "window": 10, "min_size": 1}, "views.masked.shuffle.min_size"),  # one is itself
        ({"columns": ["zip"], "window": 10, "min_size": 20}, "views.masked.shuffle.min_size"),  # above the count
        ({"columns": ["zip"], "window": 10, "small_window": "release"}, "views.masked.shuffle.small_window"),
        ({"columns": ["zip"], "window": "1m", "timeout": "5s"}, "views.masked.shuffle.timeout"),  # time windows
        ({"columns": ["zip"], "window": "-5s"}, "views.masked.shuffle.window"),  # a negative duration
        ({"columns": ["zip"], "window": 10, "colour": 1}, "views.masked.shuffle.colour"),  # unknown key
        ({"columns": ["email"], "window": 10}, "views.masked.shuffle.columns[0]"),  # not a field of the view
        ({"columns": ["card"], "window": 10}, "views.masked.shuffle.columns[0]"),  # dropped, so never published
        ({"columns": ["customerId"], "window": 10}, "views.masked.shuffle.columns[0]"),  # the subject keys records
        ({"columns": ["zip"], "window": 10, "partition_by": "city"}, "views.masked.shuffle.partition_by"),
        ("zip", "views.masked.shuffle"),  # not a mapping
    ],
)
def test_when_a_shuffle_parameter_is_wrong_then_its_policy_path_is_named(block, path):
    problem = only_problem(with_shuffle(block))
    assert problem.path == path and problem.allowed


def test_every_bad_shuffle_parameter_is_named_at_once():
    block = {"columns": ["zip", "email"], "window": 10, "min_size": 1, "small_window": "release", "state_ttl": "x"}
    paths = [p.path for p in problems(with_shuffle(block))]
    assert sorted(paths) == ["views.masked.shuffle.columns[1]", "views.masked.shuffle.min_size",
                             "views.masked.shuffle.small_window", "views.masked.shuffle.state_ttl"]


def test_when_a_view_is_both_k_anonymized_and_shuffled_then_refused():
    kanon = {"k": 2, "max_delay": "1s", "quasi_identifiers": {"sex": {"hierarchy": ["exact", "*"]}}}
    problem = only_problem(with_shuffle({"columns": ["zip"], "window": 10}, k_anonymity=kanon))
    assert problem.path == "views.masked.shuffle" and "not both" in problem.problem


def test_a_shuffle_problem_never_quotes_a_value():
    problem = only_problem(with_shuffle({"columns": ["zip"], "window": "703-40-3708"}))
    assert "703-40-3708" not in problem.render("p.yaml")
