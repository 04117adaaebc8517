"""Watch a job's start through Flink's REST API, and cancel it when it does not start.

A task stays ``INITIALIZING`` while its operators open, so a Python operator whose ``open()``
never returns (an import that deadlocks the embedded interpreter, say) shows as a vertex that
never reaches ``RUNNING``. A bounded job must also move a record soon after: a job that opened
but reads nothing is stuck too. Past the bound the job is cancelled and the watcher says which
operators did not open, so the command fails fast instead of sitting at 0% in silence.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Any

from flink_jobs.cli.flink_rest import TERMINAL_STATES, SubmitError, rest_request

#: seconds a job may take to open every operator (and, when bounded, to move a first record)
DEFAULT_STARTUP_TIMEOUT_S = 90.0
_STARTED = {"RUNNING", "FINISHED"}
#: the metric that shows records moving: the protect operator's input count, raised at its first record
#: (its own output count misses side outputs, which is all it emits)
PROGRESS_METRIC = "protect.records_in"


class StartupWatch(threading.Thread):
    """A daemon thread that cancels ``job_id`` at ``base`` unless it starts within ``timeout_s``.

    After :meth:`join`, :attr:`failure` is None when the job started (or ended by itself), or
    the message to show: it names the operators that did not open. ``expect_records`` also
    requires a record to leave the protect operator (for bounded inputs that are not empty).
    """

    def __init__(self, base: str, job_id: str, *, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
                 expect_records: bool = False, poll_s: float = 0.5) -> None:
        super().__init__(name=f"startup-watch-{job_id}", daemon=True)
        self.base, self.job_id = base, job_id
        self.timeout_s, self.expect_records, self.poll_s = timeout_s, expect_records, poll_s
        self.failure: str | None = None
        self.started = threading.Event()
        self._ended = threading.Event()

    def stop(self) -> None:
        """The job has ended: stop watching."""
        self._ended.set()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        waiting: list[dict] = []
        opened = False
        while not self._ended.is_set():
            try:
                job = rest_request(self.base, f"/jobs/{self.job_id}")
            except SubmitError:
                if self._ended.wait(self.poll_s):
                    return  # the job ended and its local cluster is gone
                job = None
            if job is not None:
                if job.get("state") in TERMINAL_STATES:
                    return
                vertices = job.get("vertices", [])
                waiting = [v for v in vertices if v.get("status") not in _STARTED]
                opened = bool(vertices) and not waiting
                if opened and (not self.expect_records or self._records_moved(vertices)):
                    self.started.set()
                    return
            if time.monotonic() >= deadline:
                self.failure = self._message(waiting, opened)
                self._cancel()
                return
            self._ended.wait(self.poll_s)

    def _records_moved(self, vertices: list[dict]) -> bool:
        # a record through the protect operator: in process mode a task is RUNNING before its Python
        # worker has opened, and the source emits into it regardless
        for vertex in vertices:
            path = f"/jobs/{self.job_id}/vertices/{vertex['id']}/subtasks/metrics"
            try:
                ids = [m["id"] for m in rest_request(self.base, path) if m["id"].endswith(PROGRESS_METRIC)]
                if ids:
                    query = urllib.parse.quote(",".join(ids), safe=",")
                    if any(float(m.get("sum") or 0) > 0 for m in rest_request(self.base, f"{path}?get={query}&agg=sum")):
                        return True
            except SubmitError:
                pass
        return False

    def _message(self, waiting: list[dict], opened: bool) -> str:
        bound = f"{self.timeout_s:g} s"
        if opened:
            # in process mode a task runs before its Python worker has opened: only records tell
            what = (f"its tasks are running, but the Python operator 'protect' did not open or did not emit a "
                    f"record within {bound}")
        elif waiting:
            names = "; ".join(f"'{v.get('name', '?')}' ({v.get('status', '?')})" for v in waiting)
            what = f"these operators did not open within {bound}: {names}"
        else:
            what = f"the job was not scheduled within {bound}"
        return (f"job {self.job_id} did not start: {what}. It is cancelled. In thread mode every Python operator "
                "opens in one embedded interpreter, where an import that blocks stalls them all; try "
                "--execution-mode process, or a longer --startup-timeout if the machine is only slow")

    def _cancel(self) -> None:
        try:
            rest_request(self.base, f"/jobs/{self.job_id}?mode=cancel", method="PATCH")
        except SubmitError:
            pass  # already over


def wait_watched(job_client: Any, watch: StartupWatch) -> None:
    """Wait for a job started with ``execute_async``; raise ``RuntimeError(watch.failure)`` if it did not start.

    A task stuck in native code may never acknowledge the cancel, so once the watcher has given
    up this returns at once instead of waiting for the job's end.
    """
    result = job_client.get_job_execution_result()
    while True:
        watch.join(timeout=0.5)
        if watch.failure is not None:
            raise RuntimeError(watch.failure)
        if not watch.is_alive():
            break
        if result.done():
            watch.stop()  # the job ended before the watcher saw it start (a short job)
            break
    try:
        result.result()
    finally:
        watch.stop()
    if watch.failure is not None:
        raise RuntimeError(watch.failure)


def local_rest_config() -> tuple[str, dict[str, str]]:
    """The REST base URL of a local MiniCluster and the settings that put its endpoint there (loopback)."""
    from flink_jobs.devtools.processes import free_port

    port = free_port()
    return f"http://127.0.0.1:{port}", {"rest.bind-port": str(port), "rest.address": "127.0.0.1",
                                        "rest.bind-address": "127.0.0.1"}
