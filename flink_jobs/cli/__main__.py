"""``python -m flink_jobs.cli``: the same as the ``flink-anonymizer`` console script."""

import sys

from flink_jobs.cli.app import main

sys.exit(main())
