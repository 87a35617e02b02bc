"""``voicepipe check`` and ``voicepipe alerts``: exit codes 0/1/2/3 (CliRunner and
one real subprocess), text and JSON output, acknowledging and listing."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from voicepipe_obs import alerts
from voicepipe_obs.cli import main

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NOW = "2026-03-02T12:00:00Z"

#: failure_rate overall only; inactivity off so an idle store is OK.
QUIET = """
[alerts.failure_rate]
per_organization = false
[alerts.inactivity]
enabled = false
"""


def assert_unknown(stdout: str, stderr: str) -> None:
    """``check`` could not evaluate: its status line ``UNKNOWN …`` on stdout (what
    Nagios shows), the same one line on stderr (cron's log), no traceback."""
    (err,) = stderr.strip().splitlines()
    assert err.startswith("voicepipe: error: check could not evaluate: "), stderr
    assert stdout.splitlines() == ["UNKNOWN " + err.removeprefix("voicepipe: error: ")], stdout


def invoke(runner: CliRunner, root: Path, *args: str, config: Path | None = None) -> Any:
    head = ["--data", str(root)] + (["--config", str(config)] if config else [])
    return runner.invoke(main, [*head, *args], catch_exceptions=False)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "quiet.toml"
    path.write_text(QUIET)
    return path


def recover(rec: vp.Recorder) -> None:
    """Ten artifacts completed at 12:55, so that a check at 13:00 judges the failure
    rate healthy and resolves its alert (with too few finished it keeps it)."""
    for i in range(10):
        ts = T0 + dt.timedelta(minutes=55)
        rec.emit("artifact_completed", timestamp=ts, artifact_id=f"ok{i}")
    rec.flush()


def finish(rec: vp.Recorder, ok: int, failed: int) -> None:
    for i in range(ok + failed):
        ts = T0 - dt.timedelta(minutes=5)
        rec.emit("artifact_completed" if i < ok else "artifact_failed", timestamp=ts, artifact_id=f"a{i}")
    rec.flush()


@pytest.mark.parametrize(
    ("ok", "failed", "code", "first_word"),
    [(10, 0, 0, "OK:"), (8, 2, 1, "WARNING"), (7, 3, 2, "CRITICAL")],
)
def test_exit_codes(
    runner: CliRunner,
    rec: vp.Recorder,
    root: Path,
    cfg: Path,
    ok: int,
    failed: int,
    code: int,
    first_word: str,
) -> None:
    finish(rec, ok, failed)
    result = invoke(runner, root, "check", "--now", NOW, config=cfg)
    assert result.exit_code == code, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].split()[0] == first_word
    assert result.stderr == ""
    if code:
        assert lines[0].startswith(f"{first_word} failure_rate [all] {failed * 10}.0% of 10 artifacts failed")


def test_one_line_per_active_alert_and_json(
    runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path
) -> None:
    finish(rec, 8, 2)
    rec.emit("circuit_breaker_opened", timestamp=T0 - dt.timedelta(minutes=1))
    rec.flush()
    text = invoke(runner, root, "check", "--now", NOW, config=cfg)
    assert text.exit_code == 2
    assert [line.split()[:2] for line in text.stdout.splitlines()] == [
        ["CRITICAL", "circuit_breaker"],
        ["WARNING", "failure_rate"],
    ]
    out = invoke(runner, root, "check", "--now", "2026-03-02T12:01:00Z", "--format", "json", config=cfg)
    assert out.exit_code == 2
    data = json.loads(out.stdout)
    assert data["status"] == "CRITICAL" and data["exit_code"] == 2
    assert data["checked_at"] == "2026-03-02T12:01:00Z"
    assert [a["rule"] for a in data["active"]] == ["circuit_breaker", "failure_rate"]
    assert data["changes"] == []  # raised by the first run, not again
    assert "inactivity" not in data["rules_evaluated"]


