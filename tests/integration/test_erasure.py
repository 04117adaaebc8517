"""Right to be forgotten, concurrent tokenization and joins across topics, with real vaults.

- Erasure: protect a stream, forget one subject, then decrypt and detokenize every
  protected record: only that subject's records fail, with "subject forgotten".
- Concurrency: four processes tokenize overlapping values at once; each value ends
  with exactly one token, on SQLite and on PostgreSQL.
- Joins: orders and support tickets join on the raw customer id and on each
  protected form of it (pseudonym, FF1, AES-SIV, substitute, token) to the same pairs.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import orjson
import pytest
import yaml

import udfs.tokenization  # noqa: F401 - registers tokenize.vault
from flink_jobs.protect import DLQ, Protector
from tests.support.pg_fixture import pg_vault_url, postgres_server  # noqa: F401
from udfs.keyring import Keyring
from udfs.record import invert_view
from udfs.registry import TransformError
from udfs.vault import Vault

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ORDERS_POLICY = ROOT / "conf/policies/customer-events.yaml"
TICKETS_POLICY = ROOT / "conf/policies/support-tickets.yaml"
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"


@pytest.fixture(params=["sqlite", "postgresql"])
def vault_ref(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'vault.db'}"
    return request.getfixturevalue("pg_vault_url")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def tickets(n: int, customers: list[str]) -> list[dict]:
    return [
        {
            "ticketId": f"T{i:05d}",
            "customerId": customers[i % len(customers)],
            "email": f"user{i % len(customers)}@example.org",
            "phone": "+1-412-555-0133",
            "category": ("billing", "delivery", "refund")[i % 3],
            "priority": i % 4,
            "timestamp": f"2024-03-15T{i % 24:02d}:00:00Z",
        }
        for i in range(n)
    ]


def protect(document: dict, file: str, keyring: Keyring, records: list[dict]) -> dict[str, list[dict]]:
    """Every record through the Protector core; the protected records per view."""
    protector = Protector(document, file)
    protector.open(keyring)
    out: dict[str, list[dict]] = {}
    for index, record in enumerate(records):
        for routed in protector.process(f"in:{index}", record["customerId"], orjson.dumps(record).decode()):
            assert routed.channel != DLQ, routed.value[1]
            out.setdefault(routed.channel, []).append(json.loads(routed.value[2]))
    for transform in protector.policy.transforms():
        getattr(transform, "close", lambda: None)()
    return out


# -- erasure ------------------------------------------------------------------------------------


def test_after_forget_only_that_subjects_records_fail_to_decrypt_and_detokenize(vault_ref, keyring, monkeypatch):
    # the policy names no vault: the workers' $ANON_VAULT does
    monkeypatch.setenv("ANON_VAULT", vault_ref)
    document = load(TICKETS_POLICY)
    customers = [f"CUST{n:06d}" for n in range(1, 7)]
    raw = tickets(60, customers)
    views = protect(document, str(TICKETS_POLICY), keyring, raw)
    protected = views["support"]
    assert len(protected) == len(raw)
    assert all(p["customerId"].startswith("tok_") and p["email"].startswith("gk1.") for p in protected)

    forgotten = customers[2]
    with Vault.open(vault_ref, keyring).closing() as vault:
        result = vault.forget(forgotten)
    assert result.keys == 1 and result.tokens == 1

    # a fresh task: nothing cached from before the forget
    reader = Protector(document, str(TICKETS_POLICY))
    reader.open(keyring)
    tree = reader.policy.views["support"].tree
    failed = []
    for original, record in zip(raw, protected, strict=True):
        try:
            back = invert_view(tree, record)
        except TransformError as exc:
            assert "subject forgotten" in str(exc)
            assert original["customerId"] not in str(exc) and original["email"] not in str(exc)
            failed.append(original["customerId"])
            continue
        assert back["customerId"] == original["customerId"] and back["email"] == original["email"]
    assert failed and set(failed) == {forgotten}
    assert len(failed) == sum(1 for r in raw if r["customerId"] == forgotten)
    # each reversible field on its own fails too: the token and the per-subject ciphertext
    fields = {leaf: tree.children[leaf].transform for leaf in ("customerId", "email")}
    one = next(p for o, p in zip(raw, protected, strict=True) if o["customerId"] == forgotten)
    for name, transform in fields.items():
        with pytest.raises(TransformError, match="subject forgotten"):
            transform.invert(one[name])


# -- concurrency --------------------------------------------------------------------------------


def _tokenize_worker(keyring_json: str, vault_ref: str, values: list[str], barrier, results) -> None:
    from udfs import registry

    keyring = Keyring.from_json(keyring_json)
    token = registry.get("tokenize.vault")({"subject_field": "customerId", "vault": vault_ref, "cache_size": 0},
                                           domain="customer_id")
    token.open(keyring)
    barrier.wait(timeout=60)  # all four start tokenizing at the same moment
    results.put({v: token.apply_in_record(v, {"customerId": v}) for v in values})
    token.close()


def test_four_processes_tokenizing_overlapping_values_agree_on_one_token_each(vault_ref, keyring):
    Vault.open(vault_ref, keyring).close()  # the schema exists before the race on tokens
    universe = [f"CUST{n:06d}" for n in range(400)]
    # each process takes 250 values; neighbours share 150, so most values are raced by 2 or 3 processes
    slices = [universe[i * 50: i * 50 + 250] for i in range(4)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_tokenize_worker, args=(keyring.to_json(), vault_ref, s, barrier, results))
             for s in slices]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    seen: dict[str, set[str]] = {}
    for output in outputs:
        for value, token in output.items():
            seen.setdefault(value, set()).add(token)
    covered = sorted(seen)
    assert covered == sorted({v for s in slices for v in s})
    assert all(len(tokens) == 1 for tokens in seen.values())
    with Vault.open(vault_ref, keyring).closing() as vault:
        rows = vault.backend.query("SELECT token FROM tokens WHERE domain = ?", "customer_id")
        keys = vault.backend.query("SELECT count(*) FROM subject_keys")[0][0]
    assert len(rows) == len(covered) == len({r[0] for r in rows})
    assert {r[0] for r in rows} == {next(iter(t)) for t in seen.values()}
    assert keys == len(covered)  # one data key per subject, however many tasks raced to make it


# -- joins --------------------------------------------------------------------------------------

#: customerId's protected forms; every one keys on the customer_id domain
KEY_FORMS = {
    "pseudonym": None,  # taken from the two policies themselves (their analytics views)
    "ff1": {"fpe": "ff1", "alphabet": "alphanumeric", "domain": "customer_id"},
    "siv": {"encrypt": "aes_siv", "domain": "customer_id"},
    "substitute": {"substitute": "email", "domain": "customer_id"},
    "token": None,  # the support view of support-tickets.yaml
}


def sample_orders(n: int) -> list[dict]:
    orders = []
    for line in SAMPLE.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("customerId"), str) and record.get("timestamp"):
            orders.append({"orderRef": f"O{len(orders):05d}", "customerId": record["customerId"],
                           "timestamp": record["timestamp"]})
        if len(orders) == n:
            break
    return orders


def single_view(document: dict, id_spec: dict, other_field: str) -> dict:
    doc = copy.deepcopy(document)
    doc["views"] = {"j": {"sink": {"topic": "j"}, "fields": {"customerId": id_spec, other_field: "keep"}}}
    return doc


def pairs(orders: list[dict], tickets_: list[dict]) -> set[tuple[str, str]]:
    by_customer: dict[str, list[str]] = {}
    for o in orders:
        by_customer.setdefault(o["customerId"], []).append(o["orderRef"])
    return {(ref, t["ticketId"]) for t in tickets_ for ref in by_customer.get(t["customerId"], [])}


@pytest.mark.parametrize("form", list(KEY_FORMS))
def test_orders_and_tickets_join_to_the_same_pairs_on_raw_and_protected_ids(form, tmp_path, keyring, monkeypatch):
    monkeypatch.setenv("ANON_VAULT", f"sqlite:{tmp_path / 'vault.db'}")
    orders_doc, tickets_doc = load(ORDERS_POLICY), load(TICKETS_POLICY)
    if form == "pseudonym":
        order_spec = orders_doc["views"]["anonymized"]["fields"]["customerId"]
        ticket_spec = tickets_doc["views"]["analytics"]["fields"]["customerId"]
        assert order_spec == ticket_spec  # the two policies agree on the domain and the form
    elif form == "token":
        order_spec = ticket_spec = tickets_doc["views"]["support"]["fields"]["customerId"]
    else:
        order_spec = ticket_spec = KEY_FORMS[form]
    orders = sample_orders(300)
    customers = sorted({o["customerId"] for o in orders})
    # tickets of customers with orders, and of some without any
    raw_tickets = tickets(120, customers[::3] + [f"CUSTX{n}" for n in range(10)])
    expected = pairs(orders, raw_tickets)
    assert expected

    protected_orders = protect(single_view(orders_doc, order_spec, "orderRef"), "orders", keyring, orders)["j"]
    protected_tickets = protect(single_view(tickets_doc, ticket_spec, "ticketId"), "tickets", keyring, raw_tickets)["j"]

    # the protected ids hide the raw ones, and stay one-to-one on this sample
    raw_ids = {o["customerId"] for o in orders}
    assert not raw_ids & {o["customerId"] for o in protected_orders}
    forms = {}
    for raw, prot in zip(orders + raw_tickets, protected_orders + protected_tickets, strict=True):
        forms.setdefault(prot["customerId"], set()).add(raw["customerId"])
    assert all(len(ids) == 1 for ids in forms.values())
    assert pairs(protected_orders, protected_tickets) == expected


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_forget_shreds_the_vault_and_tombstones_the_compacted_topics(kafka_broker, tmp_path, keyring, capsys):
    from flink_jobs.cli import main
    from flink_jobs.kafka_tools import consume, ensure_topics

    bootstrap = kafka_broker.bootstrap
    topic = "support-tickets-masked-erasure"
    ensure_topics(bootstrap, [topic], config={"cleanup.policy": "compact"})
    ring_file = tmp_path / "ring.json"
    keyring.save(ring_file)
    vault = f"sqlite:{tmp_path / 'vault.db'}"
    common = ["--keyring", f"file:{ring_file}", "--vault", vault]
    with Vault.open(vault, keyring).closing() as v:
        v.tokenize("customer_id", "CUST000042", "CUST000042", b'"CUST000042"', lambda: "tok_fortytwo")
        v.tokenize("customer_id", "CUST000043", "CUST000043", b'"CUST000043"', lambda: "tok_fortythree")

    assert main(["detokenize", "--domain", "customer_id", "tok_fortytwo", "tok_fortythree", *common]) == 0
    assert capsys.readouterr().out.split() == ["CUST000042", "CUST000043"]

    assert main(["forget", "CUST000042", "--topic", topic, "--bootstrap-servers", bootstrap, *common]) == 0
    out = capsys.readouterr().out
    assert "1 data key(s) and 1 token row(s) deleted" in out and "CUST000042" not in out
    assert main(["forget", "CUST000042", *common]) == 0  # idempotent
    assert "already forgotten" in capsys.readouterr().out

    assert main(["detokenize", "--domain", "customer_id", "tok_fortytwo", "tok_fortythree", *common]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["", "CUST000043"]
    assert "token 1: subject forgotten" in captured.err

    records = consume(bootstrap, topic, n=1, timeout=30)
    assert [(r.key, r.raw_value) for r in records] == [("CUST000042", None)]
    with Vault.open(vault, keyring).closing() as v:
        audit = v.backend.query("SELECT action, domain, count FROM audit ORDER BY id")
    assert audit == [("detokenize", "customer_id", 2), ("forget", None, 2), ("forget", None, 0),
                     ("detokenize", "customer_id", 2)]


@pytest.mark.parametrize("command", ["detokenize", "forget", "vault-up", "vault-down"])
def test_every_vault_command_has_help(command, capsys):
    from flink_jobs.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
