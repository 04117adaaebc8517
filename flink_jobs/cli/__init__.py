"""The ``flink-anonymizer`` command line; the console script is ``flink_jobs.cli:main``."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see :mod:`flink_jobs.cli.app`); imported late, so the package itself is light."""
    from flink_jobs.cli.app import main as run_command_line

    # a policy's plugins are found from the folder the command runs in, as with `python -m`: a console
    # script's path starts at its own bin/ folder instead
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return run_command_line(argv)
