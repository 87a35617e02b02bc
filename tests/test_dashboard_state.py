"""The dashboard's and the pipeline report's view of state that only the whole
event history decides — artifacts stuck in flight for days, read from the artifact
index (or from the events of hours it does not cover) — the artifacts' pending
reviews, and the dashboard cards counting artifacts rather than events. Real Parquet
roots written by a Recorder with explicit timestamps, a frozen clock, real DuckDB;
expected figures are worked out by hand from the events written here and checked
against alerts.py and the SQL views."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voicepipe_obs as vp
from voicepipe_obs import aggregate, alerts, artifact_index, reports
from voicepipe_obs.cli import main
from voicepipe_obs.config import Settings
from voicepipe_obs.query import vetted_files

UTC = dt.timezone.utc
#: Saturday 2026-11-28 12:00 UTC; the dashboard's window starts on the 27th.
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


@pytest.fixture
def recorder(root: Path) -> Iterator[vp.Recorder]:
    rec = vp.Recorder(root, strict=True, flush_interval=60, recover=False)
    yield rec
    rec.close()


def received(rec: vp.Recorder, aid: str, ts: dt.datetime, org: str = "org-a") -> dict[str, Any]:
    ctx = {"artifact_id": aid, "organization_id": org, "coach_user_id": f"coach-{aid}"}
    rec.emit("artifact_received", timestamp=ts, source_channel="whatsapp", **ctx)
    return ctx


def stage(
    rec: vp.Recorder, ctx: dict[str, Any], name: str, start: dt.datetime, *, ok: bool = True, **fields: Any
) -> dt.datetime:
    """<stage>_started, then (one second later) its completion or failure event
    (entity resolution with pending reviews completes as entity_needs_disambiguation)."""
    from voicepipe_obs.events import DISAMBIGUATION_EVENT, STAGE_EVENTS

    started, done, failed = STAGE_EVENTS[name]
    if name == "entity_resolution" and fields.get("disambiguation_count"):
        done = DISAMBIGUATION_EVENT
    end = start + dt.timedelta(seconds=1)
    rec.emit(started, timestamp=start, **ctx)
    rec.emit(done if ok else failed, timestamp=end, duration_ms=1000.0, **ctx, **fields)
    return end


def cli_json(runner: Any, root: Path, *args: str) -> Any:
    result = runner.invoke(
        main, ["--data", str(root), "report", "--now", NOW.isoformat(), *args, "--format", "json"]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def cli_table(runner: Any, root: Path, *args: str) -> str:
    result = runner.invoke(main, ["--data", str(root), "report", "--now", NOW.isoformat(), *args, "--utc"])
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


# ------------------------------------------------------------ stuck artifacts


#: artifact → the stage queue it waits in at NOW (hand-derived from `history`)
IN_FLIGHT = {
    "stuck-1": "transcription",  # received 3 days ago, transcription started, never finished
    "stuck-2": "claims_extraction",  # a week ago, stalled in claims extraction
    "retrying-1": "transcription",  # failed 8 days ago, a retry started 6 days ago never ended
    "live-1": "ingestion",  # received two minutes ago
}


def history(rec: vp.Recorder) -> None:
    """Artifacts in flight for days next to finished ones."""
    c = received(rec, "stuck-1", at(25, 12))
    rec.emit("transcription_started", timestamp=at(25, 12, 0, 1), **c)

    c = received(rec, "stuck-2", at(21, 8))
    t = stage(rec, c, "transcription", at(21, 8, 0, 1))
    rec.emit("claims_extraction_started", timestamp=t + dt.timedelta(seconds=1), **c)

    c = received(rec, "retrying-1", at(20, 10))
    stage(rec, c, "transcription", at(20, 10, 0, 1), ok=False, error_code="WhisperError")
    rec.emit("artifact_failed", timestamp=at(20, 10, 0, 3), error_code="WhisperError", **c)
    rec.emit("retry_initiated", timestamp=at(22, 9), pipeline_stage="transcription", retry_attempt=1, **c)
    rec.emit("transcription_started", timestamp=at(22, 9, 0, 1), retry_attempt=1, **c)

    c = received(rec, "live-1", at(28, 11, 58))

    # finished: today, long ago, and one whose only recent event is a late review
    c = received(rec, "done-1", at(28, 9))
    t = stage(rec, c, "transcription", at(28, 9, 0, 1))
    rec.emit("artifact_completed", timestamp=t, **c)
    c = received(rec, "old-done", at(15, 10))
    t = stage(rec, c, "transcription", at(15, 10, 0, 1))
    rec.emit("artifact_completed", timestamp=at(26, 10), **c)  # finished 11 days after it came in
    c = received(rec, "late-review", at(24, 10))
    stage(rec, c, "entity_resolution", at(24, 10, 0, 1), entity_count=2, disambiguation_count=1)
    rec.emit("artifact_completed", timestamp=at(24, 10, 1), **c)
    rec.emit("entity_user_resolved", timestamp=at(28, 10), disambiguation_count=1, **c)

    rec.flush()


@pytest.fixture
def stuck(root: Path, recorder: vp.Recorder) -> Path:
    history(recorder)
    return root


def test_active_artifacts_and_queues_include_artifacts_stuck_for_days(stuck: Path, runner: Any) -> None:
    d = reports.dashboard(stuck, now=NOW)
    assert d["cards"]["active_artifacts"] == len(IN_FLIGHT) == 4
    want = {s: sum(1 for v in IN_FLIGHT.values() if v == s) for s in ("ingestion", *reports.TIMED_STAGES)}
    assert {s["stage"]: s["queue_depth"] for s in d["stages"]} == want

    # the same set as the artifacts view over every event, and as alerts.py's rules
    with vp.connect(stuck) as con:
        rows = con.execute(
            "SELECT artifact_id FROM artifacts WHERE status NOT IN ('completed', 'failed') AND received_at <= ?",
            [NOW],
        ).fetchall()
    assert {r[0] for r in rows} == set(IN_FLIGHT)
    s = Settings.model_validate({"alerts": {"queue_depth": {"warning": 0}}})
    ev = alerts.evaluate(stuck, s, now=NOW, rules=["queue_depth", "stuck"])
    by_rule = {f.rule: f for f in ev.findings}
    assert by_rule["queue_depth"].value == d["cards"]["active_artifacts"]
    assert by_rule["stuck"].value == 3  # live-1 is two minutes old
    assert "retrying-1, stuck-2, stuck-1" in by_rule["stuck"].description

    data = cli_json(runner, stuck, "dashboard")
    assert data["cards"]["active_artifacts"] == 4
    assert [s["queue_depth"] for s in data["stages"]] == [1, 2, 1, 0, 0]


def test_pipeline_lists_artifacts_stuck_at_a_stage_for_days(stuck: Path, runner: Any) -> None:
    p = reports.pipeline(stuck, now=NOW)
    got = {r["artifact_id"]: s["stage"] for s in p["stages"] for r in s["in_progress"]}
    assert got == {a: st for a, st in IN_FLIGHT.items() if st != "ingestion"}
    by = {s["stage"]: s for s in p["stages"]}
    rows = by["transcription"]["in_progress"]
    assert [(r["artifact_id"], r["status"]) for r in rows] == [
        ("retrying-1", "retrying"),
        ("stuck-1", "transcribing"),
    ]
    assert rows[1]["elapsed_ms"] == (NOW - at(25, 12, 0, 1)).total_seconds() * 1000
    assert (rows[1]["coach_user_id"], rows[1]["organization_id"], rows[1]["source_channel"]) == (
        "coach-stuck-1",
        "org-a",
        "whatsapp",
    )

    data = cli_json(runner, stuck, "pipeline", "--stage", "claims_extraction")
    assert [r["artifact_id"] for r in data["stages"][0]["in_progress"]] == ["stuck-2"]
    text = cli_table(runner, stuck, "pipeline", "--stage", "transcription")
    assert "At this stage now (2):" in text and "stuck-1" in text and "retrying-1" in text


def test_pipeline_lists_the_longest_stuck_and_latest_failed_and_counts_them_all(
    root: Path, recorder: vp.Recorder, runner: Any
) -> None:
    """A stalled stage holds tens of thousands of artifacts: each list shows the
    first --limit (the longest in the stage, the latest failures) and says how many
    there are; --limit 0 lists them all; JSON and CSV carry the whole counts."""
    for i in range(5):  # stuck in claims extraction since ~10:0i; failed in transcription at 11:0i
        ctx = received(recorder, f"stuck-{i}", at(28, 10, i))
        t = stage(recorder, ctx, "transcription", at(28, 10, i))
        recorder.emit("claims_extraction_started", timestamp=t + dt.timedelta(seconds=1), **ctx)
        ctx = received(recorder, f"failed-{i}", at(28, 11, i))
        stage(recorder, ctx, "transcription", at(28, 11, i), ok=False, error_code="Timeout")
        recorder.emit("artifact_failed", timestamp=at(28, 11, i, 2), error_code="Timeout", **ctx)
    recorder.flush()

    p = reports.pipeline(root, now=NOW, stage="claims_extraction", limit=2)
    [s] = p["stages"]
    assert [r["artifact_id"] for r in s["in_progress"]] == ["stuck-0", "stuck-1"]
    assert s["in_progress_total"] == 5 and not any("_total" in r for r in s["in_progress"])
    p = reports.pipeline(root, now=NOW, stage="transcription", limit=2)
    [s] = p["stages"]
    assert [r["artifact_id"] for r in s["retry_queue"]] == ["failed-4", "failed-3"]
    assert s["retry_queue_total"] == 5 and (s["in_progress"], s["in_progress_total"]) == ([], 0)
    everything = reports.pipeline(root, now=NOW, stage="transcription", limit=None)["stages"][0]
    assert [r["artifact_id"] for r in everything["retry_queue"]] == [f"failed-{i}" for i in range(4, -1, -1)]
    with pytest.raises(reports.UsageError, match="limit must be at least 1"):
        reports.pipeline(root, now=NOW, limit=0)

    text = cli_table(runner, root, "pipeline", "--limit", "3")
    assert "At this stage now (5; the longest 3 shown, --limit N shows more):" in text
    assert "Retry queue (5 failed here; the latest 3 shown, --limit N shows more):" in text
    assert "stuck-2" in text and "stuck-3" not in text and "failed-2" in text and "failed-1" not in text
    text = cli_table(runner, root, "pipeline", "--limit", "0")
    assert "At this stage now (5):" in text and "Retry queue (5 failed here):" in text
    assert all(f"stuck-{i}" in text and f"failed-{i}" in text for i in range(5))
    data = cli_json(runner, root, "pipeline", "--stage", "transcription", "--limit", "1")
    assert (len(data["stages"][0]["retry_queue"]), data["stages"][0]["retry_queue_total"]) == (1, 5)
    result = runner.invoke(
        main,
        [
            "--data",
            str(root),
            "report",
            "--now",
            NOW.isoformat(),
            "pipeline",
            "--limit",
            "1",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.stderr
    rows = {line.split(",")[0]: line for line in result.stdout.splitlines()}
    header = rows["stage"].split(",")
    for name, want in (("claims_extraction", "5"), ("transcription", "5")):
        cells = dict(zip(header, rows[name].split(","), strict=True))
        assert cells["in_progress" if name == "claims_extraction" else "retry_queue"] == want


def test_in_flight_figures_ignore_duplicated_files(stuck: Path) -> None:
    """Spool recovery or a hand copy can write events twice: nothing changes."""
    before = reports.dashboard(stuck, now=NOW)
    for f in list((stuck / "events").rglob("*.parquet")):
        shutil.copy(f, f.with_name("dup-" + f.name))
    after = reports.dashboard(stuck, now=NOW)
    assert after["cards"] == before["cards"] and after["stages"] == before["stages"]


def test_many_files_between_a_stuck_artifact_and_now(root: Path, recorder: vp.Recorder) -> None:
    """One file per hour for ten days; the stuck artifact's files are found among them."""
    stuck_ctx: dict[str, Any] = {}
    for h in range(240):
        ts = at(18, 0) + dt.timedelta(hours=h, minutes=5)
        c = received(recorder, f"f-{h}", ts)
        recorder.emit("artifact_completed", timestamp=ts + dt.timedelta(seconds=30), **c)
        if h == 7:
            stuck_ctx = received(recorder, "stuck-x", ts + dt.timedelta(minutes=1))
            stage(recorder, stuck_ctx, "transcription", ts + dt.timedelta(minutes=2))
        if h == 8:  # the stuck artifact's next step, an hour later
            recorder.emit("claims_extraction_started", timestamp=ts, **stuck_ctx)
        recorder.flush()
    p = reports.pipeline(root, now=NOW, stage="claims_extraction")
    assert [r["artifact_id"] for r in p["stages"][0]["in_progress"]] == ["stuck-x"]
    assert p["stages"][0]["in_progress"][0]["entered_at"] == at(18, 8, 5)
    assert reports.dashboard(root, now=NOW)["cards"]["active_artifacts"] == 1


