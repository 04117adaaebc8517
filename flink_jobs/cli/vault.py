"""Vault commands of the CLI: ``detokenize``, ``forget``, ``vault-up`` and ``vault-down``.

::

    flink-anonymizer detokenize --domain customer_id tok_k3j... tok_9x2...
    flink-anonymizer forget CUST12345 --topic masked-customer-events --bootstrap-servers 127.0.0.1:9092
    flink-anonymizer vault-up          # a local PostgreSQL in .local/pg on 127.0.0.1:5433

The vault is ``--vault``, else ``$ANON_VAULT``, else ``sqlite:.local/vault.db``;
the keyring is ``--keyring``, else ``$ANON_KEYRING``. No command prints or logs a
value or a subject; each detokenize and forget writes an audit row to the vault.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from flink_jobs.cli.errors import CliError
from flink_jobs.keyring_ref import resolve_keyring
from udfs.vault import DEFAULT_VAULT, VAULT_ENV, Vault, VaultError, resolve_reference

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the vault subcommands; each sets ``func(args) -> int``."""
    vault_help = f"vault reference sqlite:PATH or postgresql://... (default: ${VAULT_ENV}, else {DEFAULT_VAULT})"

    d = subparsers.add_parser(
        "detokenize",
        help="print the originals behind tokens (audited)",
        description="Look tokens up in the vault and print the original values, one line per token, in order "
        "(strings as they are, other values as JSON). A token whose subject was forgotten prints an empty line "
        "and a reason on stderr, and the exit code is 1. Needs the keyring. Each call writes an audit row "
        "(when, domain, how many tokens), never the values.",
    )
    d.add_argument("tokens", nargs="+", metavar="TOKEN", help="tokens to look up")
    d.add_argument("--domain", required=True, help="the field domain the tokens were made in (e.g. customer_id)")
    d.add_argument("--keyring", default=None, help="keyring reference env:NAME or file:PATH (default: $ANON_KEYRING)")
    d.add_argument("--vault", default=None, help=vault_help)
    d.set_defaults(func=cmd_detokenize)

    f = subparsers.add_parser(
        "forget",
        help="erase a subject: delete its data key and tokens, write tombstones",
        description="Crypto-shred a subject: delete its data key and its token rows from the vault in one "
        "transaction, so every per-subject ciphertext and token of it, in every topic, is unreadable. "
        "Idempotent and audited. With --policy it also writes a tombstone (null value) to each compacted view, "
        "under that view's own key for the subject (the raw id where the view keeps it, the pseudonym where it "
        "pseudonymizes it: computed with the keyring and the vault before the subject's data key is deleted), "
        "so compaction removes its records; a view whose key cannot be derived is named. --topic T writes one "
        "keyed by the raw subject.",
    )
    f.add_argument("subject", metavar="SUBJECT", help="the subject's id, as in the policy's subject_field")
    f.add_argument("--topic", action="append", default=[], help="compacted topic to tombstone (repeatable)")
    f.add_argument("--policy", help="also tombstone every view of this policy whose sink is compacted")
    f.add_argument("--bootstrap-servers", default=None,
                   help="Kafka HOST:PORT for the tombstones (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")
    f.add_argument("--keyring", default=None, help="keyring reference env:NAME or file:PATH (default: $ANON_KEYRING)")
    f.add_argument("--vault", default=None, help=vault_help)
    f.set_defaults(func=cmd_forget)

    for action, text in (("up", "start"), ("down", "stop")):
        p = subparsers.add_parser(
            f"vault-{action}",
            help=f"{text} a local PostgreSQL vault in .local/pg on loopback",
            description=f"{text.capitalize()} a development PostgreSQL for the vault (initdb and pg_ctl from "
            "Debian's postgresql package), listening on 127.0.0.1 only. Under root it runs as the postgres user.",
        )
        p.add_argument("--data-dir", default=".local/pg", help="cluster folder (default: .local/pg)")
        p.add_argument("--port", type=int, default=5433, help="loopback port (default: 5433)")
        p.set_defaults(func=cmd_vault_up if action == "up" else cmd_vault_down)


