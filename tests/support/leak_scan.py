"""Raw PII values of an input, for the tests that scan a protected view for them."""

from __future__ import annotations

import json
from collections.abc import Iterable

PII_FIELDS = ("email", "ssn", "card", "phone")


def pii_values(lines: Iterable[str], fields: tuple[str, ...] = PII_FIELDS) -> set[str]:
    """Every identifying value of ``fields`` in JSON lines (unparsable lines are skipped)."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return record_pii_values(records, fields)


def record_pii_values(records: Iterable[dict], fields: tuple[str, ...] = PII_FIELDS) -> set[str]:
    """Every identifying value of ``fields`` in parsed records, and the cards inside ``items``."""
    values = set()
    for record in records:
        for name in fields:
            value = record.get(name)
            # an email's domain is kept on purpose (j***@example.com): only a local part identifies
            if name == "email" and isinstance(value, str) and len(value.partition("@")[0]) < 2:
                continue
            if isinstance(value, str) and len(value) >= 6:
                values.add(value)
        items = record.get("items")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("card"), str):
                values.add(item["card"])
    return values
