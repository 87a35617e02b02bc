"""The event vocabulary: event types, pipeline stages, artifact statuses, the
stage → event mapping, the column layout of an event row and its Arrow schema.

This module owns names and types only. It does no I/O and imports pyarrow lazily
(only :func:`arrow_schema` needs it), so the pipeline side stays cheap to import.
Everything here is a contract with the Parquet files, the snapshot queries and
users' notebooks (DESIGN §4): add, never rename.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

#: Written into every Parquet file's key-value metadata under SCHEMA_VERSION_KEY.
SCHEMA_VERSION: Final = "1"
SCHEMA_VERSION_KEY: Final = b"voicepipe.schema_version"

# --------------------------------------------------------------------------- stages

STAGES: Final = (
    "ingestion",
    "transcription",
    "claims_extraction",
    "entity_resolution",
    "draft_generation",
    "confirmation",
)

#: The stages that are timed by ``rec.stage``; each has started/completed/failed events.
TIMED_STAGES: Final = (
    "transcription",
    "claims_extraction",
    "entity_resolution",
    "draft_generation",
)

#: stage → (started event, completion event, failure event)
STAGE_EVENTS: Final[dict[str, tuple[str, str, str]]] = {
    "transcription": ("transcription_started", "transcription_completed", "transcription_failed"),
    "claims_extraction": ("claims_extraction_started", "claims_extracted", "claims_extraction_failed"),
    "entity_resolution": (
        "entity_resolution_started",
        "entity_resolution_completed",
        "entity_resolution_failed",
    ),
    "draft_generation": ("draft_generation_started", "drafts_generated", "draft_generation_failed"),
}

#: Entity resolution completes as this event when disambiguation_count > 0.
DISAMBIGUATION_EVENT: Final = "entity_needs_disambiguation"

#: stage → every event that counts as the stage's successful completion.
STAGE_COMPLETION_EVENTS: Final[dict[str, tuple[str, ...]]] = {
    "transcription": ("transcription_completed",),
    "claims_extraction": ("claims_extracted",),
    "entity_resolution": ("entity_resolution_completed", DISAMBIGUATION_EVENT),
    "draft_generation": ("drafts_generated",),
}
STAGE_FAILURE_EVENTS: Final[dict[str, str]] = {s: ev[2] for s, ev in STAGE_EVENTS.items()}
STAGE_STARTED_EVENTS: Final[dict[str, str]] = {s: ev[0] for s, ev in STAGE_EVENTS.items()}

# ---------------------------------------------------------------------- event types

EVENT_TYPES: Final = (
    # artifact lifecycle
    "artifact_received",
    "artifact_status_changed",
    "artifact_completed",
    "artifact_failed",
    # transcription
    "transcription_started",
    "transcription_completed",
    "transcription_failed",
    # claims extraction
    "claims_extraction_started",
    "claims_extracted",
    "claims_extraction_failed",
    # entity resolution
    "entity_resolution_started",
    "entity_resolution_completed",
    "entity_needs_disambiguation",
    # draft generation and confirmation
    "draft_generation_started",
    "drafts_generated",
    "draft_confirmed",
    "draft_rejected",
    # system
    "circuit_breaker_opened",
    "circuit_breaker_closed",
    "retry_initiated",
    "retry_succeeded",
    "retry_failed",
    # cost
    "budget_threshold_reached",
    "budget_exceeded",
    "rate_limit_hit",
    # the three the plan's own metrics need
    "entity_resolution_failed",
    "draft_generation_failed",
    "entity_user_resolved",
)
EVENT_TYPE_SET: Final = frozenset(EVENT_TYPES)

#: The pipeline_stage an event type is recorded under when the caller gives none.
EVENT_STAGE: Final[dict[str, str]] = {
    "artifact_received": "ingestion",
    "draft_confirmed": "confirmation",
    "draft_rejected": "confirmation",
    "entity_user_resolved": "entity_resolution",
    DISAMBIGUATION_EVENT: "entity_resolution",
}
for _stage, _evs in STAGE_EVENTS.items():
    for _ev in _evs:
        EVENT_STAGE[_ev] = _stage

STAGE_EVENT_TYPES: Final = frozenset(ev for evs in STAGE_EVENTS.values() for ev in evs) | {
    DISAMBIGUATION_EVENT
}
FAILURE_EVENT_TYPES: Final = frozenset(STAGE_FAILURE_EVENTS.values()) | {
    "artifact_failed",
    "retry_failed",
}
SUCCESS_EVENT_TYPES: Final = frozenset(ev for evs in STAGE_COMPLETION_EVENTS.values() for ev in evs) | {
    "artifact_completed",
    "retry_succeeded",
    "draft_confirmed",
    "circuit_breaker_closed",
}

# ------------------------------------------------------------------------- statuses

#: Artifact statuses, derived from events (never stored).
ARTIFACT_STATUSES: Final = (
    "received",
    "transcribing",
    "transcribed",
    "processing",
    "completed",
    "failed",
    "retrying",
)
TERMINAL_STATUSES: Final = frozenset({"completed", "failed"})

# -------------------------------------------------------------------------- columns

#: (name, kind) in file order. kind is one of: id, str, ts, f64, i32, map.
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("event_id", "str"),
    ("event_type", "str"),
    ("timestamp", "ts"),
    ("artifact_id", "str"),
    ("voice_note_id", "str"),
    ("organization_id", "str"),
    ("coach_user_id", "str"),
    ("source_channel", "str"),
    ("pipeline_stage", "str"),
    ("stage_started_at", "ts"),
    ("stage_completed_at", "ts"),
    ("duration_ms", "f64"),
    ("previous_status", "str"),
    ("new_status", "str"),
    ("error_message", "str"),
    ("error_code", "str"),
    ("claim_count", "i32"),
    ("entity_count", "i32"),
    ("disambiguation_count", "i32"),
    ("draft_count", "i32"),
    ("transcript_word_count", "i32"),
    ("retry_attempt", "i32"),
    ("confidence_score", "f64"),
    ("transcript_duration", "f64"),
    ("ai_cost", "f64"),
    ("ai_model", "str"),
    ("actor", "str"),
    ("attributes", "map"),
)
COLUMN_NAMES: Final = tuple(name for name, _ in COLUMNS)
COLUMN_INDEX: Final = {name: i for i, name in enumerate(COLUMN_NAMES)}
COLUMN_KINDS: Final = dict(COLUMNS)
NUM_COLUMNS: Final = len(COLUMNS)

#: Fields a caller may set through emit()/annotate() (everything but the identity).
SETTABLE_FIELDS: Final = frozenset(COLUMN_NAMES) - {"event_id", "event_type", "timestamp"}
#: Fields bound by the artifact context.
CONTEXT_FIELDS: Final = (
    "artifact_id",
    "voice_note_id",
    "organization_id",
    "coach_user_id",
    "source_channel",
    "retry_attempt",
)
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1


@functools.cache
def arrow_schema() -> pa.Schema:
    """The Arrow schema of an event file (with the schema version in its metadata)."""
    import pyarrow as pa

    types = {
        "str": pa.string(),
        "ts": pa.timestamp("us", tz="UTC"),
        "f64": pa.float64(),
        "i32": pa.int32(),
        "map": pa.map_(pa.string(), pa.string()),
    }
    fields = [
        pa.field(name, types[kind], nullable=name not in ("event_id", "event_type", "timestamp"))
        for name, kind in COLUMNS
    ]
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


def closest(name: str, candidates: tuple[str, ...] | frozenset[str]) -> str | None:
    """The candidate closest to a misspelt name, for error messages."""
    import difflib

    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return match[0] if match else None
