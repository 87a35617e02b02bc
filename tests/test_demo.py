"""`voicepipe demo` and the example pipeline: the store the demo leaves (read through
the views and with plain DuckDB/pandas), refusing and resetting a used root, the
simulated clock, the failure markers and the registered retry handlers."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from conftest import small_tmpfs
from voicepipe_obs._examples import voice_pipeline as vpl
from voicepipe_obs.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
STAGES = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")
CLEAN_ENV = {"VOICEPIPE_DATA": None, "VOICEPIPE_CONFIG": None, "NO_COLOR": "1"}


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def _demo(root: Path, *args: str) -> Any:
    return _runner().invoke(main, ["--data", str(root), "demo", *args], env=CLEAN_ENV)


def _rows(root: Path, sql: str, params: list[Any] | None = None) -> list[Any]:
    con = vp.connect(root)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _scalar(root: Path, sql: str, params: list[Any] | None = None) -> Any:
    return _rows(root, sql, params)[0][0]


@dataclass
class Demo:
    """A demo store with one DuckDB connection over its views."""

    root: Path
    summary: dict[str, Any]
    con: Any

    def rows(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        return self.con.execute(sql, params or []).fetchall()  # type: ignore[no-any-return]

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        return self.rows(sql, params)[0][0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One default-sized `voicepipe demo` (7 days, JSON summary), shared by the store tests."""
    base = tmp_path_factory.mktemp("demo")
    root = base / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = _demo(root, "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stderr == ""
    con = vp.connect(root)
    yield Demo(root, json.loads(result.stdout), con)
    con.close()


# ------------------------------------------------------------------- the demo store


def test_demo_summary_matches_the_store(demo: Demo) -> None:
    root, summary = demo.root, demo.summary
    assert summary["events"] == demo.scalar("SELECT count(*) FROM events")
    assert summary["artifacts"] == demo.scalar("SELECT count(*) FROM artifacts")
    assert summary["failed"] == demo.scalar("SELECT count(*) FROM artifacts WHERE status = 'failed'")
    assert summary["in_flight"] == 2
    assert len(summary["organizations"]) == 6
    assert summary["seconds"] < 60
    # the commands to try next point at a real failed artifact
    failed = summary["example_failed"]
    assert demo.scalar("SELECT status FROM artifacts WHERE artifact_id = ?", [failed]) == "failed"
    commands = [c for c, _ in summary["commands"]]
    assert f"voicepipe --data {root} retry {failed} --app voicepipe_obs._examples.voice_pipeline" in commands
    assert any(c.endswith("report metrics --range 7d") for c in commands)
    assert (root / "_state" / "demo.json").is_file()


def test_demo_covers_seven_days_and_six_orgs(demo: Demo) -> None:
    first, last = demo.rows("SELECT min(timestamp), max(timestamp) FROM events")[0]
    now = dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=6.5) < last - first < dt.timedelta(days=7.1)
    assert now - last < dt.timedelta(minutes=10)  # the live artifacts are from now
    assert last <= now + dt.timedelta(seconds=5)  # nothing in the future
    days = demo.scalar("SELECT count(DISTINCT timestamp::DATE) FROM events")
    assert days >= 7
    per_org = dict(demo.rows("SELECT organization_id, count(*) FROM artifacts GROUP BY 1"))
    assert len(per_org) == 6 and None not in per_org
    assert min(per_org.values()) >= 20
    channels = {r[0] for r in demo.rows("SELECT DISTINCT source_channel FROM artifacts")}
    assert channels == {"whatsapp", "app"}
    coaches = demo.scalar("SELECT count(DISTINCT coach_user_id) FROM artifacts")
    assert coaches >= 12