def test_bad_config_exits_3(runner: CliRunner, root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[alerts.failure_rate]\nwarning = 'high'\n")
    result = invoke(runner, root, "check", config=bad)
    assert result.exit_code == 3
    assert_unknown(result.stdout, result.stderr)
    assert "alerts.failure_rate.warning" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    as_json = invoke(runner, root, "check", "--format", "json", config=bad)
    assert as_json.exit_code == 3
    assert json.loads(as_json.stdout)["status"] == "UNKNOWN"


def test_unreadable_store_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = invoke(runner, not_a_dir, "check")
    assert result.exit_code == 3
    assert "is not a directory" in result.stderr


def test_corrupt_event_file_is_skipped_with_a_warning(
    runner: CliRunner, rec: vp.Recorder, root: Path
) -> None:
    """A file whose footer is valid but whose data pages are garbage fails the whole
    DuckDB query naming no file; check finds it, warns once naming it (compact
    quarantines it) and evaluates the rest, rather than reporting UNKNOWN for ever."""
    finish(rec, 10, 0)
    (good,) = list((root / "events").rglob("*.parquet"))
    # passes the cheap vetting (magic, footer, schema), but its data pages are garbage
    data = bytearray(good.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - 8 - footer] = b"\x07" * (len(data) - 12 - footer)
    broken = good.parent / "broken.parquet"
    broken.write_bytes(bytes(data))
    result = invoke(runner, root, "check", "--now", NOW)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK")
    (warning,) = result.stderr.strip().splitlines()
    assert str(broken) in warning and "voicepipe compact" in warning


def test_missing_data_root_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    # a typo in --data must not look healthy to Nagios
    result = invoke(runner, tmp_path / "no-such-root", "check")
    assert result.exit_code == 3
    assert "no-such-root" in result.stderr and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no-such-root").exists()


def test_lock_timeout_exits_3(runner: CliRunner, root: Path, tmp_path: Path) -> None:
    conf = tmp_path / "lock.toml"
    conf.write_text("[alerts]\nlock_timeout_seconds = 0.1\n")
    with alerts.check_lock(root, 0):
        result = invoke(runner, root, "check", config=conf)
    assert result.exit_code == 3
    assert re.search(r"another `voicepipe check` \(pid \d+ on .+\) still holds", result.stderr)


def test_real_subprocess_exit_code(rec: vp.Recorder, root: Path, cfg: Path, tmp_path: Path) -> None:
    finish(rec, 7, 3)
    env = {**os.environ, "VOICEPIPE_DATA": str(root), "VOICEPIPE_CONFIG": str(cfg)}
    proc = subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "check", "--now", NOW],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("CRITICAL failure_rate [all]")
    # the same through an environment override of the threshold: 30% is only a warning now
    env["VOICEPIPE_ALERTS__FAILURE_RATE__CRITICAL"] = "0.5"
    proc = subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "check", "--now", "2026-03-02T12:01:00Z"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2  # severity never drops while the alert is active
    env["VOICEPIPE_DATA"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()  # an empty root is healthy
    proc = subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "OK: no active alerts (7 rules evaluated)\n")


def test_ack_and_list(runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path) -> None:
    finish(rec, 7, 3)
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    (state,) = alerts.list_alerts(root)
    result = invoke(runner, root, "alerts", "ack", state.alert_id, "--by", "alice", "--comment", "on it")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"acknowledged {state.alert_id} (failure_rate [all]) by alice at ")
    listed = invoke(runner, root, "alerts", "list", "--format", "json")
    (row,) = json.loads(listed.stdout)
    assert (row["alert_id"], row["acknowledged_by"], row["ack_comment"]) == (state.alert_id, "alice", "on it")
    # the check line shows who acknowledged (a dry run: the ack is later than 12:01)
    line = invoke(runner, root, "check", "--now", "2026-03-02T12:01:00Z", "--dry-run", config=cfg).stdout
    assert line.rstrip().endswith(f"(id {state.alert_id}, acked by alice)")
    # the history says why in every format, as its default table does
    history = ["alerts", "list", "--history", "--alert-id", state.alert_id]
    assert "alice: on it" in invoke(runner, root, *history).stdout
    (ack,) = [
        line
        for line in invoke(runner, root, *history, "--wide").stdout.splitlines()
        if "acknowledged" in line
    ]
    assert "alice" in ack and "on it" in ack
    rows = list(csv.DictReader(io.StringIO(invoke(runner, root, *history, "--format", "csv").stdout)))
    assert [(r["record_type"], r["actor"], r["comment"]) for r in rows][-1] == (
        "acknowledged",
        "alice",
        "on it",
    )


