"""The outbox of a Recorder on an object-store root (``Recorder(root="s3://…")``):
ships the complete event files of a local directory to the same relative paths
under the remote root, then deletes them locally.

The Recorder writes into the outbox exactly as into a local root (batches, spool,
crash recovery, fork handling are emit.py's and store.py's, unchanged); this module
only moves finished ``events/**/*.parquet`` files up. It owns: finding them, one
upload per file (an object appears only when complete), deleting the local copy
after, retrying with backoff while the store is unreachable, and its counters. It
must not touch the spool, the batches or how Parquet is written.

Exactly-once by name: a file is deleted only after its upload succeeded, and a
file uploaded again (a crash between upload and delete, or two processes sharing
the outbox racing for it) replaces the object of the same name with the same
bytes. Never raises out of its thread, and never runs on the pipeline's threads;
pyarrow is imported only when the first upload round opens the remote root.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import remote, store
from .errors import StoreError

#: seconds between looks at the outbox when nothing wakes the uploader
UPLOAD_INTERVAL: Final = 5.0
#: first and largest wait after a failed round (doubling in between)
_BACKOFF_MIN: Final = 1.0
_BACKOFF_MAX: Final = 60.0
#: S3 client settings for uploads: one attempt per request (the uploader retries,
#: with backoff, on its own schedule; the SDK's own retries made an upload to a
#: closed port take 6 s, longer than close()'s default bound), bounded connect and
#: stall times, and a single PUT for a small file instead of a multipart upload
#: (three requests). The stall timeout also bounds how long a request in flight to
#: a store that accepts connections but never answers holds up the process's exit
#: after close() returned: pyarrow waits for it when it shuts S3 down (measured:
#: ~6 s + the stall timeout).
_S3_CONNECT_TIMEOUT: Final = 2.0
_S3_REQUEST_TIMEOUT: Final = 3.0
#: empty hour directories older than this (seconds) are removed after a round
_PRUNE_AGE: Final = 2 * 3600

WarnFn = Callable[..., None]  # _RateLimitedLog.warning: (key, msg, *args)


@dataclass(frozen=True)
class Shipped:
    """What one upload round did: files uploaded, whether it stopped with files
    left, why in a few words (``reason``) and the error in full."""

    uploaded: int
    failed: bool
    reason: str = ""
    error: str = ""


class Outbox:
    """Ships ``<local>/events/**/*.parquet`` to the object-store root ``url``.

    One background thread (:meth:`start`), woken by :meth:`wake` after each batch
    file is written and every :data:`UPLOAD_INTERVAL` seconds; :meth:`ship` runs a
    round in the calling thread (close()). ``gate``: returns the lock a fork waits
    for, held while pyarrow is imported (see emit._fork_gate)."""

    def __init__(
        self,
        url: str,
        local: Path,
        warn: WarnFn,
        gate: Callable[[], AbstractContextManager[Any]],
    ) -> None:
        self.url = url
        self.local = local
        self._warn = warn
        self._gate = gate
        self._remote: remote.RemoteRoot | None = None
        self._round = threading.Lock()  # one round at a time (the thread, close)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self.uploaded = 0
        self.errors = 0

    # -- what waits ----------------------------------------------------------------

    def files(self) -> list[Path]:
        """The complete event files waiting in the outbox (any process's), oldest
        partition first. Hidden names (a write in progress) are not complete."""
        out: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.local / store.EVENTS):
            dirnames.sort()
            out.extend(
                Path(dirpath, n)
                for n in sorted(filenames)
                if n.endswith(".parquet") and not n.startswith(".")
            )
        return out

    def has_files(self) -> bool:
        """Whether any complete event file waits (stops at the first one found)."""
        try:
            for _, _dirs, filenames in os.walk(self.local / store.EVENTS):
                if any(n.endswith(".parquet") and not n.startswith(".") for n in filenames):
                    return True
        except OSError:
            pass
        return False

    def pending(self) -> int:
        """How many files wait in the outbox now (-1 when it cannot be read)."""
        try:
            return len(self.files())
        except OSError:
            return -1

    # -- the thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="voicepipe-upload", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to end after its current round (close() ships the rest)."""
        self._stop = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            wait = self._retry_at - time.monotonic()
            self._wake.wait(wait if wait > 0 else UPLOAD_INTERVAL)
            self._wake.clear()
            if self._stop:
                break
            if time.monotonic() < self._retry_at:
                continue  # backing off: a new batch file does not make the store reachable
            try:
                self.ship()
            except Exception as exc:  # the thread must survive anything
                self._warn("upload", "voicepipe uploader error: %r", exc)

    # -- a round -------------------------------------------------------------------

    def ship(self, deadline: float | None = None) -> Shipped:
        """Upload every waiting file, oldest first, deleting each local copy after
        its upload; stop at the first failure (the store is likely down: the next
        round retries, after a backoff) or at ``deadline`` (monotonic). Never raises."""
        timeout = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._round.acquire(timeout=timeout):
            return Shipped(0, True, "close_timeout reached", "an upload was still running at close_timeout")
        try:
            return self._ship_locked(deadline)
        finally:
            self._round.release()

    def _ship_locked(self, deadline: float | None) -> Shipped:
        try:
            files = self.files()
        except OSError as exc:
            return self._failed(0, "cannot list the outbox", f"cannot list the outbox {self.local}: {exc}")
        if not files:
            self._backoff = 0.0
            return Shipped(0, False)
        done = 0
        touched: set[Path] = set()
        try:
            root = self._open()
            for path in files:
                if deadline is not None and time.monotonic() >= deadline:
                    return Shipped(done, True, "close_timeout reached", "close_timeout reached")
                rel = path.relative_to(self.local).as_posix()
                try:
                    root.put(path, rel)
                except StoreError:
                    if not path.exists():  # another process sharing the outbox shipped it
                        continue
                    raise
                path.unlink(missing_ok=True)
                done += 1
                self.uploaded += 1
                touched.add(path.parent)
        except Exception as exc:
            return self._failed(done, "the upload failed", str(exc))
        finally:
            self._prune(touched)
        self._backoff = 0.0
        self._retry_at = 0.0
        return Shipped(done, False)

    def _failed(self, done: int, reason: str, error: str) -> Shipped:
        self.errors += 1
        self._backoff = min(max(self._backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        self._warn(
            "upload",
            "voicepipe could not upload events to %s (will retry in %.0f s; they wait in %s): %s",
            remote.display(self.url),
            self._backoff,
            self.local,
            error,
        )
        return Shipped(done, True, reason, error)

    def _open(self) -> remote.RemoteRoot:
        if self._remote is None:
            with self._gate():  # a fork must not inherit a half-done import
                import pyarrow.fs  # noqa: F401
            take_over_s3_finalize()
            self._remote = _for_uploads(remote.open_root(self.url))
        return self._remote

    def _prune(self, dirs: set[Path]) -> None:
        """Remove hour directories left empty, once their hour is long past (a
        writer may still be making a file in a recent one)."""
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=_PRUNE_AGE)
        for hour_dir in dirs:
            try:
                day = dt.datetime.strptime(
                    f"{hour_dir.parent.name}/{hour_dir.name}", "date=%Y-%m-%d/hour=%H"
                ).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                continue
            if day >= cutoff:
                continue
            try:
                hour_dir.rmdir()
                hour_dir.parent.rmdir()
            except OSError:
                pass  # not empty (or gone): fine


def _for_uploads(root: remote.RemoteRoot) -> remote.RemoteRoot:
    """``root`` with an S3 client set up for the uploader (see _S3_CONNECT_TIMEOUT);
    any other store, or an S3 filesystem that cannot be rebuilt, as it is."""
    from pyarrow import fs as pafs

    if not isinstance(root.fs, pafs.S3FileSystem):
        return root
    try:
        options = dict(root.fs.__reduce__()[1][0])  # the options the URI and environment gave
        if options.get("connect_timeout", -1) < 0:
            options["connect_timeout"] = _S3_CONNECT_TIMEOUT
        if options.get("request_timeout", -1) < 0:
            options["request_timeout"] = _S3_REQUEST_TIMEOUT
        options["allow_delayed_open"] = True
        fs = pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1), **options)
    except Exception:  # pragma: no cover - another pyarrow version: its defaults
        return root
    return remote.RemoteRoot(root.url, fs, root.base)


