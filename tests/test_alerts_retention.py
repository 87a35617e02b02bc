"""The alert log against operational faults: retention must not drop what defines
a still-active alert (cleanup carries it forward), a log that already lost a raise
is repaired rather than "escalated" or crashed on, ``check`` never ends in a
traceback, slow or dead notifiers are bounded in time, expired notifications are
recorded, a command notifier's whole process tree is killed on timeout, and a
check never records before the log's latest record.

Real data roots, the real CLI (CliRunner), a real HTTP server on 127.0.0.1 and real
subprocesses."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from test_cli_interrupt import assert_unknown_for
from voicepipe_obs import alerts, maintenance
from voicepipe_obs.cli import main
from voicepipe_obs.config import RetentionSettings

UTC = dt.timezone.utc


def hour_ago(hours: float) -> dt.datetime:
    """A time ``hours`` before the system clock, on the hour (checks that record
    may not run ahead of the clock)."""
    now = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - dt.timedelta(hours=hours)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def config(tmp_path: Path, *rules: str, extra: str = "", name: str = "c.toml") -> Path:
    """A config with only ``rules`` enabled (plus ``extra`` TOML)."""
    lines = [f"[alerts.{r}]\nenabled = false\n" for r in alerts.RULES if r not in rules]
    path = tmp_path / name
    path.write_text("".join(lines) + extra)
    return path


def invoke(runner: CliRunner, root: Path, cfg: Path | None, *args: str) -> Any:
    head = ["--data", str(root)] + (["--config", str(cfg)] if cfg else [])
    return runner.invoke(main, [*head, *args], catch_exceptions=False)


def history(root: Path) -> list[dict[str, Any]]:
    return alerts.alert_history(root)


def breaker_opened(rec: vp.Recorder, t0: dt.datetime) -> None:
    """The circuit breaker opened a minute before ``t0`` (a check at t0 raises it)."""
    rec.emit("circuit_breaker_opened", timestamp=t0 - dt.timedelta(minutes=1))
    rec.flush()


def breaker_alert(
    rec: vp.Recorder, runner: CliRunner, root: Path, cfg: Path, t0: dt.datetime, ack: bool = True
) -> str:
    """A circuit_breaker alert raised by a check at t0 + 5 min and (now) acknowledged."""
    rec.emit("circuit_breaker_opened", timestamp=t0)
    rec.flush()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0 + dt.timedelta(minutes=5)), "--format", "json")
    assert r.exit_code == 2, r.stderr
    (alert_id,) = [a["alert_id"] for a in json.loads(r.stdout)["active"]]
    if ack:
        r = invoke(runner, root, None, "alerts", "ack", alert_id, "--by", "alice")
        assert r.exit_code == 0, r.stderr
    return str(alert_id)


# ------------------------------------------------------------------ 1. retention


def test_cleanup_keeps_what_defines_an_active_alert(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    t0 = hour_ago(72)
    cfg = config(tmp_path, "circuit_breaker", extra="[retention]\nalerts_days = 1\n")
    alert_id = breaker_alert(rec, runner, root, cfg, t0)
    day = f"date={t0:%Y-%m-%d}"
    assert (root / "alerts" / day).is_dir()

    r = invoke(runner, root, cfg, "cleanup")
    assert r.exit_code == 0, r.stderr
    assert not (root / "alerts" / day).exists()  # the partition itself is gone ...
    carried = list((root / "alerts").glob(f"*/{maintenance.CARRIED_PREFIX}*.parquet"))
    assert len(carried) == 1  # ... its active alert's records live on

    for fmt in ("text", "json"):
        r = invoke(runner, root, cfg, "check", "--format", fmt)
        assert r.exit_code == 2, r.stderr
        assert "Traceback" not in r.stderr
        if fmt == "json":
            out = json.loads(r.stdout)
            assert out["changes"] == [] and [a["alert_id"] for a in out["active"]] == [alert_id]
        else:
            assert r.stdout.startswith("CRITICAL circuit_breaker") and "acked by alice" in r.stdout
    (state,) = alerts.list_alerts(root)
    assert state.alert_id == alert_id and state.severity == "critical"
    assert state.raised_at == t0 + dt.timedelta(minutes=5)
    assert state.acknowledged_by == "alice"
    assert [h["record_type"] for h in history(root)] == ["raised", "acknowledged"]

    # a second cleanup copies nothing again
    assert invoke(runner, root, cfg, "cleanup").exit_code == 0
    assert list((root / "alerts").glob(f"*/{maintenance.CARRIED_PREFIX}*.parquet")) == carried


def test_carry_forward_is_idempotent_after_a_crash_before_the_drop(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    t0 = hour_ago(72)
    cfg = config(tmp_path, "circuit_breaker")
    alert_id = breaker_alert(rec, runner, root, cfg, t0)
    retention = RetentionSettings(alerts_days=1)
    now = dt.datetime.now(UTC)
    (part,) = [p for p in maintenance.expired_partitions(root, retention, now=now) if p.area == "alerts"]
    # a cleanup that wrote the copy (the raise: the ack is today's), then died
    # before dropping the partition; the next run copies nothing again
    assert maintenance._carry_active_alert_records(root, [part], now) == 1
    assert maintenance._carry_active_alert_records(root, [part], now) == 0
    maintenance.cleanup(root, retention, now=now)
    assert [h["record_type"] for h in history(root)] == ["raised", "acknowledged"]
    assert len(list((root / "alerts").glob(f"*/{maintenance.CARRIED_PREFIX}*.parquet"))) == 1
    assert [a.alert_id for a in alerts.list_alerts(root)] == [alert_id]


def test_records_of_resolved_alerts_expire(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    t0 = hour_ago(72)
    cfg = config(tmp_path, "circuit_breaker", extra="[retention]\nalerts_days = 1\n")
    breaker_alert(rec, runner, root, cfg, t0, ack=False)
    rec.emit("circuit_breaker_closed", timestamp=t0 + dt.timedelta(minutes=6))
    rec.flush()
    assert invoke(runner, root, cfg, "check", "--now", iso(t0 + dt.timedelta(minutes=10))).exit_code == 0
    assert invoke(runner, root, cfg, "cleanup").exit_code == 0
    assert history(root) == []
    assert not (root / "alerts").exists() or not list((root / "alerts").glob("*/*.parquet"))


def test_a_log_that_lost_a_raise_is_repaired_not_escalated(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    """A log trimmed by an older cleanup: the ack survives, the raise is gone."""
    t0 = hour_ago(72)
    cfg = config(tmp_path, "circuit_breaker")
    rec.emit("circuit_breaker_opened", timestamp=t0)
    rec.flush()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0 + dt.timedelta(minutes=5)), "--format", "json")
    (alert_id,) = [a["alert_id"] for a in json.loads(r.stdout)["active"]]
    ack = runner.invoke(main, ["--data", str(root), "alerts", "ack", alert_id, "--by", "alice"])
    assert ack.exit_code == 0, ack.stderr
    shutil.rmtree(root / "alerts" / f"date={t0:%Y-%m-%d}")  # the ack (today) survives

    r = invoke(runner, root, cfg, "check", "--format", "json")
    assert r.exit_code == 2, r.stderr
    out = json.loads(r.stdout)
    assert [(c["record_type"], c["alert_id"]) for c in out["changes"]] == [("raised", alert_id)]
    assert [a["alert_id"] for a in out["active"]] == [alert_id]
    assert "no raise record" in r.stderr
    r = invoke(runner, root, cfg, "check")
    assert r.exit_code == 2 and r.stdout.startswith("CRITICAL circuit_breaker")
    assert [h["record_type"] for h in history(root)] == ["acknowledged", "raised"]
    listed = invoke(runner, root, None, "alerts", "list", "--format", "json")
    assert json.loads(listed.stdout)[0]["raised_at"] is not None


def test_check_turns_an_unexpected_error_into_unknown(
    runner: CliRunner, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'astimezone'\nsecond line")

    monkeypatch.setattr(alerts, "run_check", broken)
    for fmt in ("text", "json"):
        r = runner.invoke(main, ["--data", str(root), "check", "--format", fmt])
        assert r.exit_code == 3
        assert r.stderr.count("\n") == 1 and "unexpected AttributeError" in r.stderr
        assert "VOICEPIPE_DEBUG" in r.stderr and "Traceback" not in r.stderr
        if fmt == "json":
            assert json.loads(r.stdout)["status"] == "UNKNOWN"
        else:  # the same line, as the status Nagios shows
            assert r.stdout == "UNKNOWN " + r.stderr.removeprefix("voicepipe: error: ")
    monkeypatch.setenv("VOICEPIPE_DEBUG", "1")
    r = runner.invoke(main, ["--data", str(root), "check"])
    assert isinstance(r.exception, AttributeError)


# -------------------------------------------------------------- 2. slow notifier


class SlowHook:
    """A real HTTP server on 127.0.0.1 that waits ``delay`` seconds before answering
    and records each POST it answered: ``posts`` (path, headers, body) and ``bodies``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.received = 0  # POSTs read so far (answered or not)
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.received += 1
                time.sleep(hook.delay)
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    return  # the client gave up
                hook.posts.append((self.path, dict(self.headers), body))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[Any]:
        return [b for _p, _h, b in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_hook() -> Iterator[SlowHook]:
    h = SlowHook(3.0)
    yield h
    h.close()


def breaker_config(rec: vp.Recorder, tmp_path: Path, extra: str) -> tuple[Path, dt.datetime]:
    """A circuit breaker opened two hours ago, and a config with only that rule
    enabled plus ``extra`` (the notifiers): the config and the breaker's time."""
    t0 = hour_ago(2)
    breaker_opened(rec, t0)
    return config(tmp_path, "circuit_breaker", extra=extra), t0


def six_org_failures(rec: vp.Recorder, at: dt.datetime) -> None:
    for i in range(6):
        rec.emit("artifact_failed", timestamp=at, artifact_id=f"a{i}", organization_id=f"org{i}")
    rec.flush()


def test_a_slow_webhook_fails_once_then_defers(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, slow_hook: SlowHook
) -> None:
    t0 = hour_ago(2)
    six_org_failures(rec, t0 - dt.timedelta(minutes=1))
    hook_toml = f'[[notifiers]]\ntype = "webhook"\nname = "hook"\nurl = "{slow_hook.url}"\ntimeout = 0.5\n'
    cfg = config(tmp_path, "failure_rate", extra="[alerts.failure_rate]\nmin_sample = 1\n" + hook_toml)
    started = time.monotonic()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0), "--format", "json")
    took = time.monotonic() - started
    assert r.exit_code == 2, r.stderr
    assert took < 2 * 3 * 0.5 + 2  # one delivery's attempts, not seven
    sent = json.loads(r.stdout)["notifications"]
    assert len(sent) == 7
    assert [(n["ok"], n["attempts"], n["deferred"]) for n in sent] == [(False, 3, False)] + [
        (False, 0, True)
    ] * 6
    assert "6 notifications deferred to the next check" in r.stderr
    attempts = [h for h in history(root) if h["record_type"] == "notification"]
    assert [(a["delivered"], a["attempts"]) for a in attempts] == [(False, 3)]  # deferred: not recorded

    slow_hook.delay = 0
    r = invoke(runner, root, cfg, "check", "--now", iso(t0 + dt.timedelta(minutes=1)), "--format", "json")
    sent = json.loads(r.stdout)["notifications"]
    assert [n["ok"] for n in sent] == [True] * 7
    assert sent[0]["alert_id"] == attempts[0]["alert_id"]  # oldest pending first, in order
    assert len(slow_hook.bodies) == 7


