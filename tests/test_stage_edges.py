"""Stage and artifact edges: exceptions that are awkward to record (lone surrogates,
an ``error_code`` property that raises), strict mode never replacing the pipeline's
exception, generators closed early, async callables that are not coroutine
functions, fields annotate() must refuse, and the documented executor form of
context propagation. Events are read back from real Parquet, or captured with
``voicepipe_obs.testing.capture()`` where the test is about the capture."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import voicepipe_obs as vp
from voicepipe_obs.emit import _stage_var
from voicepipe_obs.errors import EmitError
from voicepipe_obs.testing import FrozenClock, capture

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def flushed(rec: vp.Recorder) -> list[dict[str, Any]]:
    """Every event the recorder wrote, from its Parquet files, in emission order."""
    assert rec.flush()
    rows: list[dict[str, Any]] = []
    for path in sorted((rec.root / "events").rglob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda r: r["event_id"])


def outcomes(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["event_type"], r["error_code"]) for r in rows]


@pytest.fixture
def lax(root: Path) -> Iterator[vp.Recorder]:
    rec = vp.Recorder(root, flush_interval=0.2, spool_interval=0.05)
    yield rec
    rec.close()


# ------------------------------------------------- the pipeline's exception wins


def test_a_lone_surrogate_in_the_exception_propagates_unchanged_from_a_capture() -> None:
    err = ValueError("filename \udcff.wav not decodable")

    @vp.stage("transcription")
    def transcribe() -> None:
        raise err

    with capture() as cap:
        with pytest.raises(ValueError) as info:
            with vp.artifact("a-1"):
                transcribe()
    assert info.value is err
    failed = cap.of_type("transcription_failed", "artifact_failed")
    assert [e["error_message"] for e in failed] == ["filename \ufffd.wav not decodable"] * 2
    assert {e["error_code"] for e in failed} == {"ValueError"}
    assert cap.stats()["invalid"] == 0  # the pipeline's text, not an invalid value of the caller's


def test_a_lone_surrogate_in_the_exception_is_replaced_in_parquet_not_counted(rec: vp.Recorder) -> None:
    class DecodeFailed(Exception):
        error_code = "BAD_\udcffNAME"

    with pytest.raises(DecodeFailed):
        with rec.artifact("a-1"), rec.stage("transcription"):
            raise DecodeFailed("cannot open \udcff.wav")
    rows = flushed(rec)
    assert [(r["error_code"], r["error_message"]) for r in rows if r["error_code"]] == [
        ("BAD_\ufffdNAME", "cannot open \ufffd.wav")
    ] * 2
    assert rec.stats()["invalid"] == 0


def test_strict_capture_records_a_failure_with_an_unstorable_annotation() -> None:
    """The caller's own bad value is still a problem (counted), but it must not turn
    the pipeline's exception into EmitError, nor cost the failure events."""
    err = RuntimeError("model down")
    with capture() as cap:
        with pytest.raises(RuntimeError) as info:
            with cap.artifact("a-1") as art:
                art.annotate(ai_model="art \ud800")
                with cap.stage("claims_extraction") as st:
                    st.annotate(ai_model="stage \ud800")
                    raise err
    assert info.value is err
    assert cap.types()[-2:] == ["claims_extraction_failed", "artifact_failed"]
    assert [e["ai_model"] for e in cap.events[-2:]] == ["stage \ufffd", "art \ufffd"]
    assert cap.stats()["invalid"] == 2
    # without an exception to protect, strict still raises for the caller's value
    with capture() as cap, pytest.raises(EmitError, match="lone surrogate"):
        with cap.stage("claims_extraction") as st:
            st.annotate(ai_model="\ud800")


