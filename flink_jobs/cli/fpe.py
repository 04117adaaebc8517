r"""``flink-anonymizer fpe encrypt|decrypt``: FF1 and FF3-1 from the command line.

Two forms. With a raw key, the bare algorithm, as the standards write it (this is
how the NIST vectors are checked from outside)::

    flink-anonymizer fpe encrypt --algorithm ff1 --key 2B7E151628AED2A6ABF7158809CF4F3C \
        --tweak 39383736353433323130 --alphabet 0123456789 0123456789
    6124200773

With a keyring, exactly what a policy's ``fpe`` transform does for a field
domain, to take a view's values back (FPE output carries no key id, so the
policy's ``key_id`` is given)::

    flink-anonymizer fpe decrypt --keyring file:keys.json --key-id fpe-20261127-1a2b \
        --domain card --format card 4511937102097224

Each value prints one result per line. A value that does not fit is reported on
stderr by its position, never by its content, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from udfs.errors import ParamError, TransformError
from udfs.ff1 import FF1
from udfs.ff3_1 import FF3_1
from udfs.fpe import FORMATS, FF1Transform, FF3_1Transform, FPETransform
from udfs.fpe_cipher import FPEError
from udfs.keyring import KeyringError, load_keyring

__all__ = ["register"]

_ALGORITHMS = ("ff1", "ff3-1", "ff3_1")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fpe`` command, with ``encrypt`` and ``decrypt``, to ``subparsers``."""
    fpe = subparsers.add_parser(
        "fpe",
        help="format-preserving encryption (FF1, FF3-1) of single values",
        description="Encrypt or decrypt values with FF1 (NIST SP 800-38G) or FF3-1, either with a raw key "
        "(--key, as in the NIST vectors) or with a keyring key the way a policy's fpe transform does.",
    )
    fpe.set_defaults(func=lambda args: (fpe.print_help(), 2)[1])
    sub = fpe.add_subparsers(title="actions", metavar="ACTION")
    for action in ("encrypt", "decrypt"):
        parser = sub.add_parser(
            action,
            help=f"{action} values, one result per line",
            description=f"{action.capitalize()} each VALUE (or each line of stdin when none is given) and print "
            "one result per line. With --key and no format option the bare algorithm runs; with --keyring, "
            "--format or --domain the policy transform runs, with its tweak from --domain.",
        )
        parser.add_argument("values", nargs="*", metavar="VALUE", help="values to process (default: lines of stdin)")
        parser.add_argument("--algorithm", choices=_ALGORITHMS, default="ff1", help="ff1 (default) or ff3-1")
        parser.add_argument("--key", help="AES key in hex (16, 24 or 32 bytes)")
        parser.add_argument("--tweak", help="tweak in hex (ff3-1: 7 bytes); replaces the domain tweak")
        parser.add_argument(
            "--alphabet",
            default="digits",
            help="digits (default), alphanumeric, hex, letters, or the symbols themselves, e.g. 0123456789abcdef",
        )
        parser.add_argument("--keyring", help="keyring reference env:NAME or file:PATH")
        parser.add_argument("--key-id", help="id of the keyring's fpe key the view used (default: the active one)")
        parser.add_argument("--domain", help="the field's domain, as in the policy (default: the field name)")
        parser.add_argument("--format", choices=FORMATS, help="a policy format: text, card, ssn, phone, iban")
        parser.add_argument("--case", choices=("mixed", "lower", "upper"), help="letter case of a named alphabet")
        parser.add_argument("--preserve", choices=("luhn",), help="keep a Luhn check digit valid")
        parser.add_argument("--keep-first", type=int, help="symbols left in the clear at the start")
        parser.add_argument("--keep-last", type=int, help="symbols left in the clear at the end")
        parser.add_argument("--context", help="value of the policy's tweak_field for these values (a context tweak)")
        parser.set_defaults(func=_handler(action == "decrypt"), fpe_action=action)
    return fpe


def _handler(decrypt: bool) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            run = _transform_runner(args, decrypt) if _uses_transform(args) else _core_runner(args, decrypt)
        except (FPEError, ParamError, KeyringError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        failed = 0
        for number, value in enumerate(_values(args), 1):
            try:
                print(run(value))
            except (FPEError, TransformError) as exc:
                # the reason only: the value may be sensitive
                print(f"error: value {number}: {exc}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0

    return handler


def _values(args: argparse.Namespace) -> Iterable[str]:
    if args.values:
        return args.values
    return (line.rstrip("\r\n") for line in sys.stdin if line.strip())


def _uses_transform(args: argparse.Namespace) -> bool:
    options = (args.keyring, args.key_id, args.domain, args.format, args.case, args.preserve,
               args.keep_first, args.keep_last, args.context)  # fmt: skip
    return any(o is not None for o in options)


def _key(hex_key: str) -> bytes:
    try:
        key = bytes.fromhex(hex_key)
    except ValueError:
        raise ValueError("--key is not hex") from None
    if len(key) not in (16, 24, 32):
        raise ValueError(f"--key must be 16, 24 or 32 bytes, got {len(key)}")
    return key


def _core_runner(args: argparse.Namespace, decrypt: bool) -> Any:
    if not args.key:
        raise ValueError("give --key HEX, or --keyring REF with --key-id and --domain")
    key = _key(args.key)
    try:
        tweak = bytes.fromhex(args.tweak or "")
    except ValueError:
        raise ValueError("--tweak is not hex") from None
    if args.algorithm == "ff1":
        cipher: FF1 | FF3_1 = FF1(key, args.alphabet)
    else:
        cipher = FF3_1(key, args.alphabet)
        if len(tweak) not in (7, 8):
            raise ValueError("ff3-1 needs --tweak of 7 bytes (14 hex digits)")
    return (lambda v: cipher.decrypt(v, tweak)) if decrypt else (lambda v: cipher.encrypt(v, tweak))


def _transform_runner(args: argparse.Namespace, decrypt: bool) -> Any:
    params: dict[str, Any] = {"alphabet": args.alphabet}
    for name in ("format", "case", "preserve", "keep_first", "keep_last", "tweak"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.context is not None:
        params["tweak_field"] = "context"
    if args.key_id:
        params["key_id"] = args.key_id
    cls: type[FPETransform] = FF1Transform if args.algorithm == "ff1" else FF3_1Transform
    domain = args.domain or args.format or "default"
    transform = cls(params, domain=domain)
    if args.keyring:
        transform.open(load_keyring(args.keyring))
    elif args.key:
        transform.open_with_key(_key(args.key))
    else:
        raise ValueError("give --keyring REF (with --key-id) or --key HEX")
    record = {"context": args.context}
    if decrypt:
        return lambda v: transform.invert_in_record(v, record)
    return lambda v: transform.apply_in_record(v, record)