def test_delivery_deadline_cuts_the_check_and_keeps_the_attempt(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, slow_hook: SlowHook
) -> None:
    slow_hook.delay = 10
    cfg, t0 = breaker_config(
        rec,
        tmp_path,
        "[alerts]\ndelivery_deadline_seconds = 1.5\n"
        f'[[notifiers]]\ntype = "webhook"\nurl = "{slow_hook.url}"\ntimeout = 30\nretries = 5\n',
    )
    started = time.monotonic()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0), "--format", "json")
    assert time.monotonic() - started < 5
    assert r.exit_code == 2, r.stderr
    (sent,) = json.loads(r.stdout)["notifications"]
    assert (sent["ok"], sent["attempts"]) == (False, 1)
    (attempt,) = [h for h in history(root) if h["record_type"] == "notification"]
    assert attempt["delivered"] is False and attempt["attempts"] == 1


# ------------------------------------------------------- 3. expired notifications


def test_expired_notification_is_warned_and_recorded_once(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    t0 = hour_ago(3)
    breaker_opened(rec, t0)
    dead = tmp_path / "dead.sh"
    dead.write_text("#!/bin/sh\nexit 1\n")
    dead.chmod(0o755)
    extra = "[alerts]\nnotification_max_age_hours = 1\n"
    failing = config(
        tmp_path,
        "circuit_breaker",
        extra=extra + f'[[notifiers]]\ntype = "command"\nname = "pager"\ncommand = ["{dead}"]\n',
        name="f.toml",
    )
    out = tmp_path / "got.jsonl"
    ok_script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    working = config(
        tmp_path,
        "circuit_breaker",
        extra=extra
        + f'[[notifiers]]\ntype = "command"\nname = "pager"\ncommand = {json.dumps([sys.executable, "-c", ok_script])}\n',
        name="w.toml",
    )
    assert invoke(runner, root, failing, "check", "--now", iso(t0)).exit_code == 2
    r = invoke(runner, root, working, "check", "--now", iso(t0 + dt.timedelta(minutes=61)))
    assert r.exit_code == 2
    assert "expired: older than 1 h" in r.stderr and "given up" in r.stderr
    assert not out.exists()
    r = invoke(runner, root, working, "check", "--now", iso(t0 + dt.timedelta(minutes=62)))
    assert "expired" not in r.stderr
    notes = [h for h in history(root) if h["record_type"] == "notification"]
    assert [(n["delivered"], (n["error"] or "")[:8]) for n in notes] == [
        (False, "command "),
        (False, "expired:"),
    ]
    listed = invoke(runner, root, None, "alerts", "list", "--history", "--wide")
    assert "expired: older than 1 h" in listed.stdout


# ------------------------------------------------------ 4. command process group


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_command_timeout_kills_the_whole_process_tree(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    cfg, t0 = breaker_config(
        rec, tmp_path, f'[[notifiers]]\ntype = "command"\ncommand = ["{script}"]\ntimeout = 1\n'
    )
    started = time.monotonic()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0), "--format", "json")
    assert time.monotonic() - started < 10
    (sent,) = json.loads(r.stdout)["notifications"]
    assert not sent["ok"] and "timed out after 1s" in sent["error"]
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _running(pid), "the notifier's grandchild outlived its timeout"
    finally:
        if _running(pid):
            os.kill(pid, 9)


