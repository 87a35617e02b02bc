"""Recorder semantics: stage decorators and context managers (sync and async),
artifact context propagation, annotate, emit, validation, error messages, the
module-level default recorder and stats(). Events are read back from the real
Parquet files the Recorder writes."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import enum
import inspect
import re
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import voicepipe_obs as vp
from voicepipe_obs.emit import _stage_var, _swap_default
from voicepipe_obs.errors import EmitError

UTC = dt.timezone.utc


def read_events(root: Path) -> list[dict[str, Any]]:
    """Every event row under root, straight from the Parquet files, in time order."""
    rows: list[dict[str, Any]] = []
    for path in sorted((root / "events").rglob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    # ids of one recorder are a prefix and a counter: (length, id) is emission order
    return sorted(rows, key=lambda r: (r["timestamp"], len(r["event_id"]), r["event_id"]))


def flushed(rec: vp.Recorder) -> list[dict[str, Any]]:
    assert rec.flush()
    return read_events(rec.root)


def types(rows: list[dict[str, Any]]) -> list[str]:
    return [r["event_type"] for r in rows]


@pytest.fixture
def lax(root: Path) -> Iterator[vp.Recorder]:
    """A non-strict recorder: problems are counted, never raised."""
    rec = vp.Recorder(root, flush_interval=0.2, spool_interval=0.05)
    yield rec
    rec.close()


# ------------------------------------------------------------------- decorators


def test_sync_decorator_emits_started_and_completed_with_timing(rec: vp.Recorder) -> None:
    @rec.stage("transcription")
    def transcribe(x: int) -> int:
        return x * 2

    before = dt.datetime.now(UTC)
    assert transcribe(21) == 42
    after = dt.datetime.now(UTC)
    started, done = flushed(rec)
    assert (started["event_type"], done["event_type"]) == ("transcription_started", "transcription_completed")
    assert started["pipeline_stage"] == done["pipeline_stage"] == "transcription"
    assert before <= started["timestamp"] <= done["timestamp"] <= after + dt.timedelta(milliseconds=5)
    assert done["stage_started_at"] == started["timestamp"] == started["stage_started_at"]
    assert done["stage_completed_at"] == done["timestamp"]
    assert done["duration_ms"] is not None and done["duration_ms"] >= 0
    assert started["duration_ms"] is None
    assert done["error_code"] is None and done["error_message"] is None


def test_decorator_preserves_function_metadata(rec: vp.Recorder) -> None:
    @rec.stage("claims_extraction")
    def extract(text: str) -> list[str]:
        """Extract claims."""
        return text.split()

    assert extract.__name__ == "extract"
    assert extract.__doc__ == "Extract claims."
    assert extract.__wrapped__ is not None  # type: ignore[attr-defined]


def test_async_decorator_times_across_await(rec: vp.Recorder) -> None:
    @rec.stage("claims_extraction")
    async def extract(text: str) -> list[str]:
        await asyncio.sleep(0.02)
        return text.split()

    assert asyncio.run(extract("a b")) == ["a", "b"]
    started, done = flushed(rec)
    assert types([started, done]) == ["claims_extraction_started", "claims_extracted"]
    assert done["duration_ms"] >= 15


def test_generator_functions_are_refused(rec: vp.Recorder) -> None:
    with pytest.raises(TypeError, match="generator"):

        @rec.stage("transcription")
        def chunks() -> Iterator[int]:
            yield 1


def test_context_manager_sync_and_async(rec: vp.Recorder) -> None:
    with rec.stage("draft_generation") as st:
        st.annotate(draft_count=3)

    async def main() -> None:
        async with rec.stage("transcription") as st2:
            await asyncio.sleep(0)
            st2.annotate(confidence_score=0.5)

    asyncio.run(main())
    rows = flushed(rec)
    by_type = {r["event_type"]: r for r in rows}
    assert by_type["drafts_generated"]["draft_count"] == 3
    assert by_type["transcription_completed"]["confidence_score"] == 0.5
    assert set(by_type) == {
        "draft_generation_started",
        "drafts_generated",
        "transcription_started",
        "transcription_completed",
    }


def test_nested_stages_annotate_the_innermost(rec: vp.Recorder) -> None:
    with rec.artifact("a-1", organization_id="org"):
        with rec.stage("claims_extraction") as outer:
            rec.annotate(claim_count=5)
            with rec.stage("entity_resolution"):
                rec.annotate(entity_count=2)  # innermost: entity resolution
                vp.annotate(disambiguation_count=0)
            rec.annotate(ai_cost=0.25)  # back to the outer stage
            assert outer.fields == {"claim_count": 5, "ai_cost": 0.25}
    rows = {r["event_type"]: r for r in flushed(rec)}
    assert rows["claims_extracted"]["claim_count"] == 5
    assert rows["claims_extracted"]["ai_cost"] == 0.25
    assert rows["claims_extracted"]["entity_count"] is None
    assert rows["entity_resolution_completed"]["entity_count"] == 2
    assert rows["entity_resolution_completed"]["claim_count"] is None
    assert all(r["artifact_id"] == "a-1" and r["organization_id"] == "org" for r in rows.values())


def test_stage_spec_annotate_targets_its_running_execution(rec: vp.Recorder) -> None:
    transcription = rec.stage("transcription")

    @transcription
    def run() -> None:
        transcription.annotate(ai_model="whisper-1")

    run()
    done = flushed(rec)[-1]
    assert done["ai_model"] == "whisper-1"
    with pytest.raises(EmitError, match="outside a running transcription"):
        transcription.annotate(ai_model="x")


def test_annotate_outside_a_stage_is_counted_or_raised(rec: vp.Recorder, lax: vp.Recorder) -> None:
    with pytest.raises(EmitError, match="outside a running stage"):
        rec.annotate(claim_count=1)
    lax.annotate(claim_count=1)
    assert lax.stats()["invalid"] == 1


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "entity_resolution_completed"), (3, "entity_needs_disambiguation")]
)
def test_entity_resolution_completion_depends_on_disambiguation(
    rec: vp.Recorder, count: int, expected: str
) -> None:
    with rec.stage("entity_resolution") as st:
        st.annotate(entity_count=5, disambiguation_count=count)
    started, done = flushed(rec)
    assert started["event_type"] == "entity_resolution_started"
    assert done["event_type"] == expected
    assert done["pipeline_stage"] == "entity_resolution"
    assert done["disambiguation_count"] == count


# ------------------------------------------------------------------- exceptions


class TranscriptionTimeout(Exception):
    pass


def test_exception_is_reraised_unchanged_with_its_traceback(rec: vp.Recorder) -> None:
    original = TranscriptionTimeout("whisper timed out after 30s")

    @rec.stage("transcription")
    def transcribe() -> None:
        raise original  # the line the traceback must still point at

    with pytest.raises(TranscriptionTimeout) as info:
        transcribe()
    assert info.value is original
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "transcribe"
    assert "raise original" in (frames[-1].line or "")
    started, failed = flushed(rec)
    assert started["event_type"] == "transcription_started"
    assert failed["event_type"] == "transcription_failed"
    assert failed["error_code"] == "TranscriptionTimeout"
    assert failed["error_message"] == "whisper timed out after 30s"
    assert failed["duration_ms"] is not None


def test_async_and_context_manager_failures_reraise_the_same_object(rec: vp.Recorder) -> None:
    err = KeyError("k")

    @rec.stage("draft_generation")
    async def draft() -> None:
        await asyncio.sleep(0)
        raise err

    with pytest.raises(KeyError) as info:
        asyncio.run(draft())
    assert info.value is err
    err2 = RuntimeError("cm")
    with pytest.raises(RuntimeError) as info2:
        with rec.stage("claims_extraction"):
            raise err2
    assert info2.value is err2
    failed = [r for r in flushed(rec) if r["event_type"].endswith("_failed")]
    assert sorted(r["event_type"] for r in failed) == ["claims_extraction_failed", "draft_generation_failed"]
    assert {r["error_code"] for r in failed} == {"KeyError", "RuntimeError"}


def test_error_code_attribute_and_annotated_error_fields(rec: vp.Recorder) -> None:
    class RateLimited(Exception):
        error_code = "RATE_LIMIT"

    with pytest.raises(RateLimited):
        with rec.stage("claims_extraction"):
            raise RateLimited("429")
    with pytest.raises(ValueError):
        with rec.stage("claims_extraction") as st:
            st.annotate(error_code="BAD_JSON", error_message="model returned invalid JSON")
            raise ValueError("Expecting value: line 1 column 1")
    failed = [r for r in flushed(rec) if r["event_type"] == "claims_extraction_failed"]
    assert [(r["error_code"], r["error_message"]) for r in failed] == [
        ("RATE_LIMIT", "429"),
        ("BAD_JSON", "model returned invalid JSON"),
    ]


def test_base_exceptions_are_recorded_and_reraised(rec: vp.Recorder) -> None:
    @rec.stage("transcription")
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert flushed(rec)[-1]["error_code"] == "KeyboardInterrupt"


def test_error_messages_are_truncated_to_1000_by_default(rec: vp.Recorder) -> None:
    with pytest.raises(ValueError):
        with rec.stage("transcription"):
            raise ValueError("x" * 5000)
    msg = flushed(rec)[-1]["error_message"]
    assert len(msg) == 1000
    assert msg.endswith("…") and msg.startswith("xxx")


def test_redact_runs_before_truncation(root: Path) -> None:
    seen: list[int] = []

    def redact(message: str) -> str:
        seen.append(len(message))
        return message.replace("sk-SECRET", "[key]")

    rec = vp.Recorder(root, strict=True, error_message_max=40, redact=redact)
    with pytest.raises(PermissionError):
        with rec.stage("claims_extraction"):
            raise PermissionError("bad key sk-SECRET " + "y" * 100)
    # an annotated message is cleaned the same way
    with pytest.raises(ValueError):
        with rec.stage("claims_extraction") as st:
            st.annotate(error_message="annotated sk-SECRET " + "z" * 100)
            raise ValueError("ignored")
    rows = [r for r in flushed(rec) if r["event_type"] == "claims_extraction_failed"]
    rec.close()
    assert seen[0] == len("bad key sk-SECRET ") + 100  # redact saw the whole message
    assert [r["error_message"] for r in rows] == [
        "bad key [key] " + "y" * 25 + "…",
        "annotated [key] " + "z" * 23 + "…",
    ]
    assert all(len(r["error_message"]) == 40 for r in rows)


def test_function_arguments_are_never_recorded(rec: vp.Recorder) -> None:
    @rec.stage("transcription")
    def transcribe(audio: str, *, token: str) -> str:
        return audio.upper()

    @rec.stage("claims_extraction")
    def extract(transcript: str) -> None:
        raise ValueError("no claims found")

    transcribe("AUDIO-SENTINEL", token="TOKEN-SENTINEL")
    with pytest.raises(ValueError):
        extract("TRANSCRIPT-SENTINEL")
    text = repr(flushed(rec))
    assert "no claims found" in text
    for sentinel in ("AUDIO-SENTINEL", "TOKEN-SENTINEL", "TRANSCRIPT-SENTINEL"):
        assert sentinel not in text


# ------------------------------------------------------------- stage name checks


def test_event_ids_of_one_recorder_sort_in_emission_order(rec: vp.Recorder) -> None:
    """The counter is zero-padded: ids sort as emitted across 9→10, 99→100, 999→1000,
    so (timestamp, event_id) orders events with tied timestamps as emitted."""
    when = dt.datetime(2026, 1, 5, 9, tzinfo=UTC)
    ids = [rec.emit("rate_limit_hit", timestamp=when, claim_count=i) for i in range(1005)]
    assert all(eid is not None and len(eid) == 16 + 12 for eid in ids)
    assert sorted(ids) == ids  # type: ignore[type-var]
    assert rec.flush()
    written = sorted(pq.read_table(rec.root / "events").to_pylist(), key=lambda r: r["event_id"])
    assert [r["event_id"] for r in written] == ids
    assert [r["claim_count"] for r in written] == list(range(1005))


def test_misspelt_stage_name_names_the_closest() -> None:
    rec = vp.Recorder("unused-root")
    with pytest.raises(ValueError, match="did you mean 'transcription'"):
        rec.stage("transcripton")
    with pytest.raises(ValueError, match="did you mean 'claims_extraction'"):
        vp.stage("claim_extraction")
    with pytest.raises(ValueError, match="not timed"):
        rec.stage("ingestion")
    rec.close()
    assert not Path("unused-root").exists()  # nothing is created until events are written


# ------------------------------------------------------------ context propagation


def test_artifact_context_is_inherited_across_await_gather_and_tasks(rec: vp.Recorder) -> None:
    @rec.stage("transcription")
    async def transcribe(delay: float) -> None:
        await asyncio.sleep(delay)

    async def handle(artifact_id: str, delay: float) -> None:
        async with rec.artifact(artifact_id, organization_id=f"org-{artifact_id}"):
            await asyncio.sleep(0)
            await transcribe(delay)  # across await
            await asyncio.create_task(transcribe(0))  # into a task
            rec.emit("rate_limit_hit")

    async def main() -> None:
        await asyncio.gather(handle("a", 0.03), handle("b", 0.0), handle("c", 0.01))

    asyncio.run(main())
    rows = flushed(rec)
    assert len(rows) == 3 * 7
    for r in rows:
        assert r["artifact_id"] in ("a", "b", "c")
        assert r["organization_id"] == f"org-{r['artifact_id']}"
    per_artifact = {a: types([r for r in rows if r["artifact_id"] == a]) for a in "abc"}
    for seq in per_artifact.values():
        assert seq.count("transcription_completed") == 2
        assert seq[0] == "artifact_received" and seq[-1] == "artifact_completed"
    assert vp.current_artifact() is None


def test_threads_inherit_only_a_copied_context(rec: vp.Recorder) -> None:
    results: dict[str, Any] = {}

    def work(name: str) -> None:
        results[name] = vp.current_artifact()
        rec.emit("rate_limit_hit", attributes={"thread": name})

    with rec.artifact("a-thread", coach_user_id="coach-1"):
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(work, "copied"))
        plain = threading.Thread(target=work, args=("plain",))
        copied.start(), plain.start()
        copied.join(), plain.join()
    assert results["copied"].artifact_id == "a-thread"
    assert results["plain"] is None
    rows = {r["attributes"][0][1]: r for r in flushed(rec) if r["event_type"] == "rate_limit_hit"}
    assert rows["copied"]["artifact_id"] == "a-thread" and rows["copied"]["coach_user_id"] == "coach-1"
    assert rows["plain"]["artifact_id"] is None


def test_artifact_scope_emits_received_and_outcome(rec: vp.Recorder) -> None:
    with rec.artifact(
        "a-ok", organization_id="o", coach_user_id="c", voice_note_id="v", source_channel="whatsapp"
    ):
        pass
    with pytest.raises(ZeroDivisionError):
        with rec.artifact("a-bad", organization_id="o"):
            1 / 0  # noqa: B018
    rows = flushed(rec)
    ok = [r for r in rows if r["artifact_id"] == "a-ok"]
    assert types(ok) == ["artifact_received", "artifact_completed"]
    assert ok[0]["source_channel"] == "whatsapp" and ok[0]["voice_note_id"] == "v"
    assert ok[0]["pipeline_stage"] == "ingestion"
    bad = [r for r in rows if r["artifact_id"] == "a-bad"]
    assert types(bad) == ["artifact_received", "artifact_failed"]
    assert bad[1]["error_code"] == "ZeroDivisionError"


# ------------------------------------------------------------------------ emit


def test_emit_with_timestamp_and_attributes(rec: vp.Recorder) -> None:
    when = dt.datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    eid = rec.emit(
        "budget_threshold_reached",
        timestamp=when,
        attributes={"budget": "monthly", "ünïcode": "✓"},
        ai_cost=12.5,
    )
    eid2 = rec.emit("circuit_breaker_opened", timestamp=when.timestamp() + 3600)
    rows = flushed(rec)
    assert [r["event_id"] for r in rows] == [eid, eid2]
    assert rows[0]["timestamp"] == when
    assert dict(rows[0]["attributes"]) == {"budget": "monthly", "ünïcode": "✓"}
    assert rows[0]["ai_cost"] == 12.5
    assert rows[1]["timestamp"] == when + dt.timedelta(hours=1)
    # backfilled events land in their own hour partitions
    hours = sorted(p.parent.name for p in (rec.root / "events").rglob("*.parquet"))
    assert hours == ["hour=05", "hour=06"]
    assert all("date=2025-03-04" in str(p) for p in (rec.root / "events").rglob("*.parquet"))


def test_emit_defaults_the_stage_and_takes_context(rec: vp.Recorder) -> None:
    with rec.artifact("a-9", organization_id="org-9"):
        rec.emit("draft_confirmed", actor="coach@example.org")
        rec.emit("artifact_status_changed", previous_status="received", new_status="transcribing")
    rows = [r for r in flushed(rec) if r["event_type"] in ("draft_confirmed", "artifact_status_changed")]
    assert rows[0]["pipeline_stage"] == "confirmation" and rows[0]["actor"] == "coach@example.org"
    assert rows[1]["previous_status"] == "received" and rows[1]["new_status"] == "transcribing"
    assert all(r["artifact_id"] == "a-9" and r["organization_id"] == "org-9" for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"claim_count": "3"}, "claim_count must be a 32-bit integer"),
        ({"claim_count": 2**31}, "claim_count must be a 32-bit integer"),
        ({"claim_count": True}, "claim_count must be a 32-bit integer"),
        ({"confidence_score": float("nan")}, "confidence_score must be a finite number"),
        ({"ai_model": 4.5}, "ai_model must be a string"),
        ({"organization_id": b"org"}, "organization_id must be a string"),
        ({"retry_attempt": "1"}, "retry_attempt must be a 32-bit integer"),
        ({"attributes": {"k": 1}}, "attributes must be a mapping of strings to strings"),
        ({"timestamp": dt.datetime(2025, 1, 1)}, "timezone-aware"),
        ({"timestamp": 1e30}, "years 1-9999"),
        ({"event_id": "mine"}, "unknown field 'event_id'"),
        ({"claimcount": 1}, "unknown field 'claimcount'"),
    ],
)
def test_invalid_values_raise_when_strict(rec: vp.Recorder, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(EmitError, match=message):
        rec.emit("claims_extracted", **kwargs)


def test_invalid_values_are_counted_not_raised(lax: vp.Recorder, caplog: pytest.LogCaptureFixture) -> None:
    assert lax.emit("claims_extracted", claim_count="three", ai_model="gpt") is not None  # field dropped
    assert lax.emit("claims_extracted", claimcount=3) is None  # unknown field: event rejected
    assert lax.emit("claim_extracted") is None  # unknown event type
    assert lax.emit("claims_extracted", timestamp=1e30) is None
    with lax.stage("transcription") as st:
        st.annotate(confidence_score="high", ai_model="whisper-1")
    stats = lax.stats()
    assert stats["invalid"] == 5
    rows = flushed(lax)
    assert types(rows) == ["claims_extracted", "transcription_started", "transcription_completed"]
    assert rows[0]["claim_count"] is None and rows[0]["ai_model"] == "gpt"
    assert rows[2]["confidence_score"] is None and rows[2]["ai_model"] == "whisper-1"
    assert "did you mean 'claims_extracted'" in caplog.text


def test_unstorable_strings_do_not_block_later_events(lax: vp.Recorder) -> None:
    lax.emit("rate_limit_hit", ai_model="bad \ud800 surrogate")
    lax.emit("rate_limit_hit", ai_model="fine")
    rows = flushed(lax)
    assert [r["ai_model"] for r in rows] == ["bad \ufffd surrogate", "fine"]
    assert lax.stats()["invalid"] == 1


class Channel(str, enum.Enum):
    WHATSAPP = "whatsapp"


class Count(enum.IntEnum):
    ONE = 1


def test_ids_from_a_database_are_stored_as_strings(rec: vp.Recorder) -> None:
    """Ints and UUIDs given for string columns are stored as str(value) (strict: no
    error); str/int subclasses (enums) as their plain value."""
    org = uuid.uuid4()
    with rec.artifact(12345, organization_id=org, coach_user_id=7, source_channel=Channel.WHATSAPP):
        with rec.stage("transcription") as st:
            st.annotate(ai_model=Channel.WHATSAPP, claim_count=Count.ONE)
        rec.emit("draft_confirmed", actor=42, voice_note_id=uuid.UUID(int=1))
    rows = flushed(rec)
    assert len(rows) == 5 and rec.stats()["invalid"] == 0
    assert {r["artifact_id"] for r in rows} == {"12345"}
    assert {r["organization_id"] for r in rows} == {str(org)}
    assert {r["coach_user_id"] for r in rows} == {"7"}
    assert rows[0]["source_channel"] == "whatsapp"
    done = next(r for r in rows if r["event_type"] == "transcription_completed")
    assert (done["ai_model"], done["claim_count"]) == ("whatsapp", 1)
    confirmed = next(r for r in rows if r["event_type"] == "draft_confirmed")
    assert confirmed["actor"] == "42" and confirmed["voice_note_id"] == str(uuid.UUID(int=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"artifact_id": 12.5}, "artifact_id must be a string"),
        ({"artifact_id": "a", "organization_id": object()}, "organization_id must be a string"),
        ({"artifact_id": "a", "coach_user_id": True}, "coach_user_id must be a string"),
        ({"artifact_id": "a", "retry_attempt": "one"}, "retry_attempt must be a 32-bit integer"),
        ({"artifact_id": None}, "artifact_id is required"),
    ],
)
def test_invalid_artifact_values_raise_when_strict(
    rec: vp.Recorder, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(vp.EmitError, match=message):
        rec.artifact(**kwargs)


def test_an_invalid_id_costs_only_its_field(lax: vp.Recorder, caplog: pytest.LogCaptureFixture) -> None:
    """A bad id is left out where it enters; the batch it shares with good events is
    written whole (it used to be set aside, every event of it dropped)."""
    for i in range(300):
        lax.emit("rate_limit_hit", claim_count=i)
    with lax.artifact(12.5, organization_id=object(), coach_user_id=[7], retry_attempt="one"):  # type: ignore[arg-type]
        with lax.stage("transcription"):
            pass
    lax.emit("rate_limit_hit", organization_id=uuid.uuid4, coach_user_id=3.0)  # the function, a float
    rows = flushed(lax)
    s = lax.stats()
    assert (s["invalid"], s["dropped"], s["written"]) == (6, 0, 305)
    assert len(rows) == 305
    # in emission order: read_events orders by time, and the wall clock may step back
    scoped = sorted(
        (r for r in rows if r["event_type"] != "rate_limit_hit"),
        key=lambda r: (len(r["event_id"]), r["event_id"]),
    )
    assert types(scoped) == [  # retry_attempt left out, but the scope is still a retry
        "transcription_started",
        "transcription_completed",
        "retry_succeeded",
        "artifact_completed",
    ]
    assert all(r[c] is None for r in scoped for c in ("artifact_id", "organization_id", "coach_user_id"))
    assert rows[-1]["organization_id"] is None and rows[-1]["coach_user_id"] is None
    assert "artifact_id must be a string (or an int or UUID id), got float" in caplog.text


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_values_whose_own_methods_fail_are_invalid_not_raised(lax: vp.Recorder) -> None:
    with lax.artifact("a-1", retry_attempt=Unprintable()):  # type: ignore[arg-type]
        lax.annotate(claim_count=Unprintable())  # outside a stage: invalid too
        lax.emit("rate_limit_hit", claim_count=Unprintable(), timestamp=Unprintable())  # type: ignore[arg-type]
        lax.emit("rate_limit_hit", confidence_score=Unprintable())
    assert lax.stats()["invalid"] == 4
    assert types(flushed(lax)) == ["rate_limit_hit", "retry_succeeded", "artifact_completed"]


def test_retry_attempt_as_a_string_of_digits_is_taken_as_its_int(lax: vp.Recorder) -> None:
    """An attempt read from a queue message ("2") is a retry of attempt 2, not a new artifact."""
    with pytest.raises(RuntimeError), lax.artifact("a-1", retry_attempt="2"):  # type: ignore[arg-type]
        raise RuntimeError("boom")
    rows = flushed(lax)
    assert types(rows) == ["retry_failed", "artifact_failed"]
    assert {r["retry_attempt"] for r in rows} == {2}
    assert lax.stats()["invalid"] == 0


@pytest.mark.parametrize("attempt", ["x1", "1.5", -(2**40), True])
def test_an_invalid_retry_attempt_still_makes_a_retry_scope(lax: vp.Recorder, attempt: Any) -> None:
    """An invalid attempt is left out (NULL, counted invalid); the scope stays a retry:
    no artifact_received, and the retry's outcome is recorded."""
    with lax.artifact("a-1", retry_attempt=attempt):
        lax.emit("rate_limit_hit")
    with pytest.raises(RuntimeError), lax.artifact("a-2", retry_attempt=attempt):
        raise RuntimeError("boom")
    rows = flushed(lax)
    assert types(rows) == [
        "rate_limit_hit",
        "retry_succeeded",
        "artifact_completed",
        "retry_failed",
        "artifact_failed",
    ]
    assert all(r["retry_attempt"] is None for r in rows)
    assert lax.stats()["invalid"] == 2


