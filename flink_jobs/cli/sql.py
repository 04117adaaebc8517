"""``flink-anonymizer sql FILE``: run a Flink SQL file with every transform registered as a function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flink_jobs.cli.errors import CliError
from flink_jobs.keyring_ref import resolve_keyring
from flink_jobs.sql_job import SqlFileError, build_table_env, run_statements, split_statements

_EPILOG = """\
Placeholders: ${name} is replaced by --set name=VALUE; ${name:-default} falls back to its default.
conf/sql/mask_customer_events.sql uses ${bootstrap_servers:-localhost:9092}, ${source_topic:-raw-customer-events},
${sink_topic:-masked-customer-events}, ${group_id:-flink-anonymizer-sql}, ${startup_mode:-earliest-offset},
${bounded_mode:-unbounded} (latest-offset: stop at the offsets that are the latest at the start),
${delivery:-exactly-once} and ${transactional_id_prefix:-anon-sql-customer-events-masked}.
SET 'key' = 'value'; sets a Flink option, as in the SQL client; EXECUTE STATEMENT SET BEGIN ... END; is one job.

Every transform is registered first, as mask_email for mask.email (flink-anonymizer transforms lists them),
with its keys from --keyring; a function takes its parameters as a second argument: mask_keep_last(ssn, '{n: 4}').
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sql", help="run a Flink SQL file with the transforms as functions",
        description="Run the statements of a Flink SQL file in order, with every transform registered as a SQL "
                    "function and the Kafka connector on the class path. INSERT statements run as jobs; the "
                    "command waits for them (a bounded source ends them).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="the SQL file (statements end with ;)")
    parser.add_argument("--set", dest="values", action="append", default=[], metavar="NAME=VALUE",
                        help="a value for ${NAME} in the file (repeatable)")
    parser.add_argument("--keyring", default=None, help="keyring reference env:NAME or file:PATH "
                        "(default: $ANON_KEYRING)")
    parser.add_argument("--parallelism", type=int, default=1, help="job parallelism (default 1)")
    parser.add_argument("--execution-mode", choices=("thread", "process"), default="thread",
                        help="PyFlink Python execution mode (default thread)")
    parser.add_argument("--checkpoint-interval", type=int, default=2000, metavar="MS",
                        help="checkpoint interval in ms; 0 turns checkpointing off (default 2000)")
    parser.add_argument("--restart-attempts", type=int, default=0, metavar="N",
                        help="restarts after a failure before the command fails (default 0)")
    parser.add_argument("--no-register", action="store_true",
                        help="do not register the transforms (the file declares its own functions)")
    parser.add_argument("--dry-run", action="store_true",
                        help="split the file and check every placeholder has a value; print the statements "
                             "as written (placeholders kept, so --set values are never shown); run nothing")
    parser.set_defaults(func=cmd_sql)


def parse_values(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set takes NAME=VALUE, got {pair.split('=')[0]!r}")
        values[name.strip()] = value
    return values


def cmd_sql(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"SQL file {path} does not exist")
    values = parse_values(args.values)
    try:
        statements = split_statements(path.read_text())
    except SqlFileError as exc:
        raise CliError(f"{path}: {exc}") from None
    if not statements:
        raise CliError(f"{path} holds no SQL statement")
    if args.dry_run:
        from flink_jobs.sql_job import substitute

        try:
            for statement in statements:
                substitute(statement, values)  # every placeholder must have a value; the result is not shown
        except SqlFileError as exc:
            raise CliError(f"{path}: {exc}") from None
        if values:
            print("-- --set gives " + ", ".join(f"${{{name}}}" for name in values) + " (values not shown)")
        for statement in statements:  # as written: a --set value (a password, say) is never printed
            print(f"-- statement {statement.number} (line {statement.line})\n{statement.text};")
        return 0
    _, reference = resolve_keyring(args.keyring)
    t_env = build_table_env(reference, parallelism=args.parallelism, execution_mode=args.execution_mode,
                            checkpoint_interval_ms=args.checkpoint_interval, restart_attempts=args.restart_attempts,
                            register=not args.no_register)

    def echo(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        jobs = run_statements(t_env, statements, values, echo=echo)
    except SqlFileError as exc:
        raise CliError(f"{path}: {exc}") from None
    echo(f"{path}: {len(statements)} statement(s) run, {len(jobs)} job(s) finished")
    return 0
