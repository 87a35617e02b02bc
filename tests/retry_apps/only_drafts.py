"""Registers a handler for draft_generation only (the "no handler" refusal)."""

from __future__ import annotations

import voicepipe_obs as vp


@vp.retry_handler("draft_generation")
def retry_drafts(artifact_id: str, attempt: int) -> None:
    with vp.stage("draft_generation"):
        vp.annotate(draft_count=1)