def test_uuid_ids_reach_the_spool(root: Path) -> None:
    rec = vp.Recorder(root, durability="sync", strict=True)
    with rec.artifact(uuid.uuid4(), organization_id=uuid.uuid4()):
        rec.emit("rate_limit_hit", coach_user_id=uuid.uuid4())
    s = rec.stats()
    assert (s["emitted"], s["spooled"], s["write_errors"]) == (3, 3, 0)
    rec.close()
    assert len(read_events(root)) == 3


def test_unstorable_values_that_slip_past_validation_cost_only_themselves(
    lax: vp.Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: a row the validation did not vet (here made by hand) is
    repaired value by value when Arrow refuses it; every other event is written."""
    for i in range(100):
        lax.emit("rate_limit_hit", claim_count=i)
    now = time.time_ns() // 1000
    org = uuid.uuid4()
    bad = (next(lax._id_counter), "rate_limit_hit", now, ("a-1", None, org, None, None), None, None, None)
    lax._append((*bad, None, {"claim_count": "x", "ai_model": 5, "attributes": {"k": "v"}}))
    lax._append((next(lax._id_counter), None, now, None, None, None, None, None, None))  # no event type
    for i in range(100, 200):
        lax.emit("rate_limit_hit", claim_count=i)
    rows = flushed(lax)
    s = lax.stats()
    assert (s["written"], s["dropped"], s["invalid"]) == (201, 1, 3)
    assert sorted(r["claim_count"] for r in rows if r["claim_count"] is not None) == list(range(200))
    (repaired,) = [r for r in rows if r["artifact_id"] == "a-1"]
    assert repaired["organization_id"] == str(org) and repaired["ai_model"] == "5"
    assert repaired["claim_count"] is None and dict(repaired["attributes"]) == {"k": "v"}
    assert "coerced or left out 3 values" in caplog.text
    assert "claim_count must be a 32-bit integer" in caplog.text


# ----------------------------------------------------------------- default recorder


@pytest.fixture
def no_default() -> Iterator[None]:
    old = _swap_default(None)
    yield
    current = _swap_default(old)
    if current is not None:
        current.close()


@pytest.mark.usefixtures("no_default")
def test_module_level_default_recorder_is_bound_lazily(tmp_path: Path) -> None:
    @vp.stage("transcription")  # decorated before any recorder exists
    def transcribe() -> str:
        vp.annotate(ai_model="whisper-1")
        return "text"

    first = vp.configure(tmp_path / "one", strict=True)
    assert vp.get_recorder() is first
    with vp.artifact("a-1", organization_id="org"):
        transcribe()
        vp.emit("rate_limit_hit")
    assert vp.flush()
    second = vp.configure(tmp_path / "two", strict=True)  # replaces (and closes) the first
    transcribe()
    assert vp.flush()
    one, two = read_events(tmp_path / "one"), read_events(tmp_path / "two")
    assert types(one) == [
        "artifact_received",
        "transcription_started",
        "transcription_completed",
        "rate_limit_hit",
        "artifact_completed",
    ]
    assert one[2]["ai_model"] == "whisper-1" and one[3]["artifact_id"] == "a-1"
    assert types(two) == ["transcription_started", "transcription_completed"]
    assert first.emit("rate_limit_hit") is None and first.stats()["dropped"] == 1  # closed: dropped
    assert second is vp.get_recorder()


@pytest.mark.usefixtures("no_default")
def test_default_recorder_uses_voicepipe_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEPIPE_DATA", str(tmp_path / "env-root"))
    vp.emit("circuit_breaker_closed")
    assert vp.flush()
    assert types(read_events(tmp_path / "env-root")) == ["circuit_breaker_closed"]


# ------------------------------------------------------------------------ stats


def test_stats_counts_each_outcome(root: Path) -> None:
    rec = vp.Recorder(root, flush_interval=60)
    for _ in range(5):
        rec.emit("rate_limit_hit")
    rec.emit("rate_limit_hit", claim_count="x")  # invalid field, event kept
    s = rec.stats()
    assert (s["emitted"], s["invalid"], s["written"], s["buffered"]) == (6, 1, 0, 6)
    assert rec.flush()
    s = rec.stats()
    assert (s["emitted"], s["written"], s["buffered"], s["dropped"], s["write_errors"]) == (6, 6, 0, 0, 0)
    assert s["spooled"] in (0, 6)  # the flush may beat the spool interval
    rec.close()
    rec.close()  # idempotent
    rec.emit("rate_limit_hit")
    assert rec.stats()["dropped"] == 1
    assert len(read_events(root)) == 6


def test_unwritable_root_never_raises_into_the_pipeline(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the root should be")
    rec = vp.Recorder(blocker, flush_interval=0.05, spool_interval=0.02)
    with rec.artifact("a-1"):
        with rec.stage("transcription"):
            pass
    assert rec.flush() is False
    s = rec.stats()
    assert s["emitted"] == 4 and s["written"] == 0 and s["write_errors"] >= 1 and s["buffered"] == 4
    rec.close()
    s = rec.stats()
    # in memory only: lost at close, and counted once (as dropped, no longer as buffered)
    assert (s["emitted"], s["dropped"], s["buffered"], s["written"]) == (4, 4, 0, 0)
    assert rec.flush() is False  # nothing is written after close


def test_a_strict_error_on_entry_leaves_no_context_behind(tmp_path: Path) -> None:
    """A strict recorder that raises on entering an artifact or stage (here: the
    spool cannot be written) must not leave that artifact or stage bound."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the root should be")
    for kind in ("artifact", "stage"):
        rec = vp.Recorder(blocker, durability="sync", strict=True)
        with pytest.raises(EmitError, match="spool write failed"):
            with rec.artifact("a-1") if kind == "artifact" else rec.stage("transcription"):
                pass
        assert vp.current_artifact() is None and _stage_var.get() is None
        with pytest.raises(EmitError):  # the entry event, kept in memory, cannot be stored
            rec.close()


