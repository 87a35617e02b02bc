"""The shipped test helpers: the in-memory capture and the frozen clock."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import voicepipe_obs as vp
from voicepipe_obs.errors import EmitError
from voicepipe_obs.testing import CaptureRecorder, FrozenClock, capture

UTC = dt.timezone.utc


def test_frozen_clock_stands_still_until_advanced() -> None:
    clock = FrozenClock("2026-01-05T09:00:00Z")
    assert clock.now == dt.datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert clock() == clock() == int(dt.datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp() * 1_000_000)
    assert clock.advance(1.5) == dt.datetime(2026, 1, 5, 9, 0, 1, 500000, tzinfo=UTC)
    clock.advance(milliseconds=250, delta=dt.timedelta(minutes=1))
    assert clock.now == dt.datetime(2026, 1, 5, 9, 1, 1, 750000, tzinfo=UTC)
    clock.set(dt.datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.now.year == 2030
    clock.set(0)
    assert clock.now == dt.datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        FrozenClock(dt.datetime(2026, 1, 1))
    assert "2026" in repr(FrozenClock())


def test_capture_keeps_events_as_dicts_and_writes_nothing(tmp_path: Path) -> None:
    clock = FrozenClock("2026-02-01T10:00:00Z")
    rec = CaptureRecorder(clock=clock)
    with rec.artifact("a-1", organization_id="org", source_channel="app"):
        with rec.stage("transcription") as st:
            clock.advance(2.5)
            st.annotate(confidence_score=0.9, ai_model="whisper-1")
    assert rec.types() == [
        "artifact_received",
        "transcription_started",
        "transcription_completed",
        "artifact_completed",
    ]
    done = rec.of_type("transcription_completed")[0]
    assert done["duration_ms"] == 2500.0  # the frozen clock measures durations too
    assert done["timestamp"] == clock.now == done["stage_completed_at"]
    assert done["stage_started_at"] == clock.now - dt.timedelta(seconds=2.5)
    assert done["confidence_score"] == 0.9 and done["artifact_id"] == "a-1"
    assert isinstance(done["event_id"], str) and len({e["event_id"] for e in rec.events}) == 4
    assert set(done) == {f.name for f in __import__("voicepipe_obs.events", fromlist=["x"]).arrow_schema()}
    assert rec.where(artifact_id="a-1", event_type="artifact_completed")[0]["duration_ms"] == 2500.0
    assert rec.flush() is True
    assert rec.stats()["written"] == 4
    assert not list(tmp_path.rglob("*.parquet")) and not Path("voicepipe-capture:memory").exists()
    rec.clear()
    assert rec.events == []
    rec.close()
    rec.emit("rate_limit_hit")
    assert rec.events == [] and rec.stats()["dropped"] == 1


def test_capture_is_strict_by_default_and_can_be_lax() -> None:
    with pytest.raises(EmitError, match="claim_count"):
        CaptureRecorder().emit("claims_extracted", claim_count="x")
    lax = CaptureRecorder(strict=False)
    lax.emit("claims_extracted", claim_count="x")
    assert lax.stats()["invalid"] == 1 and lax.events[0]["claim_count"] is None


def test_capture_installs_the_default_recorder_and_restores_it(tmp_path: Path) -> None:
    @vp.stage("draft_generation")
    def draft() -> None:
        vp.annotate(draft_count=2)

    before = vp.configure(tmp_path / "real", strict=True)
    try:
        with capture(redact=lambda m: m.replace("secret", "***"), error_message_max=20) as cap:
            with vp.artifact("a-2"):
                draft()
                vp.emit("rate_limit_hit", attributes={"provider": "openai"})
            with pytest.raises(RuntimeError):
                with cap.stage("claims_extraction"):
                    raise RuntimeError("secret " + "x" * 50)
        assert vp.get_recorder() is before
        assert cap.of_type("drafts_generated")[0]["draft_count"] == 2
        assert cap.of_type("rate_limit_hit")[0]["attributes"] == {"provider": "openai"}
        failed = cap.of_type("claims_extraction_failed")[0]
        assert failed["error_message"] == "*** " + "x" * 15 + "…"
        assert before.flush()
        assert not (tmp_path / "real" / "events").exists()  # nothing went to the real recorder
    finally:
        before.close()


def test_a_capture_matches_what_a_real_recorder_writes(root: Path) -> None:
    """The capture's dicts equal the Parquet rows of a real Recorder fed the same calls."""
    clock_a, clock_b = FrozenClock("2026-03-01T08:00:00Z"), FrozenClock("2026-03-01T08:00:00Z")
    real = vp.Recorder(root, clock=clock_a, strict=True)
    fake = CaptureRecorder(clock=clock_b)
    for rec, clock in ((real, clock_a), (fake, clock_b)):
        with rec.artifact("a-3", organization_id="org", coach_user_id="c", source_channel="whatsapp"):
            with rec.stage("entity_resolution") as st:
                clock.advance(0.75)
                st.annotate(entity_count=4, disambiguation_count=1, attributes={"k": "v"})
    assert real.flush()
    real.close()
    rows = sorted(pq.read_table(next(root.rglob("*.parquet"))).to_pylist(), key=lambda r: r["timestamp"])
    for row in rows:
        row["attributes"] = dict(row["attributes"]) if row["attributes"] is not None else None
    drop_id = [{k: v for k, v in r.items() if k != "event_id"} for r in rows]
    assert drop_id == [{k: v for k, v in e.items() if k != "event_id"} for e in fake.events]