# ---------------------------------------------------------------- 5. clock skew


def test_plain_check_never_records_before_the_log(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path
) -> None:
    clock = dt.datetime.now(UTC).replace(microsecond=0)
    rec.emit("circuit_breaker_opened", timestamp=clock - dt.timedelta(minutes=10))
    rec.flush()
    ahead = clock + dt.timedelta(minutes=4)  # allowed: within MAX_CLOCK_SKEW
    assert (
        invoke(runner, root, config(tmp_path, "circuit_breaker"), "check", "--now", iso(ahead)).exit_code == 2
    )
    r = invoke(runner, root, config(tmp_path, name="off.toml"), "check", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "later than the system clock" in r.stderr
    assert json.loads(r.stdout)["checked_at"] == iso(ahead)
    (state,) = alerts.list_alerts(root, status="all")
    assert state.resolved_at is not None and state.raised_at is not None
    assert state.resolved_at >= state.raised_at


# ------------------------------------------- 4. notifiers side by side, kills, secrets


@pytest.fixture
def fast_hook() -> Iterator[SlowHook]:
    """A receiver that answers at once."""
    h = SlowHook(0.0)
    yield h
    h.close()


def _webhook(name: str, url: str, timeout: float = 5.0, retries: int = 2) -> str:
    return f'[[notifiers]]\ntype = "webhook"\nname = "{name}"\nurl = "{url}"\ntimeout = {timeout}\nretries = {retries}\n'


def test_dead_webhooks_do_not_starve_a_working_one(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, slow_hook: SlowHook, fast_hook: SlowHook
) -> None:
    """Two endpoints that never answer in time, listed before the pager: notifiers
    are served side by side, so the pager gets its page in the first check, and the
    check still ends by the delivery deadline."""
    slow_hook.delay = 30
    cfg, t0 = breaker_config(
        rec,
        tmp_path,
        "[alerts]\ndelivery_deadline_seconds = 3\n"
        + _webhook("dead-1", slow_hook.url)
        + _webhook("dead-2", slow_hook.url)
        + _webhook("pager", fast_hook.url),
    )
    started = time.monotonic()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0), "--format", "json")
    assert time.monotonic() - started < 3 + 4
    assert r.exit_code == 2, r.stderr
    by_name = {n["notifier"]: n for n in json.loads(r.stdout)["notifications"]}
    assert by_name["pager"]["ok"] is True and not by_name["dead-1"]["ok"] and not by_name["dead-2"]["ok"]
    assert [b["event"] for _p, _h, b in fast_hook.posts] == ["raised"]