def test_emit_after_close_returns_none_and_counts_a_drop(root: Path) -> None:
    rec = vp.Recorder(root)
    assert rec.emit("rate_limit_hit") is not None
    rec.close()
    assert rec.emit("rate_limit_hit") is None
    s = rec.stats()
    assert (s["emitted"], s["written"], s["dropped"], s["buffered"]) == (1, 1, 1, 0)


def test_flush_honours_its_timeout(root: Path) -> None:
    """flush(timeout=) gives up waiting (False) when a write in progress holds it
    up; the flush then completes in the background."""
    rec = vp.Recorder(root, flush_interval=60)
    rec.emit("rate_limit_hit")
    release = threading.Event()

    def slow_writer() -> None:  # stands in for a background write stuck on slow storage
        with rec._write_lock:
            release.wait(10)

    holder = threading.Thread(target=slow_writer)
    holder.start()
    try:
        time.sleep(0.05)
        started = time.monotonic()
        assert rec.flush(timeout=0.2) is False
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        holder.join()
    deadline = time.monotonic() + 10
    while rec.stats()["written"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.flush(timeout=10) is True and rec.stats()["written"] == 1
    rec.close()


# ------------------------------------------------------------------- public API


@pytest.mark.parametrize(
    ("function", "method"),
    [
        (vp.artifact, vp.Recorder.artifact),
        (vp.emit, vp.Recorder.emit),
        (vp.flush, vp.Recorder.flush),
    ],
)
def test_module_functions_mirror_the_recorder_methods(function: Any, method: Any) -> None:
    """vp.artifact(org_id=...) must be a type error for mypy, not a TypeError at run time."""
    params = list(inspect.signature(method).parameters.values())[1:]  # without self
    assert list(inspect.signature(function).parameters.values()) == params
    assert function.__doc__ and method.__doc__


def test_module_functions_are_documented_and_the_api_is_exported(tmp_path: Path) -> None:
    from voicepipe_obs.emit import ArtifactContext

    for fn in (vp.emit, vp.artifact, vp.annotate, vp.flush, vp.stage, vp.configure):
        assert (fn.__doc__ or "").strip(), fn.__name__
    assert vp.EmitError is EmitError and issubclass(vp.EmitError, vp.VoicepipeError)
    assert vp.ArtifactContext is ArtifactContext
    assert {"EmitError", "ArtifactContext"} <= set(vp.__all__)
    assert all(hasattr(vp, name) for name in vp.__all__)
    con = vp.connect(tmp_path)  # the package docs name exactly the views connect() makes
    names = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    views = {name for (name,) in names if not name.startswith("_")}
    documented = set(re.findall(r"``(\w+)``", (vp.__doc__ or "").split("Reader side:")[1]))
    assert documented == views
    assert all(view in (vp.connect.__doc__ or "") for view in views)
