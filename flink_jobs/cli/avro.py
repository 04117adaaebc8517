"""``flink-anonymizer avro-schemas``: each Avro view's schema, as the job registers it, written to files.

With ``--schema FILE.avsc`` (no registry) a reader of an Avro view needs the view's schema: this
writes ``<topic>-value.avsc`` for every view whose sink format is avro, with the schema id the job
puts in each record's Confluent header. With ``--schema-registry URL`` it registers them there too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load_policy_with_schema(policy_file: str, schema_file: str | None, keyring: Any = None,
                            registry: str | None = None) -> Any:
    """The policy, its ``source.schema`` set to ``schema_file`` (``--schema``) or a registry URL (``--schema-registry``)."""
    from flink_jobs.policy import load_policy

    return load_policy(policy_file, keyring, schema=registry or f"file:{Path(schema_file).resolve()}")


def write_view_schemas(policy: Any, out: Path) -> list[tuple[str, int, Path]]:
    """Write each avro view's schema to ``out/<topic>-value.avsc``; returns (view, schema id, file)."""
    from flink_jobs.avro_format import avro_views, codec_for, view_subject

    codec = codec_for(policy.document, policy.views)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in avro_views(policy.document):
        sid, schema = codec.store.latest(view_subject(policy.document, name))
        path = out / f"{view_subject(policy.document, name)}.avsc"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append((name, sid, path))
    return written


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("avro-schemas", help="write the Avro schema of each avro view",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("--schema", help="the source's Avro schema (default: the policy's source.schema)")
    p.add_argument("--schema-registry", metavar="URL",
                   help="a Confluent-compatible registry: the views' schemas are registered there too")
    p.add_argument("--out", required=True, help="folder for the .avsc files")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from flink_jobs.policy import load_policy

    if args.schema and args.schema_registry:
        raise SystemExit("avro-schemas: --schema and --schema-registry are alternatives: pass one")
    policy = (load_policy_with_schema(args.policy, args.schema, registry=args.schema_registry)
              if args.schema or args.schema_registry else load_policy(args.policy))
    for name, sid, path in write_view_schemas(policy, Path(args.out)):
        print(f"view {name}: schema id {sid} -> {path}")
    return 0