def _open(args: argparse.Namespace) -> Vault:
    keyring, _ = resolve_keyring(args.keyring)
    try:
        return Vault.open(args.vault, keyring)
    except VaultError as exc:
        raise CliError(str(exc)) from None


def cmd_detokenize(args: argparse.Namespace) -> int:
    from udfs.errors import TransformError
    from udfs.tokenization import detokenize

    vault = _open(args)
    failed = 0
    try:
        # audited before anything is shown: a crash halfway still leaves the trace
        vault.audit("detokenize", args.domain, len(args.tokens))
        for index, token in enumerate(args.tokens, 1):
            try:
                value: Any = detokenize(vault, args.domain, token)
            except TransformError as exc:
                failed += 1
                print(f"token {index}: {exc}", file=sys.stderr)
                print()
                continue
            print(value if isinstance(value, str) else _json(value))
    finally:
        vault.close()
    return 1 if failed else 0


def cmd_forget(args: argparse.Namespace) -> int:
    keyring, _ = resolve_keyring(args.keyring)
    vault = _open(args)
    try:
        # each view's key first: a per-subject pseudonym can only be computed while the data key exists
        keys = [ViewKey(topic, None, "--topic", args.subject) for topic in args.topic]
        if args.policy:
            keys += view_keys(args.policy, keyring, args.subject, vault, resolve_reference(args.vault))
            keys = change_view_keys(keys, args.policy, args.bootstrap_servers)
        result = vault.forget(args.subject)
    finally:
        vault.close()
    # the subject is not echoed, nor any key of it: this output may land in a ticket or a CI log
    state = "forgotten" if result.keys or result.tokens else "already forgotten (nothing left)"
    print(f"subject {state}: {result.keys} data key(s) and {result.tokens} token row(s) deleted")
    for key in keys:
        if key.key is None:
            print(f"view {key.view} -> {key.topic}: cannot be tombstoned; retention applies ({key.how})")
    tombstones = [(key.topic, key.key) for key in keys if key.key is not None]
    if not tombstones:
        return 0
    from flink_jobs.kafka_tools import DEFAULT_BOOTSTRAP, KafkaToolsError

    bootstrap = args.bootstrap_servers or DEFAULT_BOOTSTRAP
    try:
        write_tombstones(bootstrap, tombstones)
    except KafkaToolsError as exc:
        raise CliError(f"the vault forgot the subject, but tombstones failed: {exc}") from None
    for key in keys:
        if key.key is not None and key.view:
            print(f"view {key.view} -> {key.topic}: tombstone written under its key ({key.how})")
    if args.topic:
        print(f"tombstones written to {len(args.topic)} topic(s) under the raw subject: {', '.join(args.topic)}")
    return 0


@dataclass(frozen=True)
class ViewKey:
    """A compacted view's key for one subject: ``key`` None when it cannot be derived, ``how`` says why."""

    topic: str
    view: str | None
    how: str
    key: str | None


#: transforms of the subject field whose output is one subject's own: the same every time, and
#: no other subject's (a mask, a range or a fake name is shared by many, and so is no key to tombstone)
_ONE_TO_ONE = ("keep", "keep.string", "keep.integer", "keep.number", "encrypt.aes_siv", "tokenize.vault")
_ONE_TO_ONE_FAMILIES = ("pseudonymize.", "fpe.")


def view_keys(policy_file: str, keyring: Any, subject: str, vault: Vault, vault_reference: str) -> list[ViewKey]:
    """Each compacted view's key for ``subject``, as the job computes it (``Protector._view_key``)."""
    from flink_jobs.policy import load_policy

    policy = load_policy(policy_file, keyring=keyring)
    out = []
    for name, view in policy.views.items():
        if not view.compacted:
            continue
        if view.tree is None:
            out.append(ViewKey(view.topic, name, "it holds aggregates, keyed by group, not by subject", None))
            continue
        out.append(_view_key(view, name, policy.subject_field, subject, keyring, vault, vault_reference))
    return out


