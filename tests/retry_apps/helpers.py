"""Helpers shared by the retry tests: record artifacts in a given state, read their
events back, and reset the handler registry and default recorder between tests."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import voicepipe_obs as vp
from voicepipe_obs import retry

ORDER = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")


def record_failed(
    rec: vp.Recorder, artifact_id: str, stage: str = "claims_extraction", org: str = "org-1"
) -> None:
    """An artifact that ran up to `stage` and failed there with TimeoutError."""
    try:
        with rec.artifact(
            artifact_id, organization_id=org, coach_user_id="coach-1", source_channel="whatsapp"
        ):
            for name in ORDER[: ORDER.index(stage) + 1]:
                with rec.stage(name):
                    if name == stage:
                        raise TimeoutError(f"{name} timed out")
    except TimeoutError:
        pass


def record_completed(rec: vp.Recorder, artifact_id: str, org: str = "org-1") -> None:
    with rec.artifact(artifact_id, organization_id=org, source_channel="app"):
        for name in ORDER:
            with rec.stage(name):
                pass


def record_in_flight(rec: vp.Recorder, artifact_id: str, minutes_ago: float = 0.0) -> None:
    """Received and transcribing, no outcome; the last event `minutes_ago`."""
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes_ago)
    rec.emit("artifact_received", artifact_id=artifact_id, organization_id="org-1", timestamp=when)
    rec.emit("transcription_started", artifact_id=artifact_id, organization_id="org-1", timestamp=when)


def events(root: Path, artifact_id: str) -> list[dict[str, Any]]:
    """The artifact's events, in time order, as dicts."""
    con = vp.connect(root)
    try:
        cur = con.execute(
            "SELECT * FROM events WHERE artifact_id = ? ORDER BY timestamp, event_id", [artifact_id]
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def status(root: Path, artifact_id: str) -> tuple[Any, ...]:
    """(status, retry_count, failed_stage, error_code) from the artifacts view."""
    con = vp.connect(root)
    try:
        row = con.execute(
            "SELECT status, retry_count, failed_stage, error_code FROM artifacts WHERE artifact_id = ?",
            [artifact_id],
        ).fetchone()
    finally:
        con.close()
    assert row is not None, f"no artifact {artifact_id}"
    return tuple(row)


def reset() -> None:
    """Forget handlers, drop imported retry apps, close the default recorder.

    The example pipeline stays imported (other test modules hold it); its handlers
    are registered again, on the default recorder, as importing it would."""
    retry.clear_handlers()
    owns = getattr(retry, "_runner_recorders", {})  # the retry's own, on roots handlers did not use
    for own in owns.values():
        own.close()
    owns.clear()
    for name in [m for m in sys.modules if m.startswith("retry_apps.") and m != "retry_apps.helpers"]:
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)
    example = sys.modules.get("voicepipe_obs._examples.voice_pipeline")
    if example is not None:
        example.use_recorder(None)
    emit_mod = sys.modules["voicepipe_obs.emit"]
    if emit_mod.is_configured():
        emit_mod.get_recorder().close()
    emit_mod._default = None
    retry._cli_recorder = None
