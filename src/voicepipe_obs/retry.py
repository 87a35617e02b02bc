"""Manual retries: the handler registry behind ``@rec.retry_handler(stage)``, the
per-artifact retry lock, eligibility (why a retry may or may not run), running a
retry inside the artifact's context and recording its outcome, bulk retries of
failed artifacts, and the retry history (the audit trail) as plain data.

A retry is a handful of events, nothing else: ``retry_initiated`` (who, which
stage, which attempt), then — from the handler's run, or from a queue worker that
reopens the artifact with ``rec.artifact(id, retry_attempt=n)`` — the re-run's
stage events, ``retry_succeeded`` / ``retry_failed`` and ``artifact_completed`` /
``artifact_failed``. The artifact's status (``retrying`` while it runs) is derived
from those events by the ``artifacts`` view (query.py), latest attempt first: an
attempt is a generation, so a stale job (a queued retry re-queued with ``--force``,
the original run of a stuck artifact) that finishes late records its own outcome but
never replaces the newer attempt's (artifact_index.py).

This module imports duckdb only inside the functions that read the store, so
registering a handler stays cheap. It never renders anything (``cli_retry.py``)
and writes under the root only through a Recorder and its lock files under
``<root>/_state/retry/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fcntl
import functools
import getpass
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from . import remote, store
from .errors import ConfigError, RetryError, StoreError, UsageError, VoicepipeError

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

    from .config import RecorderSettings, RetrySettings
    from .emit import ArtifactScope, Recorder

log = logging.getLogger("voicepipe_obs.retry")

#: What a handler can be registered for: a timed stage, or "full" (from the start).
RETRY_STAGES = ("transcription", "claims_extraction", "entity_resolution", "draft_generation", "full")
#: The stages a retry can resume at (``--stage``).
RESUMABLE_STAGES = RETRY_STAGES[:-1]

#: error_code recorded when a retry is stopped with Ctrl-C (SIGINT).
INTERRUPTED = "Interrupted"
#: error_code of an in-process retry whose process died before recording its outcome
ABANDONED = "Abandoned"
#: How long an in-flight artifact must be idle before ``--force`` may retry it,
#: when the caller gives no ``stuck_minutes`` (config: alerts.stuck.minutes).
DEFAULT_STUCK_MINUTES = 30.0

LOCK_DIR = Path(store.STATE) / "retry"
#: How long a retry waits for an artifact's lock at least (``retry.lock_timeout_seconds``
#: may make it longer): a probe (``--dry-run``, :func:`check_eligibility`) tests the
#: lock by taking it for a moment, and a retry trying it in that moment must not be
#: refused as "being retried by another process" when nothing is retried.
LOCK_GRACE_SECONDS = 0.5

Mode = Literal["inline", "deferred"]
OutcomeStatus = Literal["succeeded", "failed", "deferred", "interrupted", "dry_run"]


# ---------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Handler:
    """A registered retry handler: ``fn(artifact_id, attempt)``."""

    stage: str
    fn: Callable[[str, int], Any]
    recorder: Recorder | None
    deferred: bool

    @property
    def name(self) -> str:
        """``module.qualname`` of the function, for messages and the audit trail."""
        module = getattr(self.fn, "__module__", None) or "?"
        qual = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"{module}.{qual}"

    @property
    def mode(self) -> Mode:
        return "deferred" if self.deferred else "inline"


_handlers: dict[str, Handler] = {}


def register_handler(
    stage: str, fn: Callable[[str, int], Any], *, recorder: Recorder | None, deferred: bool
) -> None:
    """Register ``fn`` as the retry handler for ``stage`` (replacing an earlier one).

    Called by ``@rec.retry_handler(stage)`` and ``@vp.retry_handler(stage)``.
    """
    if stage not in RETRY_STAGES:
        raise ValueError(f"unknown retry stage {stage!r} (choose from {', '.join(RETRY_STAGES)})")
    if not callable(fn):
        raise TypeError(f"retry handler for {stage!r} must be callable, got {type(fn).__name__}")
    previous = _handlers.get(stage)
    if previous is not None and previous.fn is not fn:
        log.debug("retry handler for %s replaced: %s", stage, previous.name)
    _handlers[stage] = Handler(stage, fn, recorder, deferred)


def handlers() -> dict[str, Handler]:
    """The registered handlers by stage (a copy)."""
    return dict(_handlers)


def unregister_handler(stage: str) -> None:
    """Forget the handler for ``stage`` (no error if there is none)."""
    _handlers.pop(stage, None)


def clear_handlers() -> None:
    """Forget every registered handler (tests)."""
    _handlers.clear()


# -------------------------------------------------------------------- exceptions


RefusalReason = Literal[
    "unknown_artifact",
    "unknown_organization",
    "skips_failed_stage",
    "not_failed",
    "in_flight",
    "already_retrying",
    "locked",
    "max_attempts",
    "no_stage",
    "no_handler",
    "actor_not_allowed",
]


class RetryRefused(RetryError):
    """A retry that may not run; ``reason`` says which check refused it (exit code 4)."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


class RetryInterrupted(KeyboardInterrupt):
    """Ctrl-C during a retry. Still a KeyboardInterrupt (so nothing swallows it);
    recorded as retry_failed / artifact_failed with error_code ``Interrupted``, and
    carries the recorded :class:`RetryOutcome` once the runner has finished."""

    error_code = INTERRUPTED

    def __init__(self, message: str = "retry interrupted (Ctrl-C)") -> None:
        super().__init__(message)
        self.outcome: RetryOutcome | None = None


# ------------------------------------------------------------------------- actor


def default_actor() -> str:
    """The OS user running this process (the actor when ``--by`` is not given)."""
    try:
        name = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        name = ""
    return name or f"uid{os.getuid()}"


def check_actor(actor: str, allowed: Sequence[str] | None) -> None:
    """Refuse an actor not in ``retry.allowed_actors`` (when that list is set)."""
    if allowed is not None and actor not in allowed:
        raise RetryRefused(
            "actor_not_allowed",
            f"{actor!r} may not retry artifacts (retry.allowed_actors: "
            f"{', '.join(allowed) if allowed else 'nobody'}); ask one of them, or add the name to the config",
        )