@pytest.mark.parametrize("strict", [True, False])
def test_an_error_code_property_that_raises_still_records_both_failures(root: Path, strict: bool) -> None:
    class WeirdError(Exception):
        @property
        def error_code(self) -> str:
            return str(self.args[1])  # IndexError: only one argument given

    class Unprintable(Exception):
        @property
        def error_code(self) -> str:
            raise RuntimeError("broken property")

        def __str__(self) -> str:
            raise RuntimeError("broken __str__")

    rec = vp.Recorder(root, strict=strict)
    for artifact_id, exc in [("a-weird", WeirdError("x")), ("a-unprintable", Unprintable())]:
        with pytest.raises(type(exc)) as info:
            with rec.artifact(artifact_id), rec.stage("claims_extraction"):
                raise exc
        assert info.value is exc
    rows = flushed(rec)
    failed = [(r["artifact_id"], *o) for r, o in zip(rows, outcomes(rows), strict=True) if o[1]]
    assert failed == [
        ("a-weird", "claims_extraction_failed", "WeirdError"),
        ("a-weird", "artifact_failed", "WeirdError"),
        ("a-unprintable", "claims_extraction_failed", "Unprintable"),
        ("a-unprintable", "artifact_failed", "Unprintable"),
    ]
    assert {r["error_message"] for r in rows if r["artifact_id"] == "a-unprintable" and r["error_code"]} == {
        "<unprintable exception>"
    }
    rec.close()
    status = vp.connect(root).execute("select artifact_id, status from artifacts order by 1").fetchall()
    assert status == [("a-unprintable", "failed"), ("a-weird", "failed")]  # none left in flight


# ------------------------------------------------------------ generators closed early


def test_a_stage_in_a_generator_closed_early_completes(rec: vp.Recorder) -> None:
    def transcribe_stream(chunks: list[str]) -> Iterator[str]:
        with rec.stage("transcription"):
            yield from (c.upper() for c in chunks)

    with rec.artifact("a-break"):
        for text in transcribe_stream(["a", "b", "c"]):
            if text == "B":
                break  # the consumer has what it needs

    def artifact_stream() -> Iterator[int]:
        with rec.artifact("a-closed"):
            yield 1
            yield 2

    gen = artifact_stream()
    next(gen)
    gen.close()
    rows = flushed(rec)
    assert outcomes(rows) == [
        ("artifact_received", None),
        ("transcription_started", None),
        ("transcription_completed", None),
        ("artifact_completed", None),
        ("artifact_received", None),
        ("artifact_completed", None),
    ]
    assert rows[3]["new_status"] == "completed"


def test_a_stage_in_an_async_generator_closed_early_completes(rec: vp.Recorder) -> None:
    async def stream(chunks: list[str]) -> AsyncIterator[str]:
        async with rec.stage("transcription"):
            for c in chunks:
                await asyncio.sleep(0)
                yield c

    async def main() -> None:
        async with rec.artifact("a-aclose"):
            agen = stream(["a", "b", "c"])
            async for _ in agen:
                break
            await agen.aclose()

    asyncio.run(main())
    assert outcomes(flushed(rec)) == [
        ("artifact_received", None),
        ("transcription_started", None),
        ("transcription_completed", None),
        ("artifact_completed", None),
    ]


def test_a_cancelled_stage_is_still_a_failure(rec: vp.Recorder) -> None:
    """Deliberate and unchanged: cancellation (a timeout) means the work did not finish."""

    @rec.stage("transcription")
    async def slow() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        async with rec.artifact("a-timeout"):
            await asyncio.wait_for(slow(), timeout=0.01)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())
    assert outcomes(flushed(rec))[2:] == [
        ("transcription_failed", "CancelledError"),
        ("artifact_failed", "TimeoutError"),
    ]


# ------------------------------------------------------- async callables, not coroutine functions


def test_an_object_with_an_async_call_is_timed_when_awaited() -> None:
    clock = FrozenClock("2026-01-05T09:00:00Z")

    class Transcriber:
        async def __call__(self, audio: bytes) -> str:
            clock.advance(2.0)
            await asyncio.sleep(0)
            vp.annotate(confidence_score=0.8)
            if audio == b"bad":
                raise TimeoutError("whisper timed out")
            return "text"

    transcribe = vp.stage("transcription")(Transcriber())
    assert inspect.iscoroutinefunction(transcribe)

    async def main() -> None:
        async with vp.artifact("a-ok"):
            assert await transcribe(b"ok") == "text"
        async with vp.artifact("a-bad"):
            await transcribe(b"bad")

    with capture(clock=clock) as cap, pytest.raises(TimeoutError):
        asyncio.run(main())
    done = cap.of_type("transcription_completed", "transcription_failed")
    assert [(e["event_type"], e["duration_ms"], e["confidence_score"]) for e in done] == [
        ("transcription_completed", 2000.0, 0.8),
        ("transcription_failed", 2000.0, 0.8),
    ]
    assert done[1]["error_code"] == "TimeoutError"


