"""voicepipe_obs: monitoring for a multi-stage AI voice-note pipeline.

Pipeline side (cheap to import; never loads duckdb or click)::

    import voicepipe_obs as vp
    rec = vp.Recorder(root="./voicepipe-data")

    @rec.stage("transcription")
    def transcribe(audio): ...

Reader side: ``vp.connect(root)`` returns a DuckDB connection with the views
``events``, ``artifacts``, ``snapshots_hourly``, ``snapshots_daily`` and ``alerts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .emit import (
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
from .errors import VoicepipeError
from .events import ARTIFACT_STATUSES, EVENT_TYPES, STAGES

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

__version__ = "0.1.0"

__all__ = [
    "ARTIFACT_STATUSES",
    "EVENT_TYPES",
    "STAGES",
    "ArtifactScope",
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


def connect(root: Any = None, **kwargs: Any) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over the data root with the views events, artifacts,
    snapshots_hourly, snapshots_daily and alerts (see :func:`voicepipe_obs.query.connect`)."""
    from .query import connect as _connect

    return _connect(root, **kwargs)
