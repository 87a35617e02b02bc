"""Shared fixtures: a temporary data root per test, a strict recorder on it, and a
CliRunner that keeps stdout and stderr apart."""

from __future__ import annotations

from collections.abc import Iterator
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
