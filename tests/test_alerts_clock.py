"""When a check may record: an explicit ``now`` later than the system clock or
earlier than the alert log's latest record is refused (it would corrupt the
lifecycle) unless the check is a dry run, which writes, locks and sends nothing;
times the rules cannot evaluate at are a clean error, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import voicepipe_obs as vp
from voicepipe_obs import alerts, store
from voicepipe_obs.cli import main
from voicepipe_obs.config import Settings
from voicepipe_obs.errors import UsageError

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
#: The breaker rule alone: one critical alert while the latest breaker event is "opened".
BREAKER = Settings.model_validate(
    {"alerts": {r: {"enabled": False} for r in alerts.RULES if r != "circuit_breaker"}}
)


#: Far ahead of any test machine's clock, and inside every accepted --now range.
FUTURE = "3000-01-01T00:00:00Z"


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def log_files(root: Path) -> list[Path]:
    return store.list_parquet(root, store.ALERTS)


def open_breaker(rec: vp.Recorder, when: dt.datetime) -> None:
    rec.emit("circuit_breaker_opened", timestamp=when)
    rec.flush()


def invoke(runner: CliRunner, root: Path, *args: str) -> Any:
    """``voicepipe check``/``alerts`` with only the breaker rule enabled."""
    config = root.parent / "breaker.toml"
    config.write_text(
        "".join(f"[alerts.{r}]\nenabled = false\n" for r in alerts.RULES if r != "circuit_breaker")
    )
    return runner.invoke(main, ["--data", str(root), "--config", str(config), *args], catch_exceptions=False)


def test_future_now_is_refused_and_the_real_state_is_untouched(rec: vp.Recorder, root: Path) -> None:
    real = dt.datetime.now(UTC)
    open_breaker(rec, real - dt.timedelta(minutes=1))
    first = alerts.run_check(root, BREAKER)
    (alert,) = first.active
    files = log_files(root)
    with pytest.raises(
        UsageError, match=r"9999-12-31T23:59:59Z: it is more than 5 min after the system clock"
    ):
        alerts.run_check(root, BREAKER, now=dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert log_files(root) == files  # nothing recorded
    again = alerts.run_check(root, BREAKER)
    assert again.changes == [] and [a.alert_id for a in again.active] == [alert.alert_id]
    # a clock a little ahead (machines sharing a root) is fine
    ahead = alerts.run_check(root, BREAKER, now=dt.datetime.now(UTC) + dt.timedelta(minutes=2))
    assert ahead.changes == [] and [a.alert_id for a in ahead.active] == [alert.alert_id]


def test_now_before_the_latest_record_is_refused(rec: vp.Recorder, root: Path) -> None:
    open_breaker(rec, at(-5))
    alerts.run_check(root, BREAKER, now=at(0))
    alerts.run_check(root, BREAKER, now=at(0))  # the same instant again is fine
    files = log_files(root)
    with pytest.raises(
        UsageError, match=r"already has records up to 2026-03-02T12:00:00Z.*cannot run backwards"
    ):
        alerts.run_check(root, BREAKER, now=at(-1))
    assert log_files(root) == files
    # an acknowledgement is a record too: a check may not be dated before it
    (alert,) = alerts.list_alerts(root)
    alerts.acknowledge(root, alert.alert_id, "alice", now=at(10))
    with pytest.raises(UsageError, match="up to 2026-03-02T12:10:00Z"):
        alerts.run_check(root, BREAKER, now=at(5))
    assert alerts.run_check(root, BREAKER, now=at(10)).changes == []


def test_dry_run_evaluates_any_time_and_writes_nothing(rec: vp.Recorder, root: Path) -> None:
    open_breaker(rec, at(-5))
    alerts.run_check(root, BREAKER, now=at(0))
    rec.emit("circuit_breaker_closed", timestamp=at(1))
    rec.flush()
    files = log_files(root)
    past = alerts.run_check(root, BREAKER, now=at(-2), dry_run=True)
    assert past.dry_run and [c["record_type"] for c in past.changes] == []
    future = alerts.run_check(root, BREAKER, now=dt.datetime(9999, 1, 1, tzinfo=UTC), dry_run=True)
    # what the check would record: the breaker closed, the alert resolves
    assert [c["record_type"] for c in future.changes] == ["resolved"]
    assert future.active == [] and future.exit_code == 0
    assert future.to_dict()["dry_run"] is True
    assert log_files(root) == files
    assert [a.rule for a in alerts.list_alerts(root)] == ["circuit_breaker"]  # still active for real


def test_dry_run_shows_the_state_it_would_leave(rec: vp.Recorder, root: Path) -> None:
    open_breaker(rec, at(-5))
    result = alerts.run_check(root, BREAKER, now=at(0), dry_run=True)
    assert [(a.rule, a.severity, a.raised_at) for a in result.active] == [
        ("circuit_breaker", "critical", at(0))
    ]
    assert result.exit_code == 2
    assert log_files(root) == [] and not (root / store.STATE / alerts.LOCK_FILE).exists()


def test_times_before_1970_are_a_clean_error(root: Path) -> None:
    with pytest.raises(UsageError, match="before 1970-01-01"):
        alerts.run_check(root, BREAKER, now=dt.datetime(1, 1, 1, tzinfo=UTC))
    with pytest.raises(UsageError, match="before 1970-01-01"):
        alerts.evaluate(root, BREAKER, now=dt.datetime(1, 1, 1, tzinfo=UTC))


def test_a_window_past_the_supported_dates_is_refused_and_the_largest_allowed_works(
    rec: vp.Recorder, root: Path
) -> None:
    """A window reaching before year 1 (it overflowed the date arithmetic) is a
    configuration error now; the largest allowed window (100 years) evaluates."""
    open_breaker(rec, at(-5))
    with pytest.raises(ValidationError, match="window_minutes must be at most 52,560,000 minutes"):
        Settings.model_validate({"alerts": {"failure_rate": {"window_minutes": 10**10}}})
    largest = Settings.model_validate({"alerts": {"failure_rate": {"window_minutes": 52_560_000}}})
    result = alerts.run_check(root, largest, now=at(0))
    assert "failure_rate" in result.evaluated
    assert "circuit_breaker" in [a.rule for a in result.active]


# ------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_cli_future_now_exits_3(runner: CliRunner, rec: vp.Recorder, root: Path, fmt: str) -> None:
    open_breaker(rec, at(-5))
    result = invoke(runner, root, "check", "--now", FUTURE, "--no-notify", "--format", fmt)
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "voicepipe: error: check could not evaluate: cannot record a check at 3000-01-01T00:00:00Z: "
        "it is more than 5 min after the system clock"
    )
    assert "--dry-run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if fmt == "json":
        assert json.loads(result.stdout)["status"] == "UNKNOWN"
    else:
        assert result.stdout.startswith("UNKNOWN check could not evaluate: cannot record a check at ")
    assert log_files(root) == []


def test_cli_dry_run(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    open_breaker(rec, at(-5))
    result = invoke(runner, root, "check", "--now", FUTURE, "--dry-run", "--format", "json")
    assert result.exit_code == 2, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and [c["record_type"] for c in data["changes"]] == ["raised"]
    assert log_files(root) == []
    text = invoke(runner, root, "check", "--now", iso(at(0)), "--dry-run")
    assert text.exit_code == 2 and text.stdout.startswith("CRITICAL circuit_breaker [all]")
    assert log_files(root) == []


def test_cli_backwards_now_exits_3(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    open_breaker(rec, at(-5))
    assert invoke(runner, root, "check", "--now", iso(at(0))).exit_code == 2
    result = invoke(runner, root, "check", "--now", iso(at(-1)))
    assert result.exit_code == 3 and result.stdout.startswith("UNKNOWN check could not evaluate: ")
    assert "cannot run backwards" in result.stderr


def test_cli_now_before_1970_exits_3_in_a_real_process(root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicepipe_obs.cli",
            "--data",
            str(root),
            "check",
            "--now",
            "0001-01-01T00:00:00Z",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("UNKNOWN check could not evaluate: ")
    assert proc.stderr.startswith("voicepipe: error: check could not evaluate: ")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