def test_a_check_killed_while_an_endpoint_hangs_keeps_what_it_delivered(
    rec: vp.Recorder, root: Path, tmp_path: Path, slow_hook: SlowHook, fast_hook: SlowHook
) -> None:
    """The pager got its page, another endpoint hangs, and the check is killed (a
    Nagios or systemd timeout): the delivery is in the alert log already, so the
    next check does not page again (at least once, not twice)."""
    proc, _cmd, t0 = delivering_check(
        rec,
        root,
        tmp_path,
        slow_hook,
        extra="[alerts]\ndelivery_deadline_seconds = 60\n" + _webhook("pager", fast_hook.url),
    )
    try:
        deadline = time.monotonic() + 60
        while not fast_hook.posts:
            assert proc.poll() is None and time.monotonic() < deadline, "the pager was never paged"
            time.sleep(0.05)
        time.sleep(1.5)  # the flusher writes what was tried at least every 0.5 s
        assert proc.poll() is None  # still hanging on the stuck endpoint
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    delivered = [h for h in history(root) if h["record_type"] == "notification" and h["delivered"]]
    assert [d["notifier"] for d in delivered] == ["pager"]
    slow_hook.delay = 0
    quick = config(tmp_path, "circuit_breaker", extra=_webhook("pager", fast_hook.url), name="q.toml")
    r = CliRunner().invoke(
        main,
        ["--data", str(root), "--config", str(quick), "check", "--now", iso(t0 + dt.timedelta(minutes=1))],
    )
    assert r.exit_code == 2, r.stderr
    assert len(fast_hook.posts) == 1  # not paged again