# pyarrow.fs registers its S3 shutdown (ensure_s3_finalized) with atexit when it is
# first imported, which is usually after voicepipe_obs registered the exit hook that
# closes the recorders (emit._close_all); atexit runs handlers last-in first-out, so
# S3 would be shut down before the final uploads ("Attempt to initialize S3 after it
# has been finalized"). When that is the order, the shutdown is moved to the end of
# the recorders' exit hook (finalize_store_clients). Handlers registered after
# pyarrow.fs's import still run before it, handlers registered before ours after:
# nobody else's S3 use at exit is cut short by the move.
_PAFS_FIRST: Final = "pyarrow.fs" in sys.modules  # imported before emit: its hook runs after ours
_finalize: Callable[[], None] | None = None
_finalize_lock = threading.Lock()


def take_over_s3_finalize() -> None:
    """Once pyarrow.fs is imported (by anyone): make sure S3 is shut down only after
    the recorders' final uploads at exit. A no-op while it is not imported (this
    never imports it), and after the first call that found it. Never raises."""
    global _finalize
    if _PAFS_FIRST or _finalize is not None:
        return
    pafs = sys.modules.get("pyarrow.fs")
    if pafs is None:
        return
    fin = getattr(pafs, "ensure_s3_finalized", None)
    if fin is None:  # pragma: no cover - a pyarrow without S3
        return
    with _finalize_lock:
        if _finalize is None:
            atexit.unregister(fin)
            _finalize = fin


def finalize_store_clients() -> None:
    """At exit, after the recorders' final uploads: shut down what pyarrow's own
    exit hook would have (see _take_over_s3_finalize). Never raises."""
    fin = _finalize
    if fin is None:
        return
    try:
        fin()
    except Exception:  # pragma: no cover - nothing to report to at exit
        pass
