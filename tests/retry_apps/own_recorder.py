"""An app with its own Recorder created without a root: `voicepipe retry` must make
it record into the CLI's data root."""

from __future__ import annotations

import voicepipe_obs as vp

rec = vp.Recorder(flush_interval=0.2)


@rec.retry_handler("transcription")
def retry_transcription(artifact_id: str, attempt: int) -> None:
    with rec.stage("transcription") as st:
        st.annotate(confidence_score=0.95)
