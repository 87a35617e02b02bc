"""The recording core end to end: decorate, flush, read back through the views."""

from __future__ import annotations

from pathlib import Path

import voicepipe_obs as vp


def test_stage_events_reach_the_views(rec: vp.Recorder, root: Path) -> None:
    with rec.artifact("a-1", organization_id="org-1", source_channel="whatsapp"):
        with rec.stage("transcription") as st:
            st.annotate(confidence_score=0.94, ai_cost=0.006)
    assert rec.flush()
    con = vp.connect(root)
    types = [
        r[0] for r in con.execute("SELECT event_type FROM events ORDER BY timestamp, event_type").fetchall()
    ]
    assert sorted(types) == sorted(
        ["artifact_received", "transcription_started", "transcription_completed", "artifact_completed"]
    )
    status, org, cost = con.execute(
        "SELECT status, organization_id, total_ai_cost FROM artifacts WHERE artifact_id = 'a-1'"
    ).fetchone()
    assert (status, org, cost) == ("completed", "org-1", 0.006)
