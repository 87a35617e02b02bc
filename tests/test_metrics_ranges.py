"""`report metrics` over its ranges, on real Parquet and real DuckDB with a frozen clock:

* percentiles (and the averages and rates snapshots cannot add up) over 7d/30d are
  exact — equal to a plain DuckDB ``quantile_cont`` over the raw events — also after
  a retry completes a days-old artifact, and shown as unavailable (never a mean of
  daily percentiles) for a range reaching past event retention;
* "last 1h/6h/24h" covers exactly that, and agrees with the dashboard's and the
  pipeline report's 24 hours;
* event files that arrived after the last `voicepipe aggregate` are counted, not
  silently left out, and the report says the snapshots are behind.

Every reference figure is computed here from the raw event files, without the
library's aggregation code.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from voicepipe_obs import Recorder, aggregate, maintenance, reports
from voicepipe_obs.cli import main
from voicepipe_obs.config import RetentionSettings
from voicepipe_obs.errors import UsageError

UTC = dt.timezone.utc
#: The frozen clock: Wednesday 2026-11-25 19:28 UTC — not on an hour, a half hour or
#: a 5-minute boundary, so a range that rounds its start shows.
NOW = dt.datetime(2026, 11, 25, 19, 28, tzinfo=UTC)
TODAY = dt.datetime(2026, 11, 25, tzinfo=UTC)

#: stage → (completion events, failure event), spelled out (DESIGN §6)
STAGES = {
    "transcription": (("transcription_completed",), "transcription_failed"),
    "claims_extraction": (("claims_extracted",), "claims_extraction_failed"),
    "entity_resolution": (
        ("entity_resolution_completed", "entity_needs_disambiguation"),
        "entity_resolution_failed",
    ),
    "draft_generation": (("drafts_generated",), "draft_generation_failed"),
}


def sec(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def one_artifact(
    rec: Any, aid: str, org: str, received: dt.datetime, *, scale: float, fail_at: str | None = None
) -> None:
    """received → four stages → completed (or failed at ``fail_at``); durations and
    the end-to-end latency grow with ``scale``."""
    ctx = {"artifact_id": aid, "organization_id": org}
    rec.emit("artifact_received", timestamp=received, **ctx)
    t = received
    for i, (stage, (done, failed)) in enumerate(STAGES.items()):
        ms = 400.0 * (i + 1) * scale
        t = t + dt.timedelta(milliseconds=ms + 50)
        if stage == fail_at:
            rec.emit(failed, timestamp=t, duration_ms=ms, error_code="Boom", ai_cost=0.001, **ctx)
            rec.emit("artifact_failed", timestamp=t + sec(1), error_code="Boom", **ctx)
            return
        extra: dict[str, Any] = {"ai_cost": 0.002 * (i + 1)}
        event = done[0]
        if stage == "transcription":
            extra["confidence_score"] = min(0.99, 0.5 + scale / 20)
        if stage == "entity_resolution":
            flagged = 1 if aid.endswith(("0", "3", "6")) else 0
            event = done[1] if flagged else done[0]
            extra |= {"entity_count": 3, "disambiguation_count": flagged}
        rec.emit(event, timestamp=t, duration_ms=ms, **ctx, **extra)
    rec.emit("artifact_completed", timestamp=received + sec(15 + 3 * scale), **ctx)


def write_history(root: Path) -> None:
    """Six full days (11-19 … 11-24) and today until NOW; volumes, latencies and
    failure shares differ by day and organisation, so a mean of daily figures weighted
    by anything but their own counts is off."""
    rec = Recorder(root, strict=True, flush_interval=60, recover=False)
    for back in range(6, -1, -1):
        day = TODAY - dt.timedelta(days=back)
        for org, volume in (("org-a", 4 + 3 * back), ("org-b", 3 + back)):
            for k in range(volume):
                received = day + dt.timedelta(hours=9, minutes=7 * k)
                if received > NOW - dt.timedelta(hours=2):
                    continue
                fail = None
                if back % 2 == 0 and k % 4 == 3:
                    fail = "transcription"
                elif k % 7 == 5:
                    fail = "draft_generation"
                one_artifact(
                    rec, f"{org}-{day:%m%d}-{k}", org, received, scale=1 + back + k % 5, fail_at=fail
                )
    rec.close()


def retry_late(root: Path) -> None:
    """The reviewer's case: an artifact that failed two days ago is retried and
    completes today, ~50 hours after it was received."""
    rec = Recorder(root, strict=True, flush_interval=60, recover=False)
    ctx = {"artifact_id": "late-1", "organization_id": "org-b"}
    received = TODAY - dt.timedelta(days=2) + dt.timedelta(hours=10)
    rec.emit("artifact_received", timestamp=received, **ctx)
    rec.emit(
        "transcription_failed", timestamp=received + sec(5), duration_ms=4000.0, error_code="Timeout", **ctx
    )
    rec.emit("artifact_failed", timestamp=received + sec(6), error_code="Timeout", **ctx)
    retried = TODAY + dt.timedelta(hours=12)
    rec.emit("retry_initiated", timestamp=retried, retry_attempt=1, actor="alice", **ctx)
    t = retried
    for i, (stage, (done, _failed)) in enumerate(STAGES.items()):
        t = t + sec(2)
        extra = {"entity_count": 2, "disambiguation_count": 0} if stage == "entity_resolution" else {}
        rec.emit(done[0], timestamp=t, duration_ms=900.0 * (i + 1), retry_attempt=1, **ctx, **extra)
    rec.emit("retry_succeeded", timestamp=t + sec(1), retry_attempt=1, **ctx)
    rec.emit("artifact_completed", timestamp=t + sec(1), retry_attempt=1, **ctx)
    rec.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """History, `voicepipe aggregate`, the late retry, `voicepipe aggregate` again."""
    root = tmp_path_factory.mktemp("ranges") / "data"
    root.mkdir()
    write_history(root)
    aggregate.aggregate(root, now=NOW)
    retry_late(root)
    aggregate.aggregate(root, now=NOW)
    return root


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built store (for tests that change it)."""
    target = tmp_path / "data"
    shutil.copytree(built, target)
    return target


