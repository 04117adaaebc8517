"""The Prometheus settings and the protect operator's dashboard counters, without a JVM."""

from __future__ import annotations

from collections import Counter

import pytest

from flink_jobs.cli.errors import CliError
from flink_jobs.cli.run import metrics_config
from flink_jobs.metrics import (
    PROMETHEUS_FACTORY,
    MetricsConfigError,
    ProtectMetrics,
    parse_ports,
    prometheus_config,
    prometheus_jar,
    reason_word,
)


class Recorder:
    """Counts what each (group path, counter name) was given: the shape of Flink's metric group API."""

    def __init__(self, path=(), store=None) -> None:
        self.path, self.store = path, store if store is not None else Counter()

    def add_group(self, key, value=None):
        return Recorder(self.path + ((key, value),), self.store)

    def counter(self, name):
        store, key = self.store, (self.path, name)

        class _Counter:
            def inc(self, n=1):
                store[key] += n

        return _Counter()


class FakeProtector:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.policy = None


@pytest.mark.parametrize("text, expected", [
    ("9249", (9249, 9249)),             # one port: a local run is one process
    ("9249-9259", (9249, 9259)),        # a range: a cluster's JobManager and TaskManagers take one each
    (" 9300 ", (9300, 9300)),           # spaces around it
])
def test_when_ports_are_a_port_or_a_range_then_parsed(text, expected):
    assert parse_ports(text) == expected


@pytest.mark.parametrize("text", [
    "abc",            # not a number
    "9259-9249",      # a range backwards
    "0",              # not a port
    "70000",          # past 65535
    "9249,9250",      # a list
])
def test_when_ports_are_not_a_port_or_range_then_refused(text):
    with pytest.raises(MetricsConfigError, match="--metrics-port"):
        parse_ports(text)


def test_prometheus_config_names_the_reporter_factory_and_port():
    assert prometheus_config("9249-9250") == {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": "9249-9250",
    }


def test_the_pip_distribution_ships_the_prometheus_reporter():
    assert prometheus_jar().name.startswith("flink-metrics-prometheus-")


def test_when_metrics_port_is_bad_then_the_cli_says_so_without_a_traceback():
    with pytest.raises(CliError, match="a port or a range"):
        metrics_config("nine")
    assert metrics_config(None) == {}


@pytest.mark.parametrize("reason, word", [
    ("invalid_json", "invalid_json"),                                      # a reason code
    ("missing_field customerId", "missing_field"),                         # a field name after it is cut
    ("field age: keep.integer: expected an integer, got str", "field"),    # a field and a transform
    ("403-12-0000 is not valid", "other"),                                 # a value first: never a label
    ("", "other"),                                                         # nothing
])
def test_dead_letter_reason_label_is_the_first_word_only(reason, word):
    assert reason_word(reason) == word


def test_protect_metrics_add_only_what_changed_since_the_last_update():
    group = Recorder()
    metrics = ProtectMetrics(group, ["dlq", "masked", "anonymized"])
    protector = FakeProtector()
    protector.counts.update({"dlq:invalid_json": 2, "dlq:field age": 1, "dlq:field ssn": 3})
    protector.dropped.update({"masked:notes": 5})
    metrics.update({"dlq": 6, "masked": 10, "anonymized": 10}, protector)
    protector.counts["dlq:invalid_json"] += 1
    protector.dropped["masked:notes"] += 2
    metrics.update({"dlq": 7, "masked": 12, "anonymized": 12}, protector)

    store = group.store
    assert store[((("view", "masked"),), "records_in")] == 12
    assert store[((("view", "anonymized"),), "records_in")] == 12
    assert not any(path == (("view", "dlq"),) for path, _ in store)  # dead letters are counted by reason
    assert store[((("reason", "invalid_json"),), "dead_letters")] == 3
    assert store[((("reason", "field"),), "dead_letters")] == 4  # both fields under one word
    assert store[((("view", "masked"), ("field", "notes")), "fields_dropped")] == 7
    assert store[((), "vault_hits")] == 0


def test_protect_metrics_sum_vault_hits_and_misses_of_every_token_transform():
    class Token:
        hits, misses = 7, 3

    class Mask:
        pass

    class Policy:
        def transforms(self):
            return [Token(), Mask(), Token()]

    group = Recorder()
    protector = FakeProtector()
    protector.policy = Policy()
    ProtectMetrics(group, ["dlq"]).update({}, protector)
    assert group.store[((), "vault_hits")] == 14
    assert group.store[((), "vault_misses")] == 6


@pytest.mark.parametrize("cache_size", [
    1000,   # a repeat is found in the task's cache
    0,      # no cache: a repeat is found in the vault
])
def test_a_token_found_is_a_vault_hit_and_a_token_minted_a_miss(tmp_path, keyring, cache_size):
    import udfs.tokenization  # noqa: F401 - registers tokenize.vault
    from udfs import registry

    make = registry.get("tokenize.vault")
    spec = {"subject_field": "customerId", "vault": f"sqlite:{tmp_path / 'vault.db'}", "cache_size": cache_size}
    first = make(spec, domain="customer_id")
    first.open(keyring)
    for value in ("CUST1", "CUST2", "CUST1", "CUST1"):
        first.apply_in_record(value, {"customerId": value})
    assert (first.hits, first.misses) == (2, 2)
    second = make(spec, domain="customer_id")  # another task, same vault
    second.open(keyring)
    second.apply_in_record("CUST2", {"customerId": "CUST2"})
    assert (second.hits, second.misses) == (1, 0)
    first.close()
    second.close()
