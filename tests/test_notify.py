"""Notifiers against real endpoints: a webhook served by http.server on 127.0.0.1
and a real program for the command notifier. Notifications go out on raise,
escalation and resolution only; a failed delivery is recorded and retried on the
next check."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voicepipe_obs as vp
from voicepipe_obs import alerts, notify
from voicepipe_obs.config import Settings, WebhookNotifier

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Hook:
    """A real HTTP server recording JSON POSTs; answers with queued status codes."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.statuses: list[int] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"upstream broke")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def bodies(self) -> list[Any]:
        return [b for _, _, b in self.posts]


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def healthy(rec: vp.Recorder, minutes: float) -> None:
    """Ten artifacts completed at ``minutes``: the failure rate can be judged healthy
    and its alert resolved (with too few finished in the window it stays)."""
    for i in range(10):
        rec.emit("artifact_completed", timestamp=at(minutes), artifact_id=f"healthy-{minutes}-{i}")
    rec.flush()


def only_breaker(notifiers: list[dict[str, Any]]) -> Settings:
    return Settings.model_validate(
        {
            "alerts": {
                r: {"enabled": False} for r in alerts.RULES if r not in ("circuit_breaker", "failure_rate")
            }
            | {"failure_rate": {"per_organization": False}},
            "notifiers": notifiers,
        }
    )


def test_webhook_gets_raise_escalation_resolution_only(rec: vp.Recorder, root: Path, hook: Hook) -> None:
    s = only_breaker([{"type": "webhook", "url": hook.url, "headers": {"X-Token": "t0k"}}])
    for i in range(10):  # 2 of 10 failed → warning
        rec.emit("artifact_completed" if i < 8 else "artifact_failed", timestamp=at(-5), artifact_id=f"a{i}")
    rec.flush()
    alerts.run_check(root, s, now=at(0))
    alerts.run_check(root, s, now=at(1))  # unchanged: no notification
    assert [b["event"] for b in hook.bodies] == ["raised"]
    path, headers, body = hook.posts[0]
    assert path == "/hook" and headers["X-Token"] == "t0k"
    assert headers["Content-Type"] == "application/json"
    assert body["rule"] == "failure_rate" and body["severity"] == "warning" and body["status"] == "firing"
    assert body["text"].startswith("[WARNING] failure_rate raised: 20.0% of 10 artifacts failed")
    alert_id = body["alert_id"]
    for i in range(5):
        rec.emit("artifact_failed", timestamp=at(1.5), artifact_id=f"b{i}")
    rec.flush()
    alerts.run_check(root, s, now=at(2))  # 7 of 15 → critical
    alerts.acknowledge(root, alert_id, "alice", now=at(3))  # no notification
    alerts.run_check(root, s, now=at(4))
    healthy(rec, 59)
    alerts.run_check(root, s, now=at(60))  # the failures out of the window, healthy work in it → resolved
    assert [(b["event"], b["severity"]) for b in hook.bodies] == [
        ("raised", "warning"),
        ("escalated", "critical"),
        ("resolved", "critical"),
    ]
    assert {b["alert_id"] for b in hook.bodies} == {alert_id}
    assert hook.bodies[1]["previous_severity"] == "warning"
    assert hook.bodies[2]["status"] == "resolved" and hook.bodies[2]["ended_at"] == "2026-03-02T13:00:00Z"
    assert hook.bodies[2]["text"].startswith("[RESOLVED] failure_rate resolved (was: 46.7% of 15 artifacts")
    (state,) = alerts.list_alerts(root, status="all")
    assert (state.notifications_sent, state.notifications_failed) == (3, 0)