def test_stuck_artifacts_from_the_index_and_from_newer_files(stuck: Path) -> None:
    """Once aggregate has indexed the store the figures come from the artifact index;
    files written after it (an hour it indexed, and a new one) are read from their
    events: the figures follow them."""
    before = reports.dashboard(stuck, now=NOW)
    before_p = reports.pipeline(stuck, now=NOW)
    aggregate.aggregate(stuck, now=NOW)
    manifest = artifact_index.Manifest.load(stuck)
    assert manifest.hours  # the index covers the store's hours now
    with vp.connect(stuck) as con:
        assert artifact_index.open_artifacts_table(con, stuck, vetted_files(stuck), "t") == 0
    after = reports.dashboard(stuck, now=NOW)
    assert after["cards"] == before["cards"] and after["stages"] == before["stages"]
    assert reports.pipeline(stuck, now=NOW)["stages"] == before_p["stages"]

    with vp.Recorder(stuck, strict=True, recover=False) as rec:
        c = {"artifact_id": "stuck-1", "organization_id": "org-a", "coach_user_id": "coach-stuck-1"}
        # stuck-1 finishes (a new file in an hour the index covers: 11:00 holds live-1)
        rec.emit("transcription_completed", timestamp=at(28, 11, 30), duration_ms=1.0, **c)
        rec.emit("artifact_completed", timestamp=at(28, 11, 31), **c)
        # stuck-2 moves on (a new hour)
        c = {"artifact_id": "stuck-2", "organization_id": "org-a", "coach_user_id": "coach-stuck-2"}
        rec.emit("claims_extracted", timestamp=at(28, 10, 15), duration_ms=1.0, claim_count=1, **c)
        rec.emit("entity_resolution_started", timestamp=at(28, 10, 16), **c)
    d = reports.dashboard(stuck, now=NOW)
    assert d["cards"]["active_artifacts"] == 3
    assert {s["stage"]: s["queue_depth"] for s in d["stages"]} == {
        "ingestion": 1,
        "transcription": 1,
        "claims_extraction": 0,
        "entity_resolution": 1,
        "draft_generation": 0,
    }
    p = reports.pipeline(stuck, now=NOW, stage="entity_resolution")
    assert [(r["artifact_id"], r["entered_at"]) for r in p["stages"][0]["in_progress"]] == [
        ("stuck-2", at(28, 10, 16))
    ]
    ev = alerts.evaluate(stuck, Settings(), now=NOW, rules=["stuck"])
    assert [f.value for f in ev.findings] == [2]  # retrying-1 and stuck-2


