"""A local mirror of an object-store data root (``s3://bucket/prefix``): how the
CLI, :func:`voicepipe_obs.connect` and notebooks use one.

Every reader and maintenance function works on a local directory (DuckDB globs,
fcntl locks, atomic renames). For an object-store root they work on its mirror,
``remote.cache_dir(url, "mirror")`` (under ``$VOICEPIPE_CACHE``), a complete data
root: :meth:`Mirror.pull` brings it up to date before a command, :meth:`Mirror.push`
sends what the command changed back after it.

Owns:

* the synced areas, :data:`SYNCED_AREAS` (``events``, ``snapshots``, ``alerts`` —
  the alert log, so an alert's lifecycle survives a change of cron host — and
  ``quarantine``), and of ``_state`` only :data:`SHARED_STATE` (``check``'s
  ``last_check.json`` and ``pending.json``, remotely under ``_shared/``) so that
  reports on any host see the last check and what waits: uploaded when this host
  changed them, downloaded when the remote copy changed and this host's did not.
  The rest of ``_state`` (run locks, aggregate's bookkeeping) and ``_spool`` stay
  local: a new cron host rebuilds its bookkeeping from the synced files. A pull
  takes only keys of the layout (:data:`_LAYOUT`); anything else under the root,
  or a key that clashes with a directory, is skipped with one warning per pull;
* ``<mirror>/_state/remote-manifest.json``: the remote files known at the last
  sync, each with its remote size and modification time and the local copy's size
  and mtime_ns right after it was downloaded or uploaded. It is how a local
  deletion (compaction's sources, cleanup's partitions, quarantined files) is told
  from a file that arrived remotely after the pull, and a local change from none;
* ``<mirror>/_state/mirror.lock``: pull and push each hold it (not the whole
  command), so concurrent commands on one host keep the manifest whole.

Rules: downloads and uploads are whole files under their final names (a reader
never sees half a file); a push uploads everything new or changed *before* it
deletes anything remotely, and deletes nothing when an upload failed, so a reader
of the remote never misses an event (a duplicate is fine: every reader
deduplicates by event_id); a remote file the manifest does not know (it arrived
after our pull) is never deleted; the manifest is the one on disk at push time
(read under the lock), and with none there a push uploads only — only
:meth:`Mirror.expect_reset` (``demo --reset``) lets a push delete what the cleared
manifest knew.

Must not touch: the remote's ``_state``/``_spool``/outbox prefixes (the pipeline
side's, :mod:`voicepipe_obs.emit`), and anything outside the mirror locally.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import remote, store
from .errors import BusyError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from .remote import RemoteFile, RemoteRoot

log = logging.getLogger("voicepipe_obs.mirror")

#: the areas of the layout kept in sync with the remote (DESIGN §5)
SYNCED_AREAS: Final = (store.EVENTS, "snapshots", store.ALERTS, store.QUARANTINE)
#: the two small ``_state`` files ``voicepipe check`` writes that reports on every
#: host read (:data:`voicepipe_obs.alerts.LAST_CHECK_FILE`,
#: :data:`voicepipe_obs.damping.PENDING_FILE`), kept remotely under :data:`SHARED_PREFIX`
SHARED_STATE: Final = ("last_check.json", "pending.json")
#: where they are kept remotely (not ``_state``: the pipeline side's)
SHARED_PREFIX: Final = "_shared"
MANIFEST_FILE: Final = "remote-manifest.json"
MANIFEST_VERSION: Final = 1
LOCK_FILE: Final = "mirror.lock"
#: how long a pull or push waits for another one on this host before giving up (exit 5)
LOCK_TIMEOUT: Final = 600.0
#: files transferred at a time
WORKERS: Final = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class _Local:
    size: int
    mtime_ns: int


@dataclass
class _Entry:
    """A remote file known at the last sync: its remote ``size`` and ``mtime_ns``
    (None: not seen since we uploaded it), and the local copy's signature then."""

    size: int
    mtime_ns: int | None
    local: _Local

    def same_remote(self, f: RemoteFile) -> bool:
        return self.size == f.size and (
            self.mtime_ns is None or f.mtime_ns is None or self.mtime_ns == f.mtime_ns
        )