def delivering_check(
    rec: vp.Recorder, root: Path, tmp_path: Path, hook: SlowHook, extra: str = ""
) -> tuple[subprocess.Popen[str], list[str], dt.datetime]:
    """A breaker alert and a `check` (a real process) paging ``hook``, which hangs:
    returned once the check is delivering (holding the check lock), with the
    command line and the check's time."""
    hook.delay = 60
    cfg, t0 = breaker_config(rec, tmp_path, extra + _webhook("stuck", hook.url, timeout=60, retries=0))
    cmd = [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(root), "--config", str(cfg), "check"]
    proc = subprocess.Popen(
        [*cmd, "--now", iso(t0)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not hook.received:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the check never delivered: {proc.communicate()}")
        time.sleep(0.05)
    return proc, cmd, t0


def test_an_overlapping_check_outwaits_a_delivery_to_a_dead_endpoint(
    rec: vp.Recorder, root: Path, tmp_path: Path, slow_hook: SlowHook
) -> None:
    """A check holds the check lock while it delivers, up to the delivery deadline;
    the next check (cron and Nagios both running it) must wait that out, not give up
    first and exit 3 (UNKNOWN: a false page). Unset, the lock timeout is the deadline
    plus a margin: here 11 s + 10 s (a fixed 10 s default gave up at 10 s)."""
    first, cmd, t0 = delivering_check(
        rec, root, tmp_path, slow_hook, extra="[alerts]\ndelivery_deadline_seconds = 11\n"
    )
    try:
        slow_hook.delay = 0  # the second check's retry of the page is answered
        second = subprocess.run(
            [*cmd, "--now", iso(t0 + dt.timedelta(minutes=1))], capture_output=True, text=True, timeout=120
        )
        assert first.wait(timeout=60) == 2
    finally:
        first.kill()
        first.communicate(timeout=30)
    assert second.returncode == 2, second.stderr  # CRITICAL (the breaker), not 3
    assert "lock" not in second.stderr
    assert [b["event"] for b in slow_hook.bodies] == ["raised"]  # paged once, by the second


def test_ctrl_c_during_a_check_is_unknown_not_130(
    rec: vp.Recorder, root: Path, tmp_path: Path, slow_hook: SlowHook
) -> None:
    """Ctrl-C while a check delivers: UNKNOWN (3) with its line on stdout — a
    plugin's exit codes are 0-3 — and no traceback; the raise it recorded is kept."""
    proc, _cmd, _t0 = delivering_check(rec, root, tmp_path, slow_hook)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 3, err
    assert out.startswith("UNKNOWN check could not evaluate: interrupted (Ctrl-C)")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert [h["record_type"] for h in history(root) if h["record_type"] == "raised"] == ["raised"]


def busy_store(root: Path, at: dt.datetime, copies: int = 400) -> Path:
    """Events that keep `check`'s DuckDB queries busy for seconds: one file of
    200,000 ``artifact_failed`` events (1,000 artifacts, each event 200 times) in
    ``at``'s hour, hard-linked ``copies`` times — every link is a file DuckDB reads
    (~80 million rows), none costs disk or time to write. Returns the hour's
    directory."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voicepipe_obs.events import arrow_schema

    n = 200_000
    ids = pa.array(np.arange(n, dtype=np.int32) % 1000)

    def text(*values: str) -> pa.Array:
        index = ids if len(values) > 1 else pa.array(np.zeros(n, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(index, pa.array(list(values))).dictionary_decode()

    given = {
        "event_id": text(*(f"e{i}" for i in range(1000))),
        "event_type": text("artifact_failed"),
        "timestamp": pa.array(np.full(n, int(at.timestamp() * 1e6), dtype=np.int64)).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "artifact_id": text(*(f"a{i}" for i in range(1000))),
    }
    schema = arrow_schema()
    table = pa.Table.from_arrays([given.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)
    hour = root / "events" / f"date={at:%Y-%m-%d}" / f"hour={at:%H}"
    hour.mkdir(parents=True)
    pq.write_table(table, hour / "busy-0.parquet")
    for i in range(1, copies):
        os.link(hour / "busy-0.parquet", hour / f"busy-{i}.parquet")
    return hour


@pytest.mark.parametrize(
    ("sig", "fmt"),
    [(signal.SIGTERM, "text"), (signal.SIGTERM, "json"), (signal.SIGINT, "text")],
    ids=["SIGTERM", "SIGTERM-json", "SIGINT"],
)
def test_a_signal_during_a_query_is_unknown_saying_so(root: Path, tmp_path: Path, sig: int, fmt: str) -> None:
    """SIGTERM (a Nagios or systemd timeout) or Ctrl-C while DuckDB runs one of the
    rules' queries: DuckDB answers with its own error ("Query interrupted"), which
    must not read as "cannot read …" or an unexpected error — the UNKNOWN line says
    terminated (interrupted), exit 3, as a signal anywhere else in check. The real
    console script (its SIGTERM handler), in a real process."""

    script = Path(sys.executable).parent / "voicepipe"
    if not script.exists():  # pragma: no cover - the package is installed for the tests
        pytest.skip("the voicepipe console script is not installed next to this interpreter")
    hour = busy_store(root, dt.datetime.now(UTC) - dt.timedelta(minutes=10))
    env = {k: v for k, v in os.environ.items() if k != "VOICEPIPE_DEBUG"}
    proc = subprocess.Popen(
        [str(script), "--data", str(root), "check", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # once it reads the events (vetting them takes milliseconds, the queries
        # over them seconds), it is inside a query
        fds = Path(f"/proc/{proc.pid}/fd")
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            try:
                opened = {os.readlink(fd) for fd in fds.iterdir()}
            except OSError:  # an fd closed meanwhile
                opened = set()
            if any(name.startswith(str(hour)) for name in opened):
                break
            time.sleep(0.01)
        time.sleep(0.5)
        assert proc.poll() is None, "the check finished before it could be interrupted"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert_unknown_for(sig, fmt, proc.returncode, out, err)


def test_an_alertmanager_that_hangs_keeps_to_the_deadline(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, slow_hook: SlowHook
) -> None:
    """A hanging Alertmanager: the page fails within the deadline and the re-post
    of firing alerts is skipped (it failed in this check) rather than run past it."""
    slow_hook.delay = 30
    base = slow_hook.url.rsplit("/", 1)[0]
    cfg, t0 = breaker_config(
        rec,
        tmp_path,
        "[alerts]\ndelivery_deadline_seconds = 2\n"
        f'[[notifiers]]\ntype = "alertmanager"\nurl = "{base}"\ntimeout = 5\nretries = 2\n',
    )
    started = time.monotonic()
    r = invoke(runner, root, cfg, "check", "--now", iso(t0))
    assert time.monotonic() - started < 2 + 4
    assert r.exit_code == 2
    assert "could not refresh firing alerts" not in r.stderr  # not tried after the failure


def test_secrets_in_a_webhook_url_are_neither_printed_nor_logged(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, fast_hook: SlowHook
) -> None:
    """A URL's password, path and query may be the secret (a Slack webhook's path
    is): the default notifier name and every message show scheme, host and port
    only, plus a digest. Credentials in the URL become an HTTP Basic header that
    the endpoint receives; header values are masked by `config show`."""
    good = f"http://bot:PASSWD789@127.0.0.1:{fast_hook.port}/services/T000/PATHSECRET?token=QSECRET"
    dead = "http://bot:PASSWD789@127.0.0.1:9/services/T000/PATHSECRET?token=QSECRET"  # port 9: refused
    extra = (
        f'[[notifiers]]\ntype = "webhook"\nurl = "{good}"\nheaders = {{ X-Api-Key = "HDRSECRET456" }}\n'
        f'[[notifiers]]\ntype = "webhook"\nurl = "{dead}"\nretries = 0\n'
    )
    cfg, t0 = breaker_config(rec, tmp_path, extra)
    outputs = []
    for fmt in ("text", "json"):
        r = invoke(
            runner, root, cfg, "check", "--now", iso(t0 + dt.timedelta(minutes=len(outputs))), "--format", fmt
        )
        assert r.exit_code == 2
        outputs += [r.stdout, r.stderr]
    for fmt in ("table", "json", "csv"):
        outputs.append(
            invoke(runner, root, cfg, "alerts", "list", "--history", "--wide", "--format", fmt).stdout
        )
    outputs.append(invoke(runner, root, cfg, "config", "show").stdout)
    outputs.append(invoke(runner, root, cfg, "config", "show", "--format", "json").stdout)
    con = vp.connect(root)
    outputs.append(json.dumps(con.execute("SELECT * FROM alert_log").fetchall(), default=str))
    for secret in ("PASSWD789", "PATHSECRET", "QSECRET", "HDRSECRET456"):
        assert not any(secret in text for text in outputs), secret
    names = {h["notifier"] for h in history(root) if h["notifier"]}
    assert len(names) == 2 and all(n.startswith("webhook:http://127.0.0.1:") for n in names)
    ((path, headers, body),) = fast_hook.posts
    assert path == "/services/T000/PATHSECRET?token=QSECRET" and body["event"] == "raised"
    assert headers["Authorization"] == "Basic Ym90OlBBU1NXRDc4OQ=="  # bot:PASSWD789
    assert headers["X-Api-Key"] == "HDRSECRET456"


def test_an_alertmanager_url_may_name_the_endpoint_itself(
    rec: vp.Recorder, runner: CliRunner, root: Path, tmp_path: Path, fast_hook: SlowHook
) -> None:
    t0 = hour_ago(2)
    breaker_opened(rec, t0)
    url = f"http://127.0.0.1:{fast_hook.port}/am/api/v2/alerts"
    cfg = config(tmp_path, "circuit_breaker", extra=f'[[notifiers]]\ntype = "alertmanager"\nurl = "{url}"\n')
    assert invoke(runner, root, cfg, "check", "--now", iso(t0)).exit_code == 2
    assert {p for p, _h, _b in fast_hook.posts} == {"/am/api/v2/alerts"}