@pytest.mark.parametrize("indexed", [False, True])
def test_open_artifacts_table_keeps_the_partial_rows_it_read(stuck: Path, indexed: bool) -> None:
    """keep_partials (the dashboard's receipts and open artifacts from one read): the
    kept table is the partial rows, as partials() gives them, of the candidates and
    of the artifacts ``include`` names; the open artifacts are the same as without it."""
    import duckdb

    if indexed:
        aggregate.aggregate(stuck, now=NOW)
    files = vetted_files(stuck)
    con = duckdb.connect()
    artifact_index.partials(con, stuck, files, "want", artifact_index.STATUS_FOLD)
    con.execute("CREATE TABLE every AS SELECT DISTINCT artifact_id FROM want")
    artifact_index.open_artifacts_table(con, stuck, files, "plain")
    artifact_index.open_artifacts_table(con, stuck, files, "kept_open", keep_partials="kept", include="every")
    artifact_index.open_artifacts_table(con, stuck, files, "cand_open", keep_partials="cand")
    con.execute(
        "CREATE TABLE want_cand AS SELECT * FROM want WHERE artifact_id IN "
        f"(SELECT artifact_id FROM want WHERE NOT ({artifact_index._SETTLED}))"
    )
    pairs = [("kept", "want"), ("plain", "kept_open"), ("plain", "cand_open"), ("cand", "want_cand")]
    for a, b in pairs + [(b, a) for a, b in pairs]:
        assert con.execute(f"SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})").fetchone() == (0,)
    assert con.execute("SELECT count(DISTINCT artifact_id) FROM kept").fetchone() == (7,)
    assert {r[0] for r in con.execute("SELECT artifact_id FROM kept_open").fetchall()} == set(IN_FLIGHT)
    assert con.execute("SELECT count(DISTINCT artifact_id) FROM cand").fetchone()[0] < 7  # type: ignore[index]