# -------------------------------------------------------------------------- lock


@dataclass(frozen=True)
class LockHolder:
    """Who holds an artifact's retry lock (as written by the holder; may be partial)."""

    actor: str | None = None
    pid: int | None = None
    host: str | None = None
    since: str | None = None
    attempt: int | None = None

    def describe(self) -> str:
        who = self.actor or "another process"
        where = []
        if self.pid is not None:
            where.append(f"pid {self.pid}")
        if self.host:
            where.append(f"on {self.host}")
        text = who + (f" ({' '.join(where)})" if where else "")
        if self.since:
            text += f" since {self.since}"
        return text


def lock_path(root: Path, artifact_id: str) -> Path:
    """``<root>/_state/retry/<readable part>-<hash>.lock`` for one artifact."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", artifact_id)[:80].lstrip(".") or "artifact"
    digest = hashlib.sha256(artifact_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return root / LOCK_DIR / f"{safe}-{digest}.lock"


class RetryLock:
    """An exclusive per-artifact file lock (``fcntl.flock``): two retries of one
    artifact, in any processes on this host (or on a file system with working
    flock), never run at once. Released when the holder closes it or dies.

    Lock files are left in place (tiny; unlinking a flock'ed file is racy).
    """

    def __init__(self, root: Path, artifact_id: str) -> None:
        self.root = root
        self.path = lock_path(root, artifact_id)
        self.artifact_id = artifact_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float = 0.0, *, holder: LockHolder | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds. False if someone else holds it.
        Raises :class:`StoreError` when the lock file cannot be created (a read-only
        or foreign root)."""
        if self._fd is not None:
            return True
        try:
            store.ensure_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store.write_error(self.root, exc) from exc
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        self._fd = fd
        if holder is not None:
            try:
                data = json.dumps(asdict(holder)).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
            except OSError:
                pass
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock

    def holder(self) -> LockHolder:
        """What the current holder wrote into the lock file (empty if unknown)."""
        try:
            raw = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError):
            return LockHolder()
        if not isinstance(raw, dict):
            return LockHolder()
        known = {k: raw.get(k) for k in ("actor", "pid", "host", "since", "attempt")}
        try:
            return LockHolder(**known)
        except TypeError:  # pragma: no cover - defensive
            return LockHolder()

    def probe(self) -> LockHolder | None:
        """The holder if the lock is held by someone else now, else None (not kept)."""
        if self._fd is not None or not self.path.exists():
            return None
        try:
            if self.acquire(0.0):
                self.release()
                return None
        except StoreError:  # cannot open it for writing here: report it as free
            return None
        return self.holder()

    def __enter__(self) -> RetryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -------------------------------------------------------------- the artifact row


@dataclass(frozen=True)
class ArtifactInfo:
    """What eligibility and the runner need from the ``artifacts`` view."""

    artifact_id: str
    status: str
    organization_id: str | None = None
    coach_user_id: str | None = None
    voice_note_id: str | None = None
    source_channel: str | None = None
    failed_stage: str | None = None
    current_stage: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    last_event_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    retry_count: int = 0
    previous_attempts: int = 0
    #: the mode ("inline" / "deferred") of the latest retry_initiated, read only for
    #: an artifact that is ``retrying`` (see :func:`evaluate`)
    last_retry_mode: str | None = None


_ARTIFACT_COLUMNS = (
    "artifact_id, status, organization_id, coach_user_id, voice_note_id, source_channel, "
    "failed_stage, current_stage, error_code, error_message, last_event_at, failed_at, "
    "retry_count, last_retry_attempt"
)


def _info_from_row(row: Sequence[Any]) -> ArtifactInfo:
    (aid, status, org, coach, vn, chan, failed_stage, cur, code, msg, last, failed_at, count, last_att) = row
    count = int(count or 0)
    return ArtifactInfo(
        artifact_id=aid,
        status=status,
        organization_id=org,
        coach_user_id=coach,
        voice_note_id=vn,
        source_channel=chan,
        failed_stage=failed_stage,
        current_stage=cur,
        error_code=code,
        error_message=msg,
        last_event_at=last,
        failed_at=failed_at,
        retry_count=count,
        previous_attempts=max(count, int(last_att or 0)),
    )


def fetch_artifact(con: duckdb.DuckDBPyConnection, artifact_id: str) -> ArtifactInfo | None:
    """One artifact's row from the ``artifacts`` view of ``con``, or None if unknown."""
    row = con.execute(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE artifact_id = ?", [artifact_id]
    ).fetchone()
    return None if row is None else _info_from_row(row)


def artifact_context(root: str | os.PathLike[str] | None, artifact_id: str) -> dict[str, str | None]:
    """The context fields of an artifact (organization_id, coach_user_id,
    voice_note_id, source_channel) — what a queue worker passes to ``rec.artifact``
    when the job does not carry them. Raises RetryRefused if the artifact is unknown."""
    reader = ArtifactReader(store.resolve_root(root))
    try:
        info = reader.get(artifact_id)
    finally:
        reader.close()
    if info is None:
        raise RetryRefused(
            "unknown_artifact", f"no artifact {artifact_id!r} under {store.resolve_root(root)}"
        )
    return {
        "organization_id": info.organization_id,
        "coach_user_id": info.coach_user_id,
        "voice_note_id": info.voice_note_id,
        "source_channel": info.source_channel,
    }


# ------------------------------------------------------------------- eligibility


@dataclass(frozen=True)
class RetryPlan:
    """An eligible retry: what would run."""

    artifact: ArtifactInfo
    stage: str
    attempt: int
    max_attempts: int
    actor: str
    handler: Handler
    forced: bool = False
    #: the attempt of an in-process retry whose process died before its outcome:
    #: recorded as failed (``Abandoned``) before this one starts
    abandoned: int | None = None

    @property
    def artifact_id(self) -> str:
        return self.artifact.artifact_id

    @property
    def pipeline_stage(self) -> str:
        """The pipeline_stage recorded on retry_initiated (``full`` starts at ingestion)."""
        return "ingestion" if self.stage == "full" else self.stage

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact_id": self.artifact_id,
            "organization_id": self.artifact.organization_id,
            "status": self.artifact.status,
            "failed_stage": self.artifact.failed_stage,
            "error_code": self.artifact.error_code,
            "stage": self.stage,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "actor": self.actor,
            "handler": self.handler.name,
            "mode": self.handler.mode,
            "forced": self.forced,
            "abandoned_attempt": self.abandoned,
        }