def test_capture_validates_exactly_as_the_recorder_does() -> None:
    """What production would reject, a strict capture raises (EmitError) and a lax one
    counts and leaves out; ids from a database are kept as strings."""
    org = uuid.uuid4()
    with capture() as cap:
        with cap.artifact(12345, organization_id=org, coach_user_id=7):
            cap.emit("rate_limit_hit", voice_note_id=uuid.UUID(int=5))
    assert {e["artifact_id"] for e in cap.events} == {"12345"}
    assert {e["organization_id"] for e in cap.events} == {str(org)}
    assert {e["coach_user_id"] for e in cap.events} == {"7"}
    assert cap.of_type("rate_limit_hit")[0]["voice_note_id"] == str(uuid.UUID(int=5))

    strict = CaptureRecorder()
    with pytest.raises(EmitError, match="artifact_id must be a string"):
        strict.artifact(12.5)  # type: ignore[arg-type]
    with pytest.raises(EmitError, match="retry_attempt must be a 32-bit integer"):
        strict.artifact("a-1", retry_attempt="one")  # type: ignore[arg-type]
    with pytest.raises(EmitError, match="organization_id must be a string"):
        strict.emit("rate_limit_hit", organization_id=object())
    with pytest.raises(EmitError, match="lone surrogate"):  # the writer would have to repair it
        strict.emit("rate_limit_hit", ai_model="bad \ud800")
    assert strict.events == []

    lax = CaptureRecorder(strict=False)
    with lax.artifact(12.5, organization_id="org", retry_attempt="one"):  # type: ignore[arg-type]
        lax.emit("rate_limit_hit", ai_model="bad \ud800")
    assert lax.stats()["invalid"] == 3
    # an invalid attempt still makes a retry scope (no new receipt; the retry's outcome)
    assert lax.types() == ["rate_limit_hit", "retry_succeeded", "artifact_completed"]
    assert {e["artifact_id"] for e in lax.events} == {None}
    assert {e["organization_id"] for e in lax.events} == {"org"}
    assert lax.of_type("rate_limit_hit")[0]["ai_model"] == "bad \ufffd"


def test_captured_event_ids_match_the_written_form() -> None:
    rec = CaptureRecorder()
    ids = [rec.emit("rate_limit_hit") for _ in range(12)]
    assert [e["event_id"] for e in rec.events] == ids == sorted(ids)  # type: ignore[type-var]
    assert len({len(i or "") for i in ids}) == 1
