"""voicepipe_obs: monitoring for a multi-stage AI voice-note pipeline.

Pipeline side (cheap to import; never loads duckdb or click)::

    import voicepipe_obs as vp
    rec = vp.Recorder(root="./voicepipe-data")

    @rec.stage("transcription")
    def transcribe(audio): ...

Reader side: ``vp.connect(root)`` returns a DuckDB connection with the views
``events`` (deduplicated by event_id), ``events_raw``, ``artifacts``,
``snapshots_hourly``, ``snapshots_daily``, ``alerts`` and ``alert_log``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .emit import (
    ArtifactContext,
    ArtifactScope,
    Recorder,
    StageRun,
    StageSpec,
    annotate,
    artifact,
    configure,
    current_artifact,
    emit,
    flush,
    get_recorder,
    recover_spools,
    retry_handler,
    stage,
)
from .errors import EmitError, VoicepipeError
from .events import ARTIFACT_STATUSES, EVENT_TYPES, STAGES

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

__version__ = "0.1.0"

__all__ = [
    "ARTIFACT_STATUSES",
    "EVENT_TYPES",
    "STAGES",
    "ArtifactContext",
    "ArtifactScope",
    "EmitError",
    "Recorder",
    "StageRun",
    "StageSpec",
    "VoicepipeError",
    "__version__",
    "annotate",
    "artifact",
    "configure",
    "connect",
    "current_artifact",
    "emit",
    "flush",
    "get_recorder",
    "recover_spools",
    "retry_handler",
    "stage",
]


def connect(
    root: str | os.PathLike[str] | None = None, *, database: str = ":memory:", live: bool = True
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over the data root (default ``$VOICEPIPE_DATA`` or
    ``./voicepipe-data``) with the views events, events_raw, artifacts,
    snapshots_hourly, snapshots_daily, alerts and alert_log. Live views by default:
    each query reads the files present when it runs (see
    :func:`voicepipe_obs.query.connect` for ``live=False`` and ``database``)."""
    from .query import connect as _connect

    return _connect(root, database=database, live=live)