def test_the_dashboard_does_not_count_the_whole_event_log(stuck: Path, monkeypatch: Any) -> None:
    """The latest events are the first page of the log; the dashboard shows no total,
    so it does not count every event (a pass over every event file: ~5 s of its
    ~7 s on 10 million events)."""

    def counted(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the dashboard counted every event")

    monkeypatch.setattr(reports, "count_events", counted)
    d = reports.dashboard(stuck, now=NOW)
    assert len(d["recent_events"]) == 20  # more events than that: a page of the log
    assert reports.events(stuck, now=NOW, limit=20, count=False)["rows"] == d["recent_events"]


# ------------------------------------------------------------ pending reviews


#: artifact → (entities, flagged for review, resolved by reviewers); None: entity
#: resolution has not run yet
REVIEWS: dict[str, tuple[int, int, int] | None] = {
    "rev-1": (4, 2, 2),  # flagged 2, both resolved
    "rev-2": (5, 3, 1),  # 2 still pending
    "rev-3": (2, 1, 2),  # resolved more than flagged (two reviewers): none pending, not -1
    "rev-4": (3, 0, 0),  # auto-resolved
    "rev-5": None,
}


def pending(aid: str) -> int | None:
    spec = REVIEWS[aid]
    return None if spec is None else max(spec[1] - spec[2], 0)


@pytest.fixture
def reviewed(root: Path, recorder: vp.Recorder) -> Path:
    for i, (aid, spec) in enumerate(REVIEWS.items()):
        c = received(recorder, aid, at(28, 8, i))
        if spec is None:
            continue
        entities, flagged, resolved = spec
        t = stage(
            recorder,
            c,
            "entity_resolution",
            at(28, 8, i, 5),
            entity_count=entities,
            disambiguation_count=flagged,
        )
        recorder.emit("artifact_completed", timestamp=t, **c)
        # reviewers resolve one entity at a time, later
        for k in range(resolved):
            recorder.emit("entity_user_resolved", timestamp=at(28, 10, i, k), disambiguation_count=1, **c)
    recorder.flush()
    return root


def test_needs_review_is_flagged_minus_resolved_per_artifact(reviewed: Path, runner: Any) -> None:
    d = reports.artifact_detail(reviewed, "rev-1", now=NOW)["artifact"]
    assert (d["entity_count"], d["disambiguation_count"]) == (4, 0)
    assert "entities 4 (needs review 0)" in cli_table(runner, reviewed, "artifact", "rev-1")
    assert "entities 5 (needs review 2)" in cli_table(runner, reviewed, "artifact", "rev-2")
    assert {
        a: reports.artifact_detail(reviewed, a, now=NOW)["artifact"]["disambiguation_count"] for a in REVIEWS
    } == {a: pending(a) for a in REVIEWS}

    grid = reports.artifacts(reviewed, now=NOW, since=at(28, 0))["rows"]
    assert {r["artifact_id"]: r["disambiguation_count"] for r in grid} == {a: pending(a) for a in REVIEWS}
    rows = cli_json(runner, reviewed, "artifacts", "--since", "2026-11-28")["rows"]
    assert {r["artifact_id"]: r["disambiguation_count"] for r in rows} == {a: pending(a) for a in REVIEWS}
    expanded = cli_table(runner, reviewed, "artifacts", "--since", "2026-11-28", "--expanded")
    assert "entities 4 (needs review 0)" in expanded and "entities 5 (needs review 2)" in expanded

    with vp.connect(reviewed) as con:
        view = dict(con.execute("SELECT artifact_id, disambiguation_count FROM artifacts").fetchall())
    assert view == {a: pending(a) for a in REVIEWS}


def test_pending_reviews_add_up_to_the_disambiguation_backlog(reviewed: Path) -> None:
    """DESIGN §6: backlog = Σ flagged − Σ resolved. Per artifact the same difference
    (floored at 0, which only rev-3's extra resolution hits)."""
    flagged = sum(s[1] for s in REVIEWS.values() if s)
    resolved = sum(s[2] for s in REVIEWS.values() if s)
    backlog = reports.disambiguation_backlog(reviewed, now=NOW)
    assert backlog == flagged - resolved == 1
    with vp.connect(reviewed) as con:
        total = con.execute("SELECT sum(disambiguation_count) FROM artifacts").fetchone()
    overshoot = sum(max(s[2] - s[1], 0) for s in REVIEWS.values() if s)
    assert total is not None and total[0] == backlog + overshoot == 2


# --------------------------------------------------------- cards count artifacts


@pytest.fixture
def outcomes(root: Path, recorder: vp.Recorder) -> Path:
    """Today: fail-4x failed and three retries failed again; fail-then-ok failed
    and a retry completed it; ok-1 completed; old-retry-ok (received five days ago)
    was retried and completed. Yesterday morning: y-1 completed (its completion
    recorded twice), y-2 failed then completed."""
    rec = recorder

    def fail(c: dict[str, Any], ts: dt.datetime, attempt: int | None = None) -> None:
        extra = {} if attempt is None else {"retry_attempt": attempt}
        if attempt is not None:
            rec.emit("retry_initiated", timestamp=ts, pipeline_stage="transcription", **c, **extra)
        stage(
            rec,
            c,
            "transcription",
            ts + dt.timedelta(seconds=1),
            ok=False,
            error_code="WhisperError",
            **extra,
        )
        if attempt is not None:
            rec.emit("retry_failed", timestamp=ts + dt.timedelta(seconds=3), **c, **extra)
        rec.emit(
            "artifact_failed", timestamp=ts + dt.timedelta(seconds=4), error_code="WhisperError", **c, **extra
        )

    def complete(c: dict[str, Any], ts: dt.datetime, attempt: int | None = None) -> None:
        extra = {} if attempt is None else {"retry_attempt": attempt}
        if attempt is not None:
            rec.emit("retry_initiated", timestamp=ts, pipeline_stage="transcription", **c, **extra)
        stage(rec, c, "transcription", ts + dt.timedelta(seconds=1), **extra)
        rec.emit("artifact_completed", timestamp=ts + dt.timedelta(seconds=30), **c, **extra)

    c = received(rec, "fail-4x", at(28, 8))
    fail(c, at(28, 8, 0, 1))
    for attempt, hh in ((1, 9), (2, 10), (3, 11)):
        fail(c, at(28, hh), attempt)
    c = received(rec, "fail-then-ok", at(28, 7))
    fail(c, at(28, 7, 0, 1))
    complete(c, at(28, 8), 1)
    c = received(rec, "ok-1", at(28, 9))
    complete(c, at(28, 9, 0, 1))
    c = received(rec, "old-retry-ok", at(23, 10))
    fail(c, at(23, 10, 0, 1))
    complete(c, at(28, 10, 30), 1)

    c = received(rec, "y-1", at(27, 8))
    complete(c, at(27, 8, 0, 1))
    rec.emit("artifact_completed", timestamp=at(27, 8, 5), **c)  # recorded twice
    c = received(rec, "y-2", at(27, 10))
    fail(c, at(27, 10, 0, 1))
    complete(c, at(27, 10, 30), 1)
    rec.flush()
    return root


def test_cards_count_a_requeued_artifact_by_its_latest_attempt(root: Path, rec: vp.Recorder) -> None:
    """Failed, queued for a retry (attempt 1) taken for lost, re-queued with --force
    (attempt 2), which completed; then the lost job turned up and failed. Today it
    is one completion, by the latest attempt — not a failure by the stale job."""
    common: dict[str, Any] = {"artifact_id": "requeued", "organization_id": "org-a"}
    rec.emit("artifact_received", timestamp=at(28, 8), **common)
    rec.emit("artifact_failed", timestamp=at(28, 8, 1), **common)
    rec.emit("retry_initiated", timestamp=at(28, 8, 2), retry_attempt=1, **common)
    rec.emit("retry_initiated", timestamp=at(28, 9), retry_attempt=2, **common)
    rec.emit("artifact_completed", timestamp=at(28, 9, 5), retry_attempt=2, **common)
    rec.emit("artifact_failed", timestamp=at(28, 10), retry_attempt=1, **common)
    rec.flush()
    cards = reports.dashboard(root, now=NOW)["cards"]
    assert (cards["completed_today"], cards["failed_today"]) == (1, 0)
    assert cards["avg_end_to_end_latency_ms_today"] == pytest.approx(65 * 60 * 1000)


@pytest.mark.parametrize("indexed", [False, True], ids=["events", "index"])
def test_a_stale_failure_today_after_a_completion_yesterday_is_no_failure_today(
    root: Path, rec: vp.Recorder, indexed: bool
) -> None:
    """Attempt 2 completed yesterday; the lost attempt 1 turns up today and fails.
    The artifact is completed: today has no failure (nor completion) of it, as the
    failure-rate alert counts. Yesterday-at-this-time keeps its completion."""
    common: dict[str, Any] = {"artifact_id": "requeued", "organization_id": "org-a"}
    rec.emit("artifact_received", timestamp=at(27, 8), **common)
    rec.emit("artifact_failed", timestamp=at(27, 8, 1), **common)
    rec.emit("retry_initiated", timestamp=at(27, 8, 2), retry_attempt=1, **common)
    rec.emit("retry_initiated", timestamp=at(27, 9), retry_attempt=2, **common)
    rec.emit("artifact_completed", timestamp=at(27, 9, 5), retry_attempt=2, **common)
    rec.emit("artifact_failed", timestamp=at(28, 10), retry_attempt=1, **common)
    other: dict[str, Any] = {"artifact_id": "plain", "organization_id": "org-a"}
    rec.emit("artifact_received", timestamp=at(28, 9), **other)
    rec.emit("artifact_failed", timestamp=at(28, 9, 30), **other)
    rec.flush()
    if indexed:
        aggregate.aggregate(root, now=NOW)
        assert artifact_index.Manifest.load(root).hours

    cards = reports.dashboard(root, now=NOW)["cards"]

    assert (cards["completed_today"], cards["failed_today"]) == (0, 1)  # "plain" only
    assert cards["completed_yesterday_same_time"] == 1


def test_cards_count_each_artifact_once_by_its_latest_outcome(outcomes: Path, runner: Any) -> None:
    cards = reports.dashboard(outcomes, now=NOW)["cards"]
    # completed today: fail-then-ok, ok-1, old-retry-ok; failed today: fail-4x (once)
    assert (cards["completed_today"], cards["failed_today"]) == (3, 1)
    assert cards["failure_rate_today"] == pytest.approx(1 / 4)
    assert cards["completed_yesterday_same_time"] == 2  # y-1 (twice recorded) and y-2
    assert cards["completed_change"] == pytest.approx((3 - 2) / 2)
    # end to end from each artifact's earliest receipt, however old
    latencies_s = [
        (at(28, 8, 0, 30) - at(28, 7)).total_seconds(),
        (at(28, 9, 0, 31) - at(28, 9)).total_seconds(),
        (at(28, 10, 30, 30) - at(23, 10)).total_seconds(),
    ]
    assert cards["avg_end_to_end_latency_ms_today"] == pytest.approx(sum(latencies_s) / 3 * 1000)

    text = cli_table(runner, outcomes, "dashboard")
    assert "failure rate 25.0%" in text and "vs 2 by now yesterday" in text
    data = cli_json(runner, outcomes, "dashboard")
    assert (data["cards"]["completed_today"], data["cards"]["failed_today"]) == (3, 1)

    # the receipt five days old comes from the artifact index once aggregate built it
    aggregate.aggregate(outcomes, now=NOW)
    assert artifact_index.Manifest.load(outcomes).hours
    assert reports.dashboard(outcomes, now=NOW)["cards"] == cards


def test_snapshot_metrics_still_count_events(outcomes: Path) -> None:
    """DESIGN §6's artifacts_completed / artifacts_failed stay counts of events."""
    row = aggregate.window_metrics(outcomes, at(28, 0), NOW)[0]
    assert (row["artifacts_completed"], row["artifacts_failed"]) == (3, 5)


def test_a_missing_artifact_index_is_named_once_until_aggregate_builds_it(
    root: Path, recorder: vp.Recorder, runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store never aggregated is read in full (right, but slow on a big store):
    the dashboard says so once on stderr, naming the command that fixes it, and
    stdout stays clean; once `aggregate` has built the index, no word. (How slow is
    slow is set to nothing here: this store is read in well under a second, and a
    store that small is not told, see test_a_small_store_is_not_told.)"""
    monkeypatch.setattr(artifact_index, "HINT_SECONDS", 0.0)
    for h in range(60):
        received(recorder, f"a{h}", NOW - dt.timedelta(hours=h, minutes=30))
    recorder.flush()

    def dashboard() -> list[str]:
        result = runner.invoke(
            main, ["--data", str(root), "report", "--now", NOW.isoformat(), "dashboard", "--format", "json"]
        )
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["cards"]["active_artifacts"] == 60
        return [line for line in result.stderr.splitlines() if "artifact index" in line]

    (line,) = dashboard()
    assert line.startswith("voicepipe: warning: the artifact index lacks 60 hours of events under ")
    assert "`voicepipe aggregate`" in line
    assert dashboard() == []  # once per process
    artifact_index._hinted.clear()
    aggregate.aggregate(root, now=NOW)
    assert dashboard() == []


def test_a_small_store_is_not_told(root: Path, recorder: vp.Recorder, runner: Any) -> None:
    """The demo's week without an index is read in a second: no warning."""
    for h in range(60):
        received(recorder, f"a{h}", NOW - dt.timedelta(hours=h, minutes=30))
    recorder.flush()
    result = runner.invoke(main, ["--data", str(root), "report", "--now", NOW.isoformat(), "dashboard"])
    assert result.exit_code == 0 and "artifact index" not in result.stderr