# ------------------------------------------------------------------ reference


@pytest.fixture
def ref() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


def _events(root: Path) -> str:
    return (
        "(SELECT DISTINCT ON (event_id) * FROM "
        f"read_parquet('{root}/events/*/*/*.parquet', hive_partitioning = false))"
    )


def reference(
    con: duckdb.DuckDBPyConnection, root: Path, since: dt.datetime, until: dt.datetime, org: str | None = None
) -> dict[str, Any]:
    """DESIGN §6 over the raw events with since <= timestamp <= until, in plain SQL."""
    ev = _events(root)
    scope = "($org IS NULL OR organization_id = $org)"
    window = f"timestamp >= $since AND timestamp <= $until AND {scope}"
    params = {"since": since, "until": until, "org": org}
    out: dict[str, Any] = {}
    e2e = f"""
        WITH ev AS {ev},
        first AS (SELECT artifact_id, min(timestamp) AS received FROM ev
                  WHERE event_type = 'artifact_received' GROUP BY artifact_id)
        SELECT c.organization_id, (epoch_us(c.timestamp) - epoch_us(f.received)) / 1000.0 AS ms
        FROM ev c JOIN first f USING (artifact_id)
        WHERE c.event_type = 'artifact_completed' AND c.timestamp >= $since AND c.timestamp <= $until
          AND ($org IS NULL OR c.organization_id = $org)
    """
    row = con.execute(f"SELECT avg(ms), quantile_cont(ms, 0.95), count(*) FROM ({e2e})", params).fetchone()
    assert row is not None
    out["avg_end_to_end_latency_ms"], out["p95_end_to_end_latency_ms"], out["completions_with_receipt"] = row
    out["org_p95"] = dict(
        con.execute(
            f"SELECT organization_id, quantile_cont(ms, 0.95) FROM ({e2e}) GROUP BY 1", params
        ).fetchall()
    )
    counts = dict(
        con.execute(f"SELECT event_type, count(*) FROM {ev} WHERE {window} GROUP BY 1", params).fetchall()
    )
    out["received"] = counts.get("artifact_received", 0)
    out["completed"] = counts.get("artifact_completed", 0)
    out["failed"] = counts.get("artifact_failed", 0)
    cost = con.execute(f"SELECT coalesce(sum(ai_cost), 0) FROM {ev} WHERE {window}", params).fetchone()
    assert cost is not None
    out["cost"] = cost[0]
    auto = con.execute(
        f"""SELECT sum(entity_count - coalesce(disambiguation_count, 0)) / sum(entity_count) FROM {ev}
            WHERE {window} AND entity_count IS NOT NULL
              AND event_type IN ('entity_resolution_completed', 'entity_needs_disambiguation')""",
        params,
    ).fetchone()
    assert auto is not None
    out["auto_resolution_rate"] = auto[0]
    out["stages"] = {}
    for stage, (done, failed) in STAGES.items():
        row = con.execute(
            f"""SELECT avg(duration_ms) FILTER (WHERE event_type IN (SELECT unnest($done))),
                       quantile_cont(duration_ms, 0.95) FILTER (WHERE event_type IN (SELECT unnest($done))),
                       count(*) FILTER (WHERE event_type IN (SELECT unnest($done))),
                       count(*) FILTER (WHERE event_type = $failed)
                FROM {ev} WHERE {window}""",
            params | {"done": list(done), "failed": failed},
        ).fetchone()
        assert row is not None
        avg, p95, n_done, n_failed = row
        out["stages"][stage] = {
            "avg_latency_ms": avg,
            "p95_latency_ms": p95,
            "failure_rate": n_failed / (n_done + n_failed) if n_done + n_failed else None,
        }
    return out


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == pytest.approx(b, rel=1e-9)


