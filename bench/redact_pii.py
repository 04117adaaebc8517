"""redact.pii: precision and recall per type on the labelled ticket texts, and texts/s.

Run: ``.venv/bin/python -m bench.redact_pii [--path tests/data/pii-texts.jsonl]``.

A detection counts as a true positive when its span and type equal a labelled one
exactly. Throughput is measured side by side against a plain ``str.split`` over the
same texts, to give a ratio. Prints figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from udfs.redact_pii import DETECTORS, RedactPII, detect

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "tests" / "data" / "pii-texts.jsonl"


def score(items: list[dict]) -> dict[str, tuple[float, float, int, int, int]]:
    """Per type: (precision, recall, true positives, false positives, false negatives)."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for item in items:
        truth = {(s["start"], s["end"], s["type"]) for s in item["spans"]}
        found = {(d.start, d.end, d.kind) for d in detect(item["text"])}
        for _, _, kind in found & truth:
            tp[kind] += 1
        for _, _, kind in found - truth:
            fp[kind] += 1
        for _, _, kind in truth - found:
            fn[kind] += 1
    out = {}
    for kind in DETECTORS:
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 1.0
        out[kind] = (p, r, tp[kind], fp[kind], fn[kind])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    items = [json.loads(line) for line in args.path.read_text(encoding="utf-8").splitlines() if line]
    print(f"{len(items)} texts, {sum(len(i['spans']) for i in items)} labelled spans")
    print(f"{'type':6} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4}")
    for kind, (p, r, tp, fp, fn) in score(items).items():
        print(f"{kind:6} {p:9.3f} {r:7.3f} {tp:4d} {fp:4d} {fn:4d}")
    texts = [i["text"] for i in items] * args.rounds
    redact = RedactPII({})
    redact.open(None)
    t0 = time.perf_counter()
    for text in texts:
        text.split()
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    for text in texts:
        redact.apply(text)
    took = time.perf_counter() - t0
    print(f"redact.pii: {len(texts) / took:,.0f} texts/s ({took / base:.1f}x the time of str.split)")


if __name__ == "__main__":
    main()