def test_ack_unknown_id_is_a_clean_error(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "alerts", "ack", "deadbeef", "--by", "alice")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "voicepipe: error: no alert with id 'deadbeef'; `voicepipe alerts list --all` shows the ids"
    )


def test_ack_requires_by(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "alerts", "ack", "x")
    assert result.exit_code == 2
    assert "--by" in result.stderr


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_list_formats(runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path, fmt: str) -> None:
    empty = invoke(runner, root, "alerts", "list", "--format", fmt)
    assert empty.exit_code == 0
    finish(rec, 7, 3)
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    recover(rec)
    invoke(runner, root, "check", "--now", "2026-03-02T13:00:00Z", config=cfg)  # resolves it
    active = invoke(runner, root, "alerts", "list", "--format", fmt).stdout
    everything = invoke(runner, root, "alerts", "list", "--all", "--format", fmt).stdout
    history = invoke(runner, root, "alerts", "list", "--history", "--format", fmt).stdout
    if fmt == "json":
        assert json.loads(empty.stdout) == []
        assert json.loads(active) == []
        assert [a["status"] for a in json.loads(everything)] == ["resolved"]
        assert [h["record_type"] for h in json.loads(history)] == ["raised", "resolved"]
    elif fmt == "csv":
        assert empty.stdout.startswith("alert_id,status,severity,rule")
        rows = list(csv.DictReader(io.StringIO(everything)))
        assert [(r["status"], r["rule"]) for r in rows] == [("resolved", "failure_rate")]
        assert [r["record_type"] for r in csv.DictReader(io.StringIO(history))] == ["raised", "resolved"]
    else:
        assert empty.stdout.strip() == "no active alerts"
        assert active.strip() == "no active alerts"
        assert "resolved" in everything and "failure_rate" in everything
        assert history.splitlines()[0].split()[:3] == ["timestamp", "record_type", "alert_id"]


def test_list_filters(runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path) -> None:
    finish(rec, 7, 3)
    rec.emit("circuit_breaker_opened", timestamp=T0 - dt.timedelta(minutes=1))
    rec.flush()
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    out = invoke(runner, root, "alerts", "list", "--rule", "circuit_breaker", "--format", "json")
    assert [a["rule"] for a in json.loads(out.stdout)] == ["circuit_breaker"]
    out = invoke(runner, root, "alerts", "list", "--severity", "critical", "--format", "json")
    assert sorted(a["rule"] for a in json.loads(out.stdout)) == ["circuit_breaker", "failure_rate"]
    bad = invoke(runner, root, "alerts", "list", "--rule", "nope")
    assert bad.exit_code == 2 and "unknown rule" in bad.stderr


