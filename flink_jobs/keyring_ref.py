"""Which keyring a run uses: ``--keyring``, else ``$ANON_KEYRING``, else (for demos) the development one.

The command line, the ``flink run`` entry point and the demos all resolve it here. A missing
keyring is a :class:`~udfs.keyring.KeyringError`, which the command line prints like its own errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from udfs.keyring import Keyring, KeyringError, load_keyring

DEV_KEYRING = Path(".local/dev-keyring.json")
KEYRING_ENV = "ANON_KEYRING"


def resolve_keyring(reference: str | None, *, dev: bool = False) -> tuple[Keyring, str]:
    """The keyring and its reference; with ``dev``, a development keyring under .local/."""
    if dev:
        if not DEV_KEYRING.exists():
            Keyring.generate().save(DEV_KEYRING)
        banner = "WARNING: using the DEVELOPMENT keyring " + str(DEV_KEYRING) + " - demo only, never for real data"
        print("!" * len(banner) + "\n" + banner + "\n" + "!" * len(banner), file=sys.stderr)
        reference = f"file:{DEV_KEYRING.resolve()}"
    reference = reference or (f"env:{KEYRING_ENV}" if os.environ.get(KEYRING_ENV) else None)
    if not reference:
        raise KeyringError(f"no keyring: pass --keyring env:NAME or file:PATH, or set ${KEYRING_ENV} "
                           "(create one with: flink-anonymizer keys new --out keyring.json)")
    if reference.startswith("file:"):
        # workers load the keyring themselves: give them an absolute path
        reference = f"file:{Path(reference[5:]).resolve()}"
    return load_keyring(reference), reference
