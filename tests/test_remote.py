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


def test_credentials_in_the_uri_are_never_printed() -> None:
    url = "s3://b/p?endpoint_override=h:9000&access_key=AK&secret_key=SEKRIT"
    assert "SEKRIT" not in remote.display(url) and "AK" not in remote.display(url)
    assert "endpoint_override=h:9000" in remote.display(url)


def test_one_cache_per_root_whatever_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    a = remote.cache_dir("s3://bucket/prefix/", "mirror")
    assert a == remote.cache_dir("s3://bucket/prefix?scheme=http", "mirror")
    assert a != remote.cache_dir("s3://bucket/other", "mirror")
    assert a != remote.cache_dir("s3://bucket/prefix", "outbox")
    assert a.parent == tmp_path and a.name.startswith("mirror-bucket-prefix-")


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