def test_failed_delivery_is_retried_on_next_check(rec: vp.Recorder, root: Path, hook: Hook) -> None:
    s = only_breaker([{"type": "webhook", "url": hook.url, "retries": 1}])
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    hook.statuses = [500, 503]  # both attempts of the first check fail
    r1 = alerts.run_check(root, s, now=at(0))
    assert [(d.ok, d.attempts) for d in r1.deliveries] == [(False, 2)]
    assert "HTTP 503" in (r1.deliveries[0].error or "") and "upstream broke" in (r1.deliveries[0].error or "")
    assert hook.posts == []
    r2 = alerts.run_check(root, s, now=at(5))
    assert r2.changes == []  # not raised again …
    assert [(d.event, d.ok) for d in r2.deliveries] == [("raised", True)]  # … but delivered now
    assert [b["event"] for b in hook.bodies] == ["raised"]
    r3 = alerts.run_check(root, s, now=at(10))
    assert r3.deliveries == []  # delivered once is enough
    attempts = [h for h in alerts.alert_history(root) if h["record_type"] == "notification"]
    assert [(a["delivered"], a["attempts"], a["ref_record_type"]) for a in attempts] == [
        (False, 2, "raised"),
        (True, 1, "raised"),
    ]


def test_retry_within_one_delivery(rec: vp.Recorder, root: Path, hook: Hook) -> None:
    s = only_breaker([{"type": "webhook", "url": hook.url, "retries": 2}])
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    hook.statuses = [502]
    r = alerts.run_check(root, s, now=at(0))
    assert [(d.ok, d.attempts) for d in r.deliveries] == [(True, 2)]


def test_pending_notifications_expire(rec: vp.Recorder, root: Path, hook: Hook) -> None:
    s = only_breaker([{"type": "webhook", "url": hook.url, "retries": 0}])
    s.alerts.notification_max_age_hours = 1
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    hook.statuses = [500]
    alerts.run_check(root, s, now=at(0))
    assert alerts.run_check(root, s, now=at(61)).deliveries == []
    assert hook.posts == []


def test_unreachable_webhook_does_not_break_check(rec: vp.Recorder, root: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = only_breaker([{"type": "webhook", "url": f"http://127.0.0.1:{port}/", "retries": 0, "timeout": 2}])
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    r = alerts.run_check(root, s, now=at(0))
    assert r.exit_code == 2
    assert [d.ok for d in r.deliveries] == [False]
    assert "cannot reach" in (r.deliveries[0].error or "")


def test_command_notifier_gets_alert_json_on_stdin(rec: vp.Recorder, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "received.jsonl"
    script = (
        f"import json, sys; a = json.load(sys.stdin); open({str(out)!r}, 'a').write(json.dumps(a) + '\\n')"
    )
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('pager offline'); sys.exit(3)"]
    s = only_breaker(
        [
            {"type": "command", "name": "log", "command": [sys.executable, "-c", script]},
            {"type": "command", "name": "broken", "command": failing},
        ]
    )
    rec.emit("circuit_breaker_opened", timestamp=at(-2), error_message="openai 503s")
    rec.flush()
    r = alerts.run_check(root, s, now=at(0))
    assert {(d.notifier, d.ok) for d in r.deliveries} == {("log", True), ("broken", False)}
    broken = next(d for d in r.deliveries if d.notifier == "broken")
    assert broken.error == "command " + sys.executable + " exited 3: pager offline"
    rec.emit("circuit_breaker_closed", timestamp=at(3))
    rec.flush()
    r2 = alerts.run_check(root, s, now=at(5))
    # "log" gets the resolution; "broken" is retried for both records and fails again
    assert sorted((d.notifier, d.event, d.ok) for d in r2.deliveries) == [
        ("broken", "raised", False),
        ("broken", "resolved", False),
        ("log", "resolved", True),
    ]
    received = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["event"], a["rule"], a["severity"]) for a in received] == [
        ("raised", "circuit_breaker", "critical"),
        ("resolved", "circuit_breaker", "critical"),
    ]
    assert received[0]["description"] == "openai 503s"
    assert received[0]["started_at"] == "2026-03-02T12:00:00Z"
    assert received[0]["text"].startswith("[CRITICAL] circuit_breaker raised")


