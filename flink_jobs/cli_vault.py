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
from typing import Any

from udfs.vault import DEFAULT_VAULT, VAULT_ENV, Vault, VaultError

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
        "Idempotent and audited. With --topic (or --policy, for its compacted views) it also writes a "
        "tombstone (null value) keyed by the subject to each topic, so compaction removes its records.",
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
    from flink_jobs.cli import CliError, resolve_keyring

    keyring, _ = resolve_keyring(args.keyring)
    try:
        return Vault.open(args.vault, keyring)
    except VaultError as exc:
        raise CliError(str(exc)) from None


def cmd_detokenize(args: argparse.Namespace) -> int:
    from udfs.registry import TransformError
    from udfs.tokenize import detokenize

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
    from flink_jobs.cli import CliError

    topics = list(dict.fromkeys(args.topic + _compacted_topics(args.policy)))
    vault = _open(args)
    try:
        result = vault.forget(args.subject)
    finally:
        vault.close()
    # the subject is not echoed: this output may land in a ticket or a CI log
    state = "forgotten" if result.keys or result.tokens else "already forgotten (nothing left)"
    print(f"subject {state}: {result.keys} data key(s) and {result.tokens} token row(s) deleted")
    if not topics:
        return 0
    from flink_jobs.kafka_tools import DEFAULT_BOOTSTRAP, KafkaToolsError

    bootstrap = args.bootstrap_servers or DEFAULT_BOOTSTRAP
    try:
        write_tombstones(bootstrap, topics, args.subject)
    except KafkaToolsError as exc:
        raise CliError(f"the vault forgot the subject, but tombstones failed: {exc}") from None
    print(f"tombstones written to {len(topics)} topic(s): {', '.join(topics)}")
    return 0


def _compacted_topics(policy_file: str | None) -> list[str]:
    if not policy_file:
        return []
    from flink_jobs.policy import load_policy

    policy = load_policy(policy_file)
    return [view.topic for view in policy.views.values() if view.compacted]


def write_tombstones(bootstrap: str, topics: list[str], subject: str, timeout: float = 30) -> None:
    """Produce a null value keyed by ``subject`` to each topic, and wait for every acknowledgement."""
    from confluent_kafka import Producer

    from flink_jobs.kafka_tools import KafkaToolsError, check_reachable

    check_reachable(bootstrap, timeout=min(timeout, 10))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 0,
                         "message.timeout.ms": int(timeout * 1000)})
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err.str()}")

    for topic in topics:
        producer.produce(topic, key=subject.encode(), value=None, on_delivery=on_delivery)
    remaining = producer.flush(timeout)
    if remaining:
        errors.append(f"{remaining} tombstone(s) not acknowledged within {timeout:g} s")
    if errors:
        raise KafkaToolsError("; ".join(errors))


def cmd_vault_up(args: argparse.Namespace) -> int:
    from flink_jobs.pg_local import run_action

    return run_action("up", args.data_dir, args.port)


def cmd_vault_down(args: argparse.Namespace) -> int:
    from flink_jobs.pg_local import run_action

    return run_action("down", args.data_dir, args.port)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
