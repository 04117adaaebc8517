"""Tokens per second through tokenize.vault, on SQLite and PostgreSQL, cold and warm.

For each backend, in one run:

- cold: every value is new, so each costs a vault lookup, a data-key lookup, an
  insert and a read-back;
- vault hit: every value is already in the vault but not in the task's cache
  (a single-row lookup per value, the cost of a fresh task);
- warm: every value is served by the per-task LRU.

It prints tokens/s and the ratio of the cached path to the single-row lookup.
PostgreSQL is started in a temporary folder (initdb + pg_ctl on loopback), or taken
from ``--pg URL``. Run: ``.venv/bin/python bench/tokenization.py [-n 5000]``.
"""

from __future__ import annotations

import os
import sys

# run from the repo root, not from bench/
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import udfs.tokenization  # noqa: E402,F401
from flink_jobs.devtools.pg_local import LocalPostgres, free_port  # noqa: E402
from udfs import registry  # noqa: E402
from udfs.keyring import Keyring  # noqa: E402


def make(reference: str, keyring: Keyring, cache_size: int):
    t = registry.get("tokenize.vault")({"subject_field": "customerId", "vault": reference, "cache_size": cache_size},
                                       domain="customer_id")
    t.open(keyring)
    return t


def rate(t, values: list[str]) -> float:
    start = time.perf_counter()
    for v in values:
        t.apply_in_record(v, {"customerId": v})
    return len(values) / (time.perf_counter() - start)


def measure(name: str, reference: str, n: int) -> dict[str, float]:
    keyring = Keyring.generate()
    values = [f"CUST{i:08d}" for i in range(n)]
    writer = make(reference, keyring, cache_size=0)
    cold = rate(writer, values)
    lookup = rate(make(reference, keyring, cache_size=0), values)  # a fresh task: every value a vault hit
    cached = make(reference, keyring, cache_size=n)
    rate(cached, values)  # fill the LRU
    warm = max(rate(cached, values) for _ in range(3))
    print(f"{name:<11} cold {cold:>10,.0f} tok/s   vault hit {lookup:>10,.0f} tok/s   warm cache {warm:>12,.0f} tok/s"
          f"   cached / single-row lookup = {warm / lookup:,.0f}x")
    return {"cold": cold, "lookup": lookup, "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="distinct values per phase (default 5000)")
    parser.add_argument("--pg", help="an existing PostgreSQL URL instead of a throw-away server")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="anon-bench-")
    server = None
    try:
        print(f"tokenize.vault, {args.n:,} distinct values per phase, one task")
        sqlite = measure("sqlite", f"sqlite:{folder}/vault.db", args.n)
        url = args.pg
        if url is None:
            # durable, as a real vault would be: fsync and synchronous commit on
            # its own folder: under root the server runs as postgres, which cannot enter a 0700 parent
            pg_folder = tempfile.mkdtemp(prefix="anon-bench-pg-")
            server = LocalPostgres(pg_folder, free_port())
            server.start()
            url = server.create_database("bench")
        pg = measure("postgresql", url, args.n)
        print(f"postgresql / sqlite: cold {pg['cold'] / sqlite['cold']:.2f}x, vault hit "
              f"{pg['lookup'] / sqlite['lookup']:.2f}x, warm {pg['warm'] / sqlite['warm']:.2f}x")
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