def test_missing_program_is_a_recorded_failure() -> None:
    cfg = Settings.model_validate({"notifiers": [{"type": "command", "command": ["/nonexistent/pager"]}]})
    result = notify.deliver(cfg.notifiers[0], {"alert_id": "x", "rule": "r", "event": "raised"})
    assert result == notify.DeliveryResult(False, 1, "command not found: /nonexistent/pager")


def test_client_errors_are_not_retried(hook: Hook) -> None:
    hook.statuses = [400, 400, 400]
    cfg = WebhookNotifier(type="webhook", url=hook.url, retries=2)
    result = notify.deliver(cfg, {"alert_id": "x", "rule": "r"})
    assert (result.ok, result.attempts) == (False, 1)
    assert result.error is not None and result.error.startswith("HTTP 400")


def _history_without_notifiers(rec: vp.Recorder, root: Path) -> str:
    """A store whose log already holds a breaker alert raised and resolved (t0-t5)
    and a failure-rate alert raised at t10, warning then critical, still active;
    returns the failure-rate alert's id."""
    quiet = only_breaker([])
    rec.emit("circuit_breaker_opened", timestamp=at(-1))
    rec.flush()
    alerts.run_check(root, quiet, now=at(0))
    rec.emit("circuit_breaker_closed", timestamp=at(3))
    for i in range(10):  # 2 of 10 failed → warning
        rec.emit("artifact_completed" if i < 8 else "artifact_failed", timestamp=at(8), artifact_id=f"a{i}")
    rec.flush()
    alerts.run_check(root, quiet, now=at(5))
    r = alerts.run_check(root, quiet, now=at(10))
    for i in range(5):  # 7 of 15 → critical
        rec.emit("artifact_failed", timestamp=at(11), artifact_id=f"b{i}")
    rec.flush()
    alerts.run_check(root, quiet, now=at(12))
    history = [(h["record_type"], h["rule"]) for h in alerts.alert_history(root)]
    assert history == [
        ("raised", "circuit_breaker"),
        ("resolved", "circuit_breaker"),
        ("raised", "failure_rate"),
        ("escalated", "failure_rate"),
    ]
    return r.active[0].alert_id


def test_a_new_notifier_gets_the_active_alerts_not_the_backlog(
    rec: vp.Recorder, root: Path, hook: Hook
) -> None:
    alert_id = _history_without_notifiers(rec, root)
    s = only_breaker([{"type": "webhook", "name": "slack", "url": hook.url}])
    first = alerts.run_check(root, s, now=at(15))
    # the present state, once: the active alert at its current severity; nothing
    # about the breaker alert that came and went before the notifier existed
    assert [(b["event"], b["alert_id"], b["severity"]) for b in hook.bodies] == [
        ("escalated", alert_id, "critical")
    ]
    assert first.changes == []
    (added,) = alerts.alert_history(root, record_type="notifier_added")
    assert (added["notifier"], added["timestamp"]) == ("slack", "2026-03-02T12:15:00Z")
    assert alerts.run_check(root, s, now=at(16)).deliveries == []  # once
    # from now on every change goes out
    rec.emit("circuit_breaker_opened", timestamp=at(17))
    rec.flush()
    alerts.run_check(root, s, now=at(18))
    healthy(rec, 59)
    alerts.run_check(root, s, now=at(60))  # the failures out of the window → resolved
    assert [(b["event"], b["rule"]) for b in hook.bodies[1:]] == [
        ("raised", "circuit_breaker"),
        ("resolved", "failure_rate"),
    ]
    assert len(alerts.alert_history(root, record_type="notifier_added")) == 1


