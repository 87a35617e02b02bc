"""A four-stage pipeline on the default recorder with a retry handler per stage and
"full". Test knobs (environment, read at call time):

- RETRY_APP_FAIL_STAGE: the stage that raises TimeoutError;
- RETRY_APP_STARTED: a file each handler appends its pid to when it starts;
- RETRY_APP_GO: a file each handler waits for (up to 60 s) before running;
- RETRY_APP_EXIT: an exit status each handler calls ``sys.exit`` with.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import voicepipe_obs as vp

ORDER = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")


def _maybe_fail(stage: str) -> None:
    if os.environ.get("RETRY_APP_FAIL_STAGE") == stage:
        raise TimeoutError(f"{stage} timed out")


@vp.stage("transcription")
def transcribe(artifact_id: str) -> None:
    _maybe_fail("transcription")
    vp.annotate(confidence_score=0.9, ai_cost=0.01, transcript_word_count=42)


@vp.stage("claims_extraction")
def extract(artifact_id: str) -> None:
    _maybe_fail("claims_extraction")
    vp.annotate(claim_count=3, confidence_score=0.8, ai_cost=0.02)


@vp.stage("entity_resolution")
def resolve(artifact_id: str) -> None:
    _maybe_fail("entity_resolution")
    vp.annotate(entity_count=4, disambiguation_count=0)


@vp.stage("draft_generation")
def draft(artifact_id: str) -> None:
    _maybe_fail("draft_generation")
    vp.annotate(draft_count=2, ai_cost=0.03)


STAGE_FUNCS = {
    "transcription": transcribe,
    "claims_extraction": extract,
    "entity_resolution": resolve,
    "draft_generation": draft,
}


def run_from(artifact_id: str, stage: str) -> None:
    for name in ORDER[ORDER.index(stage) :]:
        STAGE_FUNCS[name](artifact_id)


def process(artifact_id: str, organization_id: str = "org-1", coach: str = "coach-1") -> None:
    """The normal entry point: receive the artifact and run every stage."""
    with vp.artifact(
        artifact_id, organization_id=organization_id, coach_user_id=coach, source_channel="whatsapp"
    ):
        run_from(artifact_id, "transcription")


def _gate() -> None:
    started = os.environ.get("RETRY_APP_STARTED")
    if started:
        with open(started, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    go = os.environ.get("RETRY_APP_GO")
    if go:
        deadline = time.monotonic() + 60
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def _handler(stage: str):  # type: ignore[no-untyped-def]
    def retry(artifact_id: str, attempt: int) -> None:
        if os.environ.get("RETRY_APP_LAZY_IMPORT"):
            import retry_apps.lazy_import  # noqa: F401 - a slow import on first use
        _gate()
        if os.environ.get("RETRY_APP_EXIT"):
            sys.exit(int(os.environ["RETRY_APP_EXIT"]))
        run_from(artifact_id, "transcription" if stage == "full" else stage)

    retry.__name__ = retry.__qualname__ = f"retry_{stage}"
    return retry


for _stage in (*ORDER, "full"):
    vp.retry_handler(_stage)(_handler(_stage))
