"""Shared fixtures: a temporary data root per test, a strict recorder on it, and a
CliRunner that keeps stdout and stderr apart."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty data root."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def rec(root: Path) -> Iterator[object]:
    """A strict Recorder on the temp root (closed after the test)."""
    from voicepipe_obs import Recorder

    recorder = Recorder(root, strict=True, flush_interval=0.2, spool_interval=0.05)
    yield recorder
    recorder.close()


@pytest.fixture
def runner() -> object:
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config or data root by accident."""
    monkeypatch.delenv("VOICEPIPE_DATA", raising=False)
    monkeypatch.delenv("VOICEPIPE_CONFIG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs, e.g. ``512k``) mounted at ``where``, to
    fill up; skips the test when it cannot be mounted (needs root)."""
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
