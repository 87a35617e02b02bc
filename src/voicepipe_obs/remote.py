"""Object-store data roots: ``s3://bucket/prefix`` (and the other URIs
``pyarrow.fs.FileSystem.from_uri`` opens: ``gs://``, ``abfs://``, ``hdfs://``).

The layout under the prefix is DESIGN §5's, unchanged: plain
``read_parquet('s3://bucket/prefix/events/**/*.parquet', hive_partitioning=true)``
(DuckDB with httpfs, pandas, polars, Spark) reads it without this library. A file
appears under its final name only when complete: an object store makes an upload
visible only when it finishes (a single PUT, or a multipart upload's completion),
so no temporary name is needed.

Credentials, region and endpoint come from the usual places of the store's SDK
(for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``~/.aws``), or from the URI's query string, which pyarrow
reads (``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``).

This module holds the pieces both sides share: recognising a remote root, opening
it, listing, uploading and downloading whole files, and the local cache directory
(the Recorder's outbox, the CLI's mirror). It imports pyarrow only when a remote
root is opened: the pipeline side imports it on every ``Recorder(...)``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from pyarrow import fs as pafs

#: URI schemes taken for an object-store root (anything else is a local path)
REMOTE_SCHEMES: Final = frozenset({"s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs"})
#: where local caches go: $VOICEPIPE_CACHE, else $XDG_CACHE_HOME/voicepipe, else ~/.cache/voicepipe
ENV_CACHE: Final = "VOICEPIPE_CACHE"
#: query parameters never printed (credentials pyarrow accepts in the URI)
_SECRET_PARAMS: Final = frozenset({"access_key", "secret_key", "session_token", "account_key"})
#: bytes per read or write call when copying a file
_CHUNK: Final = 1 << 20


def is_remote(root: str | os.PathLike[str] | None) -> bool:
    """True when ``root`` is an object-store URI (``s3://…``), not a local path."""
    if root is None or isinstance(root, Path):
        return False
    scheme, sep, _ = os.fspath(root).partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def display(url: str) -> str:
    """``url`` fit to print: credentials are masked, in its user part
    (``s3://KEY:SECRET@bucket/…``, the form pyarrow reads) and in its query string."""
    if "://" not in url:
        return url  # a local path
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(
            f"{k}={'***' if k.lower() in _SECRET_PARAMS else v}"
            for k, v in parse_qsl(query, keep_blank_values=True)
        )
    # not urlunsplit: it drops the "//" of a URI without a bucket (s3:// → s3:)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def canonical(url: str) -> str:
    """``url`` without credentials, query string and trailing slashes: the bucket and
    prefix it names (see :func:`identity` for what tells two roots apart)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), "", ""))


def identity(url: str) -> str:
    """What names one root: :func:`canonical` plus the endpoint it is reached at
    (``endpoint_override`` in the URI, else ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` for ``s3://``), so that the same bucket name on two
    servers (a MinIO and AWS, a test and production endpoint) never shares an
    outbox or a mirror. Credentials and other options are not part of it."""
    scheme = urlsplit(url).scheme.lower()
    endpoint = dict(parse_qsl(urlsplit(url).query)).get("endpoint_override", "")
    if not endpoint and scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    endpoint = endpoint.split("://", 1)[-1].rstrip("/").lower()
    return canonical(url) + (f" @{endpoint}" if endpoint else "")


def cache_home() -> Path:
    """The directory local caches go under (see :data:`ENV_CACHE`)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "voicepipe"


def cache_dir(url: str, kind: str) -> Path:
    """The local directory of ``kind`` (``outbox``, ``mirror``) for the remote root
    ``url``: one per root (:func:`identity`: the endpoint counts, credentials do not),
    named so a person can tell which (``mirror-bucket-prefix-1a2b…``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", canonical(url).split("://", 1)[-1]).strip("-")[:60]
    digest = hashlib.sha256(identity(url).encode()).hexdigest()[:12]
    return cache_home() / f"{kind}-{slug}-{digest}"


@dataclass(frozen=True)
class RemoteFile:
    """One object under the root: its path relative to the root (``/``-separated),
    size in bytes and modification time (ns since the epoch, None when unknown)."""

    rel: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class RemoteRoot:
    """An opened object-store root: ``fs`` and the ``base`` path (``bucket/prefix``)
    every relative path is under."""

    url: str
    fs: pafs.FileSystem
    base: str

    def __str__(self) -> str:
        return display(self.url)

    def path(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.base}/{rel}" if rel else self.base

    def list(self, area: str = "") -> list[RemoteFile]:
        """Every file under ``area`` (recursively), sorted by path; none when the
        area does not exist. Hidden names (``.x``: temporary files a local tool
        may have copied up) are left out, as a ``*.parquet`` glob would."""
        from pyarrow import fs as pafs

        base = self.path(area)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise self.error(f"cannot list {area or 'the root'}", exc) from exc
        out = []
        cut = len(self.base) + 1
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[cut:]
            if rel.rsplit("/", 1)[-1].startswith("."):
                continue
            out.append(RemoteFile(rel, int(info.size or 0), info.mtime_ns))
        out.sort(key=lambda f: f.rel)
        return out

    def put(self, local: Path, rel: str) -> bool:
        """Upload ``local`` to ``rel`` (visible only once complete; replaces an
        existing object). False, nothing uploaded, when ``local`` is gone (a
        concurrent compaction, cleanup or uploader took it: not an error)."""
        try:
            src = open(local, "rb")  # noqa: SIM115 - closed by the with below: only its absence is not an error
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self.error(f"cannot upload {local} to {rel}", exc) from exc
        try:
            with src, self.fs.open_output_stream(self.path(rel)) as dst:
                for chunk in _chunks(src):
                    dst.write(chunk)
        except OSError as exc:
            raise self.error(f"cannot upload {local} to {rel}", exc) from exc
        return True

    def put_bytes(self, data: bytes, rel: str) -> None:
        try:
            with self.fs.open_output_stream(self.path(rel)) as dst:
                dst.write(data)
        except OSError as exc:
            raise self.error(f"cannot upload {rel}", exc) from exc

    def get(self, rel: str, local: Path) -> None:
        """Download ``rel`` to ``local`` atomically (a temporary name no glob
        matches, then rename): a reader of the local copy never sees half a file."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".{local.name}.{secrets.token_hex(4)}.tmp"
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, open(tmp, "wb") as dst:
                for chunk in _chunks(src):
                    dst.write(chunk)
            os.replace(tmp, local)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self.error(f"cannot download {rel}", exc) from exc
            raise

    def get_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as src:
                data: bytes = src.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _not_found(exc):
                return None
            raise self.error(f"cannot download {rel}", exc) from exc

    def delete(self, rel: str) -> None:
        """Delete ``rel``; an object already gone is fine."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            return
        except OSError as exc:
            if _not_found(exc):
                return
            raise self.error(f"cannot delete {rel}", exc) from exc

    def error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"object-store root {self}: {what}: {_reason(exc)} (check the URI, the credentials and "
            "the endpoint: AWS_* variables or ?endpoint_override=… in the URI)"
        )


def _chunks(stream: Any) -> Iterator[bytes]:
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def _not_found(exc: OSError) -> bool:
    text = str(exc)
    return "NoSuchKey" in text or "Path does not exist" in text or "not found" in text.lower()


#: S3 client settings of the CLI's mirror (:func:`open_root`): a store that accepts
#: connections but never answers made one listing wait 1 min 40 s with the SDK's
#: defaults; with these a command gives up after ~20 s
CONNECT_TIMEOUT: Final = 5.0
REQUEST_TIMEOUT: Final = 10.0  # seconds without a byte transferred, not a whole request
ATTEMPTS: Final = 2


def open_root(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    request_timeout: float = REQUEST_TIMEOUT,
    attempts: int = ATTEMPTS,
    delayed_open: bool = False,
) -> RemoteRoot:
    """Open the object-store root ``url`` (no request is made yet); a URI pyarrow
    cannot open raises :class:`StoreError` naming it. An S3 client gets the
    timeouts and attempts given and, with
    ``delayed_open``, writes a small file as one PUT instead of a multipart upload."""
    root = _open_root(url)
    return _tuned(root, connect_timeout, request_timeout, attempts, delayed_open)


def _tuned(
    root: RemoteRoot, connect_timeout: float, request_timeout: float, attempts: int, delayed_open: bool
) -> RemoteRoot:
    from pyarrow import fs as pafs

    if not isinstance(root.fs, pafs.S3FileSystem):
        return root
    try:
        options = dict(root.fs.__reduce__()[1][0])  # the options the URI and environment gave
        if options.get("connect_timeout", -1) < 0:
            options["connect_timeout"] = connect_timeout
        if options.get("request_timeout", -1) < 0:
            options["request_timeout"] = request_timeout
        options["allow_delayed_open"] = delayed_open or options.get("allow_delayed_open", False)
        fs = pafs.S3FileSystem(
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts), **options
        )
    except Exception:  # pragma: no cover - another pyarrow version: its defaults
        return root
    return RemoteRoot(root.url, fs, root.base)


def _open_root(url: str) -> RemoteRoot:
    from pyarrow import fs as pafs

    require_bucket(url)
    try:
        fs, base = pafs.FileSystem.from_uri(url)
    except (OSError, ValueError, ImportError) as exc:
        raise StoreError(
            f"cannot open the object-store root {display(url)}: {_reason(exc)} "
            "(s3://bucket/prefix, gs://bucket/prefix; options in the query string)"
        ) from exc
    return RemoteRoot(url, fs, base.rstrip("/"))


def require_bucket(url: str) -> str:
    """``url``, or :class:`StoreError` when it names no bucket (``s3://``); no request
    and no pyarrow (the Recorder checks this when it is made)."""
    if not urlsplit(url).netloc.rpartition("@")[2]:
        raise StoreError(f"object-store root {display(url)} names no bucket: use s3://bucket/prefix")
    return url


def _reason(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
