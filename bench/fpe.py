"""FPE throughput: the project's FF1 and FF3-1 against the ``ff3`` package, in one run.

Encrypts N unique 16-digit values (default 200,000) with each, on one core, and
prints operations per second and the ratio to ``ff3``. Then runs the ``fpe.ff1``
policy transform on a stream where values repeat, with and without its LRU
cache. A benchmark, not a test: nothing here asserts a timing.

    .venv/bin/python bench/fpe.py            # 200,000 values
    .venv/bin/python bench/fpe.py --n 20000  # quicker
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ff3 import FF3Cipher  # noqa: E402

from udfs.ff1 import FF1  # noqa: E402
from udfs.ff3_1 import FF3_1  # noqa: E402
from udfs.fpe import FF1Transform  # noqa: E402

KEY = bytes.fromhex("EF4359D8D580AA4F7F036D6F04FC6A942B7E151628AED2A6ABF7158809CF4F3C")
TWEAK7 = bytes.fromhex("D8E7920AFA330A")


def rate(fn: Callable[[str], str], values: list[str]) -> float:
    start = time.perf_counter()
    for value in values:
        fn(value)
    return len(values) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="values per run (default 200,000)")
    parser.add_argument("--distinct", type=int, default=0, help="distinct values in the repeating stream (default n/20)")
    parser.add_argument("--cache-size", type=int, default=10_000, help="LRU size for the cached run (default 10,000)")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    unique = [f"{x:016d}" for x in rng.sample(range(10**16), args.n)]

    ff1 = FF1(KEY, "digits")
    ff3_1 = FF3_1(KEY, "digits")
    reference = FF3Cipher(KEY.hex(), TWEAK7.hex())
    # same tweak for both FF3-1 implementations, so the work is identical
    assert ff3_1.encrypt(unique[0], TWEAK7) == reference.encrypt(unique[0])

    print(f"{args.n:,} unique 16-digit values, one core, no result cache")
    results = {
        "ff3 package (FF3-1)": rate(reference.encrypt, unique),
        "project FF1": rate(lambda v: ff1.encrypt(v, b"card"), unique),
        "project FF3-1": rate(lambda v: ff3_1.encrypt(v, TWEAK7), unique),
    }
    transform = FF1Transform({"alphabet": "digits"}, domain="card")
    transform.open_with_key(KEY)
    results["fpe.ff1 transform (digits)"] = rate(transform.apply, unique)
    base = results["ff3 package (FF3-1)"]
    for name, ops in results.items():
        print(f"  {name:<30} {ops:>12,.0f} ops/s   {ops / base:5.2f}x ff3")

    distinct = args.distinct or max(1, args.n // 20)
    pool = unique[:distinct]
    # a skewed stream: a few values repeat often, as card numbers do in a purchase stream
    stream = rng.choices(pool, weights=[1 / (i + 1) for i in range(distinct)], k=args.n)
    plain = FF1Transform({"alphabet": "digits"}, domain="card")
    plain.open_with_key(KEY)
    cached = FF1Transform({"alphabet": "digits", "cache_size": args.cache_size}, domain="card")
    cached.open_with_key(KEY)
    no_cache, with_cache = rate(plain.apply, stream), rate(cached.apply, stream)
    print(f"\n{args.n:,} values drawn from {distinct:,} distinct (Zipf-like), fpe.ff1 transform")
    print(f"  {'without cache':<30} {no_cache:>12,.0f} ops/s")
    print(f"  {f'with LRU cache_size={args.cache_size:,}':<30} {with_cache:>12,.0f} ops/s   {with_cache / no_cache:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
