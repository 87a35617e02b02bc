"""The alertmanager notifier against a real Prometheus Alertmanager on 127.0.0.1
(Debian package ``prometheus-alertmanager``): the alert appears in its v2 API with
the right labels, escalation replaces the warning with the critical alert, and
resolution ends it.

Skipped with a visible reason when the binary is absent, unless
VOICEPIPE_REQUIRE_ALERTMANAGER=1 (CI), where a missing binary fails."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import voicepipe_obs as vp
from voicepipe_obs import alerts
from voicepipe_obs.config import Settings

BINARIES = ("prometheus-alertmanager", "alertmanager")
AM_CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: blackhole
"""


def _binary() -> str:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("VOICEPIPE_REQUIRE_ALERTMANAGER") == "1":
        pytest.fail(
            "VOICEPIPE_REQUIRE_ALERTMANAGER=1 but no alertmanager binary on PATH (apt-get install prometheus-alertmanager)"
        )
    pytest.skip(
        "prometheus-alertmanager not installed (apt-get install prometheus-alertmanager); alertmanager integration not tested"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = _binary()
    conf = tmp_path / "alertmanager.yml"
    conf.write_text(AM_CONFIG)
    port = _free_port()
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={conf}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("alertmanager did not become ready within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ours(url: str) -> list[dict[str, Any]]:
    return [
        a for a in _get(url + "/api/v2/alerts") if a["labels"].get("alertname", "").startswith("voicepipe_")
    ]


def test_alert_reaches_alertmanager_and_resolution_ends_it(
    alertmanager: str, rec: vp.Recorder, root: Path
) -> None:
    settings = Settings.model_validate(
        {
            "alerts": {
                "failure_rate": {"per_organization": True},
                **{r: {"enabled": False} for r in alerts.RULES if r != "failure_rate"},
            },
            "notifiers": [{"type": "alertmanager", "url": alertmanager, "labels": {"team": "voice"}}],
        }
    )
    now = dt.datetime.now(dt.timezone.utc)

    def finish(ok: int, failed: int, prefix: str) -> None:
        for i in range(ok + failed):
            rec.emit(
                "artifact_completed" if i < ok else "artifact_failed",
                timestamp=now - dt.timedelta(minutes=5),
                artifact_id=f"{prefix}{i}",
                organization_id="org-a",
            )
        rec.flush()

    finish(8, 2, "a")  # 20% → warning, overall and for org-a
    r1 = alerts.run_check(root, settings, now=now)
    assert [d.ok for d in r1.deliveries] == [True, True], r1.deliveries
    firing = _ours(alertmanager)
    by_org = {a["labels"]["organization_id"]: a for a in firing}
    assert set(by_org) == {"all", "org-a"}
    labels = by_org["org-a"]["labels"]
    alert_id = next(a.alert_id for a in r1.active if a.scope == "org:org-a")
    assert labels == {
        "alertname": "voicepipe_failure_rate",
        "severity": "warning",
        "rule": "failure_rate",
        "organization_id": "org-a",
        "alert_id": alert_id,
        "team": "voice",
    }
    assert by_org["org-a"]["annotations"]["summary"].startswith("20.0% of 10 artifacts failed")
    assert by_org["org-a"]["annotations"]["description"]
    assert by_org["org-a"]["status"]["state"] == "active"
    started = dt.datetime.fromisoformat(by_org["org-a"]["startsAt"].replace("Z", "+00:00"))
    assert abs(started - now) < dt.timedelta(milliseconds=1)

    finish(0, 5, "b")  # 7 of 15 → critical: the warning ends, the critical fires
    alerts.run_check(root, settings, now=dt.datetime.now(dt.timezone.utc))
    firing = _ours(alertmanager)
    assert sorted((a["labels"]["organization_id"], a["labels"]["severity"]) for a in firing) == [
        ("all", "critical"),
        ("org-a", "critical"),
    ]

    # resolution: many successes bring the rate under 10% → resolved, endsAt = now
    finish(100, 0, "c")
    done = dt.datetime.now(dt.timezone.utc)
    r3 = alerts.run_check(root, settings, now=done)
    assert [c["record_type"] for c in r3.changes] == ["resolved", "resolved"]
    assert r3.active == [] and all(d.ok for d in r3.deliveries)
    time.sleep(0.2)
    assert _ours(alertmanager) == []  # Alertmanager lists only alerts that have not ended
