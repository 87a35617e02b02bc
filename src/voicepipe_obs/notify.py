"""Notifiers: deliver one alert notification (raised, escalated, resolved) to a
program (``command``), an HTTP endpoint (``webhook``, Slack-style ``text`` field) or
a Prometheus Alertmanager (``alertmanager``, the v2 API).

Standard library only (``subprocess``, ``urllib``). This module knows how to send
and reports what happened; it never raises for a failed delivery, never reads or
writes the data root and does not decide *what* to send or when (that is the
alert lifecycle in ``alerts.py``, which records every attempt).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import AlertmanagerNotifier, CommandNotifier, WebhookNotifier

NotifierConfig = CommandNotifier | WebhookNotifier | AlertmanagerNotifier

#: Pause between HTTP attempts (seconds × attempt number).
RETRY_BACKOFF = 0.2
_ERROR_MAX = 300


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery did: success, how many attempts it took, the last error."""

    ok: bool
    attempts: int
    error: str | None = None


def notifier_name(cfg: NotifierConfig) -> str:
    """The notifier's ``name``, else ``<type>:<program>`` or ``<type>:<url>`` with
    the URL shown as :func:`display_url` does (the key its deliveries are recorded
    under, so keep it stable; it is printed and stored, so it holds no secret)."""
    if cfg.name:
        return cfg.name
    if isinstance(cfg, CommandNotifier):
        return f"command:{cfg.command[0]}"
    return f"{cfg.type}:{display_url(cfg.url)}"


def display_url(url: str) -> str:
    """``url`` without what may be a secret, for messages and the alert log: scheme,
    host and port are kept; a password, a path or a query (a Slack webhook's path
    *is* its secret) become ``/…`` plus the first 8 hex digits of the URL's SHA-256,
    so that two URLs of one host still differ (``https://hooks.slack.com/…#1f2e3d4c``).
    A URL of scheme, host and port alone is shown as it is."""
    import hashlib
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    base = f"{parts.scheme}://{host}{port}"
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        return f"{base}/…#{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    return base


def alertmanager_endpoint(url: str) -> str:
    """The v2 alerts endpoint of an Alertmanager at ``url`` (its base URL, or the
    endpoint itself: ``/api/v2/alerts`` is not added twice)."""
    base = url.rstrip("/")
    suffix = "/api/v2/alerts"
    return base if base.endswith(suffix) else base + suffix


def alert_text(alert: Mapping[str, Any]) -> str:
    """One readable line for chat: ``[CRITICAL] failure_rate (org:acme) raised: …``."""
    event = alert.get("event", "raised")
    sev = str(alert.get("severity") or "").upper()
    head = f"[RESOLVED] {alert.get('rule')}" if event == "resolved" else f"[{sev}] {alert.get('rule')}"
    scope = alert.get("scope")
    if scope and scope != "all":
        head += f" ({scope})"
    summary = alert.get("summary") or ""
    if event == "resolved":  # the summary is the last one measured while it fired
        what = f"resolved (was: {summary})" if summary else "resolved"
        return f"{head} {what} (alert {alert.get('alert_id')})"
    return f"{head} {event}: {summary} (alert {alert.get('alert_id')})".rstrip()


def deliver(
    cfg: NotifierConfig, alert: Mapping[str, Any], *, deadline: float | None = None
) -> DeliveryResult:
    """Send one notification; never raises. ``deadline`` (a ``time.monotonic()``
    instant) bounds the whole delivery, retries included: each attempt's timeout is
    cut to the time left, and no attempt starts after it."""
    try:
        if isinstance(cfg, CommandNotifier):
            return _run_command(cfg, alert, deadline)
        if isinstance(cfg, WebhookNotifier):
            body = dict(alert)
            body["text"] = alert_text(alert)
            return _post_json(cfg.url, body, cfg.timeout, cfg.retries, cfg.headers, deadline)
        return _post_json(
            alertmanager_endpoint(cfg.url),
            alertmanager_alerts(cfg, alert),
            cfg.timeout,
            cfg.retries,
            {},
            deadline,
        )
    except Exception as exc:  # pragma: no cover - defensive: a notifier must not crash check
        return DeliveryResult(False, 1, _short(f"{type(exc).__name__}: {exc}"))


def refresh_alertmanager(
    cfg: AlertmanagerNotifier, alerts: Sequence[Mapping[str, Any]], *, deadline: float | None = None
) -> DeliveryResult:
    """Re-post still-firing alerts with a fresh ``endsAt`` (Alertmanager expires an
    alert that is not re-sent, as Prometheus re-sends on every evaluation), within
    ``deadline`` (see :func:`deliver`)."""
    if not alerts:
        return DeliveryResult(True, 0)
    body: list[dict[str, Any]] = []
    for alert in alerts:
        body.extend(alertmanager_alerts(cfg, {**alert, "event": "refresh"}))
    return _post_json(alertmanager_endpoint(cfg.url), body, cfg.timeout, cfg.retries, {}, deadline)