@dataclass(frozen=True)
class Eligibility:
    """The answer of :func:`evaluate`: a plan, or the reason (code and message) why not."""

    plan: RetryPlan | None
    reason: RefusalReason | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None

    def raise_if_refused(self) -> RetryPlan:
        if self.plan is None:
            assert self.reason is not None and self.message is not None
            raise RetryRefused(self.reason, self.message)
        return self.plan


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "at an unknown time"
    secs = max((now - when).total_seconds(), 0.0)
    if secs < 90:
        return f"{secs:.0f} s ago"
    if secs < 5400:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"


def _registered_list(registry: dict[str, Handler]) -> str:
    return ", ".join(s for s in RETRY_STAGES if s in registry) or "none"


def evaluate(
    info: ArtifactInfo | None,
    *,
    artifact_id: str,
    actor: str,
    settings: RetrySettings,
    registry: dict[str, Handler],
    stage: str | None = None,
    full: bool = False,
    force: bool = False,
    lock_holder: LockHolder | None = None,
    stuck_minutes: float = DEFAULT_STUCK_MINUTES,
    now: dt.datetime | None = None,
    where: str = "",
) -> Eligibility:
    """Decide whether a retry may run; pure (no I/O). Checks, in order: actor
    allowed, artifact known, lock free, status (failed; ``force`` also allows
    completed artifacts, unfinished retries and in-flight artifacts idle for
    ``stuck_minutes``), attempts left, a stage to resume at, and a handler for it."""

    def no(reason: RefusalReason, message: str) -> Eligibility:
        return Eligibility(None, reason, message)

    if stage is not None and full:
        raise UsageError("give either a stage or full, not both")
    if stage is not None and stage not in RESUMABLE_STAGES:
        raise UsageError(f"unknown stage {stage!r} (choose from {', '.join(RESUMABLE_STAGES)})")
    now = now or dt.datetime.now(dt.timezone.utc)
    allowed = settings.allowed_actors
    if allowed is not None and actor not in allowed:
        return no(
            "actor_not_allowed",
            f"{actor!r} may not retry artifacts (retry.allowed_actors: {', '.join(allowed) or 'nobody'}); "
            "ask one of them, or add the name to the config",
        )
    if info is None:
        return no(
            "unknown_artifact",
            f"no artifact {artifact_id!r}{where}; check the id (`voicepipe report artifacts` lists them) "
            "and --data",
        )
    if lock_holder is not None:
        return no(
            "locked",
            f"artifact {artifact_id!r} is being retried by {lock_holder.describe()}; "
            "wait for that retry to finish",
        )
    status = info.status
    if status == "completed" and not force:
        return no(
            "not_failed",
            f"artifact {artifact_id!r} is completed, not failed; use --force to re-run it anyway",
        )
    # An in-process retry holds the artifact's lock from start to outcome: "retrying"
    # with the lock free (``lock_holder`` None: probed, or held by the caller) and an
    # in-process latest attempt means the process running it died (SIGKILL, a
    # power cut) before recording the outcome. Not waiting for a worker that does not
    # exist, the new retry first records that attempt as failed (``abandoned``).
    abandoned = (
        info.previous_attempts
        if status == "retrying" and lock_holder is None and info.last_retry_mode == "inline"
        else None
    )
    if status == "retrying" and not force and abandoned is None:
        return no(
            "already_retrying",
            f"artifact {artifact_id!r} has an unfinished retry (attempt {info.previous_attempts}, "
            f"last event {_ago(info.last_event_at, now)}); wait for its worker, "
            "or use --force if that retry is lost",
        )
    if status not in ("completed", "failed", "retrying"):
        idle_min = (
            (now - info.last_event_at).total_seconds() / 60
            if info.last_event_at is not None
            else float("inf")
        )
        if idle_min < stuck_minutes:
            return no(
                "in_flight",
                f"artifact {artifact_id!r} is still in flight ({status}, last event "
                f"{_ago(info.last_event_at, now)}); wait for it to finish or fail",
            )
        if not force:
            return no(
                "in_flight",
                f"artifact {artifact_id!r} looks stuck ({status}, no event for {idle_min:.0f} min); "
                "use --force to retry it",
            )
    attempt = info.previous_attempts + 1
    if info.previous_attempts >= settings.max_attempts:
        return no(
            "max_attempts",
            f"artifact {artifact_id!r} has had {info.previous_attempts} "
            f"{'retry' if info.previous_attempts == 1 else 'retries'} "
            f"(retry.max_attempts = {settings.max_attempts}); raise retry.max_attempts to try again",
        )
    skips = (
        not full
        and stage in RESUMABLE_STAGES
        and info.failed_stage in RESUMABLE_STAGES
        and RESUMABLE_STAGES.index(stage) > RESUMABLE_STAGES.index(info.failed_stage)
    )
    if skips and not force:
        # resuming after the stage that failed would skip it: the artifact would read
        # completed without, say, its entities ever resolved
        return no(
            "skips_failed_stage",
            f"artifact {artifact_id!r} failed at {info.failed_stage}; resuming at {stage} would skip it. "
            f"Use --stage {info.failed_stage} (or an earlier stage), or --force to skip it anyway",
        )
    if full:
        chosen = "full"
    elif stage is not None:
        chosen = stage
    elif info.failed_stage in RESUMABLE_STAGES:
        chosen = info.failed_stage
    elif "full" in registry:
        chosen = "full"
    else:
        return no(
            "no_stage",
            f"no failed stage is recorded for artifact {artifact_id!r}; choose one with --stage "
            f"(registered handlers: {_registered_list(registry)})",
        )
    handler = registry.get(chosen)
    if handler is None:
        hint = " (or --full)" if "full" in registry and chosen != "full" else ""
        return no(
            "no_handler",
            f"no retry handler is registered for {chosen}; registered: {_registered_list(registry)}"
            f"{hint}. Pass --app MODULE (or set retry.app) naming the module that registers them",
        )
    forced = (status != "failed" or skips) and abandoned is None
    return Eligibility(
        RetryPlan(
            info, chosen, attempt, settings.max_attempts, actor, handler, forced=forced, abandoned=abandoned
        )
    )


