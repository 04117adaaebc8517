"""Run a Flink SQL file with every transform registered as a function: ``flink-anonymizer sql FILE``.

    text ──[split_statements]──▶ statements (number, first line, text)
         ──[substitute ${name} / ${name:-default}]──▶ SQL
         ──[execute_sql, one by one; INSERTs submitted as jobs]──▶ wait for the jobs

Statements end at a ``;`` outside quotes, backquoted names and comments. Comments are left
out of the statements, except optimizer hints (``/*+ OPTIONS(...) */``). An
``EXECUTE STATEMENT SET BEGIN ... END;`` block is one statement, and ``SET 'key' = 'value';``
sets a configuration option, as in the SQL client.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SqlFileError", "Statement", "build_table_env", "run_statements", "split_statements", "substitute"]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SET_BEGIN = re.compile(r"^\s*(EXECUTE\s+)?STATEMENT\s+SET\s+BEGIN\b", re.IGNORECASE)
_END = re.compile(r"^\s*END\s*$", re.IGNORECASE)
_SET = re.compile(r"^\s*SET\s+'([^']+)'\s*=\s*'([^']*)'\s*$", re.IGNORECASE)
_JAVA_CLASS_PREFIX = re.compile(r"^(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ")


class SqlFileError(ValueError):
    """A SQL file cannot be split, substituted or run. Names the statement and its line."""


@dataclass(frozen=True)
class Statement:
    number: int  # 1-based, in file order
    line: int  # line of the file where the statement starts
    text: str  # without comments (hints kept), stripped


def split_statements(text: str) -> list[Statement]:
    """Split SQL text on ``;`` outside quotes ('..', ".."), backquotes and comments (--, /* */).

    Raises
    ------
    SqlFileError
        A quote or block comment that is never closed (with the line it opens on).
    """
    pieces: list[tuple[int, str]] = []  # (start line, text)
    current: list[str] = []
    start_line: int | None = None
    line = 1
    i, n = 0, len(text)

    def flush() -> None:
        nonlocal start_line
        body = "".join(current).strip()
        if body:
            pieces.append((start_line or line, body))
        current.clear()
        start_line = None

    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end  # the newline itself is kept, below
            continue
        if ch == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise SqlFileError(f"line {line}: a /* comment is never closed")
            comment = text[i:end + 2]
            if comment.startswith("/*+"):  # an optimizer hint is part of the statement
                if start_line is None:
                    start_line = line
                current.append(comment)
            else:  # its line breaks stay, so Flink's "line N" still counts from the statement's start
                current.append(" " + "\n" * comment.count("\n"))
            line += comment.count("\n")
            i = end + 2
            continue
        if ch in "'\"`":
            j = i + 1
            while True:
                j = text.find(ch, j)
                if j < 0:
                    raise SqlFileError(f"line {line}: a {ch} quote is never closed")
                if text.startswith(ch * 2, j):  # a doubled quote is one quote character
                    j += 2
                    continue
                break
            quoted = text[i:j + 1]
            if start_line is None:
                start_line = line
            current.append(quoted)
            line += quoted.count("\n")
            i = j + 1
            continue
        if ch == ";":
            flush()
            i += 1
            continue
        if ch == "\n":
            line += 1
        elif start_line is None and not ch.isspace():
            start_line = line
        current.append(ch)
        i += 1
    flush()
    return [Statement(number, start, body) for number, (start, body) in enumerate(_join_statement_sets(pieces), 1)]


def _join_statement_sets(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    block: list[str] | None = None
    block_line = 0
    for start, body in pieces:
        if block is not None:
            block.append(body)
            if _END.match(body):
                out.append((block_line, ";\n".join(block[:-1]) + ";\nEND"))
                block = None
            continue
        if _SET_BEGIN.match(body):
            block, block_line = [body], start
            continue
        out.append((start, body))
    if block is not None:
        raise SqlFileError(f"line {block_line}: STATEMENT SET BEGIN has no END;")
    return out


def substitute(statement: Statement, values: Mapping[str, str]) -> str:
    """Replace ``${name}`` (from ``values``) and ``${name:-default}`` (``values`` first) in one statement."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in values:
            return values[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    text = _PLACEHOLDER.sub(replace, statement.text)
    if missing:
        raise SqlFileError(f"statement {statement.number} (line {statement.line}): no value for "
                           + ", ".join(f"${{{m}}}" for m in dict.fromkeys(missing))
                           + "; pass --set NAME=VALUE")
    return text


def build_table_env(keyring_ref: str, *, parallelism: int = 1, execution_mode: str = "thread",
                    checkpoint_interval_ms: int = 2000, restart_attempts: int = 0, kafka: bool = True,
                    register: bool = True, config: Mapping[str, str] | None = None) -> Any:
    """A streaming table environment with the Kafka connector and every transform registered."""
    from pyflink.table import StreamTableEnvironment

    from flink_jobs.kafka_io import add_connector_jars
    from flink_jobs.protect_stream import JobOptions, make_env
    from udfs.flink import register_all

    options = JobOptions(keyring_ref=keyring_ref, parallelism=parallelism, execution_mode=execution_mode,
                         checkpoint_interval_ms=checkpoint_interval_ms, restart_attempts=restart_attempts,
                         extra_config=dict(config or {}))
    env = make_env(options)
    if kafka:
        add_connector_jars(env)  # before the table environment, so its planner finds the connector
    t_env = StreamTableEnvironment.create(env)
    if register:
        register_all(t_env, keyring_ref)
    return t_env


def run_statements(t_env: Any, statements: list[Statement], values: Mapping[str, str], *,
                   echo: Any = None, wait: bool = True) -> list[Any]:
    """Execute the statements in order; print the rows of queries; wait for the jobs they submit.

    Every placeholder is checked before the first statement runs. Returns the jobs' table results.
    ``echo`` gets each statement's first line as written in the file, placeholders unsubstituted.

    Raises
    ------
    SqlFileError
        A placeholder has no value, or Flink refused a statement or its job failed (with the
        statement's number and line, and Flink's reason in one line).
    """
    texts = [substitute(statement, values) for statement in statements]
    jobs: list[tuple[Statement, Any]] = []
    for statement, text in zip(statements, texts, strict=True):
        if echo is not None:  # as written: a --set value (a password in a connector option) is never echoed
            echo(f"statement {statement.number} (line {statement.line}): {_first_line(statement.text)}")
        setting = _SET.match(text)
        if setting:  # the SQL client's SET 'key' = 'value': executeSql() does not take it
            t_env.get_config().set(setting.group(1), setting.group(2))
            continue
        try:
            result = t_env.execute_sql(text)
            if _returns_rows(text):
                print_rows(result)  # until the query's job ends
                continue
        except Exception as exc:  # Flink raises its own wrappers of Java exceptions
            raise SqlFileError(hide_values(f"statement {statement.number} (line {statement.line}"
                                           f"{_file_position(statement, exc)}): {reason(exc)}", values)) from None
        if result.get_job_client() is not None:
            jobs.append((statement, result))
    if wait:
        for statement, result in jobs:
            try:
                result.wait()
            except Exception as exc:
                raise SqlFileError(hide_values(f"statement {statement.number} (line {statement.line}): its job "
                                               f"failed: {reason(exc, running=True)}", values)) from None
    return [result for _, result in jobs]


def hide_values(message: str, values: Mapping[str, str]) -> str:
    """``message`` with every ``--set`` value of 4 characters or more shown as ``${name}``.

    Flink's errors quote the statement it got, with the values in it: a password given with
    ``--set`` would be printed. Shorter values (a parallelism, a flag) are left: they are not
    secrets, and replacing every "1" would garble the message.
    """
    for name, value in sorted(values.items(), key=lambda item: -len(item[1])):
        if len(value) >= 4:
            message = message.replace(value, f"${{{name}}}")
    return message


def print_rows(result: Any, out: Any = None) -> int:
    """Print a query's rows, tab-separated under their column names; return how many.

    They are printed from Python, so they go where this process's output goes. An update or a
    retraction is marked +U, -U or -D.
    """
    out = out or sys.stdout
    print("\t".join(result.get_table_schema().get_field_names()), file=out, flush=True)
    count = 0
    with result.collect() as rows:
        for row in rows:
            kind = row.get_row_kind().name
            mark = {"UPDATE_BEFORE": "-U\t", "UPDATE_AFTER": "+U\t", "DELETE": "-D\t"}.get(kind, "")
            print(mark + "\t".join("NULL" if v is None else str(v) for v in row), file=out, flush=True)
            count += 1
    print(f"({count} row{'s' if count != 1 else ''})", file=out, flush=True)
    return count


def _returns_rows(text: str) -> bool:
    return re.match(r"\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|VALUES)\b", text, re.IGNORECASE) is not None


def _first_line(text: str) -> str:
    first = text.strip().splitlines()[0]
    return first if len(first) <= 100 else first[:97] + "..."


def _messages(exc: BaseException) -> list[str]:
    java = getattr(exc, "java_exception", None)
    messages = []
    cause = java
    while cause is not None:
        text = cause.getMessage()
        if text:
            text = _JAVA_CLASS_PREFIX.sub("", text)
            messages.append(f"{cause.getClass().getSimpleName()}: {text}")
        cause = cause.getCause()
    return messages or [f"{type(exc).__name__}: {exc}"]


def _file_position(statement: Statement, exc: BaseException) -> str:
    """", error at line L column C" in the file, when Flink names a position in the statement."""
    for message in _messages(exc):
        match = re.search(r"line (\d+), column (\d+)", message)
        if match:
            return f"; error at line {statement.line + int(match.group(1)) - 1}, column {match.group(2)}"
    return ""


#: what a Java runtime cause may quote from a record: quoted text, and Jackson's source excerpt
_QUOTED = re.compile(r'\[Source: .*|"[^"]*"|\'[^\']*\'')


def reason(exc: BaseException, *, running: bool = False) -> str:
    """Flink's reason for a failure, in one line: the innermost Java cause that says something.

    Flink's planner messages name SQL text, types and options. A Python function's error is cut
    to its last line, which this project's transforms keep value-free (udfs.flink withholds any
    other exception's message). A running job's Java cause can quote a record (a cast's
    ``For input string: "..."``, a JSON parser's excerpt): with ``running`` its quotes are blanked.
    """
    messages = _messages(exc)
    # the deepest cause is the real reason; the outer ones repeat it with less detail
    picked = messages[-1]
    python_error = "Traceback" in picked or picked.startswith("PythonException")
    if python_error or "\n" in picked:
        lines = [line.strip() for line in picked.strip().splitlines() if line.strip()]
        picked = lines[-1] if python_error else lines[0]
    if running and not python_error:
        picked = _QUOTED.sub("<withheld>", picked)
    return picked if len(picked) <= 400 else picked[:397] + "..."
