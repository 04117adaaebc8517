"""The ``flink-anonymizer`` command line: its parser, ``main``, and the keys, validate, transforms and decrypt commands.

Every other command lives in a module of its own that adds it with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from flink_jobs.cli import run
from flink_jobs.cli.errors import CliError
from flink_jobs.keyring_ref import KEYRING_ENV, resolve_keyring
from flink_jobs.policy import PolicyError, load_policy
from udfs.keyring import PURPOSES, Keyring, KeyringError, load_keyring

#: modules that add their own subcommands with ``register(subparsers)``, when present
_EXTENSIONS = ("flink_jobs.cli.fpe", "flink_jobs.cli.kafka", "flink_jobs.cli.risk", "flink_jobs.cli.vault",
               "flink_jobs.cli.submit", "flink_jobs.cli.sql", "flink_jobs.cli.avro")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, KeyringError, PolicyError) as exc:
        print(f"error: {exc.summary() if isinstance(exc, PolicyError) else exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flink-anonymizer",
        description="Split a raw stream into masked, anonymized and DP-aggregated views with PyFlink.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    run.register(sub)

    validate = sub.add_parser("validate", help="check a policy", description="Check a policy and say exactly "
                              "what is wrong: the file, the path inside it, the problem, and what is allowed.")
    validate.add_argument("policy", help="policy YAML file")
    validate.add_argument("--keyring", help="also check that every key the policy names is in this keyring")
    validate.set_defaults(func=cmd_validate)

    keys = sub.add_parser("keys", help="create, rotate and list keyrings", description="Manage JSON keyrings. "
                          "Key material is never printed.")
    keys_sub = keys.add_subparsers(title="keys commands", metavar="ACTION")
    new = keys_sub.add_parser("new", help="create a keyring with one active key per purpose",
                              description="Create a keyring with one active key per purpose.")
    new.add_argument("--out", required=True, help="file to write (created with mode 0600)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=cmd_keys_new)
    rotate = keys_sub.add_parser("rotate", help="add a key and make it active",
                                 description="Add a new key for a purpose and make it the active one. "
                                 "Old keys stay, so old data still decrypts.")
    rotate.add_argument("--keyring", required=True, help="keyring file to update")
    rotate.add_argument("--purpose", required=True, choices=sorted(PURPOSES))
    rotate.set_defaults(func=cmd_keys_rotate)
    listing = keys_sub.add_parser("list", help="list key ids, purposes and which are active",
                                  description="List key ids and purposes (never material).")
    listing.add_argument("--keyring", required=True, help="keyring reference env:NAME or file:PATH")
    listing.set_defaults(func=cmd_keys_list)
    keys.set_defaults(func=lambda _args: keys.print_help() or 2)

    decrypt = sub.add_parser("decrypt", help="decrypt the reversible fields of a view",
                             description="Read protected records (JSON Lines, as written by run) and print them "
                             "with every reversible field (encryption, FPE) decrypted. Needs the keyring.")
    decrypt.add_argument("--policy", required=True, help="the policy that wrote the view")
    decrypt.add_argument("--view", required=True, help="view name in the policy")
    decrypt.add_argument("--keyring", default=None, help=f"keyring reference (default: ${KEYRING_ENV})")
    decrypt.add_argument("input", nargs="?", default="-", help="JSON Lines file or view folder (default: stdin)")
    decrypt.set_defaults(func=cmd_decrypt)

    transforms = sub.add_parser("transforms", help="list the registered transforms",
                                description="List every transform a policy can name.")
    transforms.set_defaults(func=cmd_transforms)

    for module_name in _EXTENSIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def cmd_keys_new(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        raise CliError(f"{path} exists; pass --force to overwrite it (its keys would be lost)")
    ring = Keyring.generate()
    ring.save(path)
    print(f"wrote {path} with keys: " + ", ".join(f"{k.purpose}={k.id}" for k in ring.keys.values()))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    path = Path(args.keyring.removeprefix("file:"))
    ring = load_keyring(f"file:{path}")
    old = ring.active.get(args.purpose)
    key = ring.add(args.purpose)
    ring.save(path)
    print(f"{args.purpose}: {key.id} is now active" + (f" (was {old}; kept for old data)" if old else ""))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    ring = load_keyring(args.keyring)
    for key in ring.keys.values():
        mark = "active" if ring.active.get(key.purpose) == key.id else ""
        print(f"{key.id}\t{key.purpose}\t{key.created}\t{mark}".rstrip())
    return 0


# -- validate / transforms -------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    keyring = load_keyring(args.keyring) if args.keyring else None
    policy = load_policy(args.policy, keyring=keyring)
    print(f"ok: {args.policy}: policy {policy.id} (hash {policy.hash}), source {policy.source_topic}")
    for name, view in policy.views.items():
        if view.differential_privacy:
            detail = "differential privacy"
        else:
            detail = f"{len(view.fields)} fields" + (", k-anonymity" if view.k_anonymity else "")
            detail += ", shuffled" if view.shuffle else ""
        print(f"  view {name} -> {view.topic}: {detail}")
    if keyring is None:
        print("  (keys not checked: pass --keyring to check them)")
    return 0


def cmd_transforms(args: argparse.Namespace) -> int:
    from udfs import registry

    for name in registry.names():
        cls = registry.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:28} {doc[0] if doc else ''}")
    return 0


# -- decrypt -------------------------------------------------------------------------

def cmd_decrypt(args: argparse.Namespace) -> int:
    from udfs.record import invert_view

    keyring, _ = resolve_keyring(args.keyring)
    policy = load_policy(args.policy, keyring=keyring)
    view = policy.views.get(args.view)
    if view is None or view.tree is None:
        raise CliError(f"policy has no record view {args.view!r}; views: {', '.join(policy.views)}")
    for leaf_transform in policy.transforms():
        leaf_transform.open(keyring)
    for line in _input_lines(args.input):
        doc = json.loads(line)
        value = doc["value"] if isinstance(doc, dict) and "value" in doc and "headers" in doc else doc
        print(json.dumps(invert_view(view.tree, value), ensure_ascii=False))
    return 0


def _input_lines(source: str):
    if source == "-":
        yield from (line for line in sys.stdin if line.strip())
        return
    path = Path(source)
    files = sorted(f for f in path.rglob("*.jsonl") if not f.name.startswith(".")) if path.is_dir() else [path]
    for file in files:
        with open(file) as fh:
            yield from (line for line in fh if line.strip())


if __name__ == "__main__":
    sys.exit(main())