def test_a_new_notifier_failing_at_first_is_retried(rec: vp.Recorder, root: Path, hook: Hook) -> None:
    alert_id = _history_without_notifiers(rec, root)
    s = only_breaker([{"type": "webhook", "url": hook.url, "retries": 0}])
    hook.statuses = [503]
    r1 = alerts.run_check(root, s, now=at(15))
    assert [(d.alert_id, d.ok) for d in r1.deliveries] == [(alert_id, False)]
    r2 = alerts.run_check(root, s, now=at(20))
    assert [(d.alert_id, d.event, d.ok) for d in r2.deliveries] == [(alert_id, "escalated", True)]
    assert [b["event"] for b in hook.bodies] == ["escalated"]


def test_a_new_notifier_first_run_without_notify_keeps_its_deliveries_pending(
    rec: vp.Recorder, root: Path, hook: Hook
) -> None:
    """The notifier's history starts at the first check run with it configured,
    even one that sends nothing (or dies before sending): what changed from then
    on goes out on the next check that notifies, the older backlog does not."""
    _history_without_notifiers(rec, root)
    s = only_breaker([{"type": "webhook", "url": hook.url}])
    alerts.run_check(root, s, now=at(15), notify=False)
    assert hook.posts == []
    rec.emit("circuit_breaker_opened", timestamp=at(16))
    rec.flush()
    alerts.run_check(root, s, now=at(17), notify=False)
    alerts.run_check(root, s, now=at(20))
    assert [(b["event"], b["rule"]) for b in hook.bodies] == [
        ("escalated", "failure_rate"),
        ("raised", "circuit_breaker"),
    ]


def test_an_alert_ending_in_the_new_notifiers_first_check_is_not_sent(
    rec: vp.Recorder, root: Path, hook: Hook
) -> None:
    _history_without_notifiers(rec, root)
    s = only_breaker([{"type": "webhook", "url": hook.url}])
    healthy(rec, 59)
    r = alerts.run_check(root, s, now=at(60))  # the failure-rate alert resolves in this very check
    assert [c["record_type"] for c in r.changes] == ["resolved"]
    assert r.deliveries == [] and hook.posts == []  # neither its raise nor its end: it is over
    rec.emit("circuit_breaker_opened", timestamp=at(61))
    rec.flush()
    alerts.run_check(root, s, now=at(62))
    assert [(b["event"], b["rule"]) for b in hook.bodies] == [("raised", "circuit_breaker")]


@pytest.mark.parametrize("first_check_notifies", [True, False])
def test_an_alert_escalating_in_the_new_notifiers_first_check_pages_once(
    rec: vp.Recorder, root: Path, hook: Hook, first_check_notifies: bool
) -> None:
    """An alert raised (warning) before the notifier existed and escalated in its
    first check reaches it once, as the escalation — not the stale raise too; also
    when that first check sends nothing (notify off, or it died before sending)."""
    quiet = only_breaker([])
    for i in range(10):  # 2 of 10 failed → warning
        rec.emit("artifact_completed" if i < 8 else "artifact_failed", timestamp=at(8), artifact_id=f"a{i}")
    rec.flush()
    (raised,) = alerts.run_check(root, quiet, now=at(10)).changes
    assert (raised["record_type"], raised["severity"]) == ("raised", "warning")
    for i in range(5):  # 7 of 15 → critical, in the notifier's first check
        rec.emit("artifact_failed", timestamp=at(11), artifact_id=f"b{i}")
    rec.flush()
    s = only_breaker([{"type": "webhook", "url": hook.url}])
    first = alerts.run_check(root, s, now=at(12), notify=first_check_notifies)
    assert [(c["record_type"], c["severity"]) for c in first.changes] == [("escalated", "critical")]
    alerts.run_check(root, s, now=at(13))
    alerts.run_check(root, s, now=at(14))
    assert [(b["event"], b["alert_id"], b["severity"], b["previous_severity"]) for b in hook.bodies] == [
        ("escalated", raised["alert_id"], "critical", "warning")
    ]
