"""Each alert rule against real Parquet events at a frozen ``now``: empty data, at
and above its threshold, minimum sample, per-organisation scope, and the
expected-hours edges of the inactivity rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import voicepipe_obs as vp
from voicepipe_obs import alerts, artifact_index, store
from voicepipe_obs.config import Settings

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


def ago(minutes: float, now: dt.datetime = NOW) -> dt.datetime:
    return now - dt.timedelta(minutes=minutes)


def settings(**rules: Any) -> Settings:
    return Settings.model_validate({"alerts": rules})


def finish(
    rec: vp.Recorder,
    ok: int,
    failed: int = 0,
    *,
    org: str | None = "org-a",
    minutes_ago: float = 10,
    took_s: float = 60,
    prefix: str = "a",
    now: dt.datetime = NOW,
) -> None:
    """``ok`` completed and ``failed`` failed artifacts, finished ``minutes_ago``."""
    for i in range(ok + failed):
        aid = f"{prefix}-{org}-{minutes_ago}-{i}"
        end = ago(minutes_ago, now)
        rec.emit(
            "artifact_received",
            timestamp=end - dt.timedelta(seconds=took_s),
            artifact_id=aid,
            organization_id=org,
        )
        rec.emit(
            "artifact_completed" if i < ok else "artifact_failed",
            timestamp=end,
            artifact_id=aid,
            organization_id=org,
        )


def found(
    root: Path, rule: str, s: Settings | None = None, now: dt.datetime = NOW
) -> dict[str, alerts.Finding]:
    ev = alerts.evaluate(root, s or Settings(), now=now, rules=[rule])
    assert ev.evaluated == [rule]
    return {f.scope: f for f in ev.findings}


# ------------------------------------------------------------------ failure_rate


def test_failure_rate_counts_each_artifact_once_by_its_latest_outcome(rec: vp.Recorder, root: Path) -> None:
    """Ten artifacts completed; one failed three times (retried twice in between),
    another failed and then completed on a retry: 1 failure of 12 artifacts
    (8.3%, no alert) — not 4 failures of 15 events (26.7%, critical)."""
    finish(rec, ok=10)
    for i in range(3):
        rec.emit("artifact_failed", timestamp=ago(20 - i), artifact_id="flaky", organization_id="org-a")
    rec.emit("artifact_failed", timestamp=ago(20), artifact_id="saved", organization_id="org-a")
    rec.emit("artifact_completed", timestamp=ago(15), artifact_id="saved", organization_id="org-a")
    rec.flush()
    assert found(root, "failure_rate") == {}
    finish(rec, ok=0, failed=2, prefix="more")  # 3 of 14 (21.4%): a warning, counted by artifact
    rec.flush()
    got = found(root, "failure_rate")["all"]
    assert (got.severity, got.value) == ("warning", pytest.approx(3 / 14))


def test_failure_rate_counts_the_latest_attempts_outcome_not_a_stale_jobs(
    rec: vp.Recorder, root: Path
) -> None:
    """A queued retry (attempt 1) taken for lost and re-queued with --force (attempt
    2), which completes; then the lost job turns up and fails. The artifact is
    completed (its latest attempt's outcome), not a failure that pages someone."""
    finish(rec, ok=10)
    common: dict[str, Any] = {"artifact_id": "requeued", "organization_id": "org-a"}
    rec.emit("artifact_failed", timestamp=ago(25), **common)
    rec.emit("retry_initiated", timestamp=ago(24), retry_attempt=1, **common)
    rec.emit("retry_initiated", timestamp=ago(20), retry_attempt=2, **common)
    rec.emit("artifact_completed", timestamp=ago(15), retry_attempt=2, **common)
    rec.emit("artifact_failed", timestamp=ago(12), retry_attempt=1, **common)
    rec.flush()
    assert found(root, "failure_rate", settings(failure_rate={"warning": 0.05})) == {}


@pytest.mark.parametrize("indexed", [False, True], ids=["events", "index"])
def test_failure_rate_counts_only_outcomes_that_decide_the_artifacts_state(
    rec: vp.Recorder, root: Path, indexed: bool
) -> None:
    """At 12:20 (window 11:50-12:20): attempt 2 of a re-queued artifact completed at
    11:30, before the window; the lost attempt 1 turns up and fails at 12:10, inside
    it. The artifact is completed (the artifacts view says so), so that failure is
    no failure of the window — it is not the outcome that decides the artifact's
    state. Outcomes that do decide it still count: a failed retry of an artifact
    that completed before the window, and a failure whose retry completed only
    after ``now`` (a backfill). 2 failures of 12, not 3 of 13. With the artifact
    index built, the earlier hours' outcomes come from it."""
    from voicepipe_obs import aggregate

    now = NOW + dt.timedelta(minutes=20)
    finish(rec, ok=10, now=now)

    def emit(kind: str, artifact_id: str, minutes_ago: float, attempt: int | None = None) -> None:
        rec.emit(
            kind,
            timestamp=ago(minutes_ago, now),
            artifact_id=artifact_id,
            organization_id="org-a",
            retry_attempt=attempt,
        )

    emit("artifact_failed", "requeued", 100)
    emit("retry_initiated", "requeued", 90, 1)
    emit("retry_initiated", "requeued", 60, 2)
    emit("artifact_completed", "requeued", 50, 2)
    emit("artifact_failed", "requeued", 10, 1)  # the lost job, late
    emit("artifact_completed", "refailed", 80)
    emit("retry_initiated", "refailed", 25, 1)
    emit("artifact_failed", "refailed", 20, 1)  # a retry that failed: it is failed
    emit("artifact_failed", "later", 15)
    emit("retry_initiated", "later", 5, 1)
    emit("artifact_completed", "later", -20, 1)  # after now: not yet
    rec.flush()
    if indexed:
        aggregate.aggregate(root, now=now + dt.timedelta(hours=1))
        assert artifact_index.Manifest.load(root).hours
    con = vp.connect(root)
    status = dict(
        con.execute(
            "SELECT artifact_id, status FROM artifacts WHERE artifact_id IN ('requeued', 'refailed')"
        ).fetchall()
    )
    con.close()
    assert status == {"requeued": "completed", "refailed": "failed"}
    got = found(root, "failure_rate", now=now)
    assert {scope: (f.severity, f.value) for scope, f in got.items()} == {
        "all": ("warning", pytest.approx(2 / 12)),
        "org:org-a": ("warning", pytest.approx(2 / 12)),
    }


def test_failure_rate_empty_store_does_not_fire(root: Path) -> None:
    ev = alerts.evaluate(root, Settings(), now=NOW, rules=["failure_rate"])
    assert ev.findings == []
    assert any("minimum sample 10" in n for n in ev.notes)


def test_failure_rate_needs_minimum_sample(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=4, failed=5)  # 9 finished, 56% failed: below the sample
    rec.flush()
    assert found(root, "failure_rate") == {}
    finish(rec, ok=1, minutes_ago=5)  # the 10th
    rec.flush()
    assert found(root, "failure_rate")["all"].severity == "critical"


@pytest.mark.parametrize(
    ("ok", "failed", "severity"),
    [
        (9, 1, None),  # exactly 10%: not above the warning threshold
        (8, 2, "warning"),  # 20%
        (15, 5, "warning"),  # exactly 25%: not above critical
        (7, 3, "critical"),  # 30%
    ],
)
def test_failure_rate_thresholds(
    rec: vp.Recorder, root: Path, ok: int, failed: int, severity: str | None
) -> None:
    finish(rec, ok, failed)
    rec.flush()
    got = found(root, "failure_rate", settings(failure_rate={"per_organization": False}))
    assert (got["all"].severity if got else None) == severity
    if severity:
        assert got["all"].value == pytest.approx(failed / (ok + failed))
        assert f"of {ok + failed} artifacts failed" in got["all"].summary


def test_failure_rate_window_excludes_older_events(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=0, failed=20, minutes_ago=31)
    finish(rec, ok=10, failed=0, minutes_ago=29)
    rec.flush()
    assert found(root, "failure_rate") == {}
    # twenty minutes earlier the failures are inside the window
    assert found(root, "failure_rate", now=ago(20))["all"].severity == "critical"


def test_failure_rate_per_organisation(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=7, failed=3, org="org-a")
    finish(rec, ok=10, failed=0, org="org-b")
    rec.flush()
    got = found(root, "failure_rate")
    assert set(got) == {"all", "org:org-a"}
    assert got["all"].severity == "warning"  # 3 of 20
    assert got["org:org-a"].severity == "critical"  # 3 of 10
    assert got["org:org-a"].organization_id == "org-a"
    only_overall = found(root, "failure_rate", settings(failure_rate={"per_organization": False}))
    assert set(only_overall) == {"all"}


def test_duplicate_events_are_counted_once(root: Path) -> None:
    # the same event rows written twice (a replayed spool): counted once
    fixed = vp.Recorder(root, strict=True, durability="memory")
    finish(fixed, ok=7, failed=3)
    fixed.flush()
    files = store.list_parquet(root)
    for f in files:
        (f.parent / ("copy-" + f.name)).write_bytes(f.read_bytes())
    fixed.close()
    got = found(root, "failure_rate", settings(failure_rate={"per_organization": False}))
    assert got["all"].value == pytest.approx(0.3)
    assert "of 10 artifacts" in got["all"].summary


# ----------------------------------------------------------------------- latency


def write_daily_snapshot(root: Path, day: dt.date, avg_ms: float | None, org: str | None = None) -> None:
    start = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
    table = pa.table(
        {
            "period_type": ["daily"],
            "period_start": pa.array([start], pa.timestamp("us", tz="UTC")),
            "period_end": pa.array([start + dt.timedelta(days=1)], pa.timestamp("us", tz="UTC")),
            "organization_id": pa.array([org], pa.string()),
            "created_at": pa.array([start + dt.timedelta(days=1)], pa.timestamp("us", tz="UTC")),
            "artifacts_completed": pa.array([10], pa.int64()),
            "avg_end_to_end_latency_ms": pa.array([avg_ms], pa.float64()),
        }
    )
    name = f"{org or 'all'}.parquet"
    store.write_table(root / store.SNAPSHOTS_DAILY / f"date={day:%Y-%m-%d}" / name, table)


def test_latency_without_history_does_not_fire(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=5, took_s=3600)
    rec.flush()
    ev = alerts.evaluate(root, Settings(), now=NOW, rules=["latency"])
    assert ev.findings == []
    assert any("no daily snapshots" in n for n in ev.notes)


def test_latency_compares_with_past_seven_days(rec: vp.Recorder, root: Path) -> None:
    for d in range(1, 8):  # daily averages 50..70 s → mean 60 s
        write_daily_snapshot(root, (NOW - dt.timedelta(days=d)).date(), 50_000 + (d - 1) * 10_000 / 3)
    # a day outside the 7-day history and today's partial day are ignored
    write_daily_snapshot(root, (NOW - dt.timedelta(days=8)).date(), 1.0)  # the day before the 7
    write_daily_snapshot(root, NOW.date(), 1.0)
    finish(rec, ok=3, took_s=120)  # exactly 2.0 × 60 s
    rec.flush()
    assert found(root, "latency") == {}
    finish(rec, ok=3, took_s=130, minutes_ago=5, prefix="slow")  # avg 125 s > 120 s
    rec.flush()
    got = found(root, "latency")
    assert set(got) == {"all"}
    assert got["all"].severity == "warning"
    assert got["all"].value == pytest.approx(125_000)
    assert got["all"].threshold == pytest.approx(120_000)


def test_latency_leaves_out_retried_artifacts(rec: vp.Recorder, root: Path) -> None:
    """An artifact that failed hours ago and completes now on a manual retry has an
    end-to-end latency of hours (DESIGN §6 keeps that in the snapshots): the wait
    for a person, not the pipeline's speed. The latency alert leaves it out, or
    every retry would page; the same completion without a retry would count."""
    write_daily_snapshot(root, (NOW - dt.timedelta(days=1)).date(), 60_000)
    finish(rec, ok=3, took_s=60)
    aid = "retried-1"
    rec.emit("artifact_received", timestamp=ago(5 * 60), artifact_id=aid, organization_id="org-a")
    rec.emit("artifact_failed", timestamp=ago(5 * 60 - 1), artifact_id=aid, organization_id="org-a")
    rec.emit("retry_initiated", timestamp=ago(12), artifact_id=aid, organization_id="org-a", retry_attempt=1)
    rec.emit("artifact_completed", timestamp=ago(10), artifact_id=aid, organization_id="org-a")
    rec.flush()
    assert found(root, "latency") == {}
    rec.emit("artifact_received", timestamp=ago(5 * 60), artifact_id="slow-1", organization_id="org-a")
    rec.emit("artifact_completed", timestamp=ago(10), artifact_id="slow-1", organization_id="org-a")
    rec.flush()
    assert found(root, "latency")["all"].value > 60_000 * 2  # a slow pipeline still pages


def test_latency_receipt_outside_window_still_counts(rec: vp.Recorder, root: Path) -> None:
    write_daily_snapshot(root, (NOW - dt.timedelta(days=1)).date(), 60_000)
    # received 3 hours ago, completed 10 minutes ago
    finish(rec, ok=1, took_s=3 * 3600)
    rec.flush()
    assert found(root, "latency")["all"].value == pytest.approx(3 * 3600 * 1000)


def test_latency_per_organisation(rec: vp.Recorder, root: Path) -> None:
    yesterday = (NOW - dt.timedelta(days=1)).date()
    write_daily_snapshot(root, yesterday, 60_000)
    write_daily_snapshot(root, yesterday, 10_000, org="org-a")
    write_daily_snapshot(root, yesterday, 100_000, org="org-b")
    finish(rec, ok=2, took_s=30, org="org-a")  # 3× its own history
    finish(rec, ok=2, took_s=30, org="org-b")
    rec.flush()
    got = found(root, "latency", settings(latency={"per_organization": True}))
    assert set(got) == {"org:org-a"}


# --------------------------------------------------------- queue depth, backlog


def in_flight(rec: vp.Recorder, n: int, *, org: str = "org-a", minutes_ago: float = 5) -> None:
    for i in range(n):
        aid = f"q-{org}-{minutes_ago}-{i}"
        rec.emit("artifact_received", timestamp=ago(minutes_ago), artifact_id=aid, organization_id=org)
        rec.emit(
            "transcription_started", timestamp=ago(minutes_ago - 0.5), artifact_id=aid, organization_id=org
        )


def test_queue_depth(rec: vp.Recorder, root: Path) -> None:
    s = settings(queue_depth={"warning": 3, "per_organization": True})
    assert found(root, "queue_depth", s) == {}
    in_flight(rec, 3)
    finish(rec, ok=5, failed=2)  # finished artifacts are not in the queue
    rec.flush()
    assert found(root, "queue_depth", s) == {}  # 3 is not above 3
    in_flight(rec, 1, org="org-b")
    rec.flush()
    got = found(root, "queue_depth", s)
    assert set(got) == {"all"}  # 4 overall; org-a 3, org-b 1
    assert got["all"].value == 4
    in_flight(rec, 1, org="org-a", minutes_ago=2)
    rec.flush()
    assert set(found(root, "queue_depth", s)) == {"all", "org:org-a"}


def test_disambiguation_backlog(rec: vp.Recorder, root: Path) -> None:
    s = settings(disambiguation_backlog={"warning": 5, "per_organization": True})
    assert found(root, "disambiguation_backlog", s) == {}
    rec.emit(
        "entity_needs_disambiguation", timestamp=ago(60), disambiguation_count=8, organization_id="org-a"
    )
    rec.emit("entity_user_resolved", timestamp=ago(30), disambiguation_count=3, organization_id="org-a")
    rec.flush()
    assert found(root, "disambiguation_backlog", s) == {}  # 5 pending: not above 5
    rec.emit(
        "entity_needs_disambiguation", timestamp=ago(10), disambiguation_count=1, organization_id="org-b"
    )
    rec.flush()
    got = found(root, "disambiguation_backlog", s)
    assert set(got) == {"all"}
    assert got["all"].value == 6


# --------------------------------------------------------------- circuit breaker


def test_circuit_breaker_follows_latest_event(rec: vp.Recorder, root: Path) -> None:
    assert found(root, "circuit_breaker") == {}
    rec.emit("circuit_breaker_opened", timestamp=ago(30), error_message="openai 503s")
    rec.flush()
    got = found(root, "circuit_breaker")
    assert got["all"].severity == "critical"
    assert got["all"].description == "openai 503s"
    rec.emit("circuit_breaker_closed", timestamp=ago(10))
    rec.flush()
    assert found(root, "circuit_breaker") == {}
    # before it closed, it was open
    assert set(found(root, "circuit_breaker", now=ago(20))) == {"all"}


def test_circuit_breaker_per_organisation(rec: vp.Recorder, root: Path) -> None:
    rec.emit("circuit_breaker_opened", timestamp=ago(30), organization_id="org-a")
    rec.emit("circuit_breaker_closed", timestamp=ago(20), organization_id="org-b")
    rec.flush()
    got = found(root, "circuit_breaker", settings(circuit_breaker={"per_organization": True}))
    assert set(got) == {"org:org-a"}  # overall, the latest breaker event is org-b's close


# -------------------------------------------------------------------- inactivity

NY = "America/New_York"  # UTC-5 in early March 2026 (DST starts March 8)


def ny(hour: int, minute: int = 0) -> dt.datetime:
    return (
        dt.datetime(2026, 3, 2, hour + 5, minute, tzinfo=UTC)
        if hour + 5 < 24
        else dt.datetime(2026, 3, 3, hour + 5 - 24, minute, tzinfo=UTC)
    )


def test_inactivity_empty_store_does_not_fire(root: Path) -> None:
    ev = alerts.evaluate(root, Settings(), now=NOW, rules=["inactivity"])
    assert ev.findings == []
    assert "inactivity: no events recorded yet" in ev.notes


def test_inactivity_threshold(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=1, minutes_ago=60)
    rec.flush()
    assert found(root, "inactivity", now=NOW - dt.timedelta(seconds=1)) == {}  # 59:59 of silence
    got = found(root, "inactivity")  # 60 min of silence
    assert got["all"].severity == "warning"
    assert got["all"].summary == "no artifact completed or failed for over 60 min"
    # a failure is also a sign of life
    finish(rec, ok=0, failed=1, minutes_ago=1, prefix="f")
    rec.flush()
    assert found(root, "inactivity") == {}


@pytest.mark.parametrize(
    ("local", "fires"),
    [
        ((5, 59), False),  # before expected hours
        ((6, 30), False),  # expected hours began 30 min ago: not 60 min of silence yet
        ((7, 0), True),  # 60 min into expected hours
        ((12, 0), True),
        ((22, 59), True),
        ((23, 0), False),  # end is exclusive
    ],
)
def test_inactivity_expected_hours(rec: vp.Recorder, root: Path, local: tuple[int, int], fires: bool) -> None:
    finish(rec, ok=1, now=ny(3))  # the last completion, at 02:50 local
    rec.flush()
    s = settings(inactivity={"expected_hours": "06:00-23:00", "timezone": NY})
    ev = alerts.evaluate(root, s, now=ny(*local), rules=["inactivity"])
    assert bool(ev.findings) is fires
    if not fires and local < (6, 0):
        assert any("outside expected hours" in n for n in ev.notes)


@pytest.mark.parametrize(
    ("local", "fires"), [((23, 30), True), ((2, 0), True), ((6, 0), False), ((12, 0), False)]
)
def test_inactivity_expected_hours_across_midnight(
    rec: vp.Recorder, root: Path, local: tuple[int, int], fires: bool
) -> None:
    finish(rec, ok=1, now=ny(8))
    rec.flush()
    s = settings(inactivity={"expected_hours": "22:00-06:00", "timezone": NY})
    assert bool(found(root, "inactivity", s, now=ny(*local))) is fires


def test_expected_period_start_crossing_midnight() -> None:
    start = alerts.expected_period_start(ny(2), "22:00-06:00", NY)
    assert start == ny(-2)  # 22:00 local the evening before = 03:00 UTC
    assert alerts.expected_period_start(ny(7), "22:00-06:00", NY) is None
    assert alerts.expected_period_start(ny(7), "00:00-24:00", NY) is not None


def test_inactivity_per_organisation(rec: vp.Recorder, root: Path) -> None:
    finish(rec, ok=1, org="org-a", minutes_ago=5)
    finish(rec, ok=1, org="org-b", minutes_ago=3 * 60)  # quiet for 3 hours
    finish(rec, ok=1, org="org-c", minutes_ago=9 * 24 * 60)  # gone for 9 days: not expected
    rec.flush()
    got = found(root, "inactivity", settings(inactivity={"per_organization": True}))
    assert set(got) == {"org:org-b"}
    # the silence as long as it is, not the 60-min threshold
    assert (
        got["org:org-b"].summary
        == "no artifact completed or failed for 3 h 00 min (since 2026-03-02 09:00 UTC)"
    )
    assert got["org:org-b"].value == 180.0


# ------------------------------------------------------------------------ budget


def spend(rec: vp.Recorder, usd: float, *, org: str = "org-a", when: dt.datetime | None = None) -> None:
    rec.emit("transcription_completed", timestamp=when or ago(5), ai_cost=usd, organization_id=org)


def test_budget_not_configured(rec: vp.Recorder, root: Path) -> None:
    spend(rec, 1000)
    rec.flush()
    ev = alerts.evaluate(root, Settings(), now=NOW, rules=["budget"])
    assert ev.findings == [] and "budget: no daily budget configured" in ev.notes


@pytest.mark.parametrize(
    ("usd", "severity"), [(7.99, None), (8.0, "warning"), (9.99, "warning"), (10.0, "critical")]
)
def test_budget_overall(rec: vp.Recorder, root: Path, usd: float, severity: str | None) -> None:
    spend(rec, 50, when=dt.datetime(2026, 3, 1, 23, 59, tzinfo=UTC))  # yesterday: not counted
    spend(rec, usd - 1, org="org-a")
    spend(rec, 1, org="org-b")
    rec.flush()
    got = found(root, "budget", settings(budget={"daily_budget_usd": 10}))
    assert (got["all"].severity if got else None) == severity
    assert set(got) <= {"all"}


def test_budget_fires_at_exactly_its_share(rec: vp.Recorder, root: Path) -> None:
    """$2.40 spent against a $3.00 budget is 80% (the warning), although in binary
    3.0 × 0.8 is 2.4000000000000004; $3.00 is 100% (critical)."""
    for i in range(24):
        rec.emit(
            "claims_extracted", timestamp=NOW - dt.timedelta(minutes=5), artifact_id=f"c{i}", ai_cost=0.1
        )
    rec.flush()
    got = found(root, "budget", settings(budget={"daily_budget_usd": 3.0}))
    assert got["all"].severity == "warning"
    for i in range(24, 30):
        rec.emit(
            "claims_extracted", timestamp=NOW - dt.timedelta(minutes=5), artifact_id=f"c{i}", ai_cost=0.1
        )
    rec.flush()
    assert found(root, "budget", settings(budget={"daily_budget_usd": 3.0}))["all"].severity == "critical"


def test_budget_per_organisation(rec: vp.Recorder, root: Path) -> None:
    spend(rec, 4.0, org="org-a")  # 80% of its 5
    spend(rec, 6.0, org="org-b")  # over its 5
    spend(rec, 1.0, org="org-c")  # no budget of its own
    rec.flush()
    s = settings(budget={"daily_budget_usd": 100, "organizations": {"org-a": 5, "org-b": 5, "org-d": 1}})
    got = found(root, "budget", s)
    assert {k: v.severity for k, v in got.items()} == {"org:org-a": "warning", "org:org-b": "critical"}
    assert got["org:org-b"].value == pytest.approx(6.0)


# ------------------------------------------------------------------------- stuck


def test_stuck_artifacts(rec: vp.Recorder, root: Path) -> None:
    s = settings(stuck={"minutes": 30, "per_organization": True})
    in_flight(rec, 1, org="org-a", minutes_ago=29)
    finish(rec, ok=1, minutes_ago=1, took_s=3 * 3600)  # slow but finished
    rec.flush()
    assert found(root, "stuck", s) == {}
    in_flight(rec, 2, org="org-b", minutes_ago=31)
    rec.flush()
    got = found(root, "stuck", s)
    assert set(got) == {"all", "org:org-b"}
    assert got["all"].value == 2
    assert "q-org-b-31-0" in got["all"].description


# ------------------------------------------------------------------------- misc


def test_disabled_rules_are_not_evaluated(rec: vp.Recorder, root: Path) -> None:
    rec.emit("circuit_breaker_opened", timestamp=ago(1))
    rec.flush()
    ev = alerts.evaluate(root, settings(circuit_breaker={"enabled": False}), now=NOW)
    assert "circuit_breaker" not in ev.evaluated
    assert [f for f in ev.findings if f.rule == "circuit_breaker"] == []
    assert set(ev.evaluated) == set(alerts.RULES) - {"circuit_breaker"}


def test_naive_now_is_refused(root: Path) -> None:
    with pytest.raises(vp.VoicepipeError, match="timezone-aware"):
        alerts.evaluate(root, now=dt.datetime(2026, 1, 1))


def test_latency_with_history_built_by_aggregate(rec: vp.Recorder, root: Path) -> None:
    from voicepipe_obs import aggregate

    for d in range(1, 4):  # three days of 40 s artifacts
        finish(rec, ok=3, took_s=40, minutes_ago=d * 24 * 60, prefix=f"h{d}")
    rec.flush()
    aggregate.aggregate(root, now=NOW)
    finish(rec, ok=2, took_s=90, minutes_ago=3, prefix="now")  # 2.25× the history
    rec.flush()
    got = found(root, "latency")
    assert got["all"].threshold == pytest.approx(80_000)
    assert got["all"].value == pytest.approx(90_000)