def test_a_function_returning_a_coroutine_is_timed_when_awaited() -> None:
    clock = FrozenClock("2026-01-05T09:00:00Z")

    class Extractor:
        async def __call__(self, text: str, *, fail: bool) -> int:
            clock.advance(1.5)
            vp.annotate(claim_count=3)
            if fail:
                raise RuntimeError("llm down")
            return 3

    # a partial of an async callable object: not recognisable at decoration time
    extract = vp.stage("claims_extraction")(functools.partial(Extractor(), fail=False))
    fail = vp.stage("claims_extraction")(functools.partial(Extractor(), fail=True))

    async def main() -> None:
        async with vp.artifact("a-1"):
            pending = extract("text")
            assert _stage_var.get() is None  # the caller is not inside the stage meanwhile
            assert await pending == 3
            with pytest.raises(RuntimeError, match="llm down"):
                await fail("text")

    with capture(clock=clock) as cap:
        asyncio.run(main())
    done = cap.of_type("claims_extracted", "claims_extraction_failed")
    assert [(e["event_type"], e["duration_ms"], e["claim_count"], e["error_code"]) for e in done] == [
        ("claims_extracted", 1500.0, 3, None),
        ("claims_extraction_failed", 1500.0, 3, "RuntimeError"),
    ]


# ------------------------------------------------------- fields annotate() must refuse


def test_annotate_refuses_the_fields_a_stage_records_itself(
    lax: vp.Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voicepipe_obs"):
        with lax.artifact("a-1") as art:
            art.annotate(new_status="processing", duration_ms=1.0, ai_cost=0.5)
            with lax.stage("transcription") as st:
                st.annotate(duration_ms=1234.0, pipeline_stage="confirmation", claim_count=2)
                lax.annotate(stage_started_at=0.0, stage_completed_at=0.0)
    assert lax.stats()["invalid"] == 6
    rows = flushed(lax)
    done = rows[2]
    assert done["event_type"] == "transcription_completed" and done["pipeline_stage"] == "transcription"
    assert done["claim_count"] == 2 and done["duration_ms"] != 1234.0
    assert done["stage_started_at"] == rows[1]["timestamp"]
    assert rows[3]["new_status"] == "completed" and rows[3]["ai_cost"] == 0.5
    for name in ("duration_ms", "pipeline_stage", "stage_started_at", "stage_completed_at", "new_status"):
        assert f"{name} is recorded by" in caplog.text


@pytest.mark.parametrize("field", ["duration_ms", "pipeline_stage", "stage_started_at", "stage_completed_at"])
def test_strict_capture_raises_for_a_field_the_stage_records_itself(field: str) -> None:
    value = "confirmation" if field == "pipeline_stage" else 1.0
    with capture() as cap:
        with pytest.raises(EmitError, match=f"{field} is recorded by the stage itself"):
            with cap.stage("transcription") as st:
                st.annotate(**{field: value})
        with pytest.raises(EmitError, match=r"new_status is recorded by rec\.artifact"):
            with cap.artifact("a-1") as art:
                art.annotate(new_status="processing")


# ---------------------------------------------------------- threads and executors


def test_the_documented_executor_form_carries_the_artifact(rec: vp.Recorder) -> None:
    assert "loop.run_in_executor(None, contextvars.copy_context().run, fn" in README

    def blocking_work() -> None:
        with rec.stage("transcription"):
            rec.annotate(confidence_score=0.9)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with rec.artifact("via-executor"):
            await loop.run_in_executor(None, contextvars.copy_context().run, blocking_work)
        async with rec.artifact("via-to-thread"):
            await asyncio.to_thread(blocking_work)

    asyncio.run(main())
    done = [r for r in flushed(rec) if r["event_type"] == "transcription_completed"]
    assert sorted((r["artifact_id"], r["confidence_score"]) for r in done) == [
        ("via-executor", 0.9),
        ("via-to-thread", 0.9),
    ]