@dataclass
class SyncResult:
    """What a pull or push did: files and bytes transferred, files deleted (locally
    for a pull, remotely for a push)."""

    transferred: int = 0
    bytes: int = 0
    deleted: int = 0
    errors: list[StoreError] = field(default_factory=list)


class Mirror:
    """The local mirror of the object-store root ``url`` (see the module docstring).
    ``path`` is a data root every local function accepts."""

    def __init__(self, url: str, *, path: Path | None = None) -> None:
        if not remote.is_remote(url):
            raise StoreError(
                f"{url} is not an object-store root (s3://bucket/prefix); use it as a local data root"
            )
        self.url = url
        self.path = path if path is not None else remote.cache_dir(url, "mirror")
        self._remote: RemoteRoot | None = None
        #: the manifest as :meth:`expect_reset` found it: what the next push deletes
        #: remotely when the command cleared the mirror (and its manifest) on purpose
        self._reset_from: dict[str, _Entry] | None = None
        #: the :data:`SHARED_STATE` files as of the last sync (the manifest's ``state``),
        #: set by every load of the manifest
        self._shared: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"Mirror({remote.display(self.url)!r}, path={str(self.path)!r})"

    @property
    def remote(self) -> RemoteRoot:
        if self._remote is None:
            self._remote = remote.open_root(self.url)
        return self._remote

    def shown(self) -> str:
        """The root as printed: the URL with credentials masked."""
        return remote.display(self.url)

    # ---------------------------------------------------------------- pull

    def pull(self) -> SyncResult:
        """Bring the mirror up to date: download remote files that are new or changed
        (a rebuilt snapshot replaces the local one), delete local files another host
        removed (its compaction, cleanup). Local changes not pushed yet are kept; with
        no (readable) manifest nothing tells them apart, and the remote is
        authoritative: a same-name file that differs (size or mtime) is downloaded.
        Raises :class:`StoreError` (the store is unreachable, the cache not writable)."""
        self._ensure_dir()
        result = SyncResult()
        with self._lock():
            found = self._load()
            afresh = found is None  # no manifest: the remote is authoritative
            manifest = found or {}
            listed, stray = _layout_files(f for area in SYNCED_AREAS for f in self.remote.list(area))
            local = self._scan()
            for area in SYNCED_AREAS:  # removed by hand: download again, never delete remotely
                if not (self.path / area).is_dir():
                    for rel in [r for r in manifest if _area_of(r) == area]:
                        del manifest[rel]
            wanted: list[RemoteFile] = []
            for rel, f in listed.items():
                entry, here = manifest.get(rel), local.get(rel)
                if entry is not None and entry.same_remote(f):
                    if entry.mtime_ns is None:  # our own upload, seen remotely for the first time
                        entry.mtime_ns = f.mtime_ns
                    continue  # missing or changed here: a local change the push sends
                if entry is None and here is not None:
                    # here under the same name but unknown: a download an interrupted pull
                    # did not record (same size), or a local file not pushed yet (the push
                    # sends it). With no manifest at all nothing says the local copy is
                    # newer: unless it is the remote's (size and mtime), download over it
                    if here.size == f.size and (not afresh or _same(here, f)):
                        manifest[rel] = _Entry(f.size, f.mtime_ns, here)
                        continue
                    if not afresh:
                        continue
                    log.info(
                        "%s differs from the remote copy and no manifest says why: taking the remote's", rel
                    )
                if entry is not None and here is not None and here != entry.local:
                    log.info("%s changed both here and remotely: taking the remote copy", rel)
                if self._blocked(rel):
                    stray.append(rel)
                    continue
                wanted.append(f)
            for rel in [r for r in manifest if r not in listed]:
                entry, here = manifest.pop(rel), local.get(rel)
                if here is not None and here == entry.local:  # deleted remotely, unchanged here
                    self._remove_local(rel)
                    result.deleted += 1
                # changed here since: kept, and the push sends it as a new file
            try:
                for f, outcome in _parallel(self._download, wanted):
                    if isinstance(outcome, StoreError):
                        result.errors.append(outcome)
                        continue
                    manifest[f.rel] = _Entry(f.size, f.mtime_ns, outcome)
                    result.transferred += 1
                    result.bytes += f.size
                self._pull_shared(result)
            finally:  # also on Ctrl-C: what was downloaded stays known
                self._save(manifest)
        if stray:  # one line per pull, however many keys
            log.warning(
                "skipped %d remote object(s) under %s that are not files of the data root's layout "
                "or clash with a directory there, e.g. %r; delete or move them to silence this",
                len(stray),
                self.shown(),
                stray[0],
            )
        if result.errors:
            raise _summarise(result.errors, "pull", f"{len(result.errors)} of {len(wanted)} downloads failed")
        log.info(
            "pulled %s into %s: %d file(s) downloaded (%d bytes), %d deleted locally",
            self.shown(),
            self.path,
            result.transferred,
            result.bytes,
            result.deleted,
        )
        return result

    def _shared_files(self) -> dict[str, RemoteFile]:
        return {f.rel.rsplit("/", 1)[1]: f for f in self.remote.list(SHARED_PREFIX) if f.rel.count("/") == 1}

    def _pull_shared(self, result: SyncResult) -> None:
        """Download a :data:`SHARED_STATE` file when the remote copy changed since the
        last sync and this host did not change its own since (its check's push sends
        that); one this host never synced is taken when the remote copy is newer."""
        for name, f in self._shared_files().items():
            if name not in SHARED_STATE:
                continue
            entry, here = self._shared.get(name), _stat(self.path / store.STATE / name)
            if entry is not None and entry.same_remote(f):
                if entry.mtime_ns is None:
                    entry.mtime_ns = f.mtime_ns
                continue
            if here is not None:
                if entry is not None and here != entry.local:
                    continue  # changed here since (this host's check): ours wins
                if entry is None and (f.mtime_ns is None or here.mtime_ns >= f.mtime_ns):
                    continue
            try:
                got = self._download(f, self.path / store.STATE / name)
            except StoreError as exc:
                result.errors.append(exc)
                continue
            self._shared[name] = _Entry(f.size, f.mtime_ns, got)
            result.transferred += 1
            result.bytes += f.size

    def _push_shared(self, result: SyncResult, *, resetting: bool) -> None:
        """Upload a :data:`SHARED_STATE` file this host changed since the last sync
        (its ``check`` wrote it); one never synced only when the remote has none or
        an older one. Never deletes one remotely, except after :meth:`expect_reset`."""
        remote_now: dict[str, RemoteFile] | None = None
        for name in SHARED_STATE:
            path = self.path / store.STATE / name
            here, entry = _stat(path), self._shared.get(name)
            rel = f"{SHARED_PREFIX}/{name}"
            if here is None:
                if resetting:
                    try:
                        self.remote.delete(rel)
                    except StoreError as exc:
                        result.errors.append(exc)
                    self._shared.pop(name, None)
                continue
            if entry is not None and entry.local == here:
                continue
            if entry is None:
                if remote_now is None:
                    remote_now = self._shared_files()
                f = remote_now.get(name)
                if f is not None and (f.mtime_ns is None or f.mtime_ns >= here.mtime_ns):
                    continue  # the remote's is as new: the next pull decides
            try:
                if not self.remote.put(path, rel):
                    continue  # replaced or removed meanwhile: the next push sends it
            except StoreError as exc:
                result.errors.append(exc)
                continue
            self._shared[name] = _Entry(here.size, None, here)
            result.transferred += 1
            result.bytes += here.size

    def _blocked(self, rel: str) -> bool:
        """Whether a download of ``rel`` would clash with the mirror: a directory
        there under that name, or a file where one of its parent directories goes."""
        path = self.path / rel
        if path.is_dir():
            return True
        parent = path.parent
        while parent != self.path:
            if parent.exists() and not parent.is_dir():
                return True
            parent = parent.parent
        return False

    def _download(self, f: RemoteFile, local: Path | None = None) -> _Local:
        local = self.path / f.rel if local is None else local
        try:
            self.remote.get(f.rel, local)
            if f.mtime_ns is not None:
                # the remote's time, not the download's: compaction's grace and
                # `report events --follow` look at how old a file is
                os.utime(local, ns=(f.mtime_ns, f.mtime_ns))
            st = local.stat()
        except OSError as exc:  # the local side: a full disk, a read-only cache
            raise store.write_error(self.path, exc) from exc
        return _Local(st.st_size, st.st_mtime_ns)

    # ---------------------------------------------------------------- push

    def expect_reset(self) -> None:
        """Say that the command is about to clear the mirror's layout on purpose,
        ``_state`` and its manifest included (``demo --reset``): the next push then
        deletes remotely the files the manifest knows now and that are gone locally.
        Without this, a push with no manifest on disk uploads only (a mirror
        removed while a command ran must never empty the remote)."""
        self._ensure_dir()
        with self._lock():
            self._reset_from = self._load() or {}

    def push(self) -> SyncResult:
        """Send local changes: upload files that are new or changed since the last
        sync, then — only when every upload succeeded — delete the remote files the
        manifest *on disk now* knew that are gone locally. A remote file the manifest
        does not know is never deleted, and with no manifest on disk (the mirror or
        its ``_state`` was removed meanwhile) nothing is: the push uploads only,
        unless :meth:`expect_reset` said the command cleared it. Raises
        :class:`StoreError`; nothing is deleted remotely when an upload failed."""
        result = SyncResult()
        if not self.path.is_dir():
            return result
        with self._lock():
            found = self._load()
            resetting = found is None and self._reset_from is not None
            manifest = dict(self._reset_from or {}) if found is None else found
            local = self._scan()
            uploads = [
                (rel, sig)
                for rel, sig in sorted(local.items())
                if rel not in manifest or manifest[rel].local != sig
            ]
            if found is None and not resetting:
                uploads = self._only_new(uploads, manifest)
            try:
                for (rel, sig), outcome in _parallel(self._upload, uploads):
                    if isinstance(outcome, StoreError):
                        result.errors.append(outcome)
                    elif outcome:
                        manifest[rel] = _Entry(sig.size, None, sig)
                        result.transferred += 1
                        result.bytes += sig.size
                self._push_shared(result, resetting=resetting)
                if result.errors:
                    raise _summarise(
                        result.errors,
                        "push",
                        f"{len(result.errors)} of {len(uploads)} uploads failed, nothing deleted remotely; "
                        "the next command sends them again",
                    )
                # an area missing here was removed by hand (never delete remotely for
                # that), unless the command said it clears them (`demo --reset`)
                present = {area for area in SYNCED_AREAS if resetting or (self.path / area).is_dir()}
                gone = sorted(rel for rel in manifest if rel not in local and _area_of(rel) in present)
                for rel, failed in _parallel(self.remote.delete, gone):
                    if isinstance(failed, StoreError):
                        result.errors.append(failed)
                        continue
                    del manifest[rel]
                    result.deleted += 1
                if result.errors:
                    raise _summarise(
                        result.errors,
                        "push",
                        f"{len(result.errors)} of {len(gone)} remote deletions failed; the next command retries them",
                    )
            finally:
                self._save(manifest)
        self._reset_from = None
        log.info(
            "pushed %s to %s: %d file(s) uploaded (%d bytes), %d deleted remotely",
            self.path,
            self.shown(),
            result.transferred,
            result.bytes,
            result.deleted,
        )
        return result

    def _only_new(
        self, uploads: list[tuple[str, _Local]], manifest: dict[str, _Entry]
    ) -> list[tuple[str, _Local]]:
        """``uploads`` less the files the remote already has, for a push with no
        manifest on disk: nothing says which copy is newer, so a remote file is
        never overwritten. One that is the local copy (size and mtime) is recorded
        as known; one that differs is recorded as changed remotely, so the next pull
        downloads it and no push sends the local copy over it."""
        listed = {f.rel: f for area in SYNCED_AREAS for f in self.remote.list(area)}
        out: list[tuple[str, _Local]] = []
        kept: list[str] = []
        for rel, sig in uploads:
            f = listed.get(rel)
            if f is None:
                out.append((rel, sig))
            elif _same(sig, f):
                manifest[rel] = _Entry(f.size, f.mtime_ns, sig)
            else:
                manifest[rel] = _Entry(_DIFFERS, None, sig)
                kept.append(rel)
        if kept:
            log.warning(
                "not uploading %d file(s) over a different remote copy (no manifest in %s to say "
                "which is newer; the next pull takes the remote's), e.g. %s",
                len(kept),
                self.path,
                kept[0],
            )
        return out

    def _upload(self, item: tuple[str, _Local]) -> bool:
        """Upload one file; False when it vanished meanwhile (a concurrent compaction
        or cleanup on this host: the next push deletes it remotely instead)."""
        rel, _ = item
        return self.remote.put(self.path / rel, rel)

    # ---------------------------------------------------------------- local side

    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the local mirror of {self.shown()} at {self.path}: {exc.strerror or exc} "
                f"(set {remote.ENV_CACHE} to a writable directory)"
            ) from exc

    @contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            with store.run_lock(self.path, LOCK_FILE, command="mirror sync", timeout=LOCK_TIMEOUT):
                yield
        except BusyError as exc:
            raise BusyError(
                f"another voicepipe command is still syncing the local mirror of {self.shown()} "
                f"({self.path}) after {LOCK_TIMEOUT:g}s; nothing done: run the command again"
            ) from exc
        except OSError as exc:
            raise store.write_error(self.path, exc) from exc

    def _scan(self) -> dict[str, _Local]:
        """Every complete file of the synced areas (hidden names are temporary)."""
        out: dict[str, _Local] = {}
        for area in SYNCED_AREAS:
            for dirpath, dirs, names in os.walk(self.path / area):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                base = Path(dirpath)
                for name in names:
                    if name.startswith("."):
                        continue
                    path = base / name
                    rel = path.relative_to(self.path).as_posix()
                    try:
                        rel.encode("utf-8")
                    except UnicodeEncodeError:  # not a name an object store can hold
                        log.warning("not syncing %r: its name is not UTF-8", rel)
                        continue
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    out[rel] = _Local(st.st_size, st.st_mtime_ns)
        return out

    def _remove_local(self, rel: str) -> None:
        path = self.path / rel
        path.unlink(missing_ok=True)
        top = self.path / _area_of(rel)
        parent = path.parent
        while parent != top and top in parent.parents:  # empty partitions go too
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _manifest_path(self) -> Path:
        return self.path / store.STATE / MANIFEST_FILE

    def _load(self) -> dict[str, _Entry] | None:
        """The manifest on disk, or None when there is none (or none readable): the
        mirror is then compared afresh, the remote taken as authoritative. Sets
        :attr:`_shared` from it (empty without one: never an older memory)."""
        self._shared = {}
        path = self._manifest_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s): the mirror is compared afresh", path, exc)
            return None
        try:
            if data.get("version") != MANIFEST_VERSION:
                return None
            self._shared = {name: _entry(e) for name, e in data.get("state", {}).items()}
            return {rel: _entry(e) for rel, e in data["files"].items()}
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("ignoring unreadable %s (not a manifest): the mirror is compared afresh", path)
            return None

    def _save(self, manifest: dict[str, _Entry]) -> None:
        data = {
            "version": MANIFEST_VERSION,
            "url": remote.canonical(self.url),
            "files": {rel: _entry_json(e) for rel, e in sorted(manifest.items())},
            "state": {name: _entry_json(e) for name, e in sorted(self._shared.items())},
        }
        try:
            store.write_text_atomic(self._manifest_path(), json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            raise store.write_error(self.path, exc) from exc


def _entry(e: Any) -> _Entry:
    """A manifest entry from its JSON (raises KeyError/TypeError/ValueError when it is not one)."""
    return _Entry(int(e["size"]), e["mtime_ns"], _Local(int(e["local_size"]), int(e["local_mtime_ns"])))


def _entry_json(e: _Entry) -> dict[str, int | None]:
    return {
        "size": e.size,
        "mtime_ns": e.mtime_ns,
        "local_size": e.local.size,
        "local_mtime_ns": e.local.mtime_ns,
    }


def _stat(path: Path) -> _Local | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Local(st.st_size, st.st_mtime_ns)


#: a manifest entry's remote size meaning "the remote copy differs from the local
#: one": no remote file has it, so the next pull downloads the remote's
_DIFFERS: Final = -1


def _same(here: _Local, f: RemoteFile) -> bool:
    """Whether the local file is a copy of the remote one: same size, and the
    remote's mtime (a download sets it) when the store gives one."""
    return here.size == f.size and (f.mtime_ns is None or here.mtime_ns == f.mtime_ns)


def _safe(rel: str) -> bool:
    """Whether the remote key ``rel`` names a file inside the mirror: a key with
    ``..`` or empty components (another S3 client can write one) would download
    outside it."""
    parts = rel.split("/")
    return len(parts) > 1 and all(p not in ("", ".", "..") for p in parts) and "\0" not in rel


_DATE: Final = r"date=\d{4}-\d{2}-\d{2}"
#: the remote keys a pull takes (DESIGN §5): anything else another S3 client left
#: under the root is skipped, so one stray object cannot break every command
_LAYOUT: Final = re.compile(
    rf"events/{_DATE}/hour=\d{{2}}/[^/]+\.parquet"
    rf"|snapshots/(?:hourly|daily)/{_DATE}/[^/]+\.parquet"
    rf"|alerts/{_DATE}/[^/]+\.parquet"
    r"|quarantine/.+"
)


def _in_layout(rel: str) -> bool:
    return _safe(rel) and _LAYOUT.fullmatch(rel) is not None


def _layout_files(files: Iterable[RemoteFile]) -> tuple[dict[str, RemoteFile], list[str]]:
    """The remote files a pull may take, by key, and the keys it skips: not a file of
    the layout, or a key that is also a directory of another key (``quarantine/a``
    beside ``quarantine/a/b``: the two cannot both be local files)."""
    files = list(files)
    dirs = {f.rel[:i] for f in files for i, ch in enumerate(f.rel) if ch == "/"}
    taken: dict[str, RemoteFile] = {}
    stray: list[str] = []
    for f in files:
        if _in_layout(f.rel) and f.rel not in dirs:
            taken[f.rel] = f
        else:
            stray.append(f.rel)
    return taken, stray


def _area_of(rel: str) -> str:
    return rel.split("/", 1)[0]


def _parallel(fn: Callable[[_T], _R], items: Iterable[_T]) -> Iterator[tuple[_T, _R | StoreError]]:
    """``(item, fn(item))`` for each item, run on a few threads; a
    :class:`StoreError` is returned as the outcome, not raised (the others still run)."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(
        max_workers=min(WORKERS, len(items)), thread_name_prefix="voicepipe-mirror"
    ) as pool:
        futures: list[tuple[_T, Future[_R]]] = [(item, pool.submit(fn, item)) for item in items]
        try:
            for item, future in futures:
                try:
                    yield item, future.result()
                except StoreError as exc:
                    yield item, exc
        finally:
            for _, future in futures:
                future.cancel()


def _summarise(errors: list[StoreError], what: str, summary: str) -> StoreError:
    return StoreError(f"{what} failed: {summary}; first: {errors[0]}")


# ------------------------------------------------------------------ library API


def mirrored(url: str) -> Path:
    """Pull the object-store root ``url`` into its local mirror and return the
    mirror's path: a data root for the reader functions (read-only use; changes
    made under it stay local until :meth:`Mirror.push` or :func:`synced`)."""
    m = Mirror(url)
    m.pull()
    return m.path


@contextmanager
def synced(url: str) -> Iterator[Path]:
    """``with synced("s3://bucket/prefix") as root:`` pull, work on the local
    ``root`` (maintenance functions, a Recorder), then push — also when the block
    raised (files under their final names are complete)."""
    m = Mirror(url)
    m.pull()
    try:
        yield m.path
    finally:
        m.push()
