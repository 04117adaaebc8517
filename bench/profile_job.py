"""Where a job's CPU goes, Java, crossings and CPython together, by async-profiler.

py-spy sees Python frames only, and in thread mode most of a Python operator's time has none
(the interpreter's own C, the conversions, the Java around it). This bench runs the shipped
policy (or some of its views) through ``flink-anonymizer run`` with async-profiler as a JVM agent,
sampling every thread's native and Java stack, and sorts the samples:

- by thread: the task thread that runs the source chain (at one subtask, the protect operator
  and the stateful stages chained onto it), checkpoints, the JIT compiler and GC, the rest;
- within the task thread, by what runs: CPython (this project's Python and PyFlink's, and the
  interpreter's C under them), the conversions between Java and Python objects, the exception
  pemja throws to end each Python call's output iterator, keyed state, the other Java, the JVM.

Each share is also given in microseconds per record: the share of the JVM's CPU time, over the
records. The profile includes job start; with the default 300,000 events it weighs little.

    .venv/bin/python bench/profile_job.py [--views anonymized] [--n 300000] [--stacks out.collapsed]

async-profiler comes from Maven Central (``conf/profiler/pom.xml``, into ``jars/profiler``) the
first time. It samples with ``itimer``, which needs no perf_events permission.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from full_job import timed_run, write_events, write_policy  # noqa: E402

from udfs.keyring import Keyring  # noqa: E402

PROFILER_DIR = ROOT / "jars/profiler"
TASK_THREAD = "SourceOperator.emitNext"  # a frame of every stack of the thread that runs the source chain

#: thread kinds outside the task thread, by a frame their stacks hold
THREAD_KINDS = (
    ("checkpoints (asynchronous part)", ("AsyncSnapshotCallable", "AsyncCheckpointRunnable")),
    ("JIT compiler", ("CompileBroker", "C2Compiler", "Compilation::", "Compile::")),
    ("garbage collector", ("G1", "GCTask", "ConcurrentGCThread", "WorkerThread::run")),
    ("job start: the client building the job over Py4J", ("GatewayConnection", "PythonGatewayServer")),
    ("other tasks, and each task's start (operator open, imports)", ("Task.restoreAndInvoke",)),
)
#: native frames of the JVM itself (C++ names, JNI and runtime entries), not of CPython or libc
JVM_NATIVE = ("::", "JVM_", "jni_", "Java_", "JNI_", "AccessInternal", "Interpreter", "MemAllocator")


def library() -> Path:
    """async-profiler's native library, fetched from Maven Central and unpacked the first time."""
    so = PROFILER_DIR / "linux-x64/libasyncProfiler.so"
    if not so.exists():
        jars = list(PROFILER_DIR.glob("async-profiler-*-linux-x64.jar"))
        if not jars:
            subprocess.run(["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(ROOT / "conf/profiler/pom.xml"),
                            "package"], check=True)
            jars = list(PROFILER_DIR.glob("async-profiler-*-linux-x64.jar"))
        with zipfile.ZipFile(jars[0]) as jar:
            jar.extract("linux-x64/libasyncProfiler.so", PROFILER_DIR)
    return so


def is_java(frame: str) -> bool:
    # a Java frame names its class's package path; a native one without symbols names its library's path
    return "/" in frame and not frame.startswith(("[", "/"))


def task_part(frames: list[str]) -> str:
    """What a sample of the task thread was doing, from its stack (root first)."""
    if any("NoSuchElementException" in f for f in frames) or (
            "printf" in frames[-1] and any("PyIterator" in f for f in frames[-4:])):
        return "pemja: the exception that ends each Python call's output iterator"
    leaf = frames[-1]
    if is_java(leaf):
        if "/runtime/state/" in leaf or "/contrib/streaming/state/" in leaf:
            return "Java: keyed state and timers"
        if leaf.startswith("pemja/") or "PythonTypeUtils" in leaf or "/python/" in leaf:
            return "crossing: conversions between Java and Python objects"
        return "Java: sources, operators, serializers, sinks, network"
    # a native leaf: under which Java frame does it run?
    caller = next((f for f in reversed(frames) if is_java(f)), "")
    if any(mark in leaf for mark in JVM_NATIVE):
        if caller.startswith("pemja/"):
            return "crossing: conversions between Java and Python objects"
        return "JVM runtime (allocation, GC barriers, class loading)"
    if caller.startswith("pemja/"):
        return "CPython: Python code (this project's and PyFlink's) and the interpreter's C"
    return "other native (libc, kernel)"


def classify(stacks: Path) -> tuple[Counter, Counter, int]:
    threads: Counter[str] = Counter()
    task: Counter[str] = Counter()
    total = 0
    with open(stacks) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n, frames = int(count), stack.split(";")
            total += n
            if any(TASK_THREAD in f for f in frames):
                threads["task thread (source chain)"] += n
                task[task_part(frames)] += n
                continue
            kind = next((name for name, marks in THREAD_KINDS if any(m in f for f in frames for m in marks)),
                        "other threads (JobManager, RPC, timers, metrics)")
            threads[kind] += n
    return threads, task, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", default=None, help="comma-separated views of the shipped policy (default all)")
    parser.add_argument("--n", type=int, default=300_000, help="events (default 300,000)")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="sampling interval (default 2 ms)")
    parser.add_argument("--stacks", type=Path, default=None, help="also keep the collapsed stacks here")
    args = parser.parse_args()
    agent = library()

    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        events = work / "events.jsonl"
        records = write_events(events, args.n)
        keyring = work / "keyring.json"
        Keyring.generate().save(keyring)
        views = args.views.split(",") if args.views else None
        policy = write_policy(work, views)
        stacks = work / "stacks.collapsed"
        interval_us = int(args.interval_ms * 1000)
        # JAVA_TOOL_OPTIONS reaches the JVM the command line starts (the only JVM of a local run)
        os.environ["JAVA_TOOL_OPTIONS"] = (f"-agentpath:{agent}=start,event=itimer,interval={interval_us}us,"
                                           f"cstack=fp,collapsed,file={stacks}")
        load = os.getloadavg()[0]
        wall, cpu = timed_run(policy, events, work / "out", f"file:{keyring}", "thread")
        del os.environ["JAVA_TOOL_OPTIONS"]
        threads, task, total = classify(stacks)
        if args.stacks:
            shutil.copy(stacks, args.stacks)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_record = 1e6 * cpu / records
    print(f"{'+'.join(views or ['all views'])}: {records:,} events in {wall:.1f} s (with job start), JVM CPU "
          f"{per_record:.1f} us/record, {total:,} samples every {args.interval_ms:g} ms; "
          f"load average before: {load:.2f}")
    print("  by thread                                                        share   us/record")
    for name, n in threads.most_common():
        print(f"    {name:<62} {100 * n / total:5.1f}%  {per_record * n / total:7.1f}")
    in_task = sum(task.values()) or 1
    print("  within the task thread")
    for name, n in task.most_common():
        print(f"    {name:<62} {100 * n / in_task:5.1f}%  {per_record * n / total:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
