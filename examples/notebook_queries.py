"""Notebook-style queries over the event Parquet with plain DuckDB and pandas —
no voicepipe_obs import needed, just the files under ``<root>/events/``.

Run it as a script (``python examples/notebook_queries.py ./voicepipe-data``) or
paste the cells (``# %%``) into Jupyter. Each query is also a function returning a
pandas DataFrame, so it can be reused (the test suite calls them).

Two habits worth copying:

* read with ``hive_partitioning=true`` so the ``date`` / ``hour`` directory names
  become columns you can filter on (DuckDB then skips whole partitions);
* deduplicate on ``event_id`` (``DISTINCT ON``): delivery is at-least-once, so an
  event can appear in two files after a crash recovery.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pandas as pd

# %% Setup: one DuckDB view over every event file, deduplicated


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view ``ev`` over the events under ``root``.

    The same in one SQL statement: ``SELECT DISTINCT ON (event_id) * FROM
    read_parquet('<root>/events/**/*.parquet', hive_partitioning = true)``.
    """
    con = duckdb.connect()
    pattern = str(Path(root) / "events" / "**" / "*.parquet")
    con.read_parquet(pattern, hive_partitioning=True).create_view("ev_raw")
    con.execute("CREATE VIEW ev AS SELECT DISTINCT ON (event_id) * FROM ev_raw")
    return con


# %% Events per day and type (the hive `date` column comes from the directory names)


def events_per_day(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        """
        SELECT date, count(*) AS events,
               count(*) FILTER (WHERE event_type = 'artifact_received') AS received,
               count(*) FILTER (WHERE event_type = 'artifact_failed') AS failed
        FROM ev GROUP BY date ORDER BY date
        """
    ).df()


# %% Per-stage latency: average, p50 and p95 over the completion events (ms)


def stage_latency(con: duckdb.DuckDBPyConnection, since: str | None = None) -> pd.DataFrame:
    """Per-stage latency; ``since`` (e.g. '2026-11-01') filters on the partition date."""
    return con.execute(
        """
        SELECT pipeline_stage AS stage,
               count(*) AS runs,
               round(avg(duration_ms)) AS avg_ms,
               round(quantile_cont(duration_ms, 0.5)) AS p50_ms,
               round(quantile_cont(duration_ms, 0.95)) AS p95_ms
        FROM ev
        WHERE event_type IN ('transcription_completed', 'claims_extracted', 'entity_resolution_completed',
                             'entity_needs_disambiguation', 'drafts_generated')
          AND ($since IS NULL OR date >= $since::DATE)
        GROUP BY 1 ORDER BY p95_ms DESC
        """,
        {"since": since},
    ).df()


# %% Failures by error code and stage (the stage failure events carry both)


def failures_by_error(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        """
        SELECT pipeline_stage AS stage, error_code, count(*) AS failures,
               any_value(error_message) AS example_message
        FROM ev
        WHERE event_type IN ('transcription_failed', 'claims_extraction_failed',
                             'entity_resolution_failed', 'draft_generation_failed')
        GROUP BY 1, 2 ORDER BY failures DESC, stage, error_code
        """
    ).df()


# %% AI cost per organisation (USD), with the cost per artifact


def cost_per_org(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        """
        SELECT organization_id,
               round(sum(ai_cost), 4) AS cost_usd,
               count(DISTINCT artifact_id) FILTER (WHERE ai_cost IS NOT NULL) AS artifacts_with_cost,
               round(sum(ai_cost) / count(DISTINCT artifact_id) FILTER (WHERE ai_cost IS NOT NULL), 5)
                   AS cost_per_artifact
        FROM ev
        WHERE organization_id IS NOT NULL
        GROUP BY 1 ORDER BY cost_usd DESC
        """
    ).df()


# %% pandas only: read the whole events directory (pyarrow handles the partitions)


def pandas_events(root: str | Path) -> pd.DataFrame:
    df = pd.read_parquet(Path(root) / "events")
    return df.drop_duplicates("event_id")


def pandas_end_to_end(df: pd.DataFrame) -> pd.DataFrame:
    """End-to-end latency per organisation: completed minus first received (seconds)."""
    received = df[df.event_type == "artifact_received"].groupby("artifact_id").timestamp.min()
    completed = df[df.event_type == "artifact_completed"].groupby("artifact_id").timestamp.max()
    orgs = df.dropna(subset=["organization_id"]).groupby("artifact_id").organization_id.first()
    e2e = (completed - received).dropna().dt.total_seconds().rename("seconds")
    table = pd.concat([e2e, orgs], axis=1, join="inner")
    out = table.groupby("organization_id").seconds.describe(percentiles=[0.5, 0.95])
    return out[["count", "mean", "50%", "95%"]].round(1)


# %% Run everything


def main(argv: list[str]) -> None:
    root = Path(argv[1] if len(argv) > 1 else "./voicepipe-data")
    if not any((root / "events").rglob("*.parquet")):
        sys.exit(f"no event files under {root}/events — run `voicepipe demo` first")
    pd.set_option("display.width", 140)
    pd.set_option("display.max_columns", 12)
    con = connect(root)
    for title, frame in (
        ("events per day", events_per_day(con)),
        ("stage latency (ms)", stage_latency(con)),
        ("failures by error code", failures_by_error(con)),
        ("AI cost per organisation (USD)", cost_per_org(con)),
        ("end-to-end latency per organisation (s), pandas", pandas_end_to_end(pandas_events(root))),
    ):
        print(f"\n== {title}\n{frame.to_string()}")


if __name__ == "__main__":
    main(sys.argv)
