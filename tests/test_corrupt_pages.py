"""Files whose footer is valid but whose data pages are garbage (a bad disk, a copy
gone wrong): vetting reads footers only and passes them, and DuckDB then fails the
whole query with an error naming no file. Every command finds the file after the
failure, skips it with one warning naming it and what fixes it, and carries on.

Real files corrupted on disk, the real CLI in subprocesses (each a fresh process:
nothing remembered from an earlier command)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "NO_COLOR": "1"}


def voicepipe(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(root), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


def corrupt_pages(path: Path) -> None:
    """Flip every byte between the header magic and the footer: the footer stays valid."""
    b = bytearray(path.read_bytes())
    footer_len = struct.unpack("<I", b[-8:-4])[0]
    for i in range(4, len(b) - 8 - footer_len):
        b[i] ^= 0x5A
    path.write_bytes(b)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    for args in (("demo", "--days", "2", "--artifacts-per-day", "30", "--live", "0"), ("aggregate",)):
        done = voicepipe(root, *args)
        assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def copy(demo_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return root


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "don't know what type" not in done.stdout


def _event_files(root: Path) -> list[Path]:
    return sorted(root.glob("events/date=*/hour=*/*.parquet"))


def test_event_file_with_corrupt_pages_is_skipped_with_one_warning(copy: Path) -> None:
    bad = _event_files(copy)[-1]  # the newest hour: every report reads it
    corrupt_pages(bad)
    for args in (
        ("report", "events"),
        ("report", "dashboard"),
        ("report", "artifacts"),
        ("aggregate", "--rebuild"),
        ("sql", "SELECT count(*) FROM events"),
        ("check",),
    ):
        done = voicepipe(copy, *args)
        _no_traceback(done)
        assert done.returncode in ((0, 1, 2) if args == ("check",) else (0,)), (args, done.stderr)
        warnings = [line for line in done.stderr.splitlines() if "skipping unreadable file" in line]
        if args == ("check",) and not warnings:
            continue  # check's windows need not reach this hour
        assert len(warnings) == 1, (args, done.stderr)
        assert (
            bad.name in warnings[0] and "`voicepipe compact` moves such files to quarantine/" in warnings[0]
        )
        assert "corrupt data" in warnings[0]


def test_compact_quarantines_corrupt_pages_whatever_the_grace(copy: Path) -> None:
    bad = _event_files(copy)[0]  # a closed hour, written moments ago: young
    corrupt_pages(bad)
    done = voicepipe(copy, "compact")  # default grace: young files are left for later
    _no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert not bad.exists()
    moved = copy / "quarantine" / bad.relative_to(copy)
    assert moved.exists()
    assert "quarantined unreadable file (unreadable (" in done.stderr and str(moved) in done.stderr


def test_alert_log_file_with_corrupt_pages_is_skipped(copy: Path) -> None:
    from voicepipe_obs import alerts

    now = dt.datetime.now(dt.timezone.utc)
    written = []
    for rule in ("failure_rate", "queue_depth"):
        ev = alerts.Evaluation(now)
        ev.findings.append(alerts.Finding(rule, None, "warning", 1.0, 0.5, "s"))  # type: ignore[arg-type]
        path = alerts.write_records(copy, alerts.lifecycle_records([], ev), now)
        assert path is not None
        written.append(path)
    bad = written[0]
    corrupt_pages(bad)
    listed = voicepipe(copy, "alerts", "list", "--format", "json")
    _no_traceback(listed)
    assert listed.returncode == 0, listed.stderr
    assert '"queue_depth"' in listed.stdout and '"failure_rate"' not in listed.stdout
    good_id = listed.stdout.split('"alert_id": "')[1].split('"')[0]
    for args in (
        ("alerts", "list", "--history"),
        ("alerts", "ack", good_id, "--by", "ops"),
        ("report", "alerts"),
        ("report", "dashboard"),
        ("check",),
    ):
        done = voicepipe(copy, *args)
        _no_traceback(done)
        assert done.returncode in ((0, 1, 2) if args == ("check",) else (0,)), (args, done.stderr)
        if args[:2] == ("alerts", "ack") and not done.stderr:
            continue  # its filter on alert_id may skip the file by its statistics
        assert f"skipping unreadable file {bad}" in done.stderr, (args, done.stderr)
        assert "move it out of alerts/" in done.stderr


def test_snapshot_with_corrupt_pages_is_named_with_what_fixes_it(copy: Path) -> None:
    bad = sorted(copy.glob("snapshots/daily/date=*/*.parquet"))
    for path in bad:
        corrupt_pages(path)
    done = voicepipe(copy, "check")
    _no_traceback(done)
    assert done.returncode != 3, done.stdout + done.stderr
    assert "`voicepipe compact` moves unreadable files" not in done.stdout + done.stderr
    for path in bad:
        assert f"skipping unreadable file {path} (corrupt data" in done.stderr, done.stderr
    assert "`voicepipe aggregate --rebuild` rewrites the snapshots" in done.stderr
