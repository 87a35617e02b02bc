"""Report functions (voicepipe_obs.reports) on a small fixed dataset with a frozen
clock: every figure is checked against numbers worked out by hand from the events
written below (real Parquet, real DuckDB)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from voicepipe_obs import reports
from voicepipe_obs.errors import EmptyStoreError, NotFoundError, UsageError

UTC = dt.timezone.utc
#: The frozen clock of every report test: Saturday 2026-11-28 12:00 UTC.
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


def _stage(
    rec: Any,
    ctx: dict[str, Any],
    stage: str,
    start: dt.datetime,
    ms: float,
    *,
    outcome: str | None = None,
    **fields: Any,
) -> dt.datetime:
    """Emit a stage run: <stage>_started then its completion (or failure) event."""
    from voicepipe_obs.events import STAGE_EVENTS

    started, done, failed = STAGE_EVENTS[stage]
    end = start + dt.timedelta(milliseconds=ms)
    rec.emit(started, timestamp=start, stage_started_at=start, **ctx)
    etype = outcome or (failed if "error_code" in fields else done)
    rec.emit(etype, timestamp=end, stage_started_at=start, stage_completed_at=end, duration_ms=ms, **ctx, **fields)
    return end


def build_dataset(root: Path) -> None:
    """Seven artifacts over three days, a circuit-breaker flap, a retry, a review.

    a-001 org-a whatsapp  completed today 09:15:21 (received 09:15:00 → 21 s)
    a-002 org-a app       failed today at claims_extraction (LLMTimeout)
    a-003 org-b whatsapp  transcribing since 11:50:02
    a-004 org-b app       completed yesterday 15:00:40 (40 s)
    a-005 org-b whatsapp  failed yesterday at transcription, retried by alice today, completed 08:01
    a-006 org-a app       at claims_extraction since 11:55:06
    a-007 org-a whatsapp  completed 2026-11-25 (3 days ago)
    """
    from voicepipe_obs import Recorder

    rec = Recorder(root, strict=True, flush_interval=60, recover=False)

    def received(aid: str, org: str, coach: str, channel: str, ts: dt.datetime) -> dict[str, Any]:
        ctx = {"artifact_id": aid, "organization_id": org, "coach_user_id": coach}
        rec.emit("artifact_received", timestamp=ts, source_channel=channel, voice_note_id=f"vn-{aid}", **ctx)
        return ctx

    # a-001: the full happy path, today
    c = received("a-001", "org-a", "c-1", "whatsapp", at(28, 9, 15, 0))
    t = _stage(rec, c, "transcription", at(28, 9, 15, 2), 5200, confidence_score=0.94, ai_cost=0.006,
               ai_model="whisper-1", transcript_word_count=120)
    t = _stage(rec, c, "claims_extraction", t, 3800, claim_count=4, confidence_score=0.88, ai_cost=0.012)
    t = _stage(rec, c, "entity_resolution", t + dt.timedelta(seconds=1), 1000, entity_count=4,
               disambiguation_count=1, outcome="entity_needs_disambiguation")
    t = _stage(rec, c, "draft_generation", t, 5000, draft_count=2, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(28, 9, 15, 21), **c)
    rec.emit("entity_user_resolved", timestamp=at(28, 11, 0), disambiguation_count=1, actor="bob", **c)

    # a-002: fails at claims extraction, today
    c = received("a-002", "org-a", "c-2", "app", at(28, 10, 0, 0))
    t = _stage(rec, c, "transcription", at(28, 10, 0, 1), 2000, confidence_score=0.71, ai_cost=0.004)
    _stage(rec, c, "claims_extraction", t, 25000, error_code="LLMTimeout", error_message="upstream timed out")
    rec.emit("artifact_failed", timestamp=at(28, 10, 0, 29), error_code="LLMTimeout",
             error_message="upstream timed out", **c)

    # a-003: transcribing now
    c = received("a-003", "org-b", "c-3", "whatsapp", at(28, 11, 50, 0))
    rec.emit("transcription_started", timestamp=at(28, 11, 50, 2), stage_started_at=at(28, 11, 50, 2), **c)

    # a-004: completed yesterday
    c = received("a-004", "org-b", "c-3", "app", at(27, 15, 0, 0))
    t = _stage(rec, c, "transcription", at(27, 15, 0, 1), 9000, confidence_score=0.97, ai_cost=0.01)
    t = _stage(rec, c, "claims_extraction", t, 6000, claim_count=2, ai_cost=0.015)
    t = _stage(rec, c, "entity_resolution", t, 2000, entity_count=3, disambiguation_count=0)
    t = _stage(rec, c, "draft_generation", t, 4000, draft_count=1, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(27, 15, 0, 40), **c)

    # a-005: transcription failed yesterday; alice retried it this morning
    c = received("a-005", "org-b", "c-4", "whatsapp", at(27, 16, 0, 0))
    _stage(rec, c, "transcription", at(27, 16, 0, 1), 30000, error_code="WhisperError",
           error_message="audio could not be decoded")
    rec.emit("artifact_failed", timestamp=at(27, 16, 0, 32), error_code="WhisperError",
             error_message="audio could not be decoded", **c)
    rc = {**c, "retry_attempt": 1}
    rec.emit("retry_initiated", timestamp=at(28, 8, 0, 0), pipeline_stage="transcription", actor="alice", **rc)
    t = _stage(rec, rc, "transcription", at(28, 8, 0, 1), 8000, confidence_score=0.9, ai_cost=0.008)
    t = _stage(rec, rc, "claims_extraction", t, 4000, claim_count=3, ai_cost=0.01)
    t = _stage(rec, rc, "entity_resolution", t, 3000, entity_count=2, disambiguation_count=0)
    t = _stage(rec, rc, "draft_generation", t, 5000, draft_count=1, ai_cost=0.02)
    rec.emit("retry_succeeded", timestamp=at(28, 8, 0, 59), pipeline_stage="transcription", actor="alice", **rc)
    rec.emit("artifact_completed", timestamp=at(28, 8, 1, 0), **rc)

    # a-006: at claims extraction now
    c = received("a-006", "org-a", "c-1", "app", at(28, 11, 55, 0))
    t = _stage(rec, c, "transcription", at(28, 11, 55, 1), 4000, confidence_score=0.82, ai_cost=0.005)
    rec.emit("claims_extraction_started", timestamp=at(28, 11, 55, 6), stage_started_at=at(28, 11, 55, 6), **c)

    # a-007: three days ago
    c = received("a-007", "org-a", "c-2", "whatsapp", at(25, 14, 0, 0))
    t = _stage(rec, c, "transcription", at(25, 14, 0, 1), 6000, confidence_score=0.55, ai_cost=0.007)
    t = _stage(rec, c, "claims_extraction", t, 5000, claim_count=1, ai_cost=0.01)
    t = _stage(rec, c, "entity_resolution", t, 2000, entity_count=2, disambiguation_count=2,
               outcome="entity_needs_disambiguation")
    t = _stage(rec, c, "draft_generation", t, 3000, draft_count=1, ai_cost=0.02)
    rec.emit("artifact_completed", timestamp=at(25, 14, 0, 30), **c)

    # the AI service flapped this morning
    rec.emit("circuit_breaker_opened", timestamp=at(28, 11, 30), error_message="openai 5xx burst")
    rec.emit("circuit_breaker_closed", timestamp=at(28, 11, 40))
    rec.flush()
    rec.close()


@pytest.fixture
def data(root: Path) -> Path:
    build_dataset(root)
    return root


# ------------------------------------------------------------------- empty store


@pytest.mark.parametrize(
    "call",
    [
        lambda r: reports.dashboard(r, now=NOW),
        lambda r: reports.pipeline(r, now=NOW),
        lambda r: reports.artifacts(r, now=NOW),
        lambda r: reports.artifact_detail(r, "a-1", now=NOW),
        lambda r: reports.metrics(r, now=NOW),
        lambda r: reports.events(r, now=NOW),
        lambda r: reports.event(r, "x"),
        lambda r: reports.retries(r, now=NOW),
    ],
)
def test_empty_and_missing_store_raise_a_friendly_error(root: Path, call: Any) -> None:
    for where in (root, root / "missing"):
        with pytest.raises(EmptyStoreError, match="voicepipe demo"):
            call(where)
