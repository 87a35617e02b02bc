"""remote.py: object-store roots opened, listed, uploaded to and downloaded from, on
a real S3 server (moto's) over HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicepipe_obs import remote
from voicepipe_obs.errors import StoreError


def test_files_go_up_and_come_back_whole(s3_root: str, tmp_path: Path) -> None:
    root = remote.open_root(s3_root)
    local = tmp_path / "a.parquet"
    local.write_bytes(bytes(range(256)) * 12_000)  # several chunks
    root.put(local, "events/date=2026-11-29/hour=10/a.parquet")
    [listed] = root.list("events")
    assert listed.rel == "events/date=2026-11-29/hour=10/a.parquet"
    assert listed.size == local.stat().st_size
    root.get(listed.rel, tmp_path / "back" / "a.parquet")
    assert (tmp_path / "back" / "a.parquet").read_bytes() == local.read_bytes()
    assert [p.name for p in (tmp_path / "back").iterdir()] == ["a.parquet"]  # no temporary left
    assert root.get_bytes("events/none.parquet") is None
    root.delete(listed.rel)
    root.delete(listed.rel)  # already gone: fine
    assert root.list() == []


def test_hidden_names_are_not_listed(s3_root: str) -> None:
    root = remote.open_root(s3_root)
    root.put_bytes(b"x", "events/date=2026-11-29/hour=10/.a.parquet.1234.tmp")
    root.put_bytes(b"y", "events/date=2026-11-29/hour=10/b.parquet")
    assert [f.rel for f in root.list("events")] == ["events/date=2026-11-29/hour=10/b.parquet"]


def test_what_is_remote() -> None:
    assert remote.is_remote("s3://bucket/prefix")
    assert remote.is_remote("GS://bucket/prefix")
    assert not remote.is_remote("./voicepipe-data")
    assert not remote.is_remote("file:///tmp/x")
    assert not remote.is_remote(Path("s3://bucket"))  # a Path is always local
    assert not remote.is_remote(None)


def test_credentials_in_the_uri_are_never_printed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pyarrow reads credentials from the URI's user part (``s3://KEY:SECRET@bucket``);
    neither they nor query-string ones reach a message or a directory name."""
    from pyarrow import fs as pafs

    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    url = "s3://AKIAEXAMPLE:SuperSecret@bucket/p?endpoint_override=h:9000&scheme=http"
    _fs, base = pafs.FileSystem.from_uri(url)  # the form pyarrow accepts
    assert base == "bucket/p"
    for shown in (
        remote.display(url),
        remote.canonical(url),
        remote.cache_dir(url, "mirror").name,
        remote.cache_dir(url, "outbox").name,
        str(remote.open_root(url)),
        remote.display("s3://b/p?access_key=AKIAEXAMPLE&secret_key=SuperSecret"),
    ):
        assert "SuperSecret" not in shown and "AKIAEXAMPLE" not in shown, shown
    assert remote.display(url) == "s3://***@bucket/p?endpoint_override=h:9000&scheme=http"


def test_one_cache_per_root_and_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same bucket and prefix is one root whatever its credentials or options,
    but two endpoints are two stores: an outbox of one must never be shipped to the
    other."""
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    a = remote.cache_dir("s3://bucket/prefix/", "mirror")
    assert a == remote.cache_dir("s3://KEY:SECRET@bucket/prefix?scheme=http", "mirror")
    assert a != remote.cache_dir("s3://bucket/other", "mirror")
    assert a != remote.cache_dir("s3://bucket/prefix", "outbox")
    assert a.parent == tmp_path and a.name.startswith("mirror-bucket-prefix-")
    minio = remote.cache_dir("s3://bucket/prefix?endpoint_override=minio:9000", "mirror")
    assert minio != a and minio.name.startswith("mirror-bucket-prefix-")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert remote.cache_dir("s3://bucket/prefix", "mirror") == minio
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://other:9000")
    assert remote.cache_dir("s3://bucket/prefix", "mirror") not in (a, minio)


def test_a_bucketless_uri_is_refused_in_one_line() -> None:
    with pytest.raises(StoreError, match="names no bucket"):
        remote.open_root("s3://")


def test_an_unreachable_endpoint_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    root = remote.open_root("s3://bucket/p?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1")
    with pytest.raises(StoreError) as info:
        root.list("events")
    assert "\n" not in str(info.value) and "check the URI" in str(info.value)
