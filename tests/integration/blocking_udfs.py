"""A plugin whose transform blocks in ``open()``: the stand-in for an import that deadlocks a worker.

``test_startup.py`` names it in a policy to check that the start-up watchdog cancels the job and
fails the command. It blocks only in the worker (``open`` runs per task, never in the client), and
for at most ``BLOCK_S`` seconds, so a leftover JVM still ends.
"""

from __future__ import annotations

import time
from typing import Any

from udfs.registry import Transform, transform

BLOCK_S = 240


@transform("test.block_open")
class BlockOpen(Transform):
    """Passes values through, after an ``open()`` that does not return for minutes."""

    def open(self, keyring: Any | None) -> None:
        deadline = time.monotonic() + BLOCK_S
        while time.monotonic() < deadline:
            time.sleep(0.2)

    def apply(self, value: Any) -> Any:
        return value
