"""Reading a data root's raw event files the plainest way (DuckDB over the
Parquet, no library code), for tests that count what the recorder stored."""

from __future__ import annotations

from pathlib import Path

import duckdb


def raw_ids(root: Path) -> list[str]:
    """Every event_id in the raw files, duplicates included."""
    files = sorted(str(p) for p in (root / "events").rglob("*.parquet"))
    if not files:
        return []
    return [
        r[0] for r in duckdb.connect().execute(f"SELECT event_id FROM read_parquet({files!r})").fetchall()
    ]