def test_demo_failures_are_spread_over_stages(demo: Demo) -> None:
    total, failed = demo.rows(
        "SELECT count(*), count(*) FILTER (WHERE status = 'failed') FROM artifacts WHERE status IN ('completed', 'failed')"
    )[0]
    assert 0.02 <= failed / total <= 0.10
    rows = demo.rows(
        "SELECT failed_stage, error_code, error_message FROM artifacts WHERE status = 'failed'",
    )
    assert all(stage in STAGES and code and message for stage, code, message in rows)
    assert {r[0] for r in rows} == set(STAGES)
    codes = {r[1] for r in rows}
    assert {"TimeoutError", "RateLimitError", "CircuitOpenError"} <= codes
    assert len(codes) >= 5
    # every failed artifact has a stage failure event with a duration, and vice versa
    stage_failures = demo.scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('transcription_failed', "
        "'claims_extraction_failed', 'entity_resolution_failed', 'draft_generation_failed') "
        "AND duration_ms IS NOT NULL AND error_code IS NOT NULL",
    )
    assert stage_failures == failed


def test_demo_latency_cost_and_quality_are_realistic(demo: Demo) -> None:
    p50 = dict(
        demo.rows(
            "SELECT pipeline_stage, quantile_cont(duration_ms, 0.5) FROM events WHERE event_type IN "
            "('transcription_completed', 'claims_extracted', 'entity_resolution_completed', "
            "'entity_needs_disambiguation', 'drafts_generated') GROUP BY 1",
        )
    )
    assert 2_000 < p50["transcription"] < 20_000
    assert 1_000 < p50["claims_extraction"] < 10_000
    assert p50["entity_resolution"] < 1_000
    assert 1_000 < p50["draft_generation"] < 10_000
    # end-to-end latency of completed artifacts: seconds, not zero, not days
    n, low, median = demo.rows(
        "SELECT count(*), min(end_to_end_latency_ms), median(end_to_end_latency_ms) FROM artifacts "
        "WHERE status = 'completed' AND retry_count = 0",
    )[0]
    assert n > 500 and low > 0 and 5_000 < median < 60_000
    # whisper-1 costs $0.006 per audio minute
    bad = demo.scalar(
        "SELECT count(*) FROM events WHERE event_type = 'transcription_completed' "
        "AND (ai_model <> 'whisper-1' OR abs(ai_cost - transcript_duration / 60 * 0.006) > 1e-5)",
    )
    assert bad == 0
    models = {r[0] for r in demo.rows("SELECT DISTINCT ai_model FROM events WHERE ai_cost > 0")}
    assert models == {"whisper-1", "gpt-4o", "gpt-4o-mini"}
    lo, hi = demo.rows(
        "SELECT min(confidence_score), max(confidence_score) FROM events "
        "WHERE event_type IN ('transcription_completed', 'claims_extracted')",
    )[0]
    assert 0 < lo < hi <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "end",
    # a Sunday morning whose week (two weekend days at 45% of the traffic) once had no
    # organisation over its budget, and a Wednesday evening
    [
        dt.datetime(2026, 11, 29, 8, 55, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 11, 25, 17, tzinfo=dt.timezone.utc),
    ],
    ids=["sunday", "wednesday"],
)
def test_every_weeks_demo_has_budget_events(tmp_path: Path, end: dt.datetime) -> None:
    """The README promises budget events in the demo, whatever day it is run: one
    organisation's budget is below what it spends on an ordinary weekday."""
    vpl.backfill(tmp_path / "data", end=end)
    con = vp.connect(tmp_path / "data")
    try:
        counts = dict(
            con.execute(
                "SELECT event_type, count(*) FROM events WHERE event_type LIKE 'budget_%' GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.close()
    assert counts.get("budget_threshold_reached", 0) > 0 and counts.get("budget_exceeded", 0) > 0, counts


def test_demo_disambiguations_reviews_and_breaker(demo: Demo) -> None:
    counts = dict(demo.rows("SELECT event_type, count(*) FROM events GROUP BY 1"))
    assert counts["entity_needs_disambiguation"] > 20
    assert 0 < counts["entity_user_resolved"] <= counts["entity_needs_disambiguation"]
    assert counts["draft_confirmed"] > counts["draft_rejected"] > 0
    assert counts["rate_limit_hit"] > 0
    # the pipeline's own cost guard: some organisations near and over their budget
    # (the README promises budget events; see test_every_weeks_demo_has_budget_events), at most one of each per organisation and day
    assert counts["budget_threshold_reached"] > 0 and counts["budget_exceeded"] > 0
    repeated = demo.scalar(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE event_type LIKE 'budget_%' "
        "GROUP BY event_type, organization_id, timestamp::DATE HAVING count(*) > 1)"
    )
    assert repeated == 0
    # a resolution always comes after its disambiguation, for the same artifact
    orphans = demo.scalar(
        "SELECT count(*) FROM events r WHERE event_type = 'entity_user_resolved' AND NOT EXISTS ("
        " SELECT 1 FROM events d WHERE d.event_type = 'entity_needs_disambiguation'"
        " AND d.artifact_id = r.artifact_id AND d.timestamp < r.timestamp)",
    )
    assert orphans == 0
    # the breaker episode: opened, failures while open, closed last
    breaker = demo.rows(
        "SELECT event_type, timestamp, artifact_id FROM events "
        "WHERE event_type LIKE 'circuit_breaker_%' ORDER BY timestamp",
    )
    assert breaker[0][0] == "circuit_breaker_opened" and breaker[-1][0] == "circuit_breaker_closed"
    assert all(r[2] is None for r in breaker)  # system events, not an artifact's
    opened, closed = breaker[0][1], breaker[-1][1]
    assert dt.timedelta(minutes=1) < closed - opened < dt.timedelta(hours=1)
    in_between = demo.scalar(
        "SELECT count(*) FROM events WHERE error_code = 'CircuitOpenError' "
        "AND event_type = 'claims_extraction_failed' AND timestamp BETWEEN ? AND ?",
        [opened, closed],
    )
    assert in_between >= 2


def test_demo_leaves_live_artifacts_in_flight(demo: Demo) -> None:
    rows = demo.rows(
        "SELECT artifact_id, status, received_at FROM artifacts WHERE status NOT IN ('completed', 'failed')",
    )
    assert len(rows) == 2
    assert {r[1] for r in rows} <= {"received", "transcribing"}
    assert all(r[0].endswith("-live") for r in rows)
    live_done = demo.scalar(
        "SELECT count(*) FROM artifacts WHERE artifact_id LIKE '%-live' AND status IN ('completed', 'failed')"
    )
    assert live_done == 5


# ---------------------------------------------------------------- notebook example


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebook_queries_agree_with_the_views(demo: Demo) -> None:
    root = demo.root
    nb = _load(EXAMPLES / "notebook_queries.py")
    con = nb.connect(root)
    per_day = nb.events_per_day(con)
    assert per_day["events"].sum() == demo.scalar("SELECT count(*) FROM events")
    assert len(per_day) >= 7
    latency = nb.stage_latency(con).set_index("stage")
    expected = dict(
        demo.rows(
            "SELECT pipeline_stage, round(quantile_cont(duration_ms, 0.95)) FROM events WHERE event_type IN "
            "('transcription_completed', 'claims_extracted', 'entity_resolution_completed', "
            "'entity_needs_disambiguation', 'drafts_generated') GROUP BY 1",
        )
    )
    assert latency["p95_ms"].to_dict() == expected
    assert set(nb.stage_latency(con, since="2999-01-01")["stage"]) == set()
    failures = nb.failures_by_error(con)
    assert failures["failures"].sum() == demo.scalar("SELECT count(*) FROM artifacts WHERE status = 'failed'")
    cost = nb.cost_per_org(con)
    assert len(cost) == 6
    assert cost["cost_usd"].sum() == pytest.approx(demo.scalar("SELECT sum(ai_cost) FROM events"), abs=1e-3)
    df = nb.pandas_events(root)
    assert len(df) == demo.scalar("SELECT count(*) FROM events")
    e2e = nb.pandas_end_to_end(df)
    assert len(e2e) == 6 and (e2e["50%"] > 1).all()


def test_notebook_script_runs(demo: Demo) -> None:
    root = demo.root
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "notebook_queries.py"), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for title in ("stage latency", "failures by error code", "AI cost per organisation", "pandas"):
        assert title in proc.stdout
    assert "CircuitOpenError" in proc.stdout


# ---------------------------------------------------------- refusing and resetting


def test_demo_twice_refuses_then_reset_replaces(root: Path) -> None:
    first = _demo(root, "--days", "1", "--artifacts-per-day", "30", "--live", "0", "--format", "json")
    assert first.exit_code == 0, first.stderr
    before = _scalar(root, "SELECT count(*) FROM events")
    assert before == json.loads(first.stdout)["events"] > 0

    again = _demo(root, "--days", "1", "--artifacts-per-day", "30", "--live", "0")
    assert again.exit_code == 2
    assert again.stdout == ""
    assert "already holds demo data" in again.stderr and "--reset" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert _scalar(root, "SELECT count(*) FROM events") == before  # nothing written

    reset = _demo(
        root, "--days", "1", "--artifacts-per-day", "30", "--live", "0", "--reset", "--format", "json"
    )
    assert reset.exit_code == 0, reset.stderr
    after = json.loads(reset.stdout)["events"]
    assert _scalar(root, "SELECT count(*) FROM events") == after
    assert after < before * 1.5  # replaced, not doubled


def test_demo_refuses_non_demo_data(root: Path, rec: vp.Recorder) -> None:
    with rec.artifact("real-1", organization_id="org-real"):
        pass
    rec.flush()
    (root / "voicepipe.toml").write_text("# the user's config\n")
    refused = _demo(root, "--days", "1", "--artifacts-per-day", "20", "--live", "0")
    assert refused.exit_code == 2
    assert "did not write" in refused.stderr and "--data" in refused.stderr and "--reset" in refused.stderr
    assert not (root / "_state" / "demo.json").exists()
    assert _scalar(root, "SELECT count(*) FROM artifacts WHERE artifact_id = 'real-1'") == 1

    replaced = _demo(root, "--days", "1", "--artifacts-per-day", "20", "--live", "0", "--reset")
    assert replaced.exit_code == 0, replaced.stderr
    assert _scalar(root, "SELECT count(*) FROM artifacts WHERE artifact_id = 'real-1'") == 0
    assert (root / "voicepipe.toml").read_text() == "# the user's config\n"  # only the layout is removed
    assert "Try next:" in replaced.stdout and f"voicepipe --data {root} report dashboard" in replaced.stdout


def test_demo_default_root_is_the_cli_root(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--days", "1", "--artifacts-per-day", "20", "--live", "1"])
    assert result.exit_code == 0, result.stderr
    assert any((tmp_path / "voicepipe-data" / "events").rglob("*.parquet"))
    assert "voicepipe report dashboard" in result.stdout  # no --data needed for the default root
    assert "--data" not in result.stdout


def test_demo_as_a_real_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("voicepipe")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voicepipe_obs.cli"]
    root = tmp_path / "sub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPIPE_")}
    proc = subprocess.run(
        [*cmd, "--data", str(root), "demo", "--days", "2", "--artifacts-per-day", "60", "--live", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Wrote demo data to" in proc.stdout and "Try next:" in proc.stdout
    failed = next(line.split()[-1] for line in proc.stdout.splitlines() if " report artifact " in line)
    assert _scalar(root, "SELECT status FROM artifacts WHERE artifact_id = ?", [failed]) == "failed"
    assert not list((root / "_spool").glob("*.spool")) if (root / "_spool").exists() else True


# ------------------------------------------------------------ the example pipeline


def test_backfill_is_deterministic_and_uses_simulated_time(tmp_path: Path) -> None:
    end = dt.datetime(2026, 3, 4, 12, 0, tzinfo=dt.timezone.utc)
    results = [vpl.backfill(tmp_path / n, days=1, per_day=40, seed=3, end=end) for n in ("a", "b")]
    assert results[0] == results[1]
    sql = (
        "SELECT event_type, timestamp, artifact_id, duration_ms, error_code, ai_cost FROM events ORDER BY ALL"
    )
    a, b = _rows(tmp_path / "a", sql), _rows(tmp_path / "b", sql)
    assert a == b and len(a) > 100
    first, last = _rows(tmp_path / "a", "SELECT min(timestamp), max(timestamp) FROM events")[0]
    assert end - dt.timedelta(days=1) <= first and last <= end
    # durations are simulated: completion timestamp minus started timestamp, in ms
    mismatched = _scalar(
        tmp_path / "a",
        "SELECT count(*) FROM events WHERE duration_ms IS NOT NULL AND stage_started_at IS NOT NULL "
        "AND abs((epoch_us(timestamp) - epoch_us(stage_started_at)) / 1000.0 - duration_ms) > 0.001",
    )
    assert mismatched == 0
    other = vpl.backfill(tmp_path / "c", days=1, per_day=40, seed=4, end=end)
    assert other != results[0]


def test_simulated_clock_measures_stage_durations(root: Path) -> None:
    clock = vpl.SimClock(1_700_000_000_000_000)
    with vp.Recorder(root, clock=clock.now_us, strict=True) as rec:
        with rec.artifact("sim-1"):
            with rec.stage("transcription"):
                clock.advance(2.5)
    rows = dict(_rows(root, "SELECT event_type, duration_ms FROM events"))
    assert rows["transcription_completed"] == 2500.0
    assert rows["artifact_completed"] == 2500.0


def test_import_is_side_effect_free_and_registers_handlers(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import examples.voice_pipeline as a\n"
        "import voicepipe_obs._examples.voice_pipeline as b\n"
        "import importlib\n"
        "emit = importlib.import_module('voicepipe_obs.emit')\n"
        "retry = importlib.import_module('voicepipe_obs.retry')\n"
        "assert not emit.is_configured(), 'the default recorder was created at import'\n"
        "print(sorted(retry.handlers()))\n"
        "print(sorted(os.listdir('.')))\n"
        "print('duckdb' in sys.modules)\n"
    )
    env = {**os.environ, "VOICEPIPE_DATA": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    handlers, files, duckdb_loaded = proc.stdout.splitlines()
    assert handlers == str(sorted([*STAGES, "full"]))
    assert files == "[]"  # nothing written anywhere
    assert duckdb_loaded == "False"
    assert (
        REPO / "src/voicepipe_obs/_examples/voice_pipeline.py"
    ).resolve() == EXAMPLES / "voice_pipeline.py"


def test_voice_note_is_a_function_of_the_id() -> None:
    a, b = vpl.voice_note("art-x-1"), vpl.voice_note("art-x-1")
    assert a == b
    notes = [vpl.voice_note(f"art-{i}") for i in range(300)]
    assert {n.organization_id for n in notes} == {o.organization_id for o in vpl.ORGANIZATIONS}
    assert all(vpl.voice_note(f"x-fail-{s}-once").kind == "audio" for s in STAGES)


@pytest.fixture
def pipeline_rec(rec: vp.Recorder) -> Iterator[vp.Recorder]:
    """The example module records (and registers its handlers) through ``rec``."""
    vpl.use_recorder(rec)
    yield rec
    vpl.use_recorder(None)


def _artifact(root: Path, artifact_id: str) -> dict[str, Any]:
    con = vp.connect(root)
    try:
        cur = con.execute("SELECT * FROM artifacts WHERE artifact_id = ?", [artifact_id])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    finally:
        con.close()
    assert row is not None, f"{artifact_id} not in the store"
    return dict(zip(names, row, strict=True))


@pytest.mark.parametrize("stage", STAGES)
def test_failure_marker_then_retry_handler_completes(
    pipeline_rec: vp.Recorder, root: Path, stage: str
) -> None:
    from voicepipe_obs.retry import handlers

    aid = f"art-test-fail-{stage}-once"
    note = vpl.voice_note(aid)
    assert vpl.VoicePipeline(pipeline_rec, live_speed=0).process(aid) == "failed"
    pipeline_rec.flush()
    art = _artifact(root, aid)
    assert (art["status"], art["failed_stage"]) == ("failed", stage)
    assert art["error_code"] == type(vpl._MARKER_ERRORS[stage]()).__name__

    handler = handlers()[stage]
    assert handler.recorder is pipeline_rec and handler.fn is vpl.RETRY_HANDLERS[stage]
    # what the retry runner does: bind the artifact with the attempt, call the handler
    with pipeline_rec.artifact(
        aid,
        organization_id=note.organization_id,
        coach_user_id=note.coach_user_id,
        source_channel=note.source_channel,
        retry_attempt=1,
    ):
        handler.fn(aid, 1)
    pipeline_rec.flush()
    art = _artifact(root, aid)
    assert art["status"] == "completed" and art["draft_count"] >= 1
    rerun = [
        r[0]
        for r in _rows(
            root,
            "SELECT DISTINCT pipeline_stage FROM events WHERE artifact_id = ? AND retry_attempt = 1 "
            "AND event_type LIKE '%_started'",
            [aid],
        )
    ]
    assert sorted(rerun, key=STAGES.index) == list(STAGES[STAGES.index(stage) :])  # this stage and after
    received = _scalar(
        root, "SELECT count(*) FROM events WHERE artifact_id = ? AND event_type = 'artifact_received'", [aid]
    )
    assert received == 1


def test_always_marker_fails_on_retry_and_handler_opens_its_own_context(
    pipeline_rec: vp.Recorder, root: Path
) -> None:
    always, once = "art-test-fail-draft_generation-always", "art-test-fail-transcription-once"
    pipeline = vpl.VoicePipeline(pipeline_rec, live_speed=0)
    assert pipeline.process(always) == "failed"
    assert pipeline.process(once) == "failed"
    with pytest.raises(vpl.RateLimitError):
        vpl.retry_draft_generation(always, 1)  # no context bound: opens rec.artifact(retry_attempt=1)
    vpl.retry_full(once, 1)
    pipeline_rec.flush()
    assert _artifact(root, always)["status"] == "failed"
    assert _artifact(root, once)["status"] == "completed"
    outcomes = dict(
        _rows(
            root,
            "SELECT artifact_id, list(event_type ORDER BY event_type) FROM events "
            "WHERE event_type IN ('retry_succeeded', 'retry_failed') GROUP BY 1",
        )
    )
    assert outcomes == {always: ["retry_failed"], once: ["retry_succeeded"]}
    assert _artifact(root, once)["organization_id"] == vpl.voice_note(once).organization_id


def test_no_fail_marker_never_fails(pipeline_rec: vp.Recorder, root: Path) -> None:
    pipeline = vpl.VoicePipeline(pipeline_rec, live_speed=0)
    assert all(pipeline.process(f"art-no-fail-{i}") == "completed" for i in range(40))


def test_handlers_record_through_the_default_recorder(root: Path) -> None:
    """Without use_recorder(), a handler records through vp.get_recorder() — what
    `voicepipe retry --app` configures for its data root."""
    emit = importlib.import_module("voicepipe_obs.emit")
    previous = emit._default
    emit._default = vp.Recorder(root, strict=True)
    try:
        vpl.use_recorder(None)
        vpl.retry_claims_extraction("art-no-fail-default", 2)
        vp.get_recorder().flush()
    finally:
        emit._default.close()
        emit._default = previous
    art = _artifact(root, "art-no-fail-default")
    assert art["status"] == "completed" and art["last_retry_attempt"] == 2


def test_demo_refuses_a_file_as_root(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    result = _demo(target, "--days", "1")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"voicepipe: error: {target} is a file, not a directory; pass --data DIR"
    assert target.read_text() == "x"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), too small for the demo; needs root (mount)."""
    with small_tmpfs(tmp_path / "small-disk", "1m") as mnt:
        yield mnt


def test_a_demo_that_cannot_store_its_events_fails(full_disk: Path) -> None:
    """The recorder never raises into the pipeline: it warns and counts what it
    could not store. The demo must not then print a summary of data it lost and exit
    0: it says how many events were not stored and exits 1."""
    root = full_disk / "d"
    result = _runner().invoke(main, ["--data", str(root), "demo", "--live", "2"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "Wrote demo data" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"voicepipe: error: cannot write under {root}: ")
    assert "of the demo's events could not be stored" in last and "voicepipe demo --reset" in last
    assert "No space left on device" in result.stderr  # the recorder's warnings say why