def check_eligibility(
    artifact_id: str,
    *,
    root: str | os.PathLike[str] | None = None,
    settings: RetrySettings | None = None,
    actor: str | None = None,
    stage: str | None = None,
    full: bool = False,
    force: bool = False,
    stuck_minutes: float = DEFAULT_STUCK_MINUTES,
    registry: dict[str, Handler] | None = None,
    reader: ArtifactReader | None = None,
) -> Eligibility:
    """Read the store and answer whether ``artifact_id`` may be retried now (the
    lock is probed, not kept). A notebook's way to ask before running. Pass one
    :class:`ArtifactReader` to check many artifacts without rescanning the store."""
    from .config import RetrySettings as _RetrySettings

    rootp = store.resolve_root(root)
    settings = settings or _RetrySettings()
    own = reader is None
    reader = reader or ArtifactReader(rootp)
    try:
        info = reader.get(artifact_id)
    finally:
        if own:
            reader.close()
    holder = RetryLock(rootp, artifact_id).probe() if info is not None else None
    return evaluate(
        info,
        artifact_id=artifact_id,
        actor=actor or default_actor(),
        settings=settings,
        registry=handlers() if registry is None else registry,
        stage=stage,
        full=full,
        force=force,
        lock_holder=holder,
        stuck_minutes=stuck_minutes,
        where=f" under {rootp}",
    )


def _events_connection(root: Path) -> tuple[duckdb.DuckDBPyConnection, list[Path]]:
    """A DuckDB connection with just the deduplicated ``events`` view (as in
    query.py) over the readable event files present now, and those files."""
    import duckdb

    from .events import arrow_schema
    from .query import empty_view, parquet_scan, vetted_files

    files = vetted_files(root)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # never draw on stderr (cron mail)
    empty_view(con, "_voicepipe_empty_events", arrow_schema())
    con.execute(f"CREATE VIEW events AS SELECT DISTINCT ON (event_id) * FROM {parquet_scan(files)}")
    return con, files


class ArtifactReader:
    """Reads artifact rows for eligibility checks without rescanning the whole
    store for each artifact of a bulk run.

    The first read scans the store once (the ``artifacts`` rows of the files
    present, kept in a temporary table). Later reads list the files again (cheap)
    and look only at files that appeared since — during a bulk run, mostly this
    process's own flushes — remembering which artifacts each contains. The store is
    rescanned only when a new file holds events of the artifact asked for, or when
    files vanished (compaction). So every answer reflects the store as it is now.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._con: duckdb.DuckDBPyConnection | None = None
        self._files: set[Path] = set()
        self._seen: dict[Path, frozenset[str]] = {}

    def _open(self) -> duckdb.DuckDBPyConnection:
        from .query import ARTIFACTS_SQL, retry_vanished

        self.close()

        def read(_attempt: int) -> tuple[duckdb.DuckDBPyConnection, list[Path]]:
            # listed again when compaction replaced a listed file meanwhile
            con, files = _events_connection(self.root)
            try:
                # One aggregation for every artifact; lookups are then cheap.
                con.execute(f"CREATE TEMP TABLE artifacts AS {ARTIFACTS_SQL}")
            except BaseException:
                con.close()
                raise
            return con, files

        con, files = retry_vanished(read, what="retry")
        self._con, self._files, self._seen = con, set(files), {}
        return con

    def _connection_for(self, artifact_id: str) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            return self._open()
        current = set(store.list_parquet(self.root))
        if not self._files <= current:
            return self._open()
        new = sorted(current - self._files - self._seen.keys())
        if new:
            from .query import vetted
            from .sql import sql_str

            good = vetted(new)  # the others skipped with the readers' one warning each
            for path in set(new) - set(good):
                self._seen[path] = frozenset()
            if good:
                import duckdb

                from .query import vanished_file

                listed = ", ".join(sql_str(str(f)) for f in good)
                try:
                    rows = self._con.execute(
                        f"SELECT DISTINCT filename, artifact_id FROM read_parquet([{listed}], filename=true) "
                        "WHERE artifact_id IS NOT NULL"
                    ).fetchall()
                except duckdb.Error as exc:
                    if vanished_file(exc) is None:
                        raise
                    return self._open()  # compacted since listed: read the store as it is now
                ids: dict[str, set[str]] = {str(p): set() for p in good}
                for filename, aid in rows:
                    ids.setdefault(filename, set()).add(aid)
                for path in good:
                    self._seen[path] = frozenset(ids.get(str(path), ()))
        if any(artifact_id in ids for ids in self._seen.values()):
            return self._open()
        return self._con

    def connection(self) -> duckdb.DuckDBPyConnection:
        """A connection whose ``artifacts`` table reflects every file present now."""
        if self._con is None or set(store.list_parquet(self.root)) != self._files:
            return self._open()
        return self._con

    def get(self, artifact_id: str) -> ArtifactInfo | None:
        """The artifact's row as the store is now, or None if unknown."""
        if not (self.root / store.EVENTS).is_dir():
            return None
        con = self._connection_for(artifact_id)
        info = fetch_artifact(con, artifact_id)
        if info is not None and info.status == "retrying":
            row = con.execute(
                # the latest attempt's, not the latest by time: the hosts that
                # initiated two attempts may disagree about the time
                "SELECT map_extract_value(attributes, 'retry_mode') FROM events "
                "WHERE artifact_id = ? AND event_type = 'retry_initiated' "
                "ORDER BY coalesce(retry_attempt, 0) DESC, timestamp DESC LIMIT 1",
                [artifact_id],
            ).fetchone()
            info = dataclasses.replace(info, last_retry_mode=row[0] if row else None)
        return info

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


