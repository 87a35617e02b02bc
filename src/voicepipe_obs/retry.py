"""Retry handlers: the registry behind ``@rec.retry_handler(stage)``, eligibility
checks, running a retry inside the artifact's context and recording its outcome.

(Stub: filled in by the retry work, issue 6.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .emit import Recorder

RETRY_STAGES = ("transcription", "claims_extraction", "entity_resolution", "draft_generation", "full")


@dataclass(frozen=True)
class Handler:
    stage: str
    fn: Callable[[str, int], Any]
    recorder: Recorder | None
    deferred: bool


_handlers: dict[str, Handler] = {}


def register_handler(
    stage: str, fn: Callable[[str, int], Any], *, recorder: Recorder | None, deferred: bool
) -> None:
    if stage not in RETRY_STAGES:
        raise ValueError(f"unknown retry stage {stage!r} (choose from {', '.join(RETRY_STAGES)})")
    _handlers[stage] = Handler(stage, fn, recorder, deferred)


def handlers() -> dict[str, Handler]:
    return dict(_handlers)
