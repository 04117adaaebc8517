"""Helpers of the restart-from-a-retained-checkpoint tests: stop a paced job mid-stream, then read its file sink."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def committed_lines(out_dir: Path) -> list[Any]:
    """The JSON lines of the committed part files: in-progress and pending ones are hidden (".part-...")."""
    lines = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def retained_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoints``, or None."""
    done = [p.parent for p in checkpoints.glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def cancel_after_checkpoints(client: Any, checkpoints: Path, count: int = 3, timeout_s: float = 120) -> None:
    """Cancel the job once checkpoint ``count`` is complete (or after ``timeout_s``), while it still holds state."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        latest = retained_checkpoint(checkpoints)
        if latest is not None and int(latest.name.split("-")[1]) >= count:
            break
        time.sleep(0.1)
    client.cancel().result()