def _view_key(view: Any, name: str, subject_field: str, subject: str, keyring: Any, vault: Vault,
              vault_reference: str) -> ViewKey:
    from udfs.errors import TransformError
    from udfs.record import Leaf

    leaf = view.tree.children.get(subject_field)
    transform = leaf.transform if isinstance(leaf, Leaf) else None
    if transform is None or transform.name in ("drop", "null"):
        return ViewKey(view.topic, name, f"its key field {subject_field} is dropped", None)
    if not transform.deterministic:
        return ViewKey(view.topic, name, f"its key field {subject_field} is randomized ({transform.name})", None)
    if transform.name not in _ONE_TO_ONE and not transform.name.startswith(_ONE_TO_ONE_FAMILIES):
        return ViewKey(view.topic, name, f"its key ({transform.name}) is shared with other subjects", None)
    if transform.name.startswith("keep"):
        return ViewKey(view.topic, name, f"the raw {subject_field}", subject)
    if transform.name == "tokenize.vault":
        # looked up, never minted: a subject without a token has no record to tombstone
        row = vault.backend.one("token_by_value", transform.domain, vault.value_hmac(transform.domain, subject))
        if row is None:
            return ViewKey(view.topic, name, f"no token of {subject_field} in the vault: nothing to tombstone", None)
        return ViewKey(view.topic, name, f"its token of {subject_field}", row[0])
    if getattr(transform, "per_subject", False) and getattr(transform, "vault_reference", None) is None:
        transform.vault_reference = vault_reference  # the vault this command forgets in
    try:
        transform.open(keyring)
        try:
            key = (transform.apply_in_record(subject, {subject_field: subject}) if transform.needs_record
                   else transform.apply(subject))
        finally:
            getattr(transform, "close", lambda: None)()
    except TransformError as exc:
        # the reason names the transform and the field, never the value
        return ViewKey(view.topic, name, f"its key cannot be computed from the subject alone: {exc}", None)
    return ViewKey(view.topic, name, f"its {transform.name} of {subject_field}", str(key))


def change_view_keys(keys: list[ViewKey], policy_file: str, bootstrap: str | None) -> list[ViewKey]:
    """For a change-event policy (``debezium-json``, ``debezium-avro``), each view key of the subject becomes its rows' keys.

    A CDC view is keyed by the row's key columns: the rows whose ``before`` or ``after`` holds the
    subject's protected value are found in the view's topic, and each is tombstoned.
    """
    from pathlib import Path

    import yaml

    from flink_jobs.cdc import FORMATS, subject_row_keys
    from flink_jobs.kafka_tools import DEFAULT_BOOTSTRAP, consume

    document = yaml.safe_load(Path(policy_file).read_text()) or {}
    if (document.get("source") or {}).get("format") not in FORMATS:
        return keys
    subject_field = document.get("subject_field")
    out = []
    for key in keys:
        if key.view is None or key.key is None:
            out.append(key)
            continue
        records = consume(bootstrap or DEFAULT_BOOTSTRAP, key.topic, timeout=10)
        rows = subject_row_keys([(r.key, r.value) for r in records], subject_field, key.key)
        if not rows:
            out.append(ViewKey(key.topic, key.view, "no live row of the subject in the view", None))
        out += [ViewKey(key.topic, key.view, f"its row, found by {key.how}", row) for row in rows]
    return out


def write_tombstones(bootstrap: str, tombstones: list[tuple[str, str]], timeout: float = 30) -> None:
    """Produce a null value under each ``(topic, key)``, and wait for every acknowledgement."""
    from confluent_kafka import Producer

    from flink_jobs.kafka_tools import KafkaToolsError, check_reachable

    check_reachable(bootstrap, timeout=min(timeout, 10))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 0,
                         "message.timeout.ms": int(timeout * 1000)})
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err.str()}")

    for topic, key in tombstones:
        producer.produce(topic, key=key.encode(), value=None, on_delivery=on_delivery)
    remaining = producer.flush(timeout)
    if remaining:
        errors.append(f"{remaining} tombstone(s) not acknowledged within {timeout:g} s")
    if errors:
        raise KafkaToolsError("; ".join(errors))


def cmd_vault_up(args: argparse.Namespace) -> int:
    from flink_jobs.devtools.pg_local import run_action

    return run_action("up", args.data_dir, args.port)


def cmd_vault_down(args: argparse.Namespace) -> int:
    from flink_jobs.devtools.pg_local import run_action

    return run_action("down", args.data_dir, args.port)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