def test_failed_notification_is_a_warning_on_stderr(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    conf = tmp_path / "notify.toml"
    conf.write_text(
        QUIET
        + f"[[notifiers]]\ntype = 'command'\nname = 'pager'\ncommand = [{sys.executable!r}, '-c', 'raise SystemExit(1)']\n"
    )
    finish(rec, 7, 3)
    for _ in range(2):  # the second run proves the log handler follows the current stderr
        result = invoke(runner, root, "check", "--now", NOW, config=conf)
        assert result.exit_code == 2
        assert result.stdout.startswith("CRITICAL failure_rate")
        assert "voicepipe: warning: notifier pager: raised notification for alert" in result.stderr
        assert "retrying on the next check" in result.stderr


# --------------------------------------------- usage errors are UNKNOWN for Nagios


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--now", "garbage"], "--now"),
        (["--format", "xml"], "'xml' is not one of 'text', 'json'"),
        (["--bogus"], "No such option '--bogus'"),
        (["extra"], "unexpected extra argument"),
        (["--now"], "--now"),
        (["--now", "0001-01-01T00:00:00Z"], "0001-01-01"),
    ],
)
def test_usage_errors_exit_3_with_one_line(
    runner: CliRunner, root: Path, args: list[str], message: str
) -> None:
    result = invoke(runner, root, "check", *args)
    assert result.exit_code == 3, result.output
    assert_unknown(result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Usage:" not in result.stderr
    assert not (root / "alerts").exists()


@pytest.mark.parametrize("fmt_args", [["--format", "json"], ["--format=json"]])
def test_usage_error_with_json_prints_unknown(runner: CliRunner, root: Path, fmt_args: list[str]) -> None:
    result = invoke(runner, root, "check", "--now", "garbage", *fmt_args)
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert (data["status"], data["exit_code"]) == ("UNKNOWN", 3)
    assert "--now" in data["error"]


def test_usage_error_exits_3_in_a_real_process(root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(root), "check", "--format", "xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert_unknown(proc.stdout, proc.stderr)
    assert "'xml'" in proc.stderr


def test_check_help_still_exits_0(runner: CliRunner, root: Path) -> None:
    result = invoke(runner, root, "check", "--help")
    assert result.exit_code == 0 and "--dry-run" in result.stdout


# -------------------------------------------------------- alerts: missing root


@pytest.mark.parametrize(
    "args",
    [
        ["alerts", "list"],
        ["alerts", "list", "--all", "--format", "json"],
        ["alerts", "ack", "x", "--by", "a"],
    ],
)
def test_alerts_on_a_missing_root_is_an_error(runner: CliRunner, tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "no-such-root"
    result = invoke(runner, missing, *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("voicepipe: error: data root ")
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not missing.exists()


# ------------------------------------------------------------ alerts: details


def test_ack_of_a_resolved_alert_exits_1(runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path) -> None:
    finish(rec, 7, 3)
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    (state,) = alerts.list_alerts(root)
    recover(rec)
    invoke(runner, root, "check", "--now", "2026-03-02T13:00:00Z", config=cfg)  # resolves it
    result = invoke(runner, root, "alerts", "ack", state.alert_id, "--by", "alice")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"voicepipe: error: alert {state.alert_id} already resolved at 2026-03-02T13:00:00Z; nothing to acknowledge"
    )


def test_reack_replaces_the_comment(runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path) -> None:
    finish(rec, 7, 3)
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    (state,) = alerts.list_alerts(root)
    invoke(runner, root, "alerts", "ack", state.alert_id, "--by", "alice", "--comment", "on it")
    result = invoke(runner, root, "alerts", "ack", state.alert_id, "--by", "bob", "--format", "json")
    data = json.loads(result.stdout)
    assert (data["acknowledged_by"], data["ack_comment"]) == ("bob", None)


def test_ack_format_help_describes_ack(runner: CliRunner, root: Path) -> None:
    text = " ".join(invoke(runner, root, "alerts", "ack", "--help").stdout.split())
    assert "one confirmation line" in text and "Nagios" not in text


LONG_ORG = "organisation-with-a-rather-long-identifier-0001"


@pytest.fixture
def busy(rec: vp.Recorder, root: Path, tmp_path: Path) -> Path:
    """A log with a critical alert raised after warnings, long scopes and summaries,
    an acknowledgement, a resolved alert and notification attempts."""
    conf = tmp_path / "busy.toml"
    conf.write_text(
        "[alerts.inactivity]\nenabled = false\n[alerts.stuck]\nenabled = false\n"
        "[alerts.queue_depth]\nenabled = false\n"
        f"[[notifiers]]\ntype = 'command'\nname = 'pager-with-a-long-name-for-the-on-call-rotation'\n"
        f"command = [{sys.executable!r}, '-c', 'raise SystemExit(1)']\n"
    )
    for org in (LONG_ORG, LONG_ORG.replace("0001", "0002")):
        for i in range(10):
            rec.emit(
                "artifact_completed" if i < 8 else "artifact_failed",
                timestamp=T0 - dt.timedelta(minutes=5),
                artifact_id=f"{org}-{i}",
                organization_id=org,
                error_message="x" * 200,
            )
    rec.emit("circuit_breaker_opened", timestamp=T0 - dt.timedelta(minutes=1), error_message="y" * 300)
    rec.flush()
    runner = CliRunner()
    assert invoke(runner, root, "check", "--now", NOW, config=conf).exit_code == 2
    rec.emit("circuit_breaker_closed", timestamp=T0 + dt.timedelta(minutes=1))
    rec.flush()
    invoke(runner, root, "check", "--now", "2026-03-02T12:02:00Z", config=conf)
    rec.emit("circuit_breaker_opened", timestamp=T0 + dt.timedelta(minutes=3))
    rec.flush()
    invoke(runner, root, "check", "--now", "2026-03-02T12:04:00Z", config=conf)
    first = alerts.list_alerts(root)[-1]
    alerts.acknowledge(root, first.alert_id, "alice-the-incident-commander", comment="z " * 100)
    return root


@pytest.mark.parametrize("extra", [[], ["--all"], ["--history"]])
def test_list_tables_fit_100_columns(runner: CliRunner, busy: Path, extra: list[str]) -> None:
    table = invoke(runner, busy, "alerts", "list", *extra)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) >= 3
    assert max(len(line) for line in lines) <= 100, table.stdout
    assert "…" in table.stdout  # long text is cut, visibly
    wide = invoke(runner, busy, "alerts", "list", "--wide", *extra)
    assert max(len(line) for line in wide.stdout.splitlines()) > 100
    assert f"org:{LONG_ORG}" in wide.stdout and "…" not in wide.stdout
    as_json = json.loads(invoke(runner, busy, "alerts", "list", "--format", "json", *extra).stdout)
    assert any(f"org:{LONG_ORG}" == r["scope"] for r in as_json)


def test_list_is_sorted_by_severity_then_raise_time(runner: CliRunner, busy: Path) -> None:
    rows = json.loads(invoke(runner, busy, "alerts", "list", "--all", "--format", "json").stdout)
    assert [(r["status"], r["severity"], r["rule"], r["raised_at"]) for r in rows] == [
        ("active", "critical", "circuit_breaker", "2026-03-02T12:04:00Z"),
        ("active", "warning", "failure_rate", "2026-03-02T12:00:00Z"),
        ("active", "warning", "failure_rate", "2026-03-02T12:00:00Z"),
        ("active", "warning", "failure_rate", "2026-03-02T12:00:00Z"),
        ("resolved", "critical", "circuit_breaker", "2026-03-02T12:00:00Z"),
    ]
    table = invoke(runner, busy, "alerts", "list").stdout.splitlines()
    assert table[2].split()[:2] == [rows[0]["alert_id"], "critical"]


def test_report_alerts_lists_active_alerts_in_the_same_order(runner: CliRunner, busy: Path) -> None:
    listed = json.loads(invoke(runner, busy, "alerts", "list", "--format", "json").stdout)
    report = invoke(runner, busy, "report", "alerts", "--format", "json")
    assert report.exit_code == 0, report.stderr
    rows = json.loads(report.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["alert_id"] for r in rows] == [r["alert_id"] for r in listed]
    assert rows[0]["severity"] == "critical"


@pytest.mark.parametrize("argv", [["--bogus", "check"], ["-x", "check", "--no-notify"]])
def test_a_global_option_typo_before_check_is_unknown_not_critical(tmp_path: Path, argv: list[str]) -> None:
    """Exit 2 is CRITICAL to Nagios: a typo in a global option of a check command
    line exits 3 (UNKNOWN) with one line, like check's own usage errors; other
    commands keep exit 2."""
    cmd = [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(tmp_path)]
    result = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stderr.startswith("voicepipe: error: No such option") and result.stderr.count("\n") == 1
    other = subprocess.run([*cmd, "--bogus", "report"], capture_output=True, text=True, timeout=60)
    assert other.returncode == 2
    # a word "check" elsewhere on the line is not the command
    named = [*cmd, "--bogus", "report", "events", "--org", "check"]
    assert subprocess.run(named, capture_output=True, text=True, timeout=60).returncode == 2


def test_list_names_a_misspelt_org_but_not_one_the_alert_log_knows(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    """`alerts list --org` of an unknown organisation is an error with a suggestion
    (as `report alerts --org` is); a known one without alerts is not, nor is one
    only the alert log still names (its events dropped by retention)."""
    cfg = tmp_path / "per-org.toml"
    cfg.write_text(QUIET.replace("per_organization = false", "per_organization = true"))
    for i in range(24):  # min_sample is 10 per organisation
        org = "org-acme" if i < 12 else "org-zenith"
        kind = "artifact_failed" if i < 12 else "artifact_completed"
        rec.emit(kind, timestamp=T0 - dt.timedelta(minutes=5), artifact_id=f"a{i}", organization_id=org)
    rec.flush()
    invoke(runner, root, "check", "--now", NOW, config=cfg)
    assert "org-acme" in {s.organization_id for s in alerts.list_alerts(root)}
    for args in (["alerts", "list"], ["alerts", "list", "--all"], ["alerts", "list", "--history"]):
        for fmt in ("table", "json"):
            bad = invoke(runner, root, *args, "--org", "org-acm", "--format", fmt)
            assert (bad.exit_code, bad.stdout) == (1, ""), bad.stdout
            (line,) = bad.stderr.strip().splitlines()
            assert line.startswith(
                "voicepipe: error: no organisation 'org-acm' in the events or the alert log"
            )
            assert "did you mean 'org-acme'?" in line
        quiet = invoke(runner, root, *args, "--org", "org-zenith")
        assert quiet.exit_code == 0 and quiet.stdout.strip() in (
            "no active alerts",
            "no alerts",
            "no alert records",
        )
    shutil.rmtree(root / "events")  # as retention does, long before the alert log goes
    for args in (["alerts", "list", "--org", "org-acme"], ["report", "alerts", "--org", "org-acme"]):
        kept = invoke(runner, root, *args, "--format", "json")
        assert kept.exit_code == 0, kept.stderr
        assert "org-acme" in kept.stdout


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_closed_stdout_keeps_the_alert_state_as_exit_code(
    rec: vp.Recorder, root: Path, cfg: Path, tmp_path: Path, fmt: str
) -> None:
    """`voicepipe check | head -1`: the reader may be gone before check prints. A
    report exits 0 then; check's exit code is the alert state and must stay it
    (critical: 2), and the alert is still recorded. A real process and pipe, its
    read end closed before the check writes."""
    finish(rec, 7, 3)
    head = [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(root), "--config", str(cfg)]
    proc = subprocess.Popen(
        [*head, "check", "--now", NOW, "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the first write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert [s.rule for s in alerts.list_alerts(root)] == ["failure_rate"]


def test_report_alerts_tells_a_quiet_check_from_none(runner: CliRunner, rec: vp.Recorder, root: Path) -> None:
    """Checks that found nothing to raise write no alert log; the alerts report must
    not then say "no alert log yet" (as if cron were not running `check`): it says
    when the last check ran and what it found. A dry run is not a check that ran."""
    finish(rec, 10, 0)
    before = invoke(runner, root, "report", "alerts", "--utc")
    assert "no alert log yet" in before.stdout and "last check" not in before.stdout
    assert invoke(runner, root, "check", "--now", NOW, "--dry-run").exit_code == 0
    assert "no alert log yet" in invoke(runner, root, "report", "alerts", "--utc").stdout
    assert invoke(runner, root, "check", "--now", NOW).exit_code == 0
    assert not (root / "alerts").exists()  # nothing raised: no alert log
    after = invoke(runner, root, "report", "alerts", "--utc")
    assert after.exit_code == 0, after.stderr
    assert "no alert log yet" not in after.stdout
    assert "no alert raised yet" in after.stdout
    assert "last check 2026-03-02 12:00: OK" in after.stdout
    data = json.loads(invoke(runner, root, "report", "alerts", "--format", "json").stdout)
    assert data["alert_log_present"] is False
    assert data["last_check"] == {"checked_at": "2026-03-02T12:00:00Z", "status": "OK", "active": 0}


def test_json_floats_carry_no_binary_noise(
    runner: CliRunner, rec: vp.Recorder, root: Path, cfg: Path
) -> None:
    """check's JSON writes floats as the reports do: 12 significant digits."""
    finish(rec, 10, 3)  # 3 of 13: 0.23076923076923078 in binary
    result = invoke(runner, root, "check", "--now", NOW, "--format", "json", config=cfg)
    assert result.exit_code == 1, result.output
    (alert,) = json.loads(result.stdout)["active"]
    assert alert["value"] == 0.230769230769
    assert "0.23076923076923" not in result.stdout