# ---------------------------------------------------------------------- app load

_cli_recorder: Recorder | None = None


def load_app(
    module: str,
    *,
    root: Path,
    recorder_settings: RecorderSettings | None = None,
) -> ModuleType:
    """Import the module that registers the retry handlers (``retry.app`` / ``--app``):
    a dotted module name (the current directory is importable) or a ``.py`` path.

    Before the import, the module-level default recorder (``vp.stage``, ``vp.emit``,
    handlers registered with ``vp.retry_handler``) is configured on ``root`` with
    ``recorder_settings`` — unless something other than this function configured it
    already — and $VOICEPIPE_DATA is set to ``root`` so a ``Recorder()`` created by
    the module without a root records into the same store. A module that calls
    ``vp.configure(...)`` itself keeps its own recorder.
    """
    global _cli_recorder
    from .emit import configure, get_recorder, is_configured

    rootp = Path(root)
    os.environ[store.ENV_ROOT] = str(rootp)
    current = get_recorder() if is_configured() else None
    ours = current is None or current is _cli_recorder
    if ours and (current is None or current.root != rootp):
        opts = recorder_settings.model_dump() if recorder_settings is not None else {}
        _cli_recorder = configure(rootp, **opts)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module.endswith(".py") or os.sep in module:
            return _import_path(Path(module))
        return importlib.import_module(module)
    except RetryError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ConfigError(
                f"cannot import retry app {module!r}: no module named {exc.name!r}; check --app / "
                "retry.app and run from the project directory (or set PYTHONPATH)"
            ) from exc
        raise ConfigError(f"importing retry app {module!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        # our own errors (the app's configure() failing, say) read as they are; a
        # foreign exception is named by its type (SyntaxError: ...)
        detail = str(exc) if isinstance(exc, VoicepipeError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"importing retry app {module!r} failed: {detail}") from exc
    except SystemExit as exc:  # a script's `sys.exit()` run at import: not a silent exit
        raise ConfigError(
            f"importing retry app {module!r} failed: it called sys.exit({exc.code!r}) at import; "
            'guard its script code with `if __name__ == "__main__":`'
        ) from exc


def _import_path(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"retry app file {path} not found (check --app / retry.app)")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - defensive
        raise ConfigError(f"cannot import retry app file {path}")
    mod = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


# ------------------------------------------------------------------------ runner


@dataclass(frozen=True)
class RetryOutcome:
    """What happened to one retry. ``status``: succeeded, failed (the handler
    raised, or a deferred handler could not enqueue), deferred (handed to a
    queue; its worker records the outcome), interrupted (Ctrl-C) or dry_run."""

    artifact_id: str
    stage: str
    attempt: int
    actor: str
    handler: str
    mode: Mode
    status: OutcomeStatus
    organization_id: str | None = None
    duration_ms: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    forced: bool = False

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this outcome: 0, 1 (failed) or 130 (interrupted)."""
        return {"failed": 1, "interrupted": 130}.get(self.status, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_recorder(plan: RetryPlan, root: Path, recorder: Recorder | None) -> Recorder:
    """The recorder of the retry's own events (``retry_initiated``, the outcome):
    the handler's, when it records into ``root``. One that records elsewhere (an
    app that ``vp.configure``-d another root) keeps the handler's stage events, but
    the retry's own go into ``root`` all the same — they are what eligibility,
    ``max_attempts`` and the audit history read there — through a recorder of this
    module's on ``root``."""
    from .emit import Recorder as _Recorder
    from .emit import get_recorder

    rec = recorder or plan.handler.recorder or get_recorder()
    if _same_root(rec.root, root):
        return rec
    # A handler recording to the object store this command's root mirrors: its events
    # reach the same store through its outbox; the retry's own go into the mirror
    # (seen by this host at once, pushed after the command). Nothing to warn about.
    same_store = rec.remote is not None and _same_root(remote.cache_dir(rec.remote, "mirror"), root)
    if not same_store and (rec.root, root) not in _warned_roots:
        _warned_roots.add((rec.root, root))
        log.warning(
            "the retry handler records into %s, not %s: its stage events go there, the retry's "
            "own events (retry_initiated, the outcome) into %s (configure its recorder for %s, "
            "or pass recorder=)",
            rec.root,
            root,
            root,
            root,
        )
    key = str(root)
    own = _runner_recorders.get(key)
    if own is None:
        own = _runner_recorders[key] = _Recorder(root)
    return own


def _same_root(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover
        return a == b


_warned_roots: set[tuple[Path, Path]] = set()
#: recorders of the retry's own events on roots the handlers do not record into
_runner_recorders: dict[str, Recorder] = {}


def _outcome(plan: RetryPlan, status: OutcomeStatus, **kw: Any) -> RetryOutcome:
    return RetryOutcome(
        artifact_id=plan.artifact_id,
        stage=plan.stage,
        attempt=plan.attempt,
        actor=plan.actor,
        handler=plan.handler.name,
        mode=plan.handler.mode,
        status=status,
        organization_id=plan.artifact.organization_id,
        forced=plan.forced,
        **kw,
    )


def _call(fn: Callable[[str, int], Any], artifact_id: str, attempt: int) -> Any:
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(artifact_id, attempt))
    result = fn(artifact_id, attempt)
    if inspect.isawaitable(result):

        async def _await() -> Any:
            return await result

        return asyncio.run(_await())
    return result


