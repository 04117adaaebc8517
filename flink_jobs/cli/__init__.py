"""The ``flink-anonymizer`` command line; the console script is ``flink_jobs.cli:main``."""

from flink_jobs.cli.app import main

__all__ = ["main"]
