"""The ``flink-anonymizer`` command line; the console script is ``flink_jobs.cli:main``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see :mod:`flink_jobs.cli.app`); imported late, so the package itself is light."""
    from flink_jobs.cli.app import main as run_command_line

    return run_command_line(argv)