def run_plan(plan: RetryPlan, *, recorder: Recorder) -> RetryOutcome:
    """Run an eligible retry (the caller holds the artifact's lock) and record it.

    In-process handlers run inside ``recorder.artifact(id, retry_attempt=n, ...)``
    with the artifact's context, after ``retry_initiated``; the scope records
    retry_succeeded / retry_failed and artifact_completed / artifact_failed.
    Deferred handlers get the context bound (``vp.current_artifact()``) but no
    scope: they enqueue, and the worker records the outcome.

    Handler exceptions become a ``failed`` outcome; Ctrl-C is recorded with
    error_code ``Interrupted`` and re-raised as :class:`RetryInterrupted`.
    """
    info = plan.artifact
    attributes = {"retry_stage": plan.stage, "retry_mode": plan.handler.mode, "handler": plan.handler.name}
    if plan.forced:
        attributes["forced"] = "true"
    initiated: dict[str, Any] = {
        "actor": plan.actor,
        "pipeline_stage": plan.pipeline_stage,
        "previous_status": info.status,
        "new_status": "retrying",
        "attributes": attributes,
    }
    context: dict[str, Any] = {  # the artifact's, on every event of the retry
        "organization_id": info.organization_id,
        "coach_user_id": info.coach_user_id,
        "voice_note_id": info.voice_note_id,
        "source_channel": info.source_channel,
    }
    if plan.abandoned is not None:
        recorder.emit(
            "retry_failed",
            artifact_id=plan.artifact_id,
            retry_attempt=plan.abandoned,
            actor=plan.actor,
            error_code=ABANDONED,
            error_message="the process running this in-process retry ended without recording its outcome",
            **context,
        )
    scope = recorder.artifact(plan.artifact_id, retry_attempt=plan.attempt, **context)
    run = _run_deferred if plan.handler.deferred else _run_inline
    return run(plan, recorder, scope, initiated)


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _run_inline(
    plan: RetryPlan, recorder: Recorder, scope: ArtifactScope, initiated: dict[str, Any]
) -> RetryOutcome:
    start = time.perf_counter()
    try:
        with scope:
            try:
                recorder.emit("retry_initiated", **initiated)
                _call(plan.handler.fn, plan.artifact_id, plan.attempt)
            except RetryInterrupted:
                raise
            except KeyboardInterrupt as exc:
                raise RetryInterrupted() from exc  # error_code "Interrupted" for the scope
    except RetryInterrupted as exc:
        exc.outcome = _outcome(
            plan,
            "interrupted",
            error_code=INTERRUPTED,
            error_message=str(exc),
            duration_ms=_elapsed_ms(start),
        )
        raise
    except (Exception, SystemExit) as exc:  # a handler calling sys.exit() failed too
        code, message = recorder._error_fields(exc)
        return _outcome(
            plan, "failed", error_code=code, error_message=message, duration_ms=_elapsed_ms(start)
        )
    return _outcome(plan, "succeeded", duration_ms=_elapsed_ms(start))


def _run_deferred(
    plan: RetryPlan, recorder: Recorder, scope: ArtifactScope, initiated: dict[str, Any]
) -> RetryOutcome:
    from .emit import _artifact_var

    start = time.perf_counter()
    token = _artifact_var.set(scope.context)  # the context, without the scope's outcome events
    try:
        recorder.emit("retry_initiated", **initiated)
        try:
            _call(plan.handler.fn, plan.artifact_id, plan.attempt)
        except KeyboardInterrupt as exc:
            message = "retry interrupted (Ctrl-C) while enqueueing"
            _record_enqueue_failure(recorder, INTERRUPTED, message, _elapsed_ms(start))
            interrupted = RetryInterrupted(message)
            interrupted.outcome = _outcome(
                plan,
                "interrupted",
                error_code=INTERRUPTED,
                error_message=message,
                duration_ms=_elapsed_ms(start),
            )
            raise interrupted from exc
        except (Exception, SystemExit) as exc:  # a handler calling sys.exit() failed too
            code, message = recorder._error_fields(exc)
            _record_enqueue_failure(recorder, code, message, _elapsed_ms(start))
            return _outcome(
                plan, "failed", error_code=code, error_message=message, duration_ms=_elapsed_ms(start)
            )
    finally:
        try:
            _artifact_var.reset(token)
        except ValueError:  # pragma: no cover - reset from another context
            _artifact_var.set(None)
    return _outcome(plan, "deferred", duration_ms=_elapsed_ms(start))


def _record_enqueue_failure(recorder: Recorder, code: str, message: str, duration_ms: float) -> None:
    """A deferred handler raised while enqueueing: the retry failed and the artifact
    is failed again (so its status does not stay ``retrying``)."""
    attrs = {"phase": "enqueue"}
    recorder.emit(
        "retry_failed", error_code=code, error_message=message, duration_ms=duration_ms, attributes=attrs
    )
    recorder.emit(
        "artifact_failed", error_code=code, error_message=message, new_status="failed", attributes=attrs
    )


