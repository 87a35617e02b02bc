"""The alert lifecycle recorded in the append-only alert log: raise once, escalate,
acknowledge, resolve, re-raise as a new alert; the alerts/alert_log views; the
check lock (concurrent processes raise once, a held lock times out)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voicepipe_obs as vp
from voicepipe_obs import alerts, store
from voicepipe_obs.config import Settings
from voicepipe_obs.errors import AlertError, NotFoundError

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ONLY_FAILURE_RATE = Settings.model_validate(
    {
        "alerts": {
            "failure_rate": {"per_organization": False},
            **{r: {"enabled": False} for r in alerts.RULES if r != "failure_rate"},
        }
    }
)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def finish(rec: vp.Recorder, ok: int, failed: int, when: dt.datetime, prefix: str) -> None:
    for i in range(ok + failed):
        aid = f"{prefix}-{i}"
        rec.emit("artifact_received", timestamp=when - dt.timedelta(seconds=30), artifact_id=aid)
        rec.emit("artifact_completed" if i < ok else "artifact_failed", timestamp=when, artifact_id=aid)
    rec.flush()


def check(root: Path, minutes: float, s: Settings = ONLY_FAILURE_RATE) -> alerts.CheckResult:
    return alerts.run_check(root, s, now=at(minutes))


def test_views_exist_typed_and_empty(root: Path) -> None:
    con = vp.connect(root)
    assert con.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM alert_log").fetchone() == (0,)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE alert_log)").fetchall())
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
    assert types["delivered"] == "BOOLEAN"
    cols = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE alerts)").fetchall()]
    assert {"alert_id", "status", "severity", "raised_at", "acknowledged_by", "resolved_at"} <= set(cols)
    # a root that does not exist at all gives the same empty views
    con = vp.connect(root / "missing")
    assert con.execute("SELECT count(*) FROM alerts").fetchone() == (0,)


def test_full_lifecycle(rec: vp.Recorder, root: Path) -> None:
    # raise: 2 of 10 failed (20%) → warning
    finish(rec, 8, 2, at(-5), "a")
    r1 = check(root, 0)
    assert [c["record_type"] for c in r1.changes] == ["raised"]
    assert r1.exit_code == 1 and r1.status == "WARNING"
    (alert,) = r1.active
    alert_id = alert.alert_id
    assert (alert.rule, alert.scope, alert.severity, alert.raised_at) == (
        "failure_rate",
        "all",
        "warning",
        at(0),
    )

    # re-check: still true, nothing new recorded
    r2 = check(root, 1)
    assert r2.changes == [] and [a.alert_id for a in r2.active] == [alert_id]

    # escalate: 3 more failures → 5 of 13 (38%) → critical, same alert
    finish(rec, 0, 3, at(1.5), "b")
    r3 = check(root, 2)
    assert [(c["record_type"], c["previous_severity"], c["severity"]) for c in r3.changes] == [
        ("escalated", "warning", "critical")
    ]
    assert r3.exit_code == 2
    assert r3.active[0].alert_id == alert_id and r3.active[0].escalated_at == at(2)

    # acknowledge: who and when; holds across further checks
    acked = alerts.acknowledge(root, alert_id, "alice", comment="looking at whisper", now=at(3))
    assert (acked.acknowledged_by, acked.acknowledged_at, acked.ack_comment) == (
        "alice",
        at(3),
        "looking at whisper",
    )
    r4 = check(root, 4)
    assert r4.changes == []
    assert r4.active[0].acknowledged_by == "alice"
    assert r4.exit_code == 2  # acknowledged alerts still count

    # severity does not drop while active: add successes → 5 of 33 (15%)
    finish(rec, 20, 0, at(4.5), "c")
    r5 = check(root, 5)
    assert r5.changes == [] and r5.active[0].severity == "critical"

    # too few finished in the window to judge (nothing since 4.5): the alert stays,
    # not resolved for lack of data
    quiet = check(root, 38)
    assert quiet.changes == [] and [a.alert_id for a in quiet.active] == [alert_id]
    assert any("too few finished artifacts to judge" in n for n in quiet.notes)

    # resolve: the window has moved past every failure, and healthy work finished in it
    finish(rec, 10, 0, at(39), "h")
    r6 = check(root, 40)
    assert [(c["record_type"], c["alert_id"]) for c in r6.changes] == [("resolved", alert_id)]
    assert r6.active == [] and r6.exit_code == 0
    (resolved,) = alerts.list_alerts(root, status="resolved")
    assert (resolved.status, resolved.resolved_at, resolved.acknowledged_by) == ("resolved", at(40), "alice")
    with pytest.raises(AlertError, match="already resolved"):
        alerts.acknowledge(root, alert_id, "bob", now=at(41))

    # the condition returns: a new alert with a new id, not acknowledged
    finish(rec, 4, 6, at(49), "d")  # with the 10 healthy at 39: 6 of 20 (30%)
    r7 = check(root, 50)
    assert [c["record_type"] for c in r7.changes] == ["raised"]
    (again,) = r7.active
    assert again.alert_id != alert_id
    assert again.acknowledged_by is None and again.severity == "critical"

    history = alerts.alert_history(root, rule="failure_rate")
    assert [(h["record_type"], h["alert_id"] == alert_id) for h in history] == [
        ("raised", True),
        ("escalated", True),
        ("acknowledged", True),
        ("resolved", True),
        ("raised", False),
    ]
    assert history[2]["actor"] == "alice"
    # the log is append-only Parquet under alerts/date=YYYY-MM-DD/
    files = store.list_parquet(root, store.ALERTS)
    assert files and all(f.parent.name == "date=2026-03-02" for f in files)
    assert len(files) == 5  # one per check that changed something, one for the ack


def test_reacknowledging_records_the_new_comment(rec: vp.Recorder, root: Path) -> None:
    finish(rec, 7, 3, at(-5), "a")
    (alert,) = check(root, 0).active
    alerts.acknowledge(root, alert.alert_id, "alice", comment="looking at whisper", now=at(1))
    bob = alerts.acknowledge(root, alert.alert_id, "bob", now=at(2))
    assert (bob.acknowledged_by, bob.acknowledged_at, bob.ack_comment) == ("bob", at(2), None)
    carol = alerts.acknowledge(root, alert.alert_id, "carol", comment="failing over", now=at(3))
    assert (carol.acknowledged_by, carol.ack_comment) == ("carol", "failing over")
    acks = alerts.alert_history(root, record_type="acknowledged")
    assert [(a["actor"], a["comment"]) for a in acks] == [
        ("alice", "looking at whisper"),
        ("bob", None),
        ("carol", "failing over"),
    ]


def test_acknowledging_a_resolved_alert_fails_with_exit_1(rec: vp.Recorder, root: Path) -> None:
    finish(rec, 7, 3, at(-5), "a")
    (alert,) = check(root, 0).active
    finish(rec, 10, 0, at(39), "ok")
    assert check(root, 40).active == []
    with pytest.raises(AlertError, match="already resolved") as info:
        alerts.acknowledge(root, alert.alert_id, "alice", now=at(41))
    assert info.value.exit_code == 1  # the operation failed; 3 is check's "could not evaluate"


def test_list_alerts_most_urgent_first(rec: vp.Recorder, root: Path) -> None:
    s = Settings.model_validate(
        {
            "alerts": {
                "failure_rate": {"per_organization": True},
                **{
                    r: {"enabled": False}
                    for r in alerts.RULES
                    if r not in ("failure_rate", "circuit_breaker")
                },
            }
        }
    )
    for i in range(10):  # org b: 2 of 10 failed → warning, raised first
        rec.emit(
            "artifact_completed" if i < 8 else "artifact_failed",
            timestamp=at(-5),
            artifact_id=f"b{i}",
            organization_id="b",
        )
    rec.flush()
    alerts.run_check(root, s, now=at(0))
    rec.emit("circuit_breaker_opened", timestamp=at(0.5))  # critical, raised later
    rec.flush()
    alerts.run_check(root, s, now=at(1))
    rec.emit("circuit_breaker_closed", timestamp=at(1.5))
    rec.flush()
    alerts.run_check(root, s, now=at(2))  # breaker resolved
    rec.emit("circuit_breaker_opened", timestamp=at(2.5))
    rec.flush()
    alerts.run_check(root, s, now=at(3))  # a new breaker alert
    active = [(a.rule, a.scope, a.severity) for a in alerts.list_alerts(root)]
    assert active == [
        ("circuit_breaker", "all", "critical"),
        ("failure_rate", "all", "warning"),
        ("failure_rate", "org:b", "warning"),
    ]
    everything = [(a.status, a.rule, a.raised_at) for a in alerts.list_alerts(root, status="all")]
    assert everything == [
        ("active", "circuit_breaker", at(3)),
        ("active", "failure_rate", at(0)),
        ("active", "failure_rate", at(0)),
        ("resolved", "circuit_breaker", at(1)),
    ]


def test_ack_unknown_alert(root: Path) -> None:
    with pytest.raises(NotFoundError, match="no alert with id"):
        alerts.acknowledge(root, "nope", "alice")


def test_disabling_a_rule_resolves_its_alerts(rec: vp.Recorder, root: Path) -> None:
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    r = alerts.run_check(root, Settings(), now=at(0))
    assert [a.rule for a in r.active if a.rule == "circuit_breaker"] == ["circuit_breaker"]
    off = Settings.model_validate({"alerts": {"circuit_breaker": {"enabled": False}}})
    r = alerts.run_check(root, off, now=at(1))
    resolved = [c for c in r.changes if c["record_type"] == "resolved"]
    assert [(c["rule"], c["description"]) for c in resolved] == [
        ("circuit_breaker", "rule circuit_breaker is disabled")
    ]


def test_check_waits_for_a_held_lock(rec: vp.Recorder, root: Path) -> None:
    finish(rec, 8, 2, at(-5), "a")
    held = threading.Event()
    releasing: list[float] = []

    def hold() -> None:
        with alerts.check_lock(root, 0):
            held.set()
            time.sleep(0.5)
            releasing.append(time.monotonic())  # the lock is still held here

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    r = check(root, 0)
    returned = time.monotonic()  # before joining the holder (which ends after its sleep anyway)
    t.join()
    assert returned > releasing[0]  # the check ran only once the holder let go
    assert [c["record_type"] for c in r.changes] == ["raised"]


def test_check_lock_timeout(root: Path) -> None:
    s = ONLY_FAILURE_RATE.model_copy(deep=True)
    s.alerts.lock_timeout_seconds = 0.2
    with alerts.check_lock(root, 0):
        with pytest.raises(
            AlertError, match=r"another `voicepipe check` \(pid \d+ on .+ since .+\) still holds"
        ) as info:
            alerts.run_check(root, s, now=at(0))
    assert info.value.exit_code == 3
    assert alerts.run_check(root, s, now=at(0)).exit_code == 0  # released


def test_concurrent_check_processes_raise_once(rec: vp.Recorder, root: Path, tmp_path: Path) -> None:
    finish(rec, 7, 3, at(-5), "a")
    rec.emit("circuit_breaker_opened", timestamp=at(-3))
    rec.flush()
    env = {**os.environ, "VOICEPIPE_ALERTS__LOCK_TIMEOUT_SECONDS": "60"}
    cmd = [
        sys.executable,
        "-m",
        "voicepipe_obs.cli",
        "--data",
        str(root),
        "check",
        "--now",
        at(0).isoformat(),
    ]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2, 2], outs
    raised = [h for h in alerts.alert_history(root) if h["record_type"] == "raised"]
    keys = [(h["rule"], h["scope"]) for h in raised]
    assert sorted(keys) == [("circuit_breaker", "all"), ("failure_rate", "all")]


KEYS = [("failure_rate", "all"), ("failure_rate", "org:a"), ("budget", "all")]
finding_sets = st.lists(
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["warning", "critical"]), max_size=3),
    min_size=1,
    max_size=5,
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=finding_sets)
def test_state_derived_from_log_matches_a_reference_model(
    tmp_path: Path, steps: list[dict[Any, str]]
) -> None:
    """Whatever the sequence of findings, the alerts view (derived from the
    Parquet log by DuckDB) agrees with a plain-Python model of the lifecycle."""
    root = tmp_path / secrets.token_hex(4)
    root.mkdir()
    model: dict[tuple[str, str], tuple[str, str]] = {}  # key → (alert_id, severity)
    episodes = 0
    con = duckdb.connect()
    alerts.register_views(con, root)
    for i, findings in enumerate(steps):
        now = at(i)
        active = alerts.list_alerts(root, con=con)
        ev = alerts.Evaluation(now, evaluated=list(alerts.RULES))
        for (rule, scope), sev in findings.items():
            org = scope.removeprefix("org:") if scope != "all" else None
            ev.findings.append(alerts.Finding(rule, org, sev, 1.0, 0.5, "s"))  # type: ignore[arg-type]
        alerts.write_records(root, alerts.lifecycle_records(active, ev), now)
        # the reference model
        for key in list(model):
            if key not in findings:
                del model[key]
        for key, sev in findings.items():
            if key not in model:
                model[key] = (alerts.new_alert_id(key[0], key[1], now), sev)
                episodes += 1
            elif alerts.SEVERITY_RANK[sev] > alerts.SEVERITY_RANK[model[key][1]]:
                model[key] = (model[key][0], sev)
        alerts.register_views(con, root)
        got = {a.key: (a.alert_id, a.severity) for a in alerts.list_alerts(root, con=con)}
        assert got == model
    history = alerts.alert_history(root, con=con)
    assert sum(h["record_type"] == "raised" for h in history) == episodes


def test_an_organisations_failure_alert_waits_for_enough_of_its_own_work(
    rec: vp.Recorder, root: Path
) -> None:
    """Per organisation: org-a fails (alert raised), then finishes too little to be
    judged while others are busy — its alert stays; once ten of its artifacts
    complete it resolves. Turning per-organisation alerts off resolves it at once
    (its rule no longer judges organisations)."""
    s = Settings.model_validate(
        {
            "alerts": {
                "failure_rate": {"per_organization": True},
                **{r: {"enabled": False} for r in alerts.RULES if r != "failure_rate"},
            }
        }
    )

    def work(ok: int, failed: int, when: dt.datetime, prefix: str, org: str) -> None:
        for i in range(ok + failed):
            kind = "artifact_completed" if i < ok else "artifact_failed"
            rec.emit(kind, timestamp=when, artifact_id=f"{prefix}-{i}", organization_id=org)
        rec.flush()

    work(5, 5, at(-5), "a", "org-a")
    work(40, 0, at(-5), "b", "org-b")
    (raised,) = alerts.run_check(root, s, now=at(0)).changes
    assert (raised["scope"], raised["severity"]) == ("org:org-a", "critical")
    work(2, 0, at(35), "a2", "org-a")  # too few of its own to judge
    work(40, 0, at(35), "b2", "org-b")
    held = alerts.run_check(root, s, now=at(40))
    assert held.changes == [] and [a.scope for a in held.active] == ["org:org-a"]
    work(10, 0, at(45), "a3", "org-a")
    resolved = alerts.run_check(root, s, now=at(50))
    assert [(c["record_type"], c["scope"]) for c in resolved.changes] == [("resolved", "org:org-a")]

    work(5, 5, at(55), "a4", "org-a")
    assert [c["scope"] for c in alerts.run_check(root, s, now=at(60)).changes] == ["org:org-a"]
    overall_only = s.model_copy(deep=True)
    overall_only.alerts.failure_rate.per_organization = False
    gone = alerts.run_check(root, overall_only, now=at(61))
    assert [(c["record_type"], c["scope"]) for c in gone.changes] == [("resolved", "org:org-a")]
