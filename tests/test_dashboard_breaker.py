"""The dashboard's AI-service card agrees with `voicepipe check` when the breaker
opened before the dashboard's window (days ago) and never closed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from click.testing import CliRunner

import voicepipe_obs as vp
from voicepipe_obs import reports
from voicepipe_obs.cli import main

UTC = dt.timezone.utc


def test_a_breaker_open_for_days_shows_down_once_check_has_seen_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    with vp.Recorder(root) as rec:
        rec.emit("circuit_breaker_opened", timestamp=now - dt.timedelta(days=3))
        with rec.artifact("a-1", organization_id="org-a"):
            with rec.stage("transcription"):
                pass
    runner = CliRunner()
    before = reports.dashboard(root, now=now)
    assert before["cards"]["ai_service_status"] is None  # no breaker event in the window
    check = runner.invoke(main, ["--data", str(root), "check", "--no-notify"])
    assert check.exit_code == 2 and "circuit_breaker" in check.stdout
    data = reports.dashboard(root, now=dt.datetime.now(UTC))
    assert data["cards"]["ai_service_status"] == "open"
    assert data["cards"]["ai_service_changed_at"] is not None
    table = runner.invoke(main, ["--data", str(root), "report", "dashboard", "--width", "120"])
    assert table.exit_code == 0 and "DOWN (breaker open)" in table.stdout
    # closed since: the latest breaker event wins again
    with vp.Recorder(root) as rec:
        rec.emit("circuit_breaker_closed")
    assert reports.dashboard(root, now=dt.datetime.now(UTC))["cards"]["ai_service_status"] == "closed"