# -------------------------------------------------- 1: exact range percentiles


@pytest.mark.parametrize("org", [None, "org-b"])
@pytest.mark.parametrize("range_", ["7d", "30d"])
def test_range_figures_are_exact_from_snapshots_and_raw_events(
    built: Path, ref: duckdb.DuckDBPyConnection, range_: str, org: str | None
) -> None:
    m = reports.metrics(built, now=NOW, range_=range_, org=org, exact=True)
    days = 7 if range_ == "7d" else 30
    start = TODAY - dt.timedelta(days=days - 1)
    want = reference(ref, built, start, NOW, org)
    cards = m["cards"]
    # the late retry's ~50 h latency is one value among many, not a day's weight
    assert close(cards["p95_end_to_end_latency_ms"], want["p95_end_to_end_latency_ms"])
    assert cards["p95_end_to_end_latency_ms"] < 60_000
    assert close(cards["avg_end_to_end_latency_ms"], want["avg_end_to_end_latency_ms"])
    for s in m["stages"]:
        for key in ("avg_latency_ms", "p95_latency_ms", "failure_rate"):
            assert close(s[key], want["stages"][s["stage"]][key]), (s["stage"], key)
    orgs = {o["organization_id"]: o for o in m["organizations"]}
    assert set(orgs) == ({org} if org else {"org-a", "org-b"})
    for oid, o in orgs.items():
        assert close(o["p95_end_to_end_latency_ms"], want["org_p95"][oid]), oid
    # what the days add up to exactly: counts, cost, rates of counts
    assert cards["artifacts_received"] == want["received"]
    assert cards["artifacts_processed"] == want["completed"] + want["failed"]
    assert cards["total_ai_cost"] == pytest.approx(want["cost"], rel=1e-12)
    assert close(cards["auto_resolution_rate"], want["auto_resolution_rate"])
    # the complete days came from snapshots: this is the combined path
    assert m["snapshot_buckets"] == 6 and m["notes"] == [] and m["unavailable"] == []
    assert m["start"] == start and m["range_label"] == f"{start:%m-%d} → 11-25 ({days} UTC days)"


