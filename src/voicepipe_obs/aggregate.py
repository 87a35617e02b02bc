"""Hourly and daily snapshots (DESIGN §6): computed by DuckDB from deduplicated raw
events, one Parquet file per bucket, replaced atomically; incremental bookkeeping;
and the live metric queries reports and alerts use.

(Stub: filled in by the aggregation work, issue 3.)
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from . import store
from .query import sql_str, vetted_files


def register_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Create the snapshots_hourly and snapshots_daily views."""
    for view, area in (
        ("snapshots_hourly", store.SNAPSHOTS_HOURLY),
        ("snapshots_daily", store.SNAPSHOTS_DAILY),
    ):
        files = vetted_files(root, area)
        if files:
            src = ", ".join(sql_str(str(f)) for f in files)
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet([{src}])")
