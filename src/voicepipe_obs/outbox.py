"""The outbox of a Recorder on an object-store root (``Recorder(root="s3://…")``):
ships the complete event files of a local directory to the same relative paths
under the remote root, then deletes them locally.

The Recorder writes into the outbox exactly as into a local root (batches, spool,
crash recovery, fork handling are emit.py's and store.py's, unchanged); this module
only moves finished ``events/**/*.parquet`` files up. It owns: finding them, one
upload per file (an object appears only when complete), deleting the local copy
after, retrying with backoff while the store is unreachable, and its counters. It
must not touch the spool, the batches or how Parquet is written.

The uploads run in a helper process (``python -c … helper_main``), one per
recorder, started with the first file to ship and fed one line per round. Its
Python is ``$VOICEPIPE_PYTHON``, else ``sys.executable`` when that is a Python
(:func:`helper_python`: not under uWSGI, mod_wsgi or a frozen app). The
pipeline's process never loads the store's client: pyarrow's S3 client (the AWS
SDK) is not fork-safe — a child forked from a process whose S3 client had run
crashes when it exits normally, in the SDK's shutdown — and a request in flight at
interpreter exit holds the exit up until it times out. A helper can be killed
at close()'s deadline instead, and a forked child simply starts its own.

Exactly-once by name: a file is deleted only after its upload succeeded, and an
upload never replaces an object (:func:`_ship_file`). A file of a name already in
the store is either that object again (a crash or kill between upload and delete,
two processes sharing the outbox racing for it, or a spool recovery rewriting rows
that were uploaded and deleted already): only the local copy is deleted; or it holds
events the object lacks (a recovery of a live writer's segment, whose later batch
file has more rows): it goes up under a name of its own, and readers drop the
copies. Two helpers that both find no object upload the same bytes: a file of the
same name but other rows can only appear after the first one's upload completed
(its local copy is deleted after), so the later one's check sees it. Never raises
out of its thread, and never runs on the pipeline's threads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import remote, store

#: seconds between looks at the outbox when nothing wakes the uploader
UPLOAD_INTERVAL: Final = 5.0
#: first and largest wait after a failed round (doubling in between)
_BACKOFF_MIN: Final = 1.0
_BACKOFF_MAX: Final = 60.0
#: S3 client settings for uploads: one attempt per request (the uploader retries,
#: with backoff, on its own schedule; the SDK's own retries made an upload to a
#: closed port take 6 s, longer than close()'s default bound), bounded connect and
#: stall times, and a single PUT for a small file instead of a multipart upload
#: (three requests)
_S3_CONNECT_TIMEOUT: Final = 2.0
_S3_REQUEST_TIMEOUT: Final = 3.0
#: empty hour directories older than this (seconds) are removed after a round
_PRUNE_AGE: Final = 2 * 3600
#: environment variable: the Python interpreter that runs the upload helper (for
#: embeddings whose sys.executable is not one)
ENV_PYTHON: Final = "VOICEPIPE_PYTHON"
#: seconds a helper gets to end by itself after its input is closed (when close()
#: has no deadline), before it is killed
_HELPER_EXIT: Final = 5.0

WarnFn = Callable[..., None]  # _RateLimitedLog.warning: (key, msg, *args)


@dataclass(frozen=True)
class Shipped:
    """What one upload round did: files uploaded, whether it stopped with files
    left, why in a few words (``reason``) and the error in full."""

    uploaded: int
    failed: bool
    reason: str = ""
    error: str = ""


def waiting_files(local: Path) -> Iterator[Path]:
    """The complete event files waiting in the outbox ``local`` (any process's),
    oldest partition first. Hidden names (a write in progress) are not complete."""
    for dirpath, dirnames, filenames in os.walk(local / store.EVENTS):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".parquet") and not name.startswith("."):
                yield Path(dirpath, name)


class Outbox:
    """Ships ``<local>/events/**/*.parquet`` to the object-store root ``url``.

    One background thread (:meth:`start`), woken by :meth:`wake` after each batch
    file is written and every :data:`UPLOAD_INTERVAL` seconds; :meth:`ship` runs a
    round from the calling thread (close()). Either way the uploads themselves run
    in the helper process."""

    def __init__(self, url: str, local: Path, warn: WarnFn) -> None:
        self.url = url
        self.local = local
        self._warn = warn
        self._round = threading.Lock()  # one round at a time (the thread, close)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._python = ""  # the interpreter the helper was started with
        # our end of the helper's stdin and stdout: a socket, so that writing to a
        # helper that died raises EPIPE even in a program that set SIGPIPE's default
        # action (which would kill it), see _NOSIGNAL
        self._sock: socket.socket | None = None
        self._buf = b""  # what the helper wrote after the last complete line
        self.uploaded = 0
        self.errors = 0

    # -- what waits ----------------------------------------------------------------

    def has_files(self) -> bool:
        """Whether any complete event file waits (stops at the first one found)."""
        return next(waiting_files(self.local), None) is not None

    def pending(self) -> int:
        """How many files wait in the outbox now."""
        return sum(1 for _ in waiting_files(self.local))

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

    def join(self, deadline: float | None) -> None:
        """Wait until the thread has ended (after :meth:`stop`), at most until ``deadline``."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))

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
                self.ship(background=True)
            except Exception as exc:  # the thread must survive anything
                self._warn("upload", "voicepipe uploader error: %r", exc)

    # -- a round -------------------------------------------------------------------

    def ship(self, deadline: float | None = None, background: bool = False) -> Shipped:
        """Upload every waiting file, oldest first, deleting each local copy after
        its upload; stop at the first failure (the store is likely down: the next
        round retries, after a backoff). With a ``deadline`` (monotonic) a helper
        still busy then is killed: the file it was uploading stays for a later
        round. ``background``: the thread's round, skipped once :meth:`stop` was
        called. Never raises."""
        timeout = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._round.acquire(timeout=timeout):
            return Shipped(0, True, "close_timeout reached", "an upload was still running at close_timeout")
        try:
            if background and self._stop:
                return Shipped(0, False)
            return self._ship_locked(deadline)
        finally:
            self._round.release()

    def _ship_locked(self, deadline: float | None) -> Shipped:
        if not self.has_files():
            self._backoff = 0.0
            return Shipped(0, False)
        done = 0
        try:
            sock = self._helper()
            sock.sendall(b"ship\n", _NOSIGNAL)
            while True:
                line = self._read_line(sock, deadline)
                if line is None:
                    self._kill_helper()
                    return self._failed(
                        done,
                        "the upload helper ended",
                        f"the upload helper process ({self._python}) ended; if that is not a Python "
                        f"that can import voicepipe_obs and pyarrow, set {ENV_PYTHON} to one",
                    )
                if line.startswith(b"+"):
                    done += 1
                    self.uploaded += 1
                    continue
                reply = json.loads(line)
                break
        except TimeoutError:
            self._kill_helper()
            return Shipped(done, True, "close_timeout reached", "close_timeout reached during an upload")
        except _NoPython as exc:
            return self._failed(done, "no Python for the upload helper", str(exc))
        except Exception as exc:  # could not start or talk to the helper
            self._kill_helper()
            return self._failed(done, "the upload helper failed", f"{type(exc).__name__}: {exc}")
        if not reply.get("ok"):
            return self._failed(done, "the upload failed", str(reply.get("error")))
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

    # -- the helper process ----------------------------------------------------------

    def _helper(self) -> socket.socket:
        """Our end of a running helper (started if none runs)."""
        if self._proc is not None and self._sock is not None and self._proc.poll() is None:
            return self._sock
        self._kill_helper()
        python = helper_python()
        self._python = python
        ours, theirs = socket.socketpair()
        try:
            # the URI (credentials may be in it) and the outbox (named after it) go
            # on the helper's input, never on its command line: any local user can
            # read a command line (ps)
            ours.sendall(json.dumps({"url": self.url, "local": str(self.local)}).encode() + b"\n")
            self._proc = subprocess.Popen(
                [python, "-c", _HELPER_CODE, str(Path(__file__).resolve().parent)],
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the pipeline does not cut an upload short
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._buf = b""
        return ours

    def _read_line(self, sock: socket.socket, deadline: float | None) -> bytes | None:
        """The helper's next line; None at its end; TimeoutError at ``deadline``."""
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                if not sel.select(timeout):
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _kill_helper(self) -> None:
        proc, self._proc = self._proc, None
        self._close_sock()
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(5)
        except Exception:  # pragma: no cover - gone already
            pass

    def _close_sock(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:  # pragma: no cover
                pass

    def close_helper(self, deadline: float | None) -> None:
        """close()'s end: the helper's input is closed, so it ends; killed if it
        has not by ``deadline`` (no deadline: after :data:`_HELPER_EXIT` s)."""
        if not self._round.acquire(
            timeout=-1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        ):
            self._kill_helper()  # a round still running at the deadline: kill its helper
            return
        try:
            proc, self._proc = self._proc, None
            if proc is None:
                self._close_sock()
                return
            try:
                if self._sock is not None:
                    self._sock.shutdown(socket.SHUT_WR)  # its input ends: it ends
                wait = _HELPER_EXIT if deadline is None else max(deadline - time.monotonic(), 0.0)
                proc.wait(wait)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
            self._close_sock()
        finally:
            self._round.release()

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's helper without touching it
        (closing the child's copy of its socket, so the helper still sees the
        parent's close)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.returncode = 0  # not ours to wait for
        self._close_sock()  # our copy only: the parent's end stays open


#: send() flag: no SIGPIPE when the helper has gone (Linux; elsewhere 0)
_NOSIGNAL: Final = getattr(socket, "MSG_NOSIGNAL", 0)


class _NoPython(Exception):
    """No Python interpreter to run the upload helper with (the message says what to set)."""


def helper_python() -> str:
    """The Python interpreter for the upload helper: ``$VOICEPIPE_PYTHON`` when set,
    else ``sys.executable`` when it looks like a Python (its name says python or
    pypy, and it is executable; not a frozen app). Under uWSGI, mod_wsgi or a frozen
    app ``sys.executable`` is the host program, which cannot run the helper:
    :class:`_NoPython`, saying what to set."""
    given = os.environ.get(ENV_PYTHON, "").strip()
    if given:
        return given
    exe = sys.executable or ""
    name = os.path.basename(exe).lower()
    if not getattr(sys, "frozen", False) and ("python" in name or "pypy" in name) and os.access(exe, os.X_OK):
        return exe
    raise _NoPython(
        f"sys.executable ({exe or 'empty'}) is not a Python interpreter (an embedding such as "
        f"uWSGI or mod_wsgi, or a frozen app), so the upload helper cannot start: set {ENV_PYTHON} "
        "to a Python that can import voicepipe_obs and pyarrow"
    )


# ------------------------------------------------------------------ the helper


#: the helper's program. ``-c`` puts the working directory first on sys.path (a
#: ``json.py`` or ``pyarrow.py`` there would be imported): it is taken off. This
#: voicepipe_obs (argv[1], the package's directory) is loaded from its files, so the
#: helper runs the same version as the recorder without any directory put on
#: PYTHONPATH (which comes before the standard library: a site-packages there would
#: let a stray ``typing.py`` or ``enum`` backport shadow it); the rest (pyarrow)
#: comes from the interpreter's own path, with the package's parent directory
#: appended last (an install with ``pip --target`` that the program put on its
#: sys.path itself).
_HELPER_CODE: Final = """
import os, sys
if sys.path and not sys.path[0]:
    del sys.path[0]
sys.path.append(os.path.dirname(sys.argv[1]))
init = os.path.join(sys.argv[1], "__init__.py")
if "voicepipe_obs" not in sys.modules and os.path.isfile(init):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "voicepipe_obs", init, submodule_search_locations=[sys.argv[1]]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["voicepipe_obs"] = module
    spec.loader.exec_module(module)
from voicepipe_obs.outbox import helper_main
sys.exit(helper_main())
"""


def helper_main() -> int:
    """The upload helper. Its first line on stdin is JSON ``{"url": …, "local": …}``:
    the root and the outbox. Then, for each ``ship`` line, it uploads every waiting
    file of the outbox, deleting each after its upload and writing ``+`` per file,
    then one JSON line ``{"ok": …, "error": …}``. Ends when stdin ends (its recorder
    closed, or its process died)."""
    first = sys.stdin.buffer.readline()
    if not first:
        return 0
    header = json.loads(first)
    url, local = str(header["url"]), Path(header["local"])
    out = sys.stdout.buffer
    root: remote.RemoteRoot | None = None
    for line in sys.stdin.buffer:
        if line.strip() != b"ship":
            continue
        reply: dict[str, object] = {"ok": True}
        touched: set[Path] = set()
        try:
            if root is None:
                root = remote.open_root(
                    url,
                    connect_timeout=_S3_CONNECT_TIMEOUT,
                    request_timeout=_S3_REQUEST_TIMEOUT,
                    attempts=1,
                    delayed_open=True,
                )
            for path in waiting_files(local):
                if not _ship_file(root, path, path.relative_to(local).as_posix()):
                    continue  # gone: another process sharing the outbox shipped it
                path.unlink(missing_ok=True)
                touched.add(path.parent)
                out.write(b"+\n")
                out.flush()
        except Exception as exc:
            reply = {"ok": False, "error": str(exc) or type(exc).__name__}
        finally:
            _prune(touched)
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return 0


def _ship_file(root: remote.RemoteRoot, path: Path, rel: str) -> bool:
    """Upload the event file ``path`` to ``rel``, never replacing an object: when
    one of that name exists and already holds every event of the file, nothing is
    uploaded; when the file holds events the object lacks, it goes up under
    ``<stem>-<digest of its bytes>.parquet`` (a name no writer makes; the same
    file twice gets the same name). Costs one HEAD request per file (a free name:
    404, no listing); only a file whose name is taken reads the object. False when
    ``path`` is gone (another process sharing the outbox shipped it)."""
    theirs = _object(root, rel)
    if theirs is None:
        return root.put(path, rel)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    if theirs == data or _event_ids(data) <= _event_ids(theirs):
        return True  # uploaded before (by us, another process, or the file recovery rewrote)
    stem, _, suffix = rel.rpartition(".")
    alt = f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}.{suffix}"
    if _object(root, alt) is None:  # else: this very file, uploaded beside it before
        return root.put(path, alt)
    return True


def _object(root: remote.RemoteRoot, rel: str) -> bytes | None:
    """The bytes of the object ``rel``, None when there is none. Credentials that
    may only upload (an S3 policy with PutObject alone: the look-up is refused,
    403) cannot tell: None, so the file is uploaded as it would be without the
    check (and may replace an object of its name, the case the check guards
    against). Not ``fs.get_file_info``, which lists after a 404 (a second request
    per file), nor :meth:`RemoteRoot.get_bytes`, which takes any "not found" (a
    missing bucket) for none and a refused look-up for an error."""
    try:
        with root.fs.open_input_stream(root.path(rel)) as src:
            return bytes(src.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "ACCESS_DENIED" in str(exc) or "AccessDenied" in str(exc):
            return None
        raise root.error(f"cannot look up {rel}", exc) from exc


def _event_ids(data: bytes) -> set[object]:
    """The event ids in Parquet ``data`` (an unreadable file: a set no other
    includes, so it is kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return set(pq.read_table(pa.BufferReader(data), columns=["event_id"])["event_id"].to_pylist())
    except Exception:
        return {object()}


def _prune(dirs: set[Path]) -> None:
    """Remove hour directories left empty, once their hour is long past (a writer
    may still be making a file in a recent one)."""
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