def retry_artifact(
    artifact_id: str,
    *,
    root: str | os.PathLike[str] | None = None,
    settings: RetrySettings | None = None,
    stage: str | None = None,
    full: bool = False,
    actor: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    stuck_minutes: float = DEFAULT_STUCK_MINUTES,
    recorder: Recorder | None = None,
    registry: dict[str, Handler] | None = None,
    on_start: Callable[[RetryPlan], None] | None = None,
    reader: ArtifactReader | None = None,
) -> RetryOutcome:
    """Retry one artifact: check the actor, take its lock, check eligibility on the
    store as it is now, run the handler (:func:`run_plan`), flush the events, and
    release the lock. Raises :class:`RetryRefused` (exit code 4) when it may not
    run and :class:`RetryInterrupted` on Ctrl-C; a handler's own failure is a
    ``failed`` outcome, not an exception.

    ``recorder`` overrides the handler's recorder (default: the recorder the handler
    was registered with, else the module-level default recorder). ``on_start(plan)``
    is called once the retry is known to run (not for dry runs). ``reader`` is
    shared by bulk runs (:func:`retry_all`).
    """
    from .config import RetrySettings as _RetrySettings

    rootp = store.resolve_root(root)
    settings = settings or _RetrySettings()
    actor = actor or default_actor()
    registry = handlers() if registry is None else registry
    check_actor(actor, settings.allowed_actors)
    decide = functools.partial(
        evaluate,
        artifact_id=artifact_id,
        actor=actor,
        settings=settings,
        registry=registry,
        stage=stage,
        full=full,
        force=force,
        stuck_minutes=stuck_minutes,
        where=f" under {rootp}",
    )
    if not (rootp / store.EVENTS).is_dir():
        decide(None).raise_if_refused()
    own_reader = reader is None
    reader = reader or ArtifactReader(rootp)
    try:
        if dry_run:
            info = reader.get(artifact_id)
            holder = RetryLock(rootp, artifact_id).probe() if info is not None else None
            return _outcome(decide(info, lock_holder=holder).raise_if_refused(), "dry_run")
        lock = RetryLock(rootp, artifact_id)
        me = LockHolder(
            actor=actor,
            pid=os.getpid(),
            host=socket.gethostname(),
            since=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        if not lock.acquire(max(settings.lock_timeout_seconds, LOCK_GRACE_SECONDS), holder=me):
            info = reader.get(artifact_id) or ArtifactInfo(artifact_id, "retrying")
            decide(info, lock_holder=lock.holder()).raise_if_refused()
            raise RetryRefused("locked", f"artifact {artifact_id!r} is being retried by another process")
        try:
            # Read the store only now that the lock is held: a retry that finished
            # just before has flushed its events, so its outcome is seen.
            plan = decide(reader.get(artifact_id)).raise_if_refused()
            rec = _resolve_recorder(plan, rootp, recorder)
            if on_start is not None:
                on_start(plan)
            try:
                return run_plan(plan, recorder=rec)
            finally:
                # Others must see this retry's events before the lock is released.
                _flush_all(rec, plan.handler.recorder)
        finally:
            lock.release()
    finally:
        if own_reader:
            reader.close()


def _flush_all(rec: Recorder, handler_recorder: Recorder | None = None) -> None:
    """Flush the retry's recorder, the handler's and the default one (handlers may
    mix them), each once."""
    from .emit import get_recorder, is_configured

    flushed: list[Recorder] = []
    for each in (rec, handler_recorder, get_recorder() if is_configured() else None):
        if each is not None and not any(each is done for done in flushed):
            each.flush()
            flushed.append(each)


# -------------------------------------------------------------------------- bulk


def parse_since(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``24h``, ``30m``, ``7d`` (ago), an ISO date/time (UTC if naive), ``today``...
    (the CLI's common time syntax, :mod:`voicepipe_obs.timeparse`)."""
    from .timeparse import parse_since as _parse

    return _parse(value, now or dt.datetime.now(dt.timezone.utc))


@dataclass(frozen=True)
class FailedArtifact:
    """A row of :func:`select_failed`."""

    artifact_id: str
    organization_id: str | None
    failed_stage: str | None
    error_code: str | None
    failed_at: dt.datetime | None
    retry_count: int


def select_failed(
    root: str | os.PathLike[str] | None = None,
    *,
    stage: str | None = None,
    organization_id: str | None = None,
    since: dt.datetime | None = None,
    reader: ArtifactReader | None = None,
) -> list[FailedArtifact]:
    """Failed artifacts (derived status ``failed``), oldest failure first, filtered by
    failed stage, organisation and failure time. Pass the :class:`ArtifactReader`
    that :func:`retry_all` will use to scan the store only once."""
    if stage is not None and stage not in RESUMABLE_STAGES:
        raise UsageError(f"unknown stage {stage!r} (choose from {', '.join(RESUMABLE_STAGES)})")
    rootp = store.resolve_root(root)
    if not (rootp / store.EVENTS).is_dir():
        return []
    where = ["status = 'failed'"]
    params: list[Any] = []
    if stage is not None:
        where.append("failed_stage = ?")
        params.append(stage)
    if organization_id is not None:
        where.append("organization_id = ?")
        params.append(organization_id)
    if since is not None:
        where.append("failed_at >= ?")
        params.append(since)
    own = reader is None
    reader = reader or ArtifactReader(rootp)
    try:
        rows = (
            reader.connection()
            .execute(
                "SELECT artifact_id, organization_id, failed_stage, error_code, failed_at, retry_count "
                f"FROM artifacts WHERE {' AND '.join(where)} ORDER BY failed_at, artifact_id",
                params,
            )
            .fetchall()
        )
    finally:
        if own:
            reader.close()
    return [FailedArtifact(r[0], r[1], r[2], r[3], r[4], int(r[5] or 0)) for r in rows]


@dataclass
class BulkSummary:
    """The result of :func:`retry_all`: one outcome per retry that ran, and the
    skipped artifacts with the reason each was refused."""

    outcomes: list[RetryOutcome] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def retried(self) -> int:
        return len(self.outcomes)

    def _count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def succeeded(self) -> int:
        return self._count("succeeded")

    @property
    def failed(self) -> int:
        return self._count("failed") + self._count("interrupted")

    @property
    def deferred(self) -> int:
        return self._count("deferred")

    @property
    def exit_code(self) -> int:
        """130 if interrupted, 1 if any retry failed, else 0 (skips are reported, not fatal)."""
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "retried": self.retried,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "deferred": self.deferred,
            "skipped": len(self.skipped),
            "interrupted": self.interrupted,
            "outcomes": [o.to_dict() for o in self.outcomes],
            "skipped_artifacts": [{"artifact_id": a, "reason": r} for a, r in self.skipped],
        }


def retry_all(
    artifact_ids: Iterable[str],
    *,
    root: str | os.PathLike[str] | None = None,
    settings: RetrySettings | None = None,
    stage: str | None = None,
    full: bool = False,
    actor: str | None = None,
    force: bool = False,
    stuck_minutes: float = DEFAULT_STUCK_MINUTES,
    recorder: Recorder | None = None,
    on_start: Callable[[RetryPlan], None] | None = None,
    on_result: Callable[[str, RetryOutcome | None, str | None], None] | None = None,
    reader: ArtifactReader | None = None,
) -> BulkSummary:
    """Retry each artifact in turn (each with its own lock and eligibility check),
    continuing past failures and refusals. Ctrl-C stops the run: the interrupted
    retry is recorded, the summary is marked ``interrupted`` and returned.

    ``on_result(artifact_id, outcome, skipped_reason)`` is called after each one
    (progress bars)."""
    summary = BulkSummary()
    own = reader is None
    reader = reader or ArtifactReader(store.resolve_root(root))
    try:
        _retry_each(
            artifact_ids,
            summary,
            reader,
            on_result,
            root=root,
            settings=settings,
            stage=stage,
            full=full,
            actor=actor,
            force=force,
            stuck_minutes=stuck_minutes,
            recorder=recorder,
            on_start=on_start,
        )
    finally:
        if own:
            reader.close()
    return summary


def _retry_each(
    artifact_ids: Iterable[str],
    summary: BulkSummary,
    reader: ArtifactReader,
    on_result: Callable[[str, RetryOutcome | None, str | None], None] | None,
    **kwargs: Any,
) -> None:
    for artifact_id in artifact_ids:
        try:
            outcome = retry_artifact(artifact_id, reader=reader, **kwargs)
        except RetryRefused as exc:
            summary.skipped.append((artifact_id, str(exc)))
            if on_result is not None:
                on_result(artifact_id, None, str(exc))
            continue
        except RetryInterrupted as exc:
            if exc.outcome is not None:
                summary.outcomes.append(exc.outcome)
            summary.interrupted = True
            return
        summary.outcomes.append(outcome)
        if on_result is not None:
            on_result(artifact_id, outcome, None)


# ----------------------------------------------------------------------- history


@dataclass(frozen=True)
class RetryRecord:
    """One retry in the audit trail.

    ``outcome`` is ``succeeded``, ``failed`` or ``pending`` (initiated, no outcome
    recorded yet: running, queued, or lost). ``initiated_at`` is None for an outcome
    whose retry_initiated is not in the store (a worker reopened the artifact on
    its own). ``duration_ms`` is the re-run's duration (the worker's, for deferred
    retries); ``finished_at`` − ``initiated_at`` includes time spent in a queue.
    """

    artifact_id: str
    attempt: int | None
    initiated_at: dt.datetime | None
    actor: str | None
    stage: str | None
    mode: str | None
    outcome: Literal["succeeded", "failed", "pending"]
    finished_at: dt.datetime | None
    duration_ms: float | None
    error_code: str | None
    error_message: str | None
    organization_id: str | None
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HISTORY_SQL = """
SELECT event_type, timestamp, artifact_id, organization_id, retry_attempt, actor, pipeline_stage,
       attributes['retry_stage'] AS retry_stage, attributes['retry_mode'] AS retry_mode,
       attributes['forced'] AS forced, duration_ms, error_code, error_message
FROM events
WHERE event_type IN ('retry_initiated', 'retry_succeeded', 'retry_failed') AND artifact_id IS NOT NULL
"""


def retry_history(
    source: duckdb.DuckDBPyConnection | str | os.PathLike[str] | None = None,
    artifact_id: str | None = None,
    *,
    since: dt.datetime | None = None,
    organization_id: str | None = None,
) -> list[RetryRecord]:
    """Every retry (or one artifact's), oldest first: when, who, stage, attempt,
    mode, outcome, duration and error. ``source`` is a connection from
    :func:`voicepipe_obs.connect` or a data root. ``since`` filters on when the retry
    was initiated (or finished, for an outcome without initiation)."""
    own = not hasattr(source, "execute")
    if own:
        con, _ = _events_connection(store.resolve_root(source))  # type: ignore[arg-type]
    else:
        con = source  # type: ignore[assignment]
    sql = _HISTORY_SQL
    params: list[Any] = []
    if artifact_id is not None:
        sql += " AND artifact_id = ?"
        params.append(artifact_id)
    if organization_id is not None:
        sql += " AND organization_id = ?"
        params.append(organization_id)
    sql += " ORDER BY timestamp, event_type"
    try:
        rows = con.execute(sql, params).fetchall()
    finally:
        if own:
            con.close()
    return _pair(rows, since)


def _pair(raw: Sequence[Sequence[Any]], since: dt.datetime | None) -> list[RetryRecord]:
    initiated: list[Sequence[Any]] = []
    outcomes: dict[tuple[str, int | None], list[Sequence[Any]]] = {}
    # timestamps in UTC, whatever the DuckDB session's TimeZone
    rows: list[Sequence[Any]] = [(r[0], r[1].astimezone(dt.timezone.utc), *r[2:]) for r in raw]
    for row in rows:
        if row[0] == "retry_initiated":
            initiated.append(row)
        else:
            outcomes.setdefault((row[2], row[4]), []).append(row)
    records: list[RetryRecord] = []
    for init in initiated:
        (_, ts, aid, org, attempt, actor, pstage, rstage, mode, forced, _dur, _code, _msg) = init
        done = None
        candidates = outcomes.get((aid, attempt)) if attempt is not None else None
        if candidates:
            later = [c for c in candidates if c[1] >= ts] or candidates
            done = later[0]
            candidates.remove(done)
        records.append(
            RetryRecord(
                artifact_id=aid,
                attempt=attempt,
                initiated_at=ts,
                actor=actor,
                stage=rstage or pstage,
                mode=mode,
                outcome="pending"
                if done is None
                else ("succeeded" if done[0] == "retry_succeeded" else "failed"),
                finished_at=None if done is None else done[1],
                duration_ms=None if done is None else done[10],
                error_code=None if done is None else done[11],
                error_message=None if done is None else done[12],
                organization_id=org or (done[3] if done is not None else None),
                forced=forced == "true",
            )
        )
    for (aid, attempt), left in outcomes.items():
        for done in left:
            records.append(
                RetryRecord(
                    artifact_id=aid,
                    attempt=attempt,
                    initiated_at=None,
                    actor=None,
                    stage=done[6] or None,
                    mode=None,
                    outcome="succeeded" if done[0] == "retry_succeeded" else "failed",
                    finished_at=done[1],
                    duration_ms=done[10],
                    error_code=done[11],
                    error_message=done[12],
                    organization_id=done[3],
                )
            )
    if since is not None:
        records = [r for r in records if (r.initiated_at or r.finished_at or since) >= since]
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    records.sort(key=lambda r: (r.initiated_at or r.finished_at or epoch, r.artifact_id, r.attempt or 0))
    return records
