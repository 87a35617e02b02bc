"""An app that configures the default recorder on a root of its own
(RETRY_APP_OTHER_ROOT): its stage events go there, but the retry's own events must
stay in the CLI's data root, where eligibility and the history read them."""

from __future__ import annotations

import os

import voicepipe_obs as vp

vp.configure(os.environ["RETRY_APP_OTHER_ROOT"], flush_interval=0.2)


@vp.retry_handler("transcription")
def retry_transcription(artifact_id: str, attempt: int) -> None:
    with vp.stage("transcription") as st:
        st.annotate(confidence_score=0.95)
