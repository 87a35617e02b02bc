"""Pending alerts in the reports: what ``voicepipe check`` holds back for a rule's
``for_minutes`` (a raise) or ``keep_firing_minutes`` (a resolution) shows in
``report alerts`` (a Pending section; JSON ``pending``; CSV rows of status
``pending``) and as a count in ``report dashboard``, in every format, with the
report's filters; it goes once the alert is raised; a damaged ``pending.json`` is
one warning and the report still works; a wait no check has continued for longer
than the gap rule is stale, never "about to fire"; a report never writes the state
nor waits for the check lock.

Real data roots, real Parquet and DuckDB, real ``voicepipe check`` runs (CliRunner)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from test_alerts_flapping import batch, flapping_toml, only_failure_rate
from test_alerts_lifecycle import at
from test_alerts_retention import config, invoke, iso
from voicepipe_obs import alerts, damping, reports, store

FORMATS = ("table", "json", "csv")


def check(runner: CliRunner, root: Path, cfg: Path, minute: float) -> Any:
    r = invoke(runner, root, cfg, "check", "--now", iso(at(minute)), "--no-notify")
    assert r.exit_code in (0, 1, 2), r.stderr
    return r


def report(runner: CliRunner, root: Path, cfg: Path, minute: float, *args: str, code: int = 0) -> Any:
    r = invoke(runner, root, cfg, "report", "--now", iso(at(minute)), *args, "--utc")
    assert r.exit_code == code, r.stderr
    return r


def alerts_json(runner: CliRunner, root: Path, cfg: Path, minute: float, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        report(runner, root, cfg, minute, "alerts", "--format", "json", *args).stdout
    )
    return out


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def dashboard_pending(runner: CliRunner, root: Path, cfg: Path, minute: float, fmt: str) -> str:
    """What the dashboard says of pending raises, in ``fmt``."""
    out = report(runner, root, cfg, minute, "dashboard", "--format", fmt).stdout
    if fmt == "json":
        return str(json.loads(out)["alerts_pending"])
    if fmt == "csv":
        (row,) = [r for r in csv_rows(out) if (r["section"], r["key"]) == ("alerts", "pending")]
        return row["value"]
    lines = out.split("Active alerts\n", 1)[1].split("Latest", 1)[0]
    return next((line.split()[1] for line in lines.splitlines() if line.startswith("  + ")), "0")


# ---------------------------------------------------------------- a pending raise


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pending_raise_shows_until_it_is_raised(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, fmt: str
) -> None:
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    for minute in (5, 10, 15):
        batch(rec, minute, 11)
    check(runner, root, cfg, 5)  # found: waits until 12:15
    out = report(runner, root, cfg, 6, "alerts", "--format", fmt).stdout
    if fmt == "json":
        data = json.loads(out)
        assert (data["rows"], data["pending_state_ok"]) == ([], True)
        (p,) = data["pending"]
        assert {k: p[k] for k in reports_keys()} == {
            "kind": "raise",
            "rule": "failure_rate",
            "scope": "all",
            "organization_id": None,
            "severity": "warning",
            "since": "2026-03-02T12:05:00Z",
            "until": "2026-03-02T12:15:00Z",
            "remaining_seconds": 540,
            "seen_at": "2026-03-02T12:05:00Z",
            "stale": False,
            "found_now": True,
            "alert_id": None,
        }
        assert p["summary"].startswith("11.0% of 100 artifacts failed") and p["threshold"] == 0.1
    elif fmt == "csv":
        (row,) = csv_rows(out)
        assert {k: row[k] for k in ("alert_id", "rule", "scope", "status", "severity", "pending")} == {
            "alert_id": "",
            "rule": "failure_rate",
            "scope": "all",
            "status": "pending",
            "severity": "warning",
            "pending": "raise",
        }
        assert (row["pending_since"], row["pending_until"], row["remaining_seconds"], row["stale"]) == (
            "2026-03-02T12:05:00Z",
            "2026-03-02T12:15:00Z",
            "540.0",
            "False",
        )
    else:
        lines = out.splitlines()
        assert "no alert raised yet" in lines
        start = lines.index("Pending (for_minutes / keep_firing_minutes)")
        assert lines[start + 2 : start + 4] == [
            "◔ pending  warning  failure_rate  all · found since 03-02 12:05:00 · raised in 9m if it holds",
            "    11.0% of 100 artifacts failed in the last 5 min (> 10.0%)",
        ]
        assert "1 pending raise, 0 resolving" in lines
    assert dashboard_pending(runner, root, cfg, 6, fmt) == "1"
    # due: the next check raises it if it still holds
    assert alerts_json(runner, root, cfg, 15)["pending"][0]["remaining_seconds"] == 0
    assert "raised at the next check if it holds" in report(runner, root, cfg, 15, "alerts").stdout

    check(runner, root, cfg, 10)
    raised = check(runner, root, cfg, 15)
    assert raised.stdout.startswith("WARNING failure_rate [all]")
    out = report(runner, root, cfg, 16, "alerts", "--format", fmt).stdout
    if fmt == "json":
        data = json.loads(out)
        assert data["pending"] == [] and [(r["rule"], r["status"]) for r in data["rows"]] == [
            ("failure_rate", "active")
        ]
    elif fmt == "csv":
        assert [(r["status"], r["pending"]) for r in csv_rows(out)] == [("active", "")]
    else:
        assert (
            "Pending" not in out and "▲ warning  failure_rate  all  · raised 03-02 12:15:00 · active" in out
        )
    assert dashboard_pending(runner, root, cfg, 16, fmt) == "0"


def reports_keys() -> tuple[str, ...]:
    return tuple(k for k in reports.PENDING_COLUMNS if k not in ("summary", "value", "threshold"))


def test_a_raise_already_recorded_is_not_pending(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    """A check that stopped after appending its raise but before replacing
    pending.json leaves the raise's wait behind: the next check drops it, and the
    report does not show it as still to come."""
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    for minute in (5, 10, 15):
        batch(rec, minute, 11)
    for minute in (5, 10):
        check(runner, root, cfg, minute)
    left = (root / store.STATE / damping.PENDING_FILE).read_bytes()
    check(runner, root, cfg, 15)  # raised
    (root / store.STATE / damping.PENDING_FILE).write_bytes(left)
    data = alerts_json(runner, root, cfg, 16)
    assert data["pending"] == [] and len(data["rows"]) == 1
    assert dashboard_pending(runner, root, cfg, 16, "json") == "0"


def test_a_pending_raise_is_told_with_what_the_rule_finds_at_the_report_time(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    """The file keeps when a wait started, not what was found: the report asks the
    rule (read-only). Clear now: the next check ends the wait unless it holds again;
    too few artifacts to judge: the check keeps the wait, the severity is unknown."""
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    batch(rec, 10, 9)  # not checked yet
    check(runner, root, cfg, 5)
    (clear,) = alerts_json(runner, root, cfg, 10)["pending"]
    assert (clear["found_now"], clear["severity"], clear["stale"], clear["remaining_seconds"]) == (
        False,
        None,
        False,
        300,
    )
    text = report(runner, root, cfg, 10, "alerts").stdout
    assert "◔ pending  failure_rate  all · found since 03-02 12:05:00 · raised in 5m if it holds" in text
    assert "    clear now: the next check ends the wait unless it finds the condition again" in text
    assert alerts_json(runner, root, cfg, 10, "--severity", "warning")["pending"] == []
    (unjudged,) = alerts_json(runner, root, cfg, 20)["pending"]  # nothing finished in 12:15–12:20
    assert (unjudged["found_now"], unjudged["severity"], unjudged["stale"]) == (None, None, False)
    assert dashboard_pending(runner, root, cfg, 10, "json") == "1"


# ------------------------------------------------------------ a pending resolution


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_raised_alert_waiting_to_resolve(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, fmt: str
) -> None:
    cfg = flapping_toml(tmp_path, "keep_firing_minutes = 30\n")
    batch(rec, 5, 11)
    batch(rec, 10, 9)
    check(runner, root, cfg, 5)  # raised
    check(runner, root, cfg, 10)  # clear: resolves at 12:40 if it stays clear
    (alert,) = alerts.list_alerts(root, status="active")
    out = report(runner, root, cfg, 11, "alerts", "--format", fmt).stdout
    if fmt == "json":
        data = json.loads(out)
        assert [r["alert_id"] for r in data["rows"]] == [alert.alert_id]
        (p,) = data["pending"]
        assert (p["kind"], p["alert_id"], p["severity"], p["since"], p["until"], p["remaining_seconds"]) == (
            "resolve",
            alert.alert_id,
            "warning",
            "2026-03-02T12:10:00Z",
            "2026-03-02T12:40:00Z",
            1740,
        )
    elif fmt == "csv":
        active, waiting = csv_rows(out)
        assert (active["alert_id"], active["status"], active["pending"]) == (alert.alert_id, "active", "")
        assert (waiting["alert_id"], waiting["status"], waiting["pending"]) == (
            alert.alert_id,
            "pending",
            "resolve",
        )
        assert waiting["pending_until"] == "2026-03-02T12:40:00Z"
    else:
        pending = out.split("Pending (for_minutes / keep_firing_minutes)", 1)[1]
        assert pending.splitlines()[2:4] == [
            "◑ resolving  warning  failure_rate  all · clear for 1m · resolves in 29m if still clear",
            f"    (id {alert.alert_id})",
        ]
        assert "0 pending raises, 1 resolving" in pending
    # an alert waiting to resolve is active, not a pending raise
    assert dashboard_pending(runner, root, cfg, 11, fmt) == "0"


# ------------------------------------------------------------------- the filters


def org_batch(rec: vp.Recorder, minute: float, org: str, failed: int) -> None:
    for i in range(20):
        aid = f"{org}-{minute}-{i}"
        when = at(minute - 2)
        rec.emit(
            "artifact_received",
            timestamp=when - dt.timedelta(seconds=30),
            artifact_id=aid,
            organization_id=org,
        )
        rec.emit(
            "artifact_completed" if i >= failed else "artifact_failed",
            timestamp=when,
            artifact_id=aid,
            organization_id=org,
        )
    rec.flush()


def test_the_filters_apply_to_what_is_pending(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    cfg = config(
        tmp_path,
        "failure_rate",
        extra="[alerts.failure_rate]\nwindow_minutes = 5\nmin_sample = 10\nfor_minutes = 10\n",
    )
    org_batch(rec, 5, "acme", 8)  # 40%: critical
    org_batch(rec, 5, "zeta", 0)
    check(runner, root, cfg, 5)

    def waiting(*args: str) -> list[tuple[str, str | None]]:
        return [(p["scope"], p["severity"]) for p in alerts_json(runner, root, cfg, 6, *args)["pending"]]

    assert waiting() == [("all", "warning"), ("org:acme", "critical")]  # 20% overall
    assert waiting("--org", "acme") == [("org:acme", "critical")]
    assert waiting("--org", "zeta") == []
    assert waiting("--severity", "critical") == [("org:acme", "critical")]
    assert waiting("--rule", "failure_rate") == waiting()
    assert waiting("--rule", "latency") == []
    # --since/--until are on the raise time: nothing pending has one
    assert waiting("--history", "--since", "2026-03-01") == waiting()
    assert dashboard_pending(runner, root, cfg, 6, "json") == "2"
    text = report(runner, root, cfg, 6, "alerts", "--org", "acme").stdout
    assert "◔ pending  critical  failure_rate  org:acme" in text and "  all " not in text
    for width in ("60", "100"):
        for args in (["alerts"], ["dashboard"]):
            out = report(runner, root, cfg, 6, *args, "--width", width).stdout
            assert max(len(line) for line in out.splitlines()) <= int(width), out


# ------------------------------------------------------------------------- stale


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_wait_no_check_continued_is_stale_not_about_to_fire(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, fmt: str
) -> None:
    """for_minutes = 10: checks more than max(3 × 10, 15) = 30 minutes apart are not
    continuous, so 31 minutes after the last check the wait is stale — the next
    check starts it again."""
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    check(runner, root, cfg, 5)
    assert damping.max_gap(dt.timedelta(minutes=10)) == dt.timedelta(minutes=30)
    assert alerts_json(runner, root, cfg, 35)["pending"][0]["stale"] is False  # within the gap: due
    out = report(runner, root, cfg, 36, "alerts", "--format", fmt).stdout
    if fmt == "json":
        (p,) = json.loads(out)["pending"]
        assert (p["kind"], p["stale"], p["until"], p["remaining_seconds"], p["seen_at"]) == (
            "raise",
            True,
            None,
            None,
            "2026-03-02T12:05:00Z",
        )
        assert (p["severity"], p["found_now"]) == (None, None)  # not judged: not about to be raised
    elif fmt == "csv":
        (row,) = csv_rows(out)
        assert (row["status"], row["stale"], row["pending_until"], row["remaining_seconds"]) == (
            "pending",
            "True",
            "",
            "",
        )
    else:
        assert "○ stale  failure_rate  all · found since 03-02 12:05:00" in out
        assert "not about to be raised" in out and "raised in" not in out and "next check if" not in out
        assert "0 pending raises, 0 resolving, 1 stale" in out
    assert dashboard_pending(runner, root, cfg, 36, fmt) == "0"
    # a report at a time before the check that kept the wait: not about to happen either
    assert alerts_json(runner, root, cfg, 4)["pending"][0]["stale"] is True


# -------------------------------------------------- a damaged or missing state file


@pytest.mark.parametrize("content", [b'{"version": 1, "entries": [{"kind": "raise"', b"\xff\xfe", b"[]"])
def test_a_damaged_state_file_is_one_warning_and_the_reports_still_work(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path, content: bytes
) -> None:
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    check(runner, root, cfg, 5)
    state = root / store.STATE / damping.PENDING_FILE
    state.write_bytes(content)
    for fmt in FORMATS:
        r = report(runner, root, cfg, 6, "alerts", "--format", fmt)
        (warning,) = r.stderr.splitlines()
        assert warning.startswith("voicepipe: warning: ") and "pending.json" in warning
        if fmt == "json":
            data = json.loads(r.stdout)
            assert (data["pending"], data["pending_state_ok"]) == ([], False)
        elif fmt == "table":
            assert "no alert raised yet" in r.stdout and "Pending" not in r.stdout
        d = report(runner, root, cfg, 6, "dashboard", "--format", fmt)
        assert len(d.stderr.splitlines()) == 1 and "pending.json" in d.stderr
    assert state.read_bytes() == content  # a report never rewrites it; the next check does


def test_no_state_file_is_nothing_pending_without_a_warning(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    r = report(runner, root, cfg, 6, "alerts", "--format", "json")
    assert r.stderr == ""
    data = json.loads(r.stdout)
    assert (data["pending"], data["pending_state_ok"], data["last_check"]) == ([], True, None)
    assert not (root / store.STATE / damping.PENDING_FILE).exists()


def test_a_wait_the_settings_give_no_time_is_left_out_with_a_warning(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    """pending.json keeps when a wait started, not how long it is: a report run
    with a configuration that has no for_minutes says so instead of guessing."""
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    check(runner, root, cfg, 5)
    (tmp_path / "other").mkdir()
    other = flapping_toml(tmp_path / "other", "")  # the same rule, no for_minutes
    r = report(runner, root, other, 6, "alerts", "--format", "json")
    assert json.loads(r.stdout)["pending"] == []
    (warning,) = r.stderr.splitlines()
    assert "no wait in these settings for failure_rate [all]" in warning


# ------------------------------------------------------------- no lock, no writes


def test_a_report_does_not_wait_for_the_check_lock(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    batch(rec, 5, 11)
    check(runner, root, cfg, 5)
    state = root / store.STATE / damping.PENDING_FILE
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    with alerts.check_lock(root, 1.0):  # a check is running (the lock is an flock)
        started = time.monotonic()
        assert len(alerts_json(runner, root, cfg, 6)["pending"]) == 1
        assert dashboard_pending(runner, root, cfg, 6, "json") == "1"
        assert time.monotonic() - started < 30
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before


def test_the_library_gives_what_the_report_shows(rec: vp.Recorder, root: Path) -> None:
    s = only_failure_rate(for_minutes=10)
    batch(rec, 5, 11)
    alerts.run_check(root, s, now=at(5))
    rows, sound = reports.pending_alerts(root, now=at(6), settings=s)
    assert sound and [(r["kind"], r["severity"], r["until"]) for r in rows] == [("raise", "warning", at(15))]
    data = reports.alerts(root, now=at(6), settings=s)
    assert data["pending"] == rows
    assert reports.dashboard(root, now=at(6), settings=s)["alerts_pending"] == 1