# ------------------------------------------------------------------- alertmanager


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def _parse_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def alertmanager_alerts(cfg: AlertmanagerNotifier, alert: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The postable alerts (Alertmanager API v2) for one notification.

    Labels: alertname, severity, rule, organization_id (``all`` for the overall
    scope), alert_id, plus the notifier's static ``labels``. A firing alert gets
    ``endsAt`` = now + ``firing_ttl_minutes``; a resolved one ``endsAt`` = when it
    resolved. Severity is a label, so an escalation also ends the lower-severity
    alert.
    """
    event = alert.get("event", "raised")
    at = _parse_time(alert.get("timestamp") or dt.datetime.now(dt.timezone.utc))
    org = alert.get("organization_id")

    def one(severity: str, ends: dt.datetime) -> dict[str, Any]:
        labels = {
            **cfg.labels,
            "alertname": f"voicepipe_{alert.get('rule')}",
            "severity": severity,
            "rule": str(alert.get("rule")),
            "organization_id": str(org) if org else "all",
            "alert_id": str(alert.get("alert_id")),
        }
        return {
            "labels": labels,
            "annotations": {
                "summary": str(alert.get("summary") or ""),
                "description": str(alert.get("description") or ""),
            },
            "startsAt": _iso(alert.get("started_at") or at),
            "endsAt": _iso(ends),
        }

    severity = str(alert.get("severity") or "warning")
    if event == "resolved":
        return [one(severity, at)]
    out = [one(severity, at + dt.timedelta(minutes=cfg.firing_ttl_minutes))]
    previous = alert.get("previous_severity")
    if event == "escalated" and previous and previous != severity:
        out.insert(0, one(str(previous), at))
    return out


# ------------------------------------------------------------------------ senders


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _ERROR_MAX else message[: _ERROR_MAX - 1] + "…"


#: An attempt is not started with less time than this left before the deadline.
_MIN_ATTEMPT = 0.05


def _left(timeout: float, deadline: float | None) -> float:
    """``timeout``, cut to the time left before ``deadline`` (may be <= 0)."""
    return timeout if deadline is None else min(timeout, deadline - time.monotonic())


def _post_json(
    url: str,
    body: Any,
    timeout: float,
    retries: int,
    headers: Mapping[str, str],
    deadline: float | None = None,
) -> DeliveryResult:
    data = json.dumps(body, default=_iso).encode()
    shown = display_url(url)
    url, headers = _userinfo_as_header(url, headers)
    error = ""
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            pause = RETRY_BACKOFF * attempt
            if deadline is not None and time.monotonic() + pause + _MIN_ATTEMPT > deadline:
                error += "; no time left to retry before the check's delivery deadline"
                break
            time.sleep(pause)
        left = _left(timeout, deadline)
        if left < _MIN_ATTEMPT:
            error = error or "delivery deadline passed before the first attempt"
            break
        attempts = attempt + 1
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "voicepipe", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=left) as resp:  # http(s) only (validated)
                resp.read()
            return DeliveryResult(True, attempts)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(200).decode("utf-8", "replace").strip()
            except OSError:
                detail = ""
            finally:
                exc.close()
            error = f"HTTP {exc.code} from {shown}" + (f": {detail}" if detail else "")
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the request itself is wrong; retrying now will not help
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = f"cannot reach {shown}: {reason}"
    return DeliveryResult(False, attempts, _short(error))


def _userinfo_as_header(url: str, headers: Mapping[str, str]) -> tuple[str, Mapping[str, str]]:
    """``https://user:pass@host/...`` → the URL without them and an HTTP Basic
    ``Authorization`` header (urllib would try to resolve ``user:pass@host`` as the
    host name); a header given explicitly wins."""
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, headers
    netloc = parts.netloc.rsplit("@", 1)[1]
    plain = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    if any(k.lower() == "authorization" for k in headers):
        return plain, headers
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return plain, {**headers, "Authorization": f"Basic {token}"}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and everything it started (its own session: see
    :func:`_run_command`), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a pipe held open by a stopped process
        pass


def _run_command(
    cfg: CommandNotifier, alert: Mapping[str, Any], deadline: float | None = None
) -> DeliveryResult:
    """Run the command with the notification as JSON on stdin. It runs in its own
    session (process group), so a timeout kills the whole tree it started, not just
    the direct child: a script's ``sleep`` or ``curl`` must not be left behind."""
    payload = dict(alert)
    payload["text"] = alert_text(alert)
    timeout = _left(cfg.timeout, deadline)
    if timeout < _MIN_ATTEMPT:
        return DeliveryResult(False, 0, "delivery deadline passed before the first attempt")
    try:
        proc = subprocess.Popen(  # argv from the operator's config, no shell
            cfg.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        return DeliveryResult(False, 1, f"command not found: {cfg.command[0]}")
    except OSError as exc:
        return DeliveryResult(False, 1, _short(f"cannot run {cfg.command[0]}: {exc}"))
    try:
        _out, stderr = proc.communicate(json.dumps(payload, default=_iso).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return DeliveryResult(False, 1, f"command {cfg.command[0]} timed out after {timeout:.3g}s")
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        err = stderr.decode("utf-8", "replace").strip()
        return DeliveryResult(
            False,
            1,
            _short(f"command {cfg.command[0]} exited {proc.returncode}" + (f": {err}" if err else "")),
        )
    return DeliveryResult(True, 1)
