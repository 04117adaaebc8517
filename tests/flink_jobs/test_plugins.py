"""A user's transforms, loaded from a policy's ``plugins:`` list, as the README shows."""

import json

import pytest

from flink_jobs.policy import PolicyError, compile_policy
from flink_jobs.protect import Protector
from udfs.keyring import Keyring


def policy(fields: dict, plugins: list) -> dict:
    return {
        "version": 1,
        "plugins": plugins,
        "source": {"topic": "raw", "timestamp_field": "timestamp"},
        "subject_field": "customerId",
        "views": {"masked": {"sink": {"topic": "masked"}, "fields": {"customerId": "keep", **fields}}},
    }


def test_a_plugin_function_and_class_run_in_the_job_core():
    doc = policy({"name": {"mask": "initials"}, "age": {"generalize": "bucket", "edges": [0, 18, 65]}},
                 ["conf.examples.my_udfs"])
    protector = Protector(doc, "p.yaml")
    protector.open(Keyring.generate())
    record = {"customerId": "C1", "name": "Jane Q Doe", "age": 70, "timestamp": "2024-03-15T00:00:00Z"}
    (routed,) = protector.process("line 1", None, json.dumps(record))
    assert json.loads(routed.value[2]) == {"customerId": "C1", "name": "J.Q.D.", "age": 3}


def test_a_plugin_parameter_error_is_refused_when_the_policy_is_checked():
    doc = policy({"age": {"generalize": "bucket", "edges": [65, 18]}}, ["conf.examples.my_udfs"])
    with pytest.raises(PolicyError, match=r"views\.masked\.fields\.age\.edges: must be a sorted list"):
        compile_policy(doc, file="p.yaml")


def test_a_plugin_refusal_sends_the_record_to_the_dead_letters_without_its_value():
    protector = Protector(policy({"age": {"generalize": "bucket", "edges": [0, 18]}}, ["conf.examples.my_udfs"]), "p")
    protector.open(Keyring.generate())
    raw = json.dumps({"customerId": "C1", "age": "seventy-one", "timestamp": "2024-03-15T00:00:00Z"})
    (routed,) = protector.process("line 9", None, raw)
    reason = json.loads(routed.value[1])["reason"]
    assert routed.channel == "dlq" and reason == "field age: expected a number" and "seventy" not in reason


def test_a_missing_plugin_module_is_named_in_the_policy_check():
    with pytest.raises(PolicyError, match=r"plugins\[0\]: cannot import 'no_such_udfs'"):
        compile_policy(policy({}, ["no_such_udfs"]), file="p.yaml")
