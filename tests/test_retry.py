"""retry.py as a library: the handler registry, eligibility (every refusal), running a
retry in the artifact's context, deferred (queue) handlers, the lock, bulk retries
and the history — on a real store (Parquet + DuckDB)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voicepipe_obs as vp
from retry_apps import helpers
from retry_apps.helpers import events, record_completed, record_failed, record_in_flight, status
from voicepipe_obs import retry
from voicepipe_obs.config import RetrySettings
from voicepipe_obs.errors import RetryError, UsageError


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    helpers.reset()
    retry.clear_handlers()  # each test registers the handlers it needs
    yield
    helpers.reset()


def _stage_handler(
    rec: vp.Recorder, stage: str, *, fail: bool = False, calls: list[Any] | None = None
) -> None:
    """Register a handler re-running `stage` (and the stages after it) on `rec`."""
    order = helpers.ORDER

    @rec.retry_handler(stage)
    def handler(artifact_id: str, attempt: int) -> None:
        if calls is not None:
            calls.append((artifact_id, attempt, vp.current_artifact()))
        first = "transcription" if stage == "full" else stage
        for name in order[order.index(first) :]:
            with rec.stage(name):
                if fail and name == first:
                    raise ConnectionError(f"{name} provider still down")


# ---------------------------------------------------------------------- registry


def test_register_handler_validates_and_records_the_recorder(rec: vp.Recorder) -> None:
    with pytest.raises(ValueError, match="unknown retry stage 'transcribe'"):
        rec.retry_handler("transcribe")(lambda a, n: None)

    @rec.retry_handler("transcription")
    def one(artifact_id: str, attempt: int) -> None: ...

    @vp.retry_handler("full", deferred=True)
    def two(artifact_id: str, attempt: int) -> None: ...

    registered = retry.handlers()
    assert registered["transcription"].recorder is rec and not registered["transcription"].deferred
    assert registered["full"].recorder is None and registered["full"].deferred
    assert registered["full"].mode == "deferred"
    assert registered["transcription"].name.endswith("one")
    retry.unregister_handler("full")
    assert set(retry.handlers()) == {"transcription"}


# ------------------------------------------------------------------- eligibility


# a fixed clock: the parameters below are built when tests are collected
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def _info(status: str = "failed", **kw: Any) -> retry.ArtifactInfo:
    base: dict[str, Any] = {
        "artifact_id": "a-1",
        "status": status,
        "organization_id": "org-1",
        "failed_stage": "claims_extraction" if status == "failed" else None,
        "last_event_at": NOW - dt.timedelta(minutes=1),
    }
    base.update(kw)
    return retry.ArtifactInfo(**base)


def _handlers(*stages: str, deferred: bool = False) -> dict[str, retry.Handler]:
    return {s: retry.Handler(s, lambda a, n: None, None, deferred) for s in stages}


@pytest.mark.parametrize(
    ("info", "kwargs", "reason", "fragment"),
    [
        (None, {}, "unknown_artifact", "no artifact 'a-1'"),
        (_info(), {"actor": "mallory"}, "actor_not_allowed", "'mallory' may not retry"),
        (
            _info(),
            {"lock_holder": retry.LockHolder(actor="bob", pid=7)},
            "locked",
            "being retried by bob (pid 7)",
        ),
        (_info("completed"), {}, "not_failed", "is completed, not failed; use --force"),
        (_info("retrying", previous_attempts=1), {}, "already_retrying", "unfinished retry (attempt 1"),
        (_info("transcribing"), {}, "in_flight", "still in flight (transcribing"),
        (_info("transcribing"), {"force": True}, "in_flight", "still in flight"),
        (
            _info("processing", last_event_at=NOW - dt.timedelta(hours=2)),
            {},
            "in_flight",
            "looks stuck (processing, no event for 120 min); use --force",
        ),
        (_info(previous_attempts=3), {}, "max_attempts", "has had 3 retries (retry.max_attempts = 3)"),
        (
            _info(previous_attempts=1),
            {"settings": RetrySettings(max_attempts=1)},
            "max_attempts",
            "has had 1 retry (retry.max_attempts = 1)",
        ),
        (_info(failed_stage=None), {"registry": _handlers("draft_generation")}, "no_stage", "--stage"),
        (
            _info(),
            {"registry": _handlers("transcription", "full")},
            "no_handler",
            "no retry handler is registered for claims_extraction; registered: transcription, full (or --full)",
        ),
    ],
)
def test_each_refusal_has_a_reason_and_a_message(
    info: retry.ArtifactInfo | None, kwargs: dict[str, Any], reason: str, fragment: str
) -> None:
    args: dict[str, Any] = {
        "artifact_id": "a-1",
        "actor": "alice",
        "settings": RetrySettings(allowed_actors=["alice", "bob"]),
        "registry": _handlers(*retry.RETRY_STAGES),
    }
    args.update(kwargs)
    result = retry.evaluate(info, now=NOW, **args)
    assert not result.ok
    assert result.reason == reason
    assert result.message is not None and fragment in result.message
    assert "\n" not in result.message
    with pytest.raises(retry.RetryRefused) as err:
        result.raise_if_refused()
    assert err.value.reason == reason and err.value.exit_code == 4
    assert isinstance(err.value, RetryError)


@pytest.mark.parametrize(
    ("info", "kwargs", "stage", "forced"),
    [
        (_info(), {}, "claims_extraction", False),
        (_info(), {"stage": "transcription"}, "transcription", False),
        (_info(), {"full": True}, "full", False),
        (_info(failed_stage=None), {}, "full", False),  # nothing recorded: "full" if registered
        (_info("completed"), {"force": True, "stage": "draft_generation"}, "draft_generation", True),
        (_info("retrying", previous_attempts=1), {"force": True}, "full", True),
        (
            _info("processing", last_event_at=NOW - dt.timedelta(hours=2)),
            {"force": True},
            "full",
            True,
        ),
        (_info(previous_attempts=2), {}, "claims_extraction", False),
    ],
)
def test_eligible_plans(info: retry.ArtifactInfo, kwargs: dict[str, Any], stage: str, forced: bool) -> None:
    result = retry.evaluate(
        info,
        now=NOW,
        artifact_id="a-1",
        actor="alice",
        settings=RetrySettings(),
        registry=_handlers(*retry.RETRY_STAGES),
        **kwargs,
    )
    plan = result.raise_if_refused()
    assert (plan.stage, plan.forced) == (stage, forced)
    assert plan.attempt == info.previous_attempts + 1
    assert plan.pipeline_stage == ("ingestion" if stage == "full" else stage)


def test_bad_stage_arguments_are_usage_errors() -> None:
    common: dict[str, Any] = {"artifact_id": "a", "actor": "x", "settings": RetrySettings(), "registry": {}}
    with pytest.raises(UsageError, match="not both"):
        retry.evaluate(_info(), stage="transcription", full=True, **common)
    with pytest.raises(UsageError, match="unknown stage 'ingestion'"):
        retry.evaluate(_info(), stage="ingestion", **common)


def test_empty_allowed_actors_refuses_everyone() -> None:
    with pytest.raises(retry.RetryRefused, match=r"retry\.allowed_actors: nobody"):
        retry.check_actor("alice", [])
    retry.check_actor("alice", None)


# ------------------------------------------------------------------------ running


def test_retry_runs_the_handler_in_the_artifacts_context(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "claims_extraction", org="org-7")
    rec.flush()
    assert status(root, "a-1") == ("failed", 0, "claims_extraction", "TimeoutError")
    calls: list[Any] = []
    _stage_handler(rec, "claims_extraction", calls=calls)

    outcome = retry.retry_artifact("a-1", root=root, actor="alice")

    assert outcome.status == "succeeded" and outcome.exit_code == 0
    assert (outcome.stage, outcome.attempt, outcome.actor, outcome.organization_id) == (
        "claims_extraction",
        1,
        "alice",
        "org-7",
    )
    ctx = calls[0][2]
    assert calls[0][:2] == ("a-1", 1)
    assert (ctx.artifact_id, ctx.organization_id, ctx.coach_user_id, ctx.retry_attempt) == (
        "a-1",
        "org-7",
        "coach-1",
        1,
    )
    evs = events(root, "a-1")
    rerun = [e for e in evs if e["retry_attempt"] == 1]
    assert [e["event_type"] for e in rerun] == [
        "retry_initiated",
        "claims_extraction_started",
        "claims_extracted",
        "entity_resolution_started",
        "entity_resolution_completed",
        "draft_generation_started",
        "drafts_generated",
        "retry_succeeded",
        "artifact_completed",
    ]
    assert all(e["organization_id"] == "org-7" for e in rerun)
    initiated = rerun[0]
    assert initiated["actor"] == "alice"
    assert initiated["pipeline_stage"] == "claims_extraction"
    assert (initiated["previous_status"], initiated["new_status"]) == ("failed", "retrying")
    assert initiated["attributes"]["retry_mode"] == "inline"
    assert [e["event_type"] for e in evs].count("artifact_received") == 1
    assert status(root, "a-1")[:2] == ("completed", 1)


def test_a_failing_handler_is_a_failed_outcome_and_the_artifact_stays_failed(
    rec: vp.Recorder, root: Path
) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    _stage_handler(rec, "transcription", fail=True)

    outcome = retry.retry_artifact("a-1", root=root, actor="alice")

    assert outcome.status == "failed" and outcome.exit_code == 1
    assert (outcome.error_code, outcome.error_message) == (
        "ConnectionError",
        "transcription provider still down",
    )
    types = [(e["event_type"], e["error_code"]) for e in events(root, "a-1") if e["retry_attempt"] == 1]
    assert types[-3:] == [
        ("transcription_failed", "ConnectionError"),
        ("retry_failed", "ConnectionError"),
        ("artifact_failed", "ConnectionError"),
    ]
    assert status(root, "a-1") == ("failed", 1, "transcription", "ConnectionError")


def test_max_attempts_counts_previous_retries(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    _stage_handler(rec, "transcription", fail=True)
    settings = RetrySettings(max_attempts=2)

    first = retry.retry_artifact("a-1", root=root, settings=settings, actor="alice")
    second = retry.retry_artifact("a-1", root=root, settings=settings, actor="alice")
    assert [(first.attempt, first.status), (second.attempt, second.status)] == [(1, "failed"), (2, "failed")]
    with pytest.raises(retry.RetryRefused) as err:
        retry.retry_artifact("a-1", root=root, settings=settings, actor="alice")
    assert err.value.reason == "max_attempts"
    assert "has had 2 retries (retry.max_attempts = 2)" in str(err.value)
    assert status(root, "a-1")[:2] == ("failed", 2)


def test_refusals_on_a_real_store(rec: vp.Recorder, root: Path) -> None:
    with pytest.raises(retry.RetryRefused, match="no artifact 'nope'"):
        retry.retry_artifact("nope", root=root)  # no events at all yet
    record_completed(rec, "done")
    record_in_flight(rec, "busy")
    record_failed(rec, "a-1", "claims_extraction")
    rec.flush()
    _stage_handler(rec, "transcription")

    def refused(artifact_id: str, **kw: Any) -> str:
        with pytest.raises(retry.RetryRefused) as err:
            retry.retry_artifact(artifact_id, root=root, actor="alice", **kw)
        return err.value.reason

    assert refused("nope") == "unknown_artifact"
    assert refused("done") == "not_failed"
    assert refused("busy") == "in_flight"
    assert refused("busy", force=True) == "in_flight"
    assert refused("a-1") == "no_handler"
    assert refused("a-1", settings=RetrySettings(allowed_actors=["bob"])) == "actor_not_allowed"
    assert status(root, "a-1")[:2] == ("failed", 0)  # nothing was recorded by refusals
    # --force on a completed artifact re-runs the chosen stage
    outcome = retry.retry_artifact("done", root=root, actor="alice", force=True, stage="transcription")
    assert (outcome.status, outcome.forced) == ("succeeded", True)
    initiated = [e for e in events(root, "done") if e["event_type"] == "retry_initiated"]
    assert initiated[0]["attributes"]["forced"] == "true"


def test_a_held_lock_refuses_and_names_the_holder(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a/1", "transcription")
    rec.flush()
    _stage_handler(rec, "transcription")
    lock = retry.RetryLock(root, "a/1")
    assert lock.path.parent == root / "_state" / "retry"
    assert lock.acquire(holder=retry.LockHolder(actor="bob", pid=4242, host="h1"))
    try:
        with pytest.raises(retry.RetryRefused) as err:
            retry.retry_artifact("a/1", root=root, actor="alice")
        assert err.value.reason == "locked"
        assert "being retried by bob (pid 4242 on h1)" in str(err.value)
        assert not retry.check_eligibility("a/1", root=root, actor="alice").ok
        with pytest.raises(retry.RetryRefused, match="being retried by bob"):
            retry.retry_artifact("a/1", root=root, actor="alice", dry_run=True)
    finally:
        lock.release()
    assert retry.check_eligibility("a/1", root=root, actor="alice").ok
    assert retry.retry_artifact("a/1", root=root, actor="alice").status == "succeeded"


def test_lock_timeout_waits_for_the_holder(root: Path) -> None:
    import threading

    holder = retry.RetryLock(root, "a-1")
    assert holder.acquire()
    threading.Timer(0.2, holder.release).start()
    waiter = retry.RetryLock(root, "a-1")
    assert not waiter.acquire(0.0)
    assert waiter.acquire(5.0)
    waiter.release()


def test_a_probe_of_the_lock_at_that_moment_does_not_refuse_a_retry(rec: vp.Recorder, root: Path) -> None:
    """A dry run or check_eligibility (another process's, say a bulk --dry-run)
    tests the lock by taking it for a moment: a real retry trying the lock in that
    moment waits for it, instead of being refused as "being retried" by nobody."""
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    _stage_handler(rec, "transcription")
    probe = retry.RetryLock(root, "a-1")
    assert probe.acquire()  # as probe() does: no holder written, released at once
    timer = threading.Timer(0.05, probe.release)  # (a probing process preempted a little)
    timer.start()
    try:
        outcome = retry.retry_artifact("a-1", root=root, actor="alice")
    finally:
        timer.join()
    assert outcome.status == "succeeded"


def test_dry_run_records_nothing(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    calls: list[Any] = []
    _stage_handler(rec, "transcription", calls=calls)
    before = len(events(root, "a-1"))
    outcome = retry.retry_artifact("a-1", root=root, actor="alice", dry_run=True)
    assert (outcome.status, outcome.attempt, outcome.stage) == ("dry_run", 1, "transcription")
    assert calls == [] and len(events(root, "a-1")) == before


def test_ctrl_c_in_the_handler_is_recorded_as_interrupted(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()

    @rec.retry_handler("transcription")
    def handler(artifact_id: str, attempt: int) -> None:
        with rec.stage("transcription"):
            raise KeyboardInterrupt

    with pytest.raises(retry.RetryInterrupted) as err:
        retry.retry_artifact("a-1", root=root, actor="alice")
    assert isinstance(err.value, KeyboardInterrupt)
    assert err.value.outcome is not None and err.value.outcome.status == "interrupted"
    assert err.value.outcome.exit_code == 130
    tail = [(e["event_type"], e["error_code"]) for e in events(root, "a-1")][-3:]
    assert tail == [
        ("transcription_failed", "KeyboardInterrupt"),
        ("retry_failed", "Interrupted"),
        ("artifact_failed", "Interrupted"),
    ]
    assert status(root, "a-1")[0] == "failed"
    assert not retry.RetryLock(root, "a-1").probe()  # the lock was released


def test_async_handlers_run_in_the_context(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "draft_generation")
    rec.flush()
    seen: list[Any] = []

    @rec.retry_handler("draft_generation")
    async def handler(artifact_id: str, attempt: int) -> None:
        async with rec.stage("draft_generation"):
            seen.append(vp.current_artifact())

    assert retry.retry_artifact("a-1", root=root, actor="alice").status == "succeeded"
    assert seen[0].retry_attempt == 1
    assert status(root, "a-1")[0] == "completed"


# ----------------------------------------------------------------------- deferred


def test_deferred_handler_enqueues_and_the_worker_records_the_outcome(
    rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "queue"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    from retry_apps import queue_app

    record_failed(rec, "a-1", "transcription", org="org-q")
    rec.flush()
    outcome = retry.retry_artifact("a-1", root=root, actor="alice", recorder=rec)
    assert (outcome.status, outcome.mode, outcome.exit_code) == ("deferred", "deferred", 0)
    assert status(root, "a-1")[0] == "retrying"
    assert [p.name for p in queue.iterdir()] == ["a-1-1.json"]
    # a second retry while the job waits is refused (unless forced)
    with pytest.raises(retry.RetryRefused) as err:
        retry.retry_artifact("a-1", root=root, actor="bob", recorder=rec)
    assert err.value.reason == "already_retrying"
    [pending] = retry.retry_history(root, "a-1")
    assert (pending.outcome, pending.mode, pending.actor) == ("pending", "deferred", "alice")

    # the worker (here: this process, its own recorder) reopens the artifact
    with vp.Recorder(root, flush_interval=0.1) as worker_rec:
        assert queue_app.work(queue, worker_rec) == 1
    evs = [e for e in events(root, "a-1") if e["retry_attempt"] == 1]
    assert [e["event_type"] for e in evs] == [
        "retry_initiated",
        "transcription_started",
        "transcription_completed",
        "retry_succeeded",
        "artifact_completed",
    ]
    assert {e["organization_id"] for e in evs} == {"org-q"}
    assert status(root, "a-1")[0] == "completed"
    [done] = retry.retry_history(root, "a-1")
    assert (done.outcome, done.attempt, done.actor, done.stage) == ("succeeded", 1, "alice", "transcription")
    assert done.duration_ms is not None and done.finished_at is not None


def test_deferred_enqueue_failure_fails_the_retry(
    rec: vp.Recorder, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRY_APP_ENQUEUE_FAIL", "1")
    from retry_apps import queue_app  # noqa: F401

    record_failed(rec, "a-1", "transcription")
    rec.flush()
    outcome = retry.retry_artifact("a-1", root=root, actor="alice", recorder=rec)
    assert (outcome.status, outcome.error_code) == ("failed", "ConnectionError")
    assert status(root, "a-1")[:2] == ("failed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.error_message) == ("failed", "broker unreachable")


def test_ctrl_c_while_enqueueing_is_recorded_as_interrupted(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription")
    rec.flush()

    @rec.retry_handler("transcription", deferred=True)
    def enqueue(artifact_id: str, attempt: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(retry.RetryInterrupted) as err:
        retry.retry_artifact("a-1", root=root, actor="alice")
    assert err.value.outcome is not None and err.value.outcome.status == "interrupted"
    tail = [(e["event_type"], e["error_code"], e["retry_attempt"]) for e in events(root, "a-1")][-2:]
    assert tail == [("retry_failed", "Interrupted", 1), ("artifact_failed", "Interrupted", 1)]
    assert status(root, "a-1")[0] == "failed"


def test_worker_failure_is_recorded_by_its_artifact_context(
    rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = tmp_path / "queue"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    from retry_apps import queue_app

    record_failed(rec, "a-1", "transcription")
    rec.flush()
    retry.retry_artifact("a-1", root=root, actor="alice", recorder=rec)
    queue_app.work(queue, rec, fail=True)
    rec.flush()
    assert status(root, "a-1")[:2] == ("failed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert (record.outcome, record.error_code) == ("failed", "RuntimeError")


# ------------------------------------------------- stale runs and clock skew


def _clock(minutes: float) -> Any:
    """A host's clock, `minutes` ahead of this one (behind when negative)."""
    return lambda: time.time_ns() // 1000 + int(minutes * 60_000_000)


def test_the_original_run_of_a_stuck_artifact_coming_back_late_does_not_overwrite_the_forced_retry(
    rec: vp.Recorder, root: Path
) -> None:
    """--force retries an in-flight artifact whose run looks stuck; the run was only
    slow, and fails after the retry completed. Its failure is recorded, but the
    artifact's state is the retry's (completed), not the stale run's."""
    started, go = threading.Event(), threading.Event()

    def original_run() -> None:
        try:
            with rec.artifact("a-1", organization_id="org-1"), rec.stage("transcription"):
                started.set()
                go.wait(30)
                raise TimeoutError("whisper took too long")
        except TimeoutError:
            pass

    run = threading.Thread(target=original_run)
    run.start()
    try:
        assert started.wait(30)
        rec.flush()
        assert status(root, "a-1")[0] == "transcribing"
        _stage_handler(rec, "transcription")
        outcome = retry.retry_artifact(
            "a-1", root=root, actor="alice", force=True, stage="transcription", stuck_minutes=0.0
        )
        assert (outcome.status, outcome.forced) == ("succeeded", True)
        assert status(root, "a-1")[:2] == ("completed", 1)
    finally:
        go.set()
        run.join(30)
    rec.flush()
    assert [e["event_type"] for e in events(root, "a-1")][-1] == "artifact_failed"  # recorded
    assert status(root, "a-1") == ("completed", 1, None, None)


def test_a_worker_whose_clock_is_behind_still_ends_the_retry(
    rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue worker's host runs 10 minutes behind the one that queued the retry:
    its outcome (attempt 1) is timed before that attempt's retry_initiated. The
    retry has ended all the same: the artifact is completed, not "retrying" for
    ever (which would refuse every later retry without --force)."""
    queue = tmp_path / "queue"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    from retry_apps import queue_app

    record_failed(rec, "a-1", "transcription")
    rec.flush()
    assert retry.retry_artifact("a-1", root=root, actor="alice", recorder=rec).status == "deferred"
    with vp.Recorder(root, clock=_clock(-10)) as worker:
        assert queue_app.work(queue, worker) == 1
    assert status(root, "a-1")[:2] == ("completed", 1)
    [record] = retry.retry_history(root, "a-1")
    assert record.outcome == "succeeded"


def test_a_retry_queued_by_a_host_whose_clock_is_behind_is_still_the_latest(
    rec: vp.Recorder, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 ran in-process and failed; attempt 2 was queued from a host whose
    clock is 10 minutes behind, so its retry_initiated is timed before attempt 1's.
    Attempt 2 is the one waiting: the artifact is retrying, and another retry is
    refused — not run beside it, nor attempt 2 recorded as abandoned (its mode is
    the latest attempt's, deferred, not the latest-timed one's)."""
    queue = tmp_path / "queue"
    monkeypatch.setenv("RETRY_APP_QUEUE", str(queue))
    record_failed(rec, "a-1", "transcription")
    rec.flush()
    _stage_handler(rec, "transcription", fail=True)
    assert retry.retry_artifact("a-1", root=root, actor="alice").status == "failed"
    from retry_apps import queue_app  # its deferred handler replaces the in-process one

    with vp.Recorder(root, clock=_clock(-10)) as behind:
        outcome = retry.retry_artifact("a-1", root=root, actor="bob", recorder=behind)
    assert (outcome.status, outcome.attempt) == ("deferred", 2)
    assert status(root, "a-1")[:2] == ("retrying", 2)
    with pytest.raises(retry.RetryRefused) as err:
        retry.retry_artifact("a-1", root=root, actor="carol", recorder=rec)
    assert err.value.reason == "already_retrying"
    assert [p.name for p in queue.iterdir()] == ["a-1-2.json"]
    with vp.Recorder(root) as worker:
        assert queue_app.work(queue, worker) == 1
    assert status(root, "a-1")[:2] == ("completed", 2)


# --------------------------------------------------------------------------- bulk


def test_select_failed_filters(rec: vp.Recorder, root: Path) -> None:
    assert retry.select_failed(root) == []
    record_failed(rec, "t-1", "transcription", org="org-a")
    record_failed(rec, "c-1", "claims_extraction", org="org-a")
    record_failed(rec, "c-2", "claims_extraction", org="org-b")
    record_completed(rec, "ok-1")
    rec.flush()
    assert [f.artifact_id for f in retry.select_failed(root)] == ["t-1", "c-1", "c-2"]
    assert [f.artifact_id for f in retry.select_failed(root, stage="claims_extraction")] == ["c-1", "c-2"]
    assert [f.artifact_id for f in retry.select_failed(root, organization_id="org-a")] == ["t-1", "c-1"]
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    assert retry.select_failed(root, since=future) == []
    assert len(retry.select_failed(root, since=retry.parse_since("1h"))) == 3
    with pytest.raises(UsageError):
        retry.select_failed(root, stage="ingestion")


def test_bulk_retry_continues_past_failures_and_summarises(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "t-1", "transcription")
    record_failed(rec, "c-1", "claims_extraction")
    record_failed(rec, "d-1", "draft_generation")
    record_failed(rec, "e-1", "entity_resolution")  # no handler registered
    rec.flush()
    _stage_handler(rec, "transcription", fail=True)
    _stage_handler(rec, "claims_extraction")
    _stage_handler(rec, "draft_generation")
    lock = retry.RetryLock(root, "d-1")
    assert lock.acquire(holder=retry.LockHolder(actor="bob"))
    seen: list[tuple[str, str | None, str | None]] = []
    try:
        summary = retry.retry_all(
            [f.artifact_id for f in retry.select_failed(root)],
            root=root,
            actor="alice",
            on_result=lambda a, o, r: seen.append((a, o.status if o else None, r)),
        )
    finally:
        lock.release()
    assert (summary.retried, summary.succeeded, summary.failed, len(summary.skipped)) == (2, 1, 1, 2)
    assert summary.exit_code == 1
    skipped = dict(summary.skipped)
    assert "being retried by bob" in skipped["d-1"]
    assert "no retry handler is registered for entity_resolution" in skipped["e-1"]
    assert [s[0] for s in seen] == ["t-1", "c-1", "d-1", "e-1"]
    data = summary.to_dict()
    assert (data["retried"], data["succeeded"], data["failed"], data["skipped"]) == (2, 1, 1, 2)
    assert status(root, "c-1")[0] == "completed" and status(root, "t-1")[0] == "failed"


def test_bulk_stops_on_ctrl_c(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "t-1", "transcription")
    record_failed(rec, "t-2", "transcription")
    rec.flush()

    @rec.retry_handler("transcription")
    def handler(artifact_id: str, attempt: int) -> None:
        raise KeyboardInterrupt

    summary = retry.retry_all(["t-1", "t-2"], root=root, actor="alice")
    assert summary.interrupted and summary.exit_code == 130
    assert [o.artifact_id for o in summary.outcomes] == ["t-1"]
    assert status(root, "t-2")[:2] == ("failed", 0)


def test_the_reader_sees_files_written_after_it_opened(rec: vp.Recorder, root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voicepipe_obs import store

    record_failed(rec, "a-1", "transcription")
    record_failed(rec, "b-1", "transcription")
    rec.flush()
    reader = retry.ArtifactReader(root)
    try:
        assert reader.get("a-1").status == "failed"  # type: ignore[union-attr]
        assert reader.get("zzz") is None
        rec.emit("retry_initiated", artifact_id="a-1", retry_attempt=1)
        rec.flush()
        assert reader.get("b-1").status == "failed"  # type: ignore[union-attr]
        info = reader.get("a-1")
        assert info is not None and (info.status, info.previous_attempts) == ("retrying", 1)
        # compaction replaces files: the reader rescans instead of failing
        files = store.list_parquet(root)
        merged = pa.concat_tables([pq.read_table(f) for f in files])
        store.write_table(files[0].with_name("compacted.parquet"), merged)
        for f in files:
            f.unlink()
        assert reader.get("a-1").status == "retrying"  # type: ignore[union-attr]
    finally:
        reader.close()


def test_the_reader_names_an_unreadable_file_that_appears(
    rec: vp.Recorder, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that appears during a bulk run and cannot be read is skipped with the
    one warning every reader gives (query.vetted), not silently."""
    from voicepipe_obs import store

    record_failed(rec, "a-1", "transcription")
    rec.flush()
    reader = retry.ArtifactReader(root)
    try:
        assert reader.get("a-1").status == "failed"  # type: ignore[union-attr]
        torn = store.list_parquet(root)[0].with_name("torn.parquet")
        torn.write_bytes(b"not parquet at all")
        with caplog.at_level("WARNING", logger="voicepipe_obs.query"):
            assert reader.get("a-1").status == "failed"  # type: ignore[union-attr]
        assert [r.getMessage() for r in caplog.records if "torn.parquet" in r.getMessage()] == [
            f"skipping unreadable file {torn} (no Parquet header); `voicepipe compact` moves such files to quarantine/"
        ]
    finally:
        reader.close()


# ------------------------------------------------------------------------ history


def test_history_lists_every_retry_with_who_what_and_how_it_ended(rec: vp.Recorder, root: Path) -> None:
    record_failed(rec, "a-1", "transcription", org="org-1")
    record_failed(rec, "b-1", "claims_extraction", org="org-2")
    rec.flush()
    _stage_handler(rec, "transcription", fail=True)
    _stage_handler(rec, "claims_extraction")
    _stage_handler(rec, "full")
    retry.retry_artifact("a-1", root=root, actor="alice")
    retry.retry_artifact("a-1", root=root, actor="bob", full=True)
    retry.retry_artifact("b-1", root=root, actor="carol")
    # an outcome without its retry_initiated (a worker reopening on its own)
    with rec.artifact("c-1", organization_id="org-3", retry_attempt=1):
        pass
    rec.flush()

    history = retry.retry_history(root)
    rows = [(r.artifact_id, r.attempt, r.actor, r.stage, r.mode, r.outcome, r.error_code) for r in history]
    assert rows == [
        ("a-1", 1, "alice", "transcription", "inline", "failed", "ConnectionError"),
        ("a-1", 2, "bob", "full", "inline", "succeeded", None),
        ("b-1", 1, "carol", "claims_extraction", "inline", "succeeded", None),
        ("c-1", 1, None, None, None, "succeeded", None),
    ]
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in history)
    assert history[0].initiated_at is not None and history[0].finished_at is not None
    assert history[0].finished_at >= history[0].initiated_at
    assert history[3].initiated_at is None
    assert [r.attempt for r in retry.retry_history(root, "a-1")] == [1, 2]
    assert [r.artifact_id for r in retry.retry_history(root, organization_id="org-2")] == ["b-1"]
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    assert retry.retry_history(root, since=future) == []
    con = vp.connect(root)
    assert len(retry.retry_history(con)) == 4  # a connection works as the source
    assert con.execute("SELECT 1").fetchone() == (1,)  # and is left open
    d = history[0].to_dict()
    assert set(d) >= {"artifact_id", "attempt", "initiated_at", "actor", "stage", "outcome", "duration_ms"}


def test_history_of_an_empty_store_is_empty(root: Path) -> None:
    assert retry.retry_history(root) == []
