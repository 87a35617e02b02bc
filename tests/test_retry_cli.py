"""`voicepipe retry` end to end: the example pipeline's handlers, every refusal and
its exit code, dry runs, JSON output, bulk retries with their summary, and — in
real subprocesses — two concurrent retries of one artifact and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import voicepipe_obs as vp
from retry_apps import helpers
from retry_apps.helpers import events, record_completed, record_failed, record_in_flight, status
from voicepipe_obs import retry
from voicepipe_obs.cli import main

EXAMPLE = "voicepipe_obs._examples.voice_pipeline"
PIPELINE = "retry_apps.pipeline"
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "RETRY_APP_FAIL_STAGE",
        "RETRY_APP_STARTED",
        "RETRY_APP_GO",
        "RETRY_APP_QUEUE",
        "RETRY_APP_EXIT",
    ):
        monkeypatch.delenv(name, raising=False)
    helpers.reset()
    yield
    helpers.reset()


def invoke(runner: CliRunner, root: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(main, ["--data", str(root), "retry", *args], input=input, catch_exceptions=False)


def refused(result: Result, fragment: str) -> None:
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicepipe: error: "), result.stderr
    assert fragment in lines[0]


# --------------------------------------------------------------- the example app


def test_end_to_end_with_the_example_pipeline(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    from voicepipe_obs import aggregate
    from voicepipe_obs._examples.voice_pipeline import VoicePipeline, voice_note

    aid = "art-e2e-fail-claims_extraction-once"
    assert VoicePipeline(rec).process(aid) == "failed"
    assert VoicePipeline(rec).process("art-e2e-no-fail") == "completed"
    rec.flush()
    assert status(root, aid)[:3] == ("failed", 0, "claims_extraction")

    result = invoke(runner, root, aid, "--app", EXAMPLE, "--by", "alice")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"retry succeeded: {aid} [claims_extraction, attempt 1] in ")
    assert f"Retrying {aid} from claims_extraction (attempt 1 of 3) as alice" in result.stderr
    assert status(root, aid)[:2] == ("completed", 1)
    org = voice_note(aid).organization_id
    rerun = [e for e in events(root, aid) if e["retry_attempt"] == 1]
    types = [e["event_type"] for e in rerun]
    assert types[0] == "retry_initiated" and types[-2:] == ["retry_succeeded", "artifact_completed"]
    assert "claims_extracted" in types and "transcription_started" not in types
    assert {e["organization_id"] for e in rerun} == {org}
    assert rerun[0]["actor"] == "alice"

    # the snapshots count the retry, overall and for the artifact's organisation
    aggregate.aggregate(root, now=vp_now())
    con = vp.connect(root)
    totals = con.execute(
        "SELECT sum(retries_initiated), sum(retries_succeeded), sum(retries_failed), "
        "sum(artifacts_completed), sum(artifacts_failed) FROM snapshots_hourly WHERE organization_id IS NULL"
    ).fetchone()
    assert totals == (1, 1, 0, 2, 1)
    per_org = con.execute(
        "SELECT sum(retries_initiated), sum(retries_succeeded) FROM snapshots_daily WHERE organization_id = ?",
        [org],
    ).fetchone()
    assert per_org == (1, 1)
    [record] = retry.retry_history(con, aid)
    assert (record.actor, record.stage, record.attempt, record.outcome) == (
        "alice",
        "claims_extraction",
        1,
        "succeeded",
    )

    # and the reports show it
    report = runner.invoke(main, ["--data", str(root), "report", "retries", "--format", "json"])
    assert report.exit_code == 0, report.stderr
    assert aid in report.stdout and "alice" in report.stdout

    # a second retry of the now completed artifact is refused
    refused(invoke(runner, root, aid, "--app", EXAMPLE), "is completed, not failed; use --force")


def vp_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def test_a_retry_that_fails_again_exits_1(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    from voicepipe_obs._examples.voice_pipeline import VoicePipeline

    aid = "art-fail-transcription-always"
    VoicePipeline(rec).process(aid)
    rec.flush()
    result = invoke(runner, root, aid, "--app", EXAMPLE)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"retry failed: {aid} [transcription, attempt 1] after ")
    assert "TimeoutError: whisper-1: request timed out" in result.stdout
    assert status(root, aid)[:2] == ("failed", 1)


def test_full_and_json_output(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "entity_resolution", org="org-9")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", PIPELINE, "--full", "--by", "bob", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "succeeded"
    assert (data["stage"], data["attempt"], data["actor"], data["organization_id"]) == (
        "full",
        1,
        "bob",
        "org-9",
    )
    assert data["handler"] == "retry_apps.pipeline.retry_full" and data["mode"] == "inline"
    rerun = [e["event_type"] for e in events(root, "a-1") if e["retry_attempt"] == 1]
    assert rerun[1] == "transcription_started"  # from the beginning
    initiated = next(e for e in events(root, "a-1") if e["event_type"] == "retry_initiated")
    assert initiated["pipeline_stage"] == "ingestion" and initiated["attributes"]["retry_stage"] == "full"


def test_stage_option_overrides_the_failed_stage(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "draft_generation")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", PIPELINE, "--stage", "entity_resolution")
    assert result.exit_code == 0, result.stderr
    rerun = [e["event_type"] for e in events(root, "a-1") if e["retry_attempt"] == 1]
    assert rerun[1] == "entity_resolution_started"


def test_a_stage_after_the_one_that_failed_is_refused_unless_forced(
    runner: CliRunner, rec: vp.Recorder, root: Path
) -> None:
    """Failed at entity resolution, resumed at draft generation: that would skip the
    failed stage and read completed with no entity ever resolved — refused (exit 4)
    naming the stage to use; --force does it anyway, recorded as forced."""
    record_failed(rec, "a-1", "entity_resolution")
    rec.flush()
    refused(
        invoke(runner, root, "a-1", "--app", PIPELINE, "--stage", "draft_generation"),
        "failed at entity_resolution; resuming at draft_generation would skip it. Use --stage entity_resolution",
    )
    assert retry.retry_history(root, "a-1") == []
    forced = invoke(runner, root, "a-1", "--app", PIPELINE, "--stage", "draft_generation", "--force")
    assert forced.exit_code == 0, forced.stderr
    [record] = retry.retry_history(root, "a-1")
    assert (record.stage, record.forced) == ("draft_generation", True)


def test_dry_run_says_what_would_run_and_records_nothing(
    runner: CliRunner, rec: vp.Recorder, root: Path
) -> None:
    record_failed(rec, "a-1", "claims_extraction")
    rec.flush()
    before = events(root, "a-1")
    result = invoke(runner, root, "a-1", "--app", PIPELINE, "--dry-run", "--by", "alice")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        "would retry a-1 [claims_extraction, attempt 1] as alice with "
        "retry_apps.pipeline.retry_claims_extraction (in-process)"
    )
    assert events(root, "a-1") == before


# -------------------------------------------------------------------- refusals


def test_refusals_exit_4_with_one_line(
    runner: CliRunner, rec: vp.Recorder, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_completed(rec, "done")
    record_in_flight(rec, "busy")
    record_failed(rec, "a-1", "claims_extraction")
    record_failed(rec, "maxed", "transcription")
    for attempt in (1, 2, 3):
        rec.emit("retry_initiated", artifact_id="maxed", retry_attempt=attempt, actor="x")
        rec.emit("retry_failed", artifact_id="maxed", retry_attempt=attempt)
        rec.emit("artifact_failed", artifact_id="maxed", retry_attempt=attempt)
    rec.flush()

    refused(invoke(runner, root, "nope", "--app", PIPELINE), "no artifact 'nope' under")
    refused(invoke(runner, root, "done", "--app", PIPELINE), "'done' is completed, not failed; use --force")
    refused(invoke(runner, root, "busy", "--app", PIPELINE), "'busy' is still in flight (transcribing")
    refused(invoke(runner, root, "maxed", "--app", PIPELINE), "has had 3 retries (retry.max_attempts = 3)")
    lock = retry.RetryLock(root, "a-1")
    assert lock.acquire(holder=retry.LockHolder(actor="carol", pid=99))
    try:
        refused(invoke(runner, root, "a-1", "--app", PIPELINE), "is being retried by carol (pid 99)")
    finally:
        lock.release()
    monkeypatch.setenv("VOICEPIPE_RETRY__ALLOWED_ACTORS", '["alice", "bob"]')
    refused(invoke(runner, root, "a-1", "--app", PIPELINE, "--by", "mallory"), "'mallory' may not retry")
    # nothing above recorded anything
    assert status(root, "a-1")[:2] == ("failed", 0)
    assert status(root, "done")[:2] == ("completed", 0)
    # an allowed actor, and --force on the completed artifact, run
    assert invoke(runner, root, "a-1", "--app", PIPELINE, "--by", "alice").exit_code == 0
    forced = invoke(
        runner, root, "done", "--app", PIPELINE, "--by", "bob", "--force", "--stage", "transcription"
    )
    assert forced.exit_code == 0, forced.stderr
    assert status(root, "done")[:2] == ("completed", 1)


def test_a_refusal_in_json_is_an_object_on_stdout(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    """--format json: a script reads why from the JSON it asked for; the one-line
    error still goes to stderr, and the exit status is 4."""
    record_completed(rec, "done")
    rec.flush()
    result = invoke(runner, root, "done", "--app", PIPELINE, "--format", "json")
    assert result.exit_code == 4
    data = json.loads(result.stdout)
    assert (data["status"], data["reason"], data["exit_code"]) == ("refused", "not_failed", 4)
    assert "is completed, not failed" in data["message"]
    assert result.stderr.strip().startswith("voicepipe: error: artifact 'done' is completed")
    nobody = invoke(runner, root, "--all-failed", "--org", "org-nobody", "--format", "json", "--yes")
    assert (nobody.exit_code, json.loads(nobody.stdout)["reason"]) == (4, "unknown_organization")


def test_max_attempts_from_the_config(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "voicepipe.toml").write_text(f'[retry]\napp = "{PIPELINE}"\nmax_attempts = 2\n')
    monkeypatch.setenv("RETRY_APP_FAIL_STAGE", "transcription")
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    assert [invoke(runner, root, "a-1").exit_code for _ in range(2)] == [1, 1]  # app from retry.app
    refused(invoke(runner, root, "a-1"), "has had 2 retries (retry.max_attempts = 2)")
    assert [r.outcome for r in retry.retry_history(root, "a-1")] == ["failed", "failed"]


def test_no_handler_for_the_stage_lists_the_registered_ones(
    runner: CliRunner, rec: vp.Recorder, root: Path
) -> None:
    retry.clear_handlers()  # nothing but what the app registers
    record_failed(rec, "a-1", "claims_extraction")
    rec.flush()
    refused(
        invoke(runner, root, "a-1", "--app", "retry_apps.only_drafts"),
        "no retry handler is registered for claims_extraction; registered: draft_generation.",
    )
    assert status(root, "a-1")[:2] == ("failed", 0)


def test_no_app_lists_no_handlers(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    retry.clear_handlers()
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    refused(invoke(runner, root, "a-1"), "registered: none. Pass --app MODULE (or set retry.app)")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "give an ARTIFACT_ID to retry, or --all-failed"),
        (("a-1", "--all-failed"), "not both"),
        (("a-1", "--stage", "transcription", "--full"), "either --stage or --full"),
        (("a-1", "--yes"), "only apply with --all-failed"),
        (("a-1", "--stage", "ingestion"), "Invalid value for '--stage'"),
        (("a-1", "--by", " "), "Invalid value for --by: must not be empty"),
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, root: Path, args: tuple[str, ...], fragment: str) -> None:
    result = invoke(runner, root, *args)
    assert result.exit_code == 2
    assert fragment in result.stderr


def test_a_missing_app_is_a_config_error(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", "no_such_pipeline_mod")
    assert result.exit_code == 2
    assert "cannot import retry app 'no_such_pipeline_mod'" in result.stderr
    result = invoke(runner, root, "a-1", "--app", "missing/file.py")
    assert result.exit_code == 2 and "not found" in result.stderr


# ------------------------------------------------------------------ recorders


def test_an_app_recorder_without_a_root_records_into_the_cli_root(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", "retry_apps.own_recorder")
    assert result.exit_code == 0, result.stderr
    assert status(root, "a-1")[:2] == ("completed", 1)
    assert not (tmp_path / "voicepipe-data").exists()  # not the default ./voicepipe-data


def test_an_app_recording_into_another_root_keeps_the_retry_in_the_cli_root(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app `vp.configure`s a root of its own: its stage events go there (with a
    warning), but retry_initiated and the outcome are recorded in the CLI's root —
    so the artifact is completed there, the history has the attempt, and a second
    retry is refused instead of being "attempt 1" again, for ever."""
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("RETRY_APP_OTHER_ROOT", str(other))
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", "retry_apps.other_root", "--by", "alice")
    assert result.exit_code == 0, result.stderr
    assert f"records into {other}" in result.stderr
    assert status(root, "a-1")[:2] == ("completed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.actor, record.attempt) == ("succeeded", "alice", 1)
    stages = [(e["event_type"], e["artifact_id"], e["retry_attempt"]) for e in events(other, "a-1")]
    assert ("transcription_completed", "a-1", 1) in stages  # the context reached the app's recorder
    refused(invoke(runner, root, "a-1", "--app", "retry_apps.other_root"), "is completed, not failed")


def test_an_app_given_as_a_file_path(runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path) -> None:
    app = tmp_path / "handlers_by_path.py"
    app.write_text(
        "import voicepipe_obs as vp\n\n"
        "@vp.retry_handler('transcription')\n"
        "def again(artifact_id, attempt):\n"
        "    with vp.stage('transcription') as st:\n"
        "        st.annotate(confidence_score=0.5)\n"
    )
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    try:
        result = invoke(runner, root, "a-1", "--app", str(app))
    finally:
        sys.modules.pop("handlers_by_path", None)
    assert result.exit_code == 0, result.stderr
    completed = [e for e in events(root, "a-1") if e["event_type"] == "transcription_completed"]
    assert completed[-1]["retry_attempt"] == 1 and completed[-1]["confidence_score"] == 0.5


def test_a_deferred_handler_is_queued_and_the_worker_finishes_it(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "queue"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    record_failed(rec, "a-1", "transcription", org="org-q")
    rec.flush()
    result = invoke(runner, root, "a-1", "--app", "retry_apps.queue_app", "--by", "alice")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("retry queued: a-1 [transcription, attempt 1] handed to ")
    assert "(hand-off to a queue)" in result.stderr
    assert status(root, "a-1")[0] == "retrying"
    refused(
        invoke(runner, root, "a-1", "--app", "retry_apps.queue_app"), "has an unfinished retry (attempt 1"
    )

    # the worker process reopens the artifact and records the outcome
    _work(root, queue)
    assert status(root, "a-1")[:2] == ("completed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.mode, record.actor, record.organization_id) == (
        "succeeded",
        "deferred",
        "alice",
        "org-q",
    )


def _work(root: Path, queue: Path, *, fail: bool = False) -> None:
    """A queue worker in a process of its own runs every job in `queue`."""
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, voicepipe_obs as vp; from retry_apps import queue_app; "
            "from pathlib import Path; rec = vp.Recorder(sys.argv[1]); "
            "print(queue_app.work(Path(sys.argv[2]), rec, fail=sys.argv[3] == 'fail')); rec.close()",
            str(root),
            str(queue),
            "fail" if fail else "ok",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (worker.returncode, worker.stdout.strip()) == (0, "1"), worker.stderr


@pytest.mark.slow
@pytest.mark.parametrize("comes_back", ["after", "before"])
def test_a_lost_deferred_job_coming_back_late_does_not_overwrite_the_forced_retry(
    runner: CliRunner,
    rec: vp.Recorder,
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    comes_back: str,
) -> None:
    """A queued retry (attempt 1) is taken for lost and re-queued with --force
    (attempt 2); then the lost job turns up and fails — after the forced one
    succeeded, or while it is still queued. Its failure is recorded as attempt 1's,
    truthfully, but it is not the artifact's state: that is attempt 2's (retrying
    while it is queued, then completed), not the stale job's artifact_failed."""
    queue, lost = tmp_path / "queue", tmp_path / "lost"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    app = ("--app", "retry_apps.queue_app")
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    assert invoke(runner, root, "a-1", *app, "--by", "alice").exit_code == 0
    lost.mkdir()
    (queue / "a-1-1.json").rename(lost / "a-1-1.json")  # the job sits in a dead worker
    forced = invoke(runner, root, "a-1", *app, "--by", "bob", "--force", "--format", "json")
    assert forced.exit_code == 0, forced.stderr
    assert (json.loads(forced.stdout)["attempt"], json.loads(forced.stdout)["forced"]) == (2, True)
    if comes_back == "before":
        _work(root, lost, fail=True)  # attempt 1 fails while attempt 2 waits in the queue
        assert status(root, "a-1")[0] == "retrying"
        refused(invoke(runner, root, "a-1", *app), "has an unfinished retry (attempt 2")
        _work(root, queue)
    else:
        _work(root, queue)
        assert status(root, "a-1")[:2] == ("completed", 2)
        _work(root, lost, fail=True)  # attempt 1 fails after attempt 2 completed
    assert status(root, "a-1") == ("completed", 2, None, None)
    history = {r.attempt: r for r in retry.retry_history(root, "a-1")}
    assert {n: (r.actor, r.outcome, r.error_code) for n, r in history.items()} == {
        1: ("alice", "failed", "RuntimeError"),
        2: ("bob", "succeeded", None),
    }
    assert history[2].forced
    stale = [e for e in events(root, "a-1") if e["event_type"] == "artifact_failed" and e["retry_attempt"]]
    assert [e["retry_attempt"] for e in stale] == [1]  # recorded, not dropped


# ------------------------------------------------------------------------- bulk


def _bulk_store(rec: vp.Recorder) -> dict[str, str]:
    from voicepipe_obs._examples.voice_pipeline import VoicePipeline, voice_note

    ids = {
        "once": "art-b1-fail-transcription-once",
        "always": "art-b2-fail-claims_extraction-always",
        "locked": "art-b3-fail-draft_generation-once",
        "ok": "art-b4-no-fail",
    }
    pipeline = VoicePipeline(rec)
    for aid in ids.values():
        pipeline.process(aid)
    rec.flush()
    ids["org_of_once"] = voice_note(ids["once"]).organization_id
    return ids


def test_bulk_retry_lists_confirms_continues_and_summarises(
    runner: CliRunner, rec: vp.Recorder, root: Path
) -> None:
    ids = _bulk_store(rec)
    lock = retry.RetryLock(root, ids["locked"])
    assert lock.acquire(holder=retry.LockHolder(actor="dave"))
    try:
        declined = invoke(runner, root, "--all-failed", "--app", EXAMPLE, input="n\n")
        refused_line = declined.stderr.strip().splitlines()[-1]
        assert declined.exit_code == 4 and "not confirmed: nothing retried" in refused_line
        assert ids["once"] in declined.stdout and ids["ok"] not in declined.stdout  # the list
        assert retry.retry_history(root) == []

        result = invoke(runner, root, "--all-failed", "--app", EXAMPLE, "--by", "erin", input="y\n")
    finally:
        lock.release()
    assert result.exit_code == 1, result.stderr  # one retry failed again
    out = result.stdout
    assert f"retry succeeded: {ids['once']} [transcription, attempt 1]" in out
    assert f"retry failed: {ids['always']} [claims_extraction, attempt 1]" in out
    assert "Retried 2: 1 succeeded, 1 failed; skipped 1." in out
    assert f"  skipped {ids['locked']}: artifact '{ids['locked']}' is being retried by dave" in out
    assert "Retry these 3 artifacts?" in result.stderr
    assert status(root, ids["once"])[0] == "completed"
    assert status(root, ids["always"])[0] == "failed"
    assert status(root, ids["locked"])[:2] == ("failed", 0)
    assert {r.actor for r in retry.retry_history(root)} == {"erin"}


def test_bulk_filters_dry_run_and_json(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    ids = _bulk_store(rec)
    dry = invoke(runner, root, "--all-failed", "--app", EXAMPLE, "--stage", "transcription", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert ids["once"] in dry.stdout and ids["always"] not in dry.stdout
    assert f"would retry {ids['once']} from transcription (attempt 1 of 3)" in dry.stdout

    as_json = invoke(runner, root, "--all-failed", "--app", EXAMPLE, "--dry-run", "--format", "json")
    plan = json.loads(as_json.stdout)  # an object, like a real bulk run's summary
    assert (plan["dry_run"], plan["would_retry"] + plan["would_skip"]) == (True, len(plan["artifacts"]))
    assert {a["artifact_id"] for a in plan["artifacts"] if a["would_run"]} >= {ids["once"]}
    empty = invoke(
        runner, root, "--all-failed", "--stage", "entity_resolution", "--dry-run", "--format", "json"
    )
    assert json.loads(empty.stdout) == {"dry_run": True, "would_retry": 0, "would_skip": 0, "artifacts": []}
    none = invoke(runner, root, "--all-failed", "--stage", "entity_resolution", "--yes")
    assert (none.exit_code, none.stdout.strip()) == (0, "No failed artifacts match.")
    # a misspelt organisation is refused with a suggestion, as the reports do, not "none match"
    typo = ids["org_of_once"][:-1]
    refused(
        invoke(runner, root, "--all-failed", "--org", typo, "--yes"), f"did you mean {ids['org_of_once']!r}?"
    )
    assert invoke(runner, root, "--all-failed", "--since", "yesterday-ish", "--yes").exit_code == 2

    result = invoke(
        runner,
        root,
        "--all-failed",
        "--app",
        EXAMPLE,
        "--org",
        ids["org_of_once"],
        "--since",
        "1h",
        "--yes",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["retried"] >= 1 and data["failed"] == 0 and data["interrupted"] is False
    assert ids["once"] in [o["artifact_id"] for o in data["outcomes"]]
    assert retry.retry_history(root)[0].outcome == "succeeded"


# ------------------------------------------------------------- real processes


def _voicepipe() -> list[str]:
    script = Path(sys.executable).parent / "voicepipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "voicepipe_obs.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEPIPE_", "RETRY_APP_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_concurrent_retries_of_one_artifact_run_exactly_once(
    rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    started, go = tmp_path / "started", tmp_path / "go"
    env = _env(RETRY_APP_STARTED=str(started), RETRY_APP_GO=str(go))
    cmd = [*_voicepipe(), "--data", str(root), "retry", "a-1", "--app", PIPELINE]
    procs = [
        subprocess.Popen(
            [*cmd, "--by", who],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("p1", "p2")
    ]
    try:
        # one of them is refused while the other's handler waits for `go`
        _wait_for(lambda: any(p.poll() is not None for p in procs))
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert winner.poll() is None
        go.touch()
        out_w, err_w = winner.communicate(timeout=60)
        out_l, err_l = loser.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert loser.returncode == 4, err_l
    assert "is being retried by" in err_l and out_l == ""
    assert winner.returncode == 0, err_w
    assert out_w.startswith("retry succeeded: a-1")
    assert len(started.read_text().split()) == 1  # exactly one handler ran
    initiated = [e for e in events(root, "a-1") if e["event_type"] == "retry_initiated"]
    assert len(initiated) == 1
    assert status(root, "a-1")[:2] == ("completed", 1)


def _retry_running(
    rec: vp.Recorder, root: Path, tmp_path: Path, *, import_seconds: float | None = None
) -> subprocess.Popen[str]:
    """`voicepipe retry a-1` (failed at claims extraction) by alice in a real process,
    returned once its handler has started (and waits: it is never let go); with
    ``import_seconds`` the handler first imports a library on first use, which takes
    that long, and it is returned as that import begins."""
    record_failed(rec, "a-1", "claims_extraction")
    rec.flush()
    started = tmp_path / "started"
    env = _env(RETRY_APP_STARTED=str(started), RETRY_APP_GO=str(tmp_path / "never"))
    if import_seconds is not None:
        env |= {"RETRY_APP_LAZY_IMPORT": "1", "RETRY_APP_IMPORT_SECONDS": str(import_seconds)}
    proc = subprocess.Popen(
        [*_voicepipe(), "--data", str(root), "retry", "a-1", "--app", PIPELINE, "--by", "alice"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(started.exists)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
@pytest.mark.parametrize("import_seconds", [None, 600.0], ids=["running", "importing"])
def test_ctrl_c_or_sigterm_records_the_retry_as_failed_interrupted(
    rec: vp.Recorder,
    root: Path,
    tmp_path: Path,
    sig: signal.Signals,
    code: int,
    said: str,
    import_seconds: float | None,
) -> None:
    """Ctrl-C, or SIGTERM from a service manager or a timeout: the running attempt
    is recorded as failed (Interrupted) — not left "retrying" for ever, which would
    refuse every later retry without --force — and the lock is released; exit 130
    (Ctrl-C) or 143 (SIGTERM). Also while the handler imports a library on first
    use (the console script exits at once on a signal in an import only until a
    command that runs pipeline code starts it)."""
    proc = _retry_running(rec, root, tmp_path, import_seconds=import_seconds)
    try:
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert f"voicepipe: {said}: retry of a-1 (attempt 1) recorded as failed (Interrupted)" in err
    assert "Traceback" not in err
    tail = [(e["event_type"], e["error_code"], e["retry_attempt"]) for e in events(root, "a-1")][-2:]
    assert tail == [("retry_failed", "Interrupted", 1), ("artifact_failed", "Interrupted", 1)]
    assert status(root, "a-1")[:2] == ("failed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.error_code, record.actor) == ("failed", "Interrupted", "alice")
    assert retry.RetryLock(root, "a-1").probe() is None  # released


@pytest.mark.slow
def test_an_in_process_retry_killed_outright_is_recorded_as_abandoned_by_the_next(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    """SIGKILL (or a power cut) while an in-process retry runs: nothing records its
    outcome, and the artifact reads "retrying". Its lock is free, so its process is
    gone: the next retry does not wait for a worker that does not exist (nor need
    --force); it records the lost attempt as failed (Abandoned) and runs."""
    proc = _retry_running(rec, root, tmp_path)
    try:
        time.sleep(0.6)  # retry_initiated reaches the crash spool (every 200 ms)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    vp.recover_spools(root)
    assert status(root, "a-1")[0] == "retrying"
    assert retry.RetryLock(root, "a-1").probe() is None
    dry = invoke(runner, root, "a-1", "--app", PIPELINE, "--dry-run", "--format", "json")
    assert dry.exit_code == 0, dry.stderr
    result = invoke(runner, root, "a-1", "--app", PIPELINE, "--by", "bob")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert status(root, "a-1")[:2] == ("completed", 2)
    history = sorted(retry.retry_history(root, "a-1"), key=lambda r: r.attempt)
    assert [(r.attempt, r.outcome, r.error_code) for r in history] == [
        (1, "failed", "Abandoned"),
        (2, "succeeded", None),
    ]


def test_a_handler_calling_sys_exit_is_a_failed_retry(
    runner: CliRunner, rec: vp.Recorder, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sys.exit(3)` inside a handler: the retry failed (exit 1, its line, its
    history), not a silent exit 3 — a status the command does not document."""
    record_failed(rec, "a-1", "claims_extraction")
    rec.flush()
    monkeypatch.setenv("RETRY_APP_EXIT", "3")
    result = invoke(runner, root, "a-1", "--app", PIPELINE, "--by", "alice")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout.startswith("retry failed: a-1 [claims_extraction, attempt 1] after ")
    assert "SystemExit" in result.stdout
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.error_code) == ("failed", "SystemExit")


@pytest.mark.slow
def test_bulk_shows_a_progress_bar_on_a_terminal(rec: vp.Recorder, root: Path, tmp_path: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    record_failed(rec, "a-2", "claims_extraction")
    rec.flush()
    master, slave = os.openpty()  # stderr is a terminal, stdout a pipe
    try:
        proc = subprocess.run(
            [*_voicepipe(), "--data", str(root), "retry", "--all-failed", "--yes", "--app", PIPELINE],
            env=_env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert "Retrying" in terminal and "100%" in terminal
    assert "Retried 2: 2 succeeded, 0 failed; skipped 0." in proc.stdout


def test_a_closed_stdout_keeps_the_outcome_as_exit_code(rec: vp.Recorder, root: Path, tmp_path: Path) -> None:
    """`voicepipe retry ... | head -1` with the reader gone before the outcome is
    printed: the retry still runs and is recorded, and the exit code is still its
    outcome (failed again: 1), not the 0 of a report cut short."""
    from voicepipe_obs._examples.voice_pipeline import VoicePipeline

    aid = "art-fail-transcription-always"
    VoicePipeline(rec).process(aid)
    rec.flush()
    proc = subprocess.Popen(
        [*_voicepipe(), "--data", str(root), "retry", aid, "--app", EXAMPLE, "--by", "alice"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the outcome line gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert status(root, aid)[:2] == ("failed", 1)
