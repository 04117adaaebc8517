"""Flink's REST API, as the cluster commands and the startup watch use it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TERMINAL_STATES = {"FINISHED", "FAILED", "CANCELED", "SUSPENDED"}


class SubmitError(RuntimeError):
    """``flink run`` or a REST call failed; the message holds the end of its output, never a record."""


def rest_request(base: str, path: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise SubmitError(f"{method} {path} at {base}: HTTP {exc.code}: {detail}") from None
    except OSError as exc:
        raise SubmitError(f"cannot reach the Flink REST API at {base} ({exc}); is the cluster up?") from None
    return json.loads(raw) if raw.strip() else {}
