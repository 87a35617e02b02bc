"""Flapping damping (``for_minutes`` / ``keep_firing_minutes``, as Prometheus' ``for``
and ``keep_firing_for``): a value hovering around its threshold pages once, a raise
waits for the condition to last, a clear check resets that wait, long gaps between
checks are not continuous, the pending state survives separate ``check`` processes
and a malformed one is ignored with a warning; pending alerts show in the text and
JSON output but not in the exit status. Also: ``notifier_added`` records are among
``check --format json``'s ``changes``.

Real data roots, real Parquet and DuckDB, real ``voicepipe check`` processes and a
real command notifier."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from test_alerts_lifecycle import T0, at, finish
from test_alerts_retention import config, invoke, iso
from voicepipe_obs import alerts, damping, store
from voicepipe_obs.config import Settings, load_settings
from voicepipe_obs.errors import ConfigError

#: each check judges only the 5 minutes before it (one batch of artifacts)
FAILURE_RATE_TOML = "[alerts.failure_rate]\nper_organization = false\nwindow_minutes = 5\n"


def only_failure_rate(notifiers: list[dict[str, Any]] | None = None, **knobs: float) -> Settings:
    return Settings.model_validate(
        {
            "alerts": {
                "failure_rate": {"per_organization": False, "window_minutes": 5, **knobs},
                **{r: {"enabled": False} for r in alerts.RULES if r != "failure_rate"},
            },
            "notifiers": notifiers or [],
        }
    )


def batch(rec: vp.Recorder, minute: float, failed: int) -> None:
    """100 artifacts, ``failed`` of them failed, finishing 2 minutes before the check
    at ``minute`` (10% is the warning threshold: 11 breaches it, 9 does not)."""
    finish(rec, 100 - failed, failed, at(minute - 2), f"m{minute}")


def kinds(result: alerts.CheckResult) -> list[str]:
    return [c["record_type"] for c in result.changes]


def flapping_toml(tmp_path: Path, knobs: str) -> Path:
    return config(tmp_path, "failure_rate", extra=FAILURE_RATE_TOML + knobs)


# ------------------------------------------------------------ keep_firing_minutes


@pytest.mark.parametrize("keep_firing", [0, 30])
def test_an_oscillating_failure_rate_pages_once_with_keep_firing(
    rec: vp.Recorder, root: Path, tmp_path: Path, keep_firing: int
) -> None:
    pages = tmp_path / "pages.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + '\\n')"
    s = only_failure_rate(
        [{"type": "command", "name": "pager", "command": [sys.executable, "-c", script, str(pages)]}],
        keep_firing_minutes=keep_firing,
    )
    # 11%, 9%, 11%, 9% … at checks 5 minutes apart, then 9% for half an hour
    minutes = [5 * k for k in range(1, 15)]
    for k, minute in enumerate(minutes, start=1):
        batch(rec, minute, 11 if k <= 8 and k % 2 else 9)
    results = {minute: alerts.run_check(root, s, now=at(minute)) for minute in minutes}
    raised = [m for m, r in results.items() if "raised" in kinds(r)]
    resolved = [m for m, r in results.items() if "resolved" in kinds(r)]
    sent = [json.loads(line)["event"] for line in pages.read_text().splitlines()]
    if keep_firing == 0:  # today: every swing across the threshold pages
        assert (raised, resolved) == ([5, 15, 25, 35], [10, 20, 30, 40])
        assert sent == ["raised", "resolved"] * 4
        assert all(r.pending == [] for r in results.values())
        assert not (root / store.STATE / damping.PENDING_FILE).exists()  # no state kept
    else:  # raised once; resolved once clear for 30 minutes (first clear check: 40)
        assert (raised, resolved) == ([5], [70])
        assert sent == ["raised", "resolved"]
        assert [r.exit_code for r in results.values()] == [1] * 13 + [0]
        (waiting,) = results[40].pending
        assert (waiting.kind, waiting.since, waiting.until) == ("resolve", at(40), at(70))
        assert waiting.alert_id == results[5].active[0].alert_id
        # a breach in between cancelled each earlier pending resolution
        assert [p.since for p in results[10].pending] == [at(10)]
        assert results[15].pending == [] and [p.since for p in results[20].pending] == [at(20)]


def test_escalation_is_not_delayed_while_a_resolution_is_pending(rec: vp.Recorder, root: Path) -> None:
    s = only_failure_rate(keep_firing_minutes=30)
    batch(rec, 5, 11)
    batch(rec, 10, 9)
    batch(rec, 15, 30)
    assert kinds(alerts.run_check(root, s, now=at(5))) == ["raised"]
    assert [p.kind for p in alerts.run_check(root, s, now=at(10)).pending] == ["resolve"]
    escalated = alerts.run_check(root, s, now=at(15))
    assert kinds(escalated) == ["escalated"] and escalated.pending == [] and escalated.exit_code == 2


def test_disabling_the_rule_resolves_at_once(rec: vp.Recorder, root: Path) -> None:
    batch(rec, 5, 11)
    assert kinds(alerts.run_check(root, only_failure_rate(keep_firing_minutes=30), now=at(5))) == ["raised"]
    off = only_failure_rate(keep_firing_minutes=30, enabled=False)
    off_check = alerts.run_check(root, off, now=at(6))
    assert kinds(off_check) == ["resolved"] and off_check.pending == []


# -------------------------------------------------------------------- for_minutes


def test_for_minutes_waits_for_the_breach_to_last_and_a_clear_check_resets_it(
    rec: vp.Recorder, root: Path
) -> None:
    s = only_failure_rate(for_minutes=10)
    for minute, failed in [(5, 11), (10, 9), (15, 11), (20, 11), (25, 11)]:
        batch(rec, minute, failed)
    first = alerts.run_check(root, s, now=at(5))
    assert (kinds(first), first.active, first.exit_code) == ([], [], 0)
    (waiting,) = first.pending
    assert (waiting.kind, waiting.severity, waiting.since, waiting.until) == (
        "raise",
        "warning",
        at(5),
        at(15),
    )
    assert waiting.summary is not None and waiting.summary.startswith("11.0% of 100 artifacts failed")
    # clear: the wait is dropped, the next breach starts it again
    cleared = alerts.run_check(root, s, now=at(10))
    assert (kinds(cleared), cleared.pending) == ([], [])
    again = alerts.run_check(root, s, now=at(15))
    assert kinds(again) == [] and [(p.since, p.until) for p in again.pending] == [(at(15), at(25))]
    assert kinds(alerts.run_check(root, s, now=at(20))) == []
    raised = alerts.run_check(root, s, now=at(25))
    assert kinds(raised) == ["raised"] and raised.pending == [] and raised.exit_code == 1
    assert alerts.alert_history(root, record_type="raised")[0]["timestamp"] == iso(at(25))


def test_a_gap_in_the_checks_is_not_a_continuous_breach(rec: vp.Recorder, root: Path) -> None:
    """Checks 60 minutes apart (more than 3 × for_minutes and 15 minutes): nobody
    looked in between, so the wait starts again."""
    s = only_failure_rate(for_minutes=10)
    for minute in (5, 65, 70, 75):
        batch(rec, minute, 11)
    assert alerts.run_check(root, s, now=at(5)).pending[0].since == at(5)
    after_gap = alerts.run_check(root, s, now=at(65))
    assert kinds(after_gap) == [] and [p.since for p in after_gap.pending] == [at(65)]
    assert kinds(alerts.run_check(root, s, now=at(70))) == []
    assert kinds(alerts.run_check(root, s, now=at(75))) == ["raised"]


def test_a_wait_shorter_than_the_check_interval_raises_at_the_next_check(
    rec: vp.Recorder, root: Path
) -> None:
    s = only_failure_rate(for_minutes=1)
    batch(rec, 5, 11)
    batch(rec, 10, 11)
    assert kinds(alerts.run_check(root, s, now=at(5))) == []
    assert kinds(alerts.run_check(root, s, now=at(10))) == ["raised"]


# ------------------------------------------------------ processes, state file, CLI


def run_check_process(root: Path, cfg: Path, cwd: Path, now: dt.datetime, *args: str) -> Any:
    env = {**os.environ, "VOICEPIPE_DATA": str(root), "VOICEPIPE_CONFIG": str(cfg)}
    return subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "check", "--now", iso(now), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pending_state_survives_check_processes_and_a_malformed_file_is_ignored(
    rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    cfg = flapping_toml(tmp_path, "for_minutes = 10\n")
    for minute in (5, 10, 15, 20, 25):
        batch(rec, minute, 11)
    first = run_check_process(root, cfg, tmp_path, at(5), "--format", "json")
    assert (first.returncode, first.stderr) == (0, "")
    out = json.loads(first.stdout)
    assert (out["status"], out["active"], out["changes"]) == ("OK", [], [])
    (waiting,) = out["pending"]
    assert {k: waiting[k] for k in ("kind", "rule", "scope", "severity", "since", "until")} == {
        "kind": "raise",
        "rule": "failure_rate",
        "scope": "all",
        "severity": "warning",
        "since": "2026-03-02T12:05:00Z",
        "until": "2026-03-02T12:15:00Z",
    }
    assert waiting["remaining_seconds"] == 600 and waiting["alert_id"] is None
    # another process goes on from what the first one kept
    second = run_check_process(root, cfg, tmp_path, at(10))
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.splitlines() == [
        "OK: no active alerts (1 rules evaluated)",
        "PENDING failure_rate [all] 11.0% of 100 artifacts failed in the last 5 min (> 10.0%) "
        "(found since 2026-03-02 12:05 UTC; WARNING if it holds 5 min more)",
    ]
    # a malformed file: a warning, taken as empty (the wait starts again), rewritten
    state = root / store.STATE / damping.PENDING_FILE
    state.write_text('{"version": 1, "entries": [{"kind": "raise"')
    third = run_check_process(root, cfg, tmp_path, at(15), "--format", "json")
    assert third.returncode == 0, third.stderr
    assert "pending.json is malformed" in third.stderr and "taking nothing as pending" in third.stderr
    assert [p["since"] for p in json.loads(third.stdout)["pending"]] == ["2026-03-02T12:15:00Z"]
    assert damping.load_pending(root)[1] is True
    assert run_check_process(root, cfg, tmp_path, at(20)).returncode == 0
    raised = run_check_process(root, cfg, tmp_path, at(25))
    assert (raised.returncode, raised.stderr) == (1, "")
    assert raised.stdout.startswith("WARNING failure_rate [all] 11.0% of 100 artifacts failed")


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not utf-8", b"[]", b'{"version": 1, "entries": [{"kind": "raise", "rule": "x"}]}', b""],
)
def test_a_bad_pending_state_file_is_empty_with_a_warning(
    rec: vp.Recorder,
    root: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
) -> None:
    # (an in-process CLI run before this test stops the package's records propagating)
    monkeypatch.setattr(logging.getLogger("voicepipe_obs"), "propagate", True)
    s = only_failure_rate(for_minutes=10)
    batch(rec, 5, 11)
    alerts.run_check(root, s, now=at(5))
    (root / store.STATE / damping.PENDING_FILE).write_bytes(content)
    with caplog.at_level("WARNING", logger="voicepipe_obs"):
        result = alerts.run_check(root, s, now=at(6))
    assert "taking nothing as pending" in caplog.text
    assert [p.since for p in result.pending] == [at(6)]
    assert damping.load_pending(root) == ({("raise", "failure_rate", "all"): damping.Run(at(6), at(6))}, True)


def test_a_pending_resolution_keeps_the_exit_status_and_shows_in_json(
    runner: CliRunner, rec: vp.Recorder, root: Path, tmp_path: Path
) -> None:
    cfg = flapping_toml(tmp_path, "keep_firing_minutes = 30\n")
    batch(rec, 5, 11)
    batch(rec, 10, 9)
    r = invoke(runner, root, cfg, "check", "--now", iso(at(5)), "--format", "json")
    assert r.exit_code == 1, r.stderr
    (alert_id,) = [a["alert_id"] for a in json.loads(r.stdout)["active"]]
    r = invoke(runner, root, cfg, "check", "--now", iso(at(10)), "--format", "json")
    assert r.exit_code == 1, r.stderr  # still raised: still WARNING
    out = json.loads(r.stdout)
    assert out["status"] == "WARNING" and out["changes"] == []
    assert [a["alert_id"] for a in out["active"]] == [alert_id]
    (waiting,) = out["pending"]
    assert (waiting["kind"], waiting["alert_id"], waiting["since"], waiting["remaining_seconds"]) == (
        "resolve",
        alert_id,
        "2026-03-02T12:10:00Z",
        1800,
    )
    text = invoke(runner, root, cfg, "check", "--dry-run", "--now", iso(at(11)))
    assert text.exit_code == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith("WARNING failure_rate [all]")
    assert lines[1] == (
        "PENDING resolution failure_rate [all] (clear since 2026-03-02 12:10 UTC; "
        f"resolves if it stays clear 29 min more; id {alert_id})"
    )


def test_a_dry_run_shows_what_waits_and_keeps_the_state_as_it_was(rec: vp.Recorder, root: Path) -> None:
    s = only_failure_rate(for_minutes=10)
    batch(rec, 5, 11)
    batch(rec, 10, 9)
    batch(rec, 15, 11)
    assert kinds(alerts.run_check(root, s, now=at(5))) == []
    state = (root / store.STATE / damping.PENDING_FILE).read_bytes()
    dry = alerts.run_check(root, s, now=at(10), dry_run=True)  # clear: it would drop the wait
    assert (dry.pending, dry.exit_code) == ([], 0)
    assert (root / store.STATE / damping.PENDING_FILE).read_bytes() == state
    # the wait the real check kept goes on: 10 minutes after 12:05 it is raised
    assert kinds(alerts.run_check(root, s, now=at(15))) == ["raised"]


def test_a_check_that_cannot_judge_keeps_the_wait(rec: vp.Recorder, root: Path) -> None:
    s = only_failure_rate(for_minutes=10)
    batch(rec, 5, 11)
    batch(rec, 15, 11)
    assert kinds(alerts.run_check(root, s, now=at(5))) == []
    idle = alerts.run_check(root, s, now=at(10))  # nothing finished in its window
    assert kinds(idle) == [] and [(p.kind, p.since) for p in idle.pending] == [("raise", at(5))]
    assert kinds(alerts.run_check(root, s, now=at(15))) == ["raised"]


# --------------------------------------------------------------------- config


@pytest.mark.parametrize("rule", alerts.RULES)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "Input should be greater than or equal to 0 (got -1)"),
        ("nan", "Input should be a finite number (got nan)"),
        ("inf", "for_minutes must be at most 52,560,000 minutes, 100 years (got inf)"),
        ("true", "for_minutes must be a number, not a boolean (got true)"),
        ('"soon"', "Input should be a valid number, unable to parse string as a number (got 'soon')"),
    ],
)
def test_bad_for_minutes_is_a_one_line_config_error(
    tmp_path: Path, rule: str, value: str, problem: str
) -> None:
    path = tmp_path / "voicepipe.toml"
    path.write_text(f"[alerts.{rule}]\nfor_minutes = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value).endswith(problem), str(err.value)
    assert f"alerts.{rule}" in str(err.value)


def test_both_knobs_on_every_rule_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "voicepipe.toml"
    path.write_text("".join(f"[alerts.{r}]\nfor_minutes = 2.5\n" for r in alerts.RULES))
    env = {f"VOICEPIPE_ALERTS__{r.upper()}__KEEP_FIRING_MINUTES": "15" for r in alerts.RULES}
    loaded = load_settings(path, env=env)
    for rule in alerts.RULES:
        cfg = getattr(loaded.settings.alerts, rule)
        assert (cfg.for_minutes, cfg.keep_firing_minutes) == (2.5, 15.0)
    bad = {"VOICEPIPE_ALERTS__STUCK__KEEP_FIRING_MINUTES": "-5"}
    with pytest.raises(ConfigError, match="VOICEPIPE_ALERTS__STUCK__KEEP_FIRING_MINUTES"):
        load_settings(path, env=bad)


# ----------------------------------------------------------- notifier_added


def test_notifier_added_is_among_the_json_changes(runner: CliRunner, root: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, extra='[[notifiers]]\ntype = "command"\nname = "pager"\ncommand = ["true"]\n')
    now = T0.replace(hour=13)
    dry = invoke(runner, root, cfg, "check", "--dry-run", "--now", iso(now), "--format", "json")
    assert dry.exit_code == 0, dry.stderr
    expected = {
        "record_type": "notifier_added",
        "timestamp": iso(now),
        "notifier": "pager",
        "description": "first check with this notifier: it gets the active alerts, then every change",
    }
    assert [{k: c[k] for k in expected} for c in json.loads(dry.stdout)["changes"]] == [expected]
    r = invoke(runner, root, cfg, "check", "--now", iso(now), "--format", "json")
    assert r.exit_code == 0, r.stderr
    (added,) = json.loads(r.stdout)["changes"]
    assert {k: added[k] for k in expected} == expected
    (logged,) = alerts.alert_history(root, record_type="notifier_added")
    assert added == {k: v for k, v in logged.items() if v is not None}  # the record as written
    r = invoke(runner, root, cfg, "check", "--now", iso(now + dt.timedelta(minutes=1)), "--format", "json")
    assert json.loads(r.stdout)["changes"] == []


def test_an_alert_of_a_rule_this_version_does_not_know_still_resolves(rec: vp.Recorder, root: Path) -> None:
    """A log written by another version (a rule renamed since) or by hand: damping
    holds back only its own rules' records, and never fails a check over another's."""
    raised_at = at(1)
    alert_id = alerts.new_alert_id("retired_rule", "all", raised_at)
    alerts.write_records(
        root,
        [
            alerts._record(
                "raised",
                raised_at,
                alert_id=alert_id,
                rule="retired_rule",
                scope="all",
                severity="warning",
                started_at=raised_at,
                summary="from an older version",
            )
        ],
        raised_at,
    )
    batch(rec, 5, 9)
    result = alerts.run_check(root, only_failure_rate(keep_firing_minutes=30), now=at(5))
    assert [(c["record_type"], c["rule"]) for c in result.changes] == [("resolved", "retired_rule")]
    assert result.exit_code == 0


def test_a_wait_nobody_could_judge_for_longer_than_a_gap_is_dropped(rec: vp.Recorder, root: Path) -> None:
    """A per-organisation raise pending when its organisation stops sending: checks
    that cannot judge it keep it only as long as a run of checks may pause
    (damping.max_gap); then it is gone from the state and from the output."""
    s = only_failure_rate(for_minutes=10)
    batch(rec, 5, 11)
    assert kinds(alerts.run_check(root, s, now=at(5))) == []
    assert set(damping.load_pending(root)[0]) == {("raise", "failure_rate", "all")}
    kept = alerts.run_check(root, s, now=at(15))  # nothing finished: cannot judge
    assert [(p.kind, p.since) for p in kept.pending] == [("raise", at(5))]
    assert set(damping.load_pending(root)[0]) == {("raise", "failure_rate", "all")}
    later = alerts.run_check(root, s, now=at(5 + 60))  # an hour later: still nothing
    assert later.pending == [] and kinds(later) == []
    assert damping.load_pending(root) == ({}, True)
