"""A queue-style app: the deferred handler only writes a job file into the directory
named by RETRY_APP_QUEUE (like Celery's .delay()); `work()` is the worker, which
reopens the artifact with rec.artifact(id, retry_attempt=n) and re-runs the stage.
RETRY_APP_ENQUEUE_FAIL makes enqueueing raise (broker down)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import voicepipe_obs as vp


@vp.retry_handler("transcription", deferred=True)
def enqueue_transcription(artifact_id: str, attempt: int) -> None:
    if os.environ.get("RETRY_APP_ENQUEUE_FAIL"):
        raise ConnectionError("broker unreachable")
    ctx = vp.current_artifact()
    assert ctx is not None and ctx.artifact_id == artifact_id
    job = {
        "artifact_id": artifact_id,
        "attempt": attempt,
        "organization_id": ctx.organization_id,
        "coach_user_id": ctx.coach_user_id,
    }
    queue = Path(os.environ["RETRY_APP_QUEUE"])
    queue.mkdir(parents=True, exist_ok=True)
    (queue / f"{artifact_id}-{attempt}.json").write_text(json.dumps(job))


def work(queue: Path, rec: vp.Recorder, fail: bool = False) -> int:
    """Run every queued job through `rec`; the number of jobs run."""
    done = 0
    for path in sorted(queue.glob("*.json")):
        job = json.loads(path.read_text())
        try:
            with rec.artifact(
                job["artifact_id"],
                retry_attempt=job["attempt"],
                organization_id=job["organization_id"],
                coach_user_id=job["coach_user_id"],
            ):
                with rec.stage("transcription") as st:
                    if fail:
                        raise RuntimeError("whisper still down")
                    st.annotate(confidence_score=0.97)
        except RuntimeError:
            pass
        path.unlink()
        done += 1
    return done