def test_the_reviewers_case_through_the_cli(built: Path, runner: Any, ref: duckdb.DuckDBPyConnection) -> None:
    """A 2-day-old failed artifact retried and completed today, then aggregated:
    org-b's 7d p95 is the percentile of its completions, not a mean of daily p95s."""
    argv = ["--data", str(built), "report", "--now", NOW.isoformat(), "metrics", "--range", "7d", "--exact"]
    result = runner.invoke(main, [*argv, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    want = reference(ref, built, TODAY - dt.timedelta(days=6), NOW)
    org_b = next(o for o in data["organizations"] if o["organization_id"] == "org-b")
    assert org_b["p95_end_to_end_latency_ms"] == pytest.approx(want["org_p95"]["org-b"], rel=1e-9)
    assert data["cards"]["p95_end_to_end_latency_ms"] == pytest.approx(
        want["p95_end_to_end_latency_ms"], rel=1e-9
    )
    assert "approximate" not in data and data["unavailable"] == []
    table = runner.invoke(main, [*argv, "--utc"], catch_exceptions=False)
    assert table.exit_code == 0 and "≈" not in table.stdout
    assert "voicepipe metrics · 11-19 → 11-25 (7 UTC days) · all organisations" in table.stdout


@pytest.mark.parametrize("range_", ["7d", "30d"])
def test_without_exact_a_range_shows_no_figure_it_cannot_add_up(
    built: Path, ref: duckdb.DuckDBPyConnection, runner: Any, range_: str
) -> None:
    """The fast default (snapshots only): what days add up to exactly is shown; the
    range's percentiles, latency averages and stage failure rates are left out with
    a note naming --exact — never a mean of the days' values."""
    m = reports.metrics(built, now=NOW, range_=range_)
    days = 7 if range_ == "7d" else 30
    want = reference(ref, built, TODAY - dt.timedelta(days=days - 1), NOW, None)
    assert m["cards"]["p95_end_to_end_latency_ms"] is None and m["cards"]["avg_end_to_end_latency_ms"] is None
    assert all(
        s[k] is None for s in m["stages"] for k in ("avg_latency_ms", "p95_latency_ms", "failure_rate")
    )
    assert all(o["p95_end_to_end_latency_ms"] is None for o in m["organizations"])
    assert set(m["unavailable"]) == set(reports.RANGE_LATENCY_FIGURES)
    assert any("add --exact" in n for n in m["notes"])
    assert m["cards"]["artifacts_received"] == want["received"]
    assert m["cards"]["artifacts_processed"] == want["completed"] + want["failed"]
    assert m["cards"]["total_ai_cost"] == pytest.approx(want["cost"], rel=1e-12)
    # each day's own figures stay in the series
    assert any(b["p95_end_to_end_latency_ms"] is not None for b in m["series"])
    argv = ["--data", str(built), "report", "--now", NOW.isoformat(), "metrics", "--range", range_, "--utc"]
    table = runner.invoke(main, argv, catch_exceptions=False)
    assert table.exit_code == 0 and "│ p95 –" in table.stdout and "--exact" in table.stdout


@pytest.mark.parametrize("org", [None, "org-a"])
def test_a_range_past_event_retention_shows_no_percentile(
    store: Path, runner: Any, ref: duckdb.DuckDBPyConnection, org: str | None
) -> None:
    """Events of 11-19 … 11-21 removed by cleanup, their daily snapshots kept: the
    7d percentiles (and the averages and rates snapshots cannot add up) are shown as
    unavailable, with a note; counts and cost still cover the whole range."""
    before = reference(ref, store, TODAY - dt.timedelta(days=6), NOW, org)
    dropped = maintenance.cleanup(store, RetentionSettings(events_days=3), now=NOW)
    assert sorted(p.date for p in dropped if p.area == "events") == ["2026-11-19", "2026-11-20", "2026-11-21"]
    m = reports.metrics(store, now=NOW, range_="7d", org=org)
    assert m["cards"]["p95_end_to_end_latency_ms"] is None
    assert m["cards"]["avg_end_to_end_latency_ms"] is None
    assert all(s["p95_latency_ms"] is None and s["avg_latency_ms"] is None for s in m["stages"])
    assert all(s["failure_rate"] is None for s in m["stages"])
    assert all(o["p95_end_to_end_latency_ms"] is None for o in m["organizations"])
    assert "p95_end_to_end_latency_ms" in m["unavailable"]
    assert any("2026-11-19 … 2026-11-21 are past event retention" in n for n in m["notes"])
    assert m["cards"]["artifacts_received"] == before["received"]
    assert m["cards"]["artifacts_processed"] == before["completed"] + before["failed"]
    assert m["cards"]["total_ai_cost"] == pytest.approx(before["cost"], rel=1e-12)
    assert close(m["cards"]["auto_resolution_rate"], before["auto_resolution_rate"])
    # 24h is within retention: exact as ever
    assert reports.metrics(store, now=NOW, range_="24h", org=org)["cards"]["p95_end_to_end_latency_ms"]
    argv = ["--data", str(store), "report", "--now", NOW.isoformat(), "metrics", "--range", "7d", "--utc"]
    table = runner.invoke(main, argv, catch_exceptions=False)
    assert table.exit_code == 0, table.stderr
    assert "│ p95 –" in table.stdout and "past event retention" in table.stdout and "≈" not in table.stdout


# ------------------------------------------------------ 2: rolling 1h / 6h / 24h


@pytest.fixture
def edges(store: Path) -> Path:
    """Events just inside each rolling window but before the start of its first
    aligned bucket (19:40 yesterday; 13:29; 18:29), and one at exactly NOW."""
    rec = Recorder(store, strict=True, flush_interval=60, recover=False)
    for aid, org, received in (
        ("edge-24h", "org-a", NOW - dt.timedelta(hours=23, minutes=48)),
        ("edge-6h", "org-b", NOW - dt.timedelta(hours=5, minutes=59)),
        ("edge-1h", "org-a", NOW - dt.timedelta(minutes=59)),
    ):
        one_artifact(rec, aid, org, received, scale=2.5)
    rec.emit("artifact_received", timestamp=NOW - sec(20), artifact_id="now-1", organization_id="org-b")
    rec.emit(
        "transcription_completed",
        timestamp=NOW,
        duration_ms=20_000.0,
        artifact_id="now-1",
        organization_id="org-b",
    )
    rec.close()
    return store


@pytest.mark.parametrize(("range_", "hours", "buckets"), [("1h", 1, 12), ("6h", 6, 12), ("24h", 24, 24)])
def test_last_hours_cover_exactly_what_the_label_says(
    edges: Path, ref: duckdb.DuckDBPyConnection, range_: str, hours: int, buckets: int
) -> None:
    since = NOW - dt.timedelta(hours=hours)
    m = reports.metrics(edges, now=NOW, range_=range_)
    want = reference(ref, edges, since, NOW)
    assert m["start"] == since and m["range_label"] == f"last {range_}"
    assert len(m["series"]) == buckets and m["series"][0]["period_start"] == since
    step = dt.timedelta(hours=hours) / buckets
    assert [b["period_start"] for b in m["series"]] == [since + i * step for i in range(buckets)]
    assert m["cards"]["artifacts_received"] == want["received"]
    assert m["cards"]["artifacts_processed"] == want["completed"] + want["failed"]
    assert sum(b["artifacts_received"] for b in m["series"]) == want["received"]
    assert sum(b["artifacts_completed"] for b in m["series"]) == want["completed"]
    assert close(m["cards"]["p95_end_to_end_latency_ms"], want["p95_end_to_end_latency_ms"])
    for s in m["stages"]:
        for key in ("avg_latency_ms", "p95_latency_ms", "failure_rate"):
            assert close(s[key], want["stages"][s["stage"]][key]), (s["stage"], key)
    # an aligned window (the start of the bucket holding NOW, minus n - 1 buckets)
    # would miss the edge artifact
    aligned = NOW - NOW.minute % int(step.total_seconds() // 60 or 60) * dt.timedelta(minutes=1)
    aligned -= (buckets - 1) * step
    assert aligned > since and reference(ref, edges, aligned, NOW)["received"] < want["received"]


def test_24h_agrees_with_the_dashboard_and_the_pipeline_report(edges: Path) -> None:
    m = reports.metrics(edges, now=NOW, range_="24h")
    dash = {s["stage"]: s for s in reports.dashboard(edges, now=NOW, tz=UTC)["stages"]}
    pipe = {s["stage"]: s for s in reports.pipeline(edges, now=NOW)["stages"]}
    assert dash["ingestion"]["throughput_per_hour"] * 24 == m["cards"]["artifacts_received"]
    for s in m["stages"]:
        stage = s["stage"]
        assert close(s["avg_latency_ms"], dash[stage]["avg_latency_ms"]), stage
        assert close(s["failure_rate"], dash[stage]["failure_rate"]), stage
        assert close(s["p95_latency_ms"], pipe[stage]["p95_latency_ms"]), stage
        assert close(s["failure_rate"], pipe[stage]["failure_rate"]), stage
    # the transcription at exactly NOW counts in all three
    assert m["stages"][0]["p95_latency_ms"] is not None


# --------------------------------------------- 3: files newer than the snapshots


def backfill_failures(root: Path, n: int = 50) -> None:
    """``n`` failures dated two days ago and a reviewer resolving two pending entities,
    written after the last `voicepipe aggregate`."""
    rec = Recorder(root, strict=True, flush_interval=60, recover=False)
    day = TODAY - dt.timedelta(days=2)
    for i in range(n):
        ts = day + dt.timedelta(hours=14, seconds=30 * i)
        ctx = {"artifact_id": f"bf-{i}", "organization_id": "org-c"}
        rec.emit("artifact_received", timestamp=ts, **ctx)
        rec.emit("artifact_failed", timestamp=ts + sec(3), error_code="Backfilled", **ctx)
    rec.emit(
        "entity_user_resolved",
        timestamp=day + dt.timedelta(hours=16),
        disambiguation_count=2,
        artifact_id="a-org-a-1124-0",
        organization_id="org-a",
        actor="bob",
    )
    rec.close()


def test_event_files_newer_than_the_snapshots_are_counted_and_noted(
    store: Path, runner: Any, ref: duckdb.DuckDBPyConnection
) -> None:
    old = reports.metrics(store, now=NOW, range_="7d", exact=True)
    assert old["notes"] == []
    backfill_failures(store)
    day = TODAY - dt.timedelta(days=2)
    m = reports.metrics(store, now=NOW, range_="7d", exact=True)
    want = reference(ref, store, TODAY - dt.timedelta(days=6), NOW)
    assert m["cards"]["artifacts_received"] == old["cards"]["artifacts_received"] + 50 == want["received"]
    assert m["cards"]["artifacts_processed"] == want["completed"] + want["failed"]
    by_day = {b["period_start"]: b for b in m["series"]}
    assert (
        by_day[day]["artifacts_failed"]
        == {b["period_start"]: b for b in old["series"]}[day]["artifacts_failed"] + 50
    )
    assert by_day[day]["source"] == "events" and m["stale_buckets"] == [day]
    assert "org-c" in {o["organization_id"] for o in m["organizations"]}
    assert m["cards"]["disambiguation_backlog"] == old["cards"]["disambiguation_backlog"] - 2
    pending = aggregate.pending_hours(store)
    assert set(pending) == {day + dt.timedelta(hours=14), day + dt.timedelta(hours=16)}
    n_files = sum(pending.values())
    assert m["notes"] == [
        f"snapshots are behind: {n_files} event file(s) arrived since the last `voicepipe aggregate`, "
        "so 1 daily bucket(s) were computed from raw events; run `voicepipe aggregate` to bring them "
        "up to date"
    ]
    # the CLI says so on stderr with --format json, in the table otherwise
    argv = ["--data", str(store), "report", "--now", NOW.isoformat(), "metrics", "--range", "7d", "--exact"]
    result = runner.invoke(main, [*argv, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stderr == f"voicepipe: note: {m['notes'][0]}\n"
    data = json.loads(result.stdout)  # stdout is the report alone
    assert data["notes"] == m["notes"] and data["cards"]["artifacts_received"] == want["received"]
    assert "note: snapshots are behind" in runner.invoke(main, argv, catch_exceptions=False).stdout
    # aggregated: the same figures, from snapshots, without a note
    aggregate.aggregate(store, now=NOW)
    assert aggregate.pending_hours(store) == {}
    fresh = reports.metrics(store, now=NOW, range_="7d", exact=True)
    assert fresh["notes"] == [] and fresh["stale_buckets"] == []
    assert fresh["cards"] == pytest.approx(m["cards"])
    assert [b["artifacts_failed"] for b in fresh["series"]] == [b["artifacts_failed"] for b in m["series"]]
    assert {b["period_start"]: b for b in fresh["series"]}[day]["source"] == "snapshot"


def test_compacting_aggregated_files_does_not_make_snapshots_behind(store: Path) -> None:
    maintenance.compact(store, now=NOW, grace=dt.timedelta(0))
    assert any(p.name.startswith("compact-") for p in (store / "events").rglob("*.parquet"))
    m = reports.metrics(store, now=NOW, range_="7d", exact=True)
    assert m["notes"] == [] and m["stale_buckets"] == [] and m["snapshot_buckets"] == 6
    assert aggregate.pending_hours(store) == {}


# ------------------------------------------------- the library function it uses


def test_window_latency_is_window_metrics_reading_less(store: Path, ref: duckdb.DuckDBPyConnection) -> None:
    """aggregate.window_latency gives window_metrics' figures (and the plain SQL
    reference's) over files as written with a duplicate, and over compacted files."""
    since, until = TODAY - dt.timedelta(days=6), NOW + dt.timedelta(microseconds=1)
    some = sorted((store / "events").rglob("*.parquet"))[3]
    shutil.copy(some, some.with_name("copy-" + some.name))  # a spool recovered twice

    def check() -> None:
        for org in (None, "org-b"):
            lean = aggregate.window_latency(store, since, until, organization_id=org)
            full = {
                r["organization_id"]: r
                for r in aggregate.window_metrics(store, since, until, organization_id=org)
            }
            assert [r["organization_id"] for r in lean] == list(full)
            for row in lean:
                assert set(row) == {"organization_id", *aggregate.LATENCY_METRICS}
                for key in aggregate.LATENCY_METRICS:
                    assert close(row[key], full[row["organization_id"]][key]), (
                        org,
                        row["organization_id"],
                        key,
                    )
            want = reference(ref, store, since, NOW, org)
            assert close(lean[0]["p95_end_to_end_latency_ms"], want["p95_end_to_end_latency_ms"])
        only = aggregate.window_latency(store, since, until, org_metrics=("p95_end_to_end_latency_ms",))
        assert [sorted(r) for r in only[1:]] == [["organization_id", "p95_end_to_end_latency_ms"]] * 2
        assert {r["organization_id"]: r["p95_end_to_end_latency_ms"] for r in only[1:]} == pytest.approx(
            reference(ref, store, since, NOW)["org_p95"]
        )

    check()
    maintenance.compact(store, now=NOW, grace=dt.timedelta(0))
    assert all(p.name.startswith("compact-") for p in (store / "events").rglob("*.parquet"))
    check()
    assert aggregate.window_latency(store, NOW - dt.timedelta(minutes=1), NOW) == []
    with pytest.raises(UsageError):
        aggregate.window_latency(store, since, until, org_metrics=("total_ai_cost",))
