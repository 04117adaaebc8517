"""Every transform SQL can call, as a module-level function object, for ``CREATE FUNCTION`` by module path.

::

    CREATE TEMPORARY FUNCTION mask_email AS 'udfs.sql_functions.mask_email' LANGUAGE PYTHON;
    CREATE TEMPORARY FUNCTION fpe_ff1 AS 'udfs.sql_functions.fpe_ff1' LANGUAGE PYTHON;
    SELECT mask_email(email), fpe_ff1(card, '{format: card, domain: card_number}') FROM raw_events;

The names are those of :func:`udfs.flink.register_all` (``mask.email`` is ``mask_email``; ``protect_json``
too). The keyring is read from the ``ANON_KEYRING`` environment variable, which holds the
keyring's JSON (``env:ANON_KEYRING``), when a task opens a function that needs a key: never from
the SQL text. Set it where the Python workers run (the TaskManagers; the client for local runs).
Functions that need no key (masks, redaction, generalization) work without it.

The Python workers must be able to import this module: ``python.pythonpath`` (or ``python.files``)
names the project's folder, as ``flink_jobs.protect_stream.make_env`` does.
"""

from __future__ import annotations

from typing import Any

from udfs.flink import PROTECT_JSON, json_rules_function, scalar_function, sql_transforms

#: where every function here reads its keyring, at open() time
KEYRING_REF = "env:ANON_KEYRING"


def _functions() -> dict[str, Any]:
    functions = {name: scalar_function(transform, keyring_ref=KEYRING_REF)
                 for name, transform in sql_transforms().items()}
    functions[PROTECT_JSON] = json_rules_function(KEYRING_REF)
    return functions


_FUNCTIONS = _functions()
globals().update(_FUNCTIONS)
__all__ = sorted(_FUNCTIONS)
