"""Alert rules, evaluation, the alert lifecycle (raise, escalate, resolve,
acknowledge) recorded as an append-only log, and notifiers.

(Stub: filled in by the alerting work, issue 4.)
"""

from __future__ import annotations

from pathlib import Path

import duckdb


def register_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Create the alerts view (current state derived from the alert log)."""
    del con, root
