"""Layout and completeness of what `voicepipe report` prints: exports that are
complete or say they are not, tables that fit the width they are given (the
terminal's, --width, else 100) without ever cutting an id people paste, the event
log's columns, one definition of a failure, unknown ids as errors, one-line usage
errors, distinct timeline marks, JSON Lines from --watch, and one time zone for
what is typed in and what is shown.

The store is written by a real Recorder with explicit timestamps (ids as long as
the demo's live ones: ``art-20260304-000001-85b72d-live``, 31 characters), read by
the CLI in-process through CliRunner (a subprocess for --watch).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicepipe_obs import render, reports
from voicepipe_obs.cli import main
from voicepipe_obs.render import Style

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday, in the past of any test run
NOW_ISO = NOW.isoformat()
ORGS = ("org-northwind-athletics", "org-bluebird-wellness")
COMPLETED = 30
FAILED = "art-20260304-113000-fa11ed-live"
IN_FLIGHT = "art-20260304-115500-1nf119-live"
#: every event the store holds (see build)
TOTAL = COMPLETED * 6 + 6 + 2 + 2 + 3 + 1
#: an artifact id or an organisation id cut with … (outside the free text of an
#: artifact_received's detail, "via whatsapp, coach …, org …", which may be cut)
CUT_ID = re.compile(r"^(?!.*via whatsapp).*(art|org)-[\w-]*…", re.M)


def aid(i: int) -> str:
    return f"art-20260304-{i:06d}-85b72d-live"


def build(root: Path) -> None:
    """30 completed artifacts (one every 5 minutes before NOW), one failed at claims
    extraction and retried by alice (the retry failed too), one in flight at
    transcription, a circuit breaker opening, a budget exceeded and a rate limit."""
    from voicepipe_obs import Recorder

    rec = Recorder(root, strict=True, flush_interval=60, recover=False)

    def run(ctx: dict[str, Any], stage: str, start: dt.datetime, ms: float, **fields: Any) -> dt.datetime:
        from voicepipe_obs.events import STAGE_EVENTS

        started, done, failed = STAGE_EVENTS[stage]
        end = start + dt.timedelta(milliseconds=ms)
        rec.emit(started, timestamp=start, stage_started_at=start, **ctx)
        etype = failed if "error_code" in fields else done
        rec.emit(
            etype,
            timestamp=end,
            stage_started_at=start,
            stage_completed_at=end,
            duration_ms=ms,
            **ctx,
            **fields,
        )
        return end

    def received(artifact_id: str, org: str, ts: dt.datetime) -> dict[str, Any]:
        ctx = {"artifact_id": artifact_id, "organization_id": org, "coach_user_id": "coach-northwind-06"}
        rec.emit(
            "artifact_received",
            timestamp=ts,
            source_channel="whatsapp",
            voice_note_id="vn-311f82a21cad",
            **ctx,
        )
        return ctx

    for i in range(COMPLETED):
        t0 = NOW - dt.timedelta(minutes=5 * (i + 2))
        c = received(aid(i), ORGS[i % 2], t0)
        t = run(c, "transcription", t0 + dt.timedelta(seconds=1), 5200, confidence_score=0.94, ai_cost=0.006)
        t = run(c, "claims_extraction", t, 3800, claim_count=4, ai_cost=0.012)
        rec.emit("artifact_completed", timestamp=t + dt.timedelta(seconds=1), **c)

    t0 = NOW - dt.timedelta(minutes=30)
    c = received(FAILED, ORGS[0], t0)
    t = run(c, "transcription", t0 + dt.timedelta(seconds=1), 2000)
    message = "gpt-4o-mini: output is not valid JSON: Expecting ',' delimiter: line 14 column 5 " * 2
    t = run(c, "claims_extraction", t, 6000, error_code="LLMOutputError", error_message=message)
    rec.emit("artifact_failed", timestamp=t, error_code="LLMOutputError", error_message=message, **c)
    rc = {**c, "retry_attempt": 1}
    rec.emit(
        "retry_initiated",
        timestamp=NOW - dt.timedelta(minutes=2),
        pipeline_stage="claims_extraction",
        actor="alice",
        **rc,
    )
    rec.emit(
        "retry_failed",
        timestamp=NOW - dt.timedelta(minutes=1),
        pipeline_stage="claims_extraction",
        actor="alice",
        error_code="LLMOutputError",
        **rc,
    )

    c = received(IN_FLIGHT, ORGS[1], NOW - dt.timedelta(minutes=5))
    rec.emit(
        "transcription_started",
        timestamp=NOW - dt.timedelta(minutes=4),
        stage_started_at=NOW - dt.timedelta(minutes=4),
        **c,
    )

    rec.emit(
        "circuit_breaker_opened",
        timestamp=NOW - dt.timedelta(minutes=40),
        attributes={"dependency": "openai-chat", "consecutive_failures": "5"},
    )
    rec.emit(
        "budget_exceeded",
        timestamp=NOW - dt.timedelta(minutes=45),
        organization_id=ORGS[0],
        attributes={"period": "2026-03-04", "budget_usd": "0.50", "spent_usd": "0.5100"},
    )
    rec.emit(
        "rate_limit_hit",
        timestamp=NOW - dt.timedelta(minutes=50),
        pipeline_stage="claims_extraction",
        ai_model="gpt-4o",
        **received(aid(99), ORGS[1], NOW - dt.timedelta(minutes=50)),
    )
    rec.flush()
    rec.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store, with the alerts a low failure-rate threshold raises at NOW."""
    from voicepipe_obs import alerts
    from voicepipe_obs.config import Settings

    root = tmp_path_factory.mktemp("layout") / "data"
    build(root)
    settings = Settings.model_validate(
        {
            "alerts": {
                "failure_rate": {"warning": 0.01, "critical": 0.9, "min_sample": 1, "window_minutes": 600},
                **{r: {"enabled": False} for r in alerts.RULES if r != "failure_rate"},
            }
        }
    )
    alerts.run_check(root, settings, now=NOW, notify=False)
    return root


def run(runner: Any, root: Path, *args: str, utc: bool = True) -> Any:
    argv = ["--data", str(root), "report", "--now", NOW_ISO, *args, *(["--utc"] if utc else [])]
    return runner.invoke(main, argv, catch_exceptions=False)


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    return str(result.stdout)


# ------------------------------------------------------- 1. exports are complete


def test_csv_without_limit_exports_every_event(runner: Any, store: Path) -> None:
    result = run(runner, store, "events", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(ok(result))))
    assert len(rows) == TOTAL == reports.count_events(store, now=NOW)
    assert len({r["event_id"] for r in rows}) == TOTAL
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)  # newest first, like the table
    assert result.stderr == ""


def test_json_without_limit_is_complete_and_says_so(runner: Any, store: Path) -> None:
    data = json.loads(ok(run(runner, store, "events", "--format", "json")))
    assert len(data["rows"]) == data["total"] == TOTAL and data["truncated"] is False
    assert data["filters"]["errors_only"] is False


def test_an_explicit_limit_says_what_it_left_out(runner: Any, store: Path) -> None:
    result = run(runner, store, "events", "--format", "csv", "--limit", "10")
    assert len(list(csv.DictReader(io.StringIO(ok(result))))) == 10
    note = result.stderr.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("voicepipe: note: ") and f"of {TOTAL}" in note[0]
    data = json.loads(ok(run(runner, store, "events", "--format", "json", "--limit", "10")))
    assert (len(data["rows"]), data["total"], data["truncated"]) == (10, TOTAL, True)


def test_the_table_footer_says_more_exist_and_pages_continue(runner: Any, store: Path) -> None:
    out = ok(run(runner, store, "events"))
    assert f"events 1–50 of {TOTAL}" in out and "--page 2" in out and "--format csv" in out
    everything = json.loads(ok(run(runner, store, "events", "--format", "json")))["rows"]
    page2 = json.loads(ok(run(runner, store, "events", "--format", "json", "--page", "2")))
    assert [r["event_id"] for r in page2["rows"]] == [r["event_id"] for r in everything[50:100]]
    assert page2["truncated"] is True and page2["offset"] == 50
    small = ok(run(runner, store, "events", "--artifact", FAILED))
    assert "8 events (newest first; times in UTC)" in small  # complete: says nothing more


def test_the_export_is_streamed_in_batches(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "_LOG_BATCH", 7)
    rows = reports.iter_events(store, now=NOW)
    assert isinstance(rows, Iterator)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)) == TOTAL


# ---------------------------------------------------- 2. the width of the output


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_width_is_the_terminal_s_on_a_tty_else_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert render.output_width(_Stream(tty=True)) == 200
    assert render.output_width(_Stream(tty=False)) == 100  # a pipe or a file: stable
    assert render.output_width(_Stream(tty=False), 150) == 150  # --width
    monkeypatch.setenv("COLUMNS", "20")
    assert render.output_width(_Stream(tty=True)) == render.MIN_WIDTH
    from voicepipe_obs import cli_report

    monkeypatch.setenv("COLUMNS", "173")
    monkeypatch.setattr(sys, "stdout", _Stream(tty=True))
    assert cli_report._style(True).width == 173


REPORTS = [
    ["dashboard"],
    ["pipeline"],
    ["artifacts", "--limit", "200"],
    ["artifacts", "--expanded", "--status", "failed"],
    ["artifact", FAILED],
    ["metrics"],
    ["events", "--limit", "200"],
    ["alerts"],
    ["retries"],
]


@pytest.mark.parametrize("width", [60, 80, 100, 200])
@pytest.mark.parametrize("args", REPORTS, ids=lambda a: "-".join(a[:2]))
def test_every_report_fits_the_width_and_never_cuts_an_id(
    runner: Any, store: Path, args: list[str], width: int
) -> None:
    out = ok(run(runner, store, *args, "--width", str(width)))
    # a retry command's `--data <root>` is one unbreakable unit whose length is
    # pytest's temporary path (longer once pytest's run counter reaches 3 digits):
    # measured as if the root were /srv/vp
    too_wide = [line for line in out.splitlines() if len(line.replace(str(store), "/srv/vp")) > width]
    assert not too_wide, too_wide
    assert not CUT_ID.search(out), CUT_ID.search(out)


def test_a_wide_terminal_gets_the_full_artifact_grid(runner: Any, store: Path) -> None:
    wide = ok(run(runner, store, "artifacts", "--width", "200"))
    header = wide.splitlines()[1].split()
    for column in ("Source", "Coach", "Org", "Claims", "Disambig.", "Latency", "Cost", "Created", "Action"):
        assert column in header
    assert "hidden" not in wide and ORGS[0] in wide
    narrow = ok(run(runner, store, "artifacts"))  # 100 columns: hides columns, cuts no id
    assert "(hidden to fit 100 columns: Source, Coach" in narrow and ORGS[0] in narrow


def test_dashboard_and_metrics_fit_80_columns(runner: Any, store: Path) -> None:
    for args in (["dashboard"], ["metrics"]):
        out = ok(run(runner, store, *args, "--width", "80"))
        assert max(len(line) for line in out.splitlines()) <= 80
        assert "┌" in out
    flow = ok(run(runner, store, "dashboard", "--width", "60"))
    assert "[Claims Extraction] →\n" in flow  # the flow graph continues on the next line


# ------------------------------------------------------------ 3. ids are never cut


def test_table_cuts_descriptive_columns_never_ids() -> None:
    long_id = "art-20261128-185915-85b72d-live-and-some-more"  # longer than max_col
    out = render.table(
        [[long_id, "x" * 80, "org-northwind-athletics"]],
        ["Artifact", "Message", "Org"],
        width=100,
        ids=[0, 2],
    )
    assert long_id in out and "org-northwind-athletics" in out and "x…" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    fitted = render.fit_table(
        [[long_id, "x" * 80, "org-northwind-athletics"]], ["Artifact", "Message", "Org"], width=60, ids=[0, 2]
    )
    assert long_id in fitted.text and "org-northwind-athletics" in fitted.text
    assert fitted.moved and max(len(line) for line in fitted.text.splitlines()) <= 60


def test_retries_and_the_pipeline_keep_artifact_ids_whole(runner: Any, store: Path) -> None:
    for width in ("100", "60"):
        assert FAILED in ok(run(runner, store, "retries", "--width", width))
        pipeline = ok(run(runner, store, "pipeline", "--stage", "transcription", "--width", width))
        assert IN_FLIGHT in pipeline
        assert FAILED in ok(run(runner, store, "pipeline", "--stage", "claims_extraction", "--width", width))


@pytest.mark.parametrize("width", [60, 100])
def test_a_long_alert_summary_never_cuts_the_alert_id(width: int) -> None:
    row = {
        "alert_id": "b687829ee3",
        "rule": "latency",
        "scope": "org:org-northwind-athletics",
        "severity": "warning",
        "status": "active",
        "acknowledged_by": None,
        "raised_at": NOW,
        "summary": "end-to-end latency 7636.5 s over the last 30 min is 466.9× the 7-day daily average "
        "16.4 s, measured over 12 artifacts completed in the window (threshold 2.0×)",
    }
    data = {"generated_at": NOW, "history": False, "alert_log_present": True, "rows": [row]}
    out = render.render_alerts(data, Style(tz=UTC, width=width))
    assert "(id b687829ee3)" in out
    assert max(len(line) for line in out.splitlines()) <= width
    assert "1 alert" in out.splitlines() and "1 alerts" not in out


def test_real_alert_ids_survive_in_the_dashboard_and_alerts(runner: Any, store: Path) -> None:
    ids = [r["alert_id"] for r in json.loads(ok(run(runner, store, "alerts", "--format", "json")))["rows"]]
    assert ids
    for args in (["alerts"], ["dashboard"]):
        out = ok(run(runner, store, *args, "--width", "60"))
        assert all(f"(id {i})" in out for i in ids)


# ----------------------------------------------------- 4. the event log's columns


def test_the_event_log_shows_org_duration_and_the_event_id(runner: Any, store: Path) -> None:
    wide = ok(run(runner, store, "events", "--limit", "5", "--width", "200"))
    assert wide.splitlines()[0].split() == [
        "Time", "Event", "Stage", "Artifact", "Org", "Duration", "Event", "ID", "Details",
    ]  # fmt: skip
    rows = json.loads(ok(run(runner, store, "events", "--limit", "20", "--format", "json")))["rows"]
    for width in ("100", "60"):
        out = ok(run(runner, store, "events", "--limit", "20", "--width", width))
        assert all(r["event_id"] in out for r in rows)  # to paste into `report event ID`
        assert ORGS[0] in out
    # the id shown is the one `report event` takes
    assert ok(run(runner, store, "event", rows[0]["event_id"])).startswith(f"Event {rows[0]['event_id']}")


def test_breaker_budget_and_rate_limit_rows_have_details(runner: Any, store: Path) -> None:
    data = json.loads(
        ok(
            run(
                runner,
                store,
                "events",
                "--format",
                "json",
                *(
                    "--type",
                    "circuit_breaker_opened",
                    "--type",
                    "budget_exceeded",
                    "--type",
                    "rate_limit_hit",
                ),
            )
        )
    )
    detail = {r["event_type"]: r["detail"] for r in data["rows"]}
    assert "dependency=openai-chat" in detail["circuit_breaker_opened"]
    assert "budget_usd=0.50" in detail["budget_exceeded"] and "spent_usd=0.5100" in detail["budget_exceeded"]
    assert "gpt-4o" in detail["rate_limit_hit"]
    table = ok(run(runner, store, "events", "--type", "circuit_breaker_opened", "--width", "200"))
    assert "dependency=openai-chat" in table


# ------------------------------------------------ 5. one definition of a failure


def test_errors_only_keeps_exactly_what_the_log_marks_as_a_failure(runner: Any, store: Path) -> None:
    every = json.loads(ok(run(runner, store, "events", "--format", "json")))["rows"]
    marked = {r["event_id"] for r in every if r["kind"] == "failure" or r["error_code"]}
    errors = json.loads(ok(run(runner, store, "events", "--errors-only", "--format", "json")))["rows"]
    assert {r["event_id"] for r in errors} == marked
    assert {"circuit_breaker_opened", "budget_exceeded"} <= {r["event_type"] for r in errors}
    assert {"circuit_breaker_opened", "budget_exceeded", "artifact_failed"} <= reports.LOG_FAILURE_TYPES


# ------------------------------------------------------------------- 6. assorted


def test_a_page_past_the_end_says_so(runner: Any, store: Path) -> None:
    result = run(
        runner, store, "artifacts", "--since", "7d", "--page", "99", "--limit", "200", "--format", "json"
    )
    data = json.loads(ok(result))
    assert data["rows"] == [] and data["first"] == data["last"] == 0 and data["past_end"] is True
    assert "page 99 is past the end" in result.stderr and "--page 1" in result.stderr
    table = ok(run(runner, store, "artifacts", "--since", "7d", "--page", "99"))
    assert "page 99 is past the end" in table


@pytest.mark.parametrize(
    "args",
    [
        ["metrics", "--org", "org-northwind-athletic"],
        ["artifacts", "--org", "org-northwind-athletic"],
        ["events", "--org", "org-northwind-athletic"],
        ["alerts", "--org", "org-northwind-athletic"],
        ["retries", "--org", "org-northwind-athletic"],
    ],
    ids=lambda a: a[0],
)
def test_an_unknown_organisation_is_an_error_with_a_suggestion(
    runner: Any, store: Path, args: list[str]
) -> None:
    for fmt in ("table", "json"):
        result = run(runner, store, *args, "--format", fmt)
        assert result.exit_code == 1 and result.stdout == ""
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("voicepipe: error: no organisation 'org-northwind-athletic'")
        assert "did you mean 'org-northwind-athletics'?" in line


@pytest.mark.parametrize(
    "args",
    [
        ["retries", "nope"],
        ["events", "--artifact", "nope"],
        ["events", "--artifact", "nope", "--format", "csv"],
    ],
)
def test_an_unknown_artifact_is_an_error(runner: Any, store: Path, args: list[str]) -> None:
    result = run(runner, store, *args)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("voicepipe: error: no events for artifact 'nope'")


def test_known_ids_with_nothing_to_show_are_not_errors(runner: Any, store: Path) -> None:
    assert "no retries recorded" in ok(run(runner, store, "retries", aid(3)))
    assert "no artifacts for organisation" in ok(
        run(runner, store, "artifacts", "--org", ORGS[0], "--since", "2026-01-01", "--until", "2026-01-02")
    )


def test_an_unknown_rule_is_a_usage_error_with_a_suggestion(runner: Any, store: Path) -> None:
    result = run(runner, store, "alerts", "--rule", "failure_rat")
    assert result.exit_code == 2
    assert "unknown rule 'failure_rat' (did you mean 'failure_rate'?)" in result.stderr
    lines = ok(run(runner, store, "alerts", "--rule", "latency")).strip().splitlines()
    assert lines[-2:] == ["no active alerts", "last check 2026-03-04 12:00: WARNING (2 active alerts)"]


def test_sql_shows_values_as_duckdb_returns_them(runner: Any, store: Path) -> None:
    result = runner.invoke(
        main, ["--data", str(store), "sql", "SELECT 28180213.0::DOUBLE AS big, 0.1 + 0.2 AS x"]
    )
    out = ok(result)
    assert "28180213.0" in out and "2.81802e+07" not in out


@pytest.mark.parametrize(
    ("argv", "fragment", "command"),
    [
        (["report", "bogus"], "No such command 'bogus'", "voicepipe report"),
        (["report", "events", "--limit", "0"], "Invalid value for '--limit'", "voicepipe report events"),
        (["--bogus"], "No such option '--bogus'", "voicepipe"),
        (["report", "artifact"], "Missing argument 'ARTIFACT_ID'", "voicepipe report artifact"),
        (["report", "events", "--since", "yesterday-ish"], "invalid time 'yesterday-ish'", None),
        # an option without its value: click's parser raises these without a context
        (["report", "events", "--type"], "Option '--type' requires an argument", "voicepipe report events"),
        (["alerts", "ack", "x", "--by"], "Option '--by' requires an argument", "voicepipe alerts ack"),
        (["config", "show", "--format"], "Option '--format' requires an argument", "voicepipe config show"),
        (["report", "--now"], "Option '--now' requires an argument", "voicepipe report"),
        (["cleanup", "--wait"], "Option '--wait' requires an argument", "voicepipe cleanup"),
        (["--data"], "Option '--data' requires an argument", "voicepipe"),
    ],
)
def test_usage_errors_are_one_line(
    runner: Any, store: Path, argv: list[str], fragment: str, command: str | None
) -> None:
    result = runner.invoke(main, ["--data", str(store), *argv])
    assert (result.exit_code, result.stdout) == (2, "")
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("voicepipe: error: ") and fragment in line
    assert "Usage:" not in result.stderr
    if command is not None:
        assert line.endswith(f"see `{command} --help`")


def test_timeline_marks_differ_by_kind_without_colour(runner: Any, store: Path) -> None:
    out = ok(run(runner, store, "artifact", FAILED))
    assert "✗ claims_extraction_failed" in out and "✗ artifact_failed" in out
    assert "✓ transcription_completed" in out and "● transcription_started" in out
    assert "● artifact_received" in out and "✗ retry_failed" in out


@pytest.mark.timeout(60)
def test_dashboard_watch_json_writes_one_object_per_line(store: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    argv = [
        "--data",
        str(store),
        "report",
        "--now",
        NOW_ISO,
        "dashboard",
        "--watch",
        "0.5",
        "--format",
        "json",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from voicepipe_obs.cli import run; run()", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        for line in lines:
            frame = json.loads(line)
            assert frame["cards"]["active_artifacts"] >= 1 and "recent_events" in frame
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ 7. time zones


@pytest.fixture
def auckland() -> Iterator[None]:
    """The process's local time zone is New Zealand (UTC+13 in March)."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "NZST-12NZDT,M9.5.0,M4.1.0/3"  # POSIX rules: no tz database needed
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _since(runner: Any, store: Path, value: str, utc: bool) -> str:
    data = json.loads(ok(run(runner, store, "artifacts", "--since", value, "--format", "json", utc=utc)))
    return str(data["filters"]["since"])


def test_times_typed_in_are_read_in_the_zone_the_tables_show(
    runner: Any, store: Path, auckland: None
) -> None:
    # NOW is 2026-03-05 01:00 in Auckland: "today" began there at 2026-03-04 11:00 UTC
    assert _since(runner, store, "today", utc=False) == "2026-03-04T11:00:00Z"
    assert _since(runner, store, "yesterday", utc=False) == "2026-03-03T11:00:00Z"
    assert _since(runner, store, "2026-03-04T08:00", utc=False) == "2026-03-03T19:00:00Z"
    assert _since(runner, store, "today", utc=True) == "2026-03-04T00:00:00Z"
    assert _since(runner, store, "2026-03-04T08:00", utc=True) == "2026-03-04T08:00:00Z"
    assert _since(runner, store, "2026-03-04T08:00Z", utc=False) == "2026-03-04T08:00:00Z"  # an offset wins
    header = ok(run(runner, store, "artifacts", utc=False)).splitlines()[0]
    assert header.endswith("(local time, NZDT)")
    footer = ok(run(runner, store, "events", "--artifact", FAILED, utc=False))
    assert "times in local time, NZDT" in footer


def test_timeparse_reads_naive_values_in_the_given_zone(auckland: None) -> None:
    from voicepipe_obs.timeparse import parse_since

    assert parse_since("today", NOW) == dt.datetime(2026, 3, 4, tzinfo=UTC)  # the default stays UTC
    assert parse_since("today", NOW, None) == dt.datetime(2026, 3, 4, 11, tzinfo=UTC)
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert parse_since("2026-03-04", NOW, berlin) == dt.datetime(2026, 3, 3, 23, tzinfo=UTC)


# ------------------------------------- the artifact grid with the demo's live ids


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real demo data: a day of history plus live artifacts (31-character
    ``…-live`` ids, some left in flight: a ``transcribing`` status)."""
    from voicepipe_obs._examples.demo import run_demo

    root = tmp_path_factory.mktemp("demo") / "data"
    run_demo(root, days=1, per_day=40, live=5, in_flight=2, seed=7)
    return root


#: what the grid hides at each width, with the demo's ids (None: nothing)
DEMO_HIDDEN = {
    140: None,
    100: "Source, Coach, Claims, Disambig., Cost",
    80: "Source, Coach, Claims, Disambig., Latency, Cost, Created",
}


def test_the_demo_grid_at_140_columns_shows_source(runner: Any, demo: Path) -> None:
    """140 columns show every column, Source included, even with the live ids and
    an in-flight status on the page: Coach is cut at its start (its end, where coach
    ids differ, stays) rather than a column hidden. 100 and 80 columns hide columns
    whole, as before. Ids are never cut."""
    for width, hidden in DEMO_HIDDEN.items():
        argv = ["--data", str(demo), "report", "artifacts", "--utc", "--limit", "12", "--width", str(width)]
        out = ok(runner.invoke(main, argv, catch_exceptions=False))
        rows = json.loads(ok(runner.invoke(main, [*argv, "--format", "json"], catch_exceptions=False)))[
            "rows"
        ]
        assert any(r["artifact_id"].endswith("-live") and len(r["artifact_id"]) == 31 for r in rows)
        assert any(r["status"] == "transcribing" for r in rows)
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= width, width
        for r in rows:  # every id whole, on its row
            assert any(
                line.startswith(r["artifact_id"] + " ") and r["organization_id"] in line for line in lines
            )
        if hidden is None:
            assert lines[1].split() == " ".join(render.ARTIFACT_HEADERS).split(), out
            assert "hidden" not in out
            coach = lines[1].index("Coach")
            for r in rows:
                line = next(line for line in lines if line.startswith(r["artifact_id"] + " "))
                cell = line[coach:].split()[0]
                whole = r["coach_user_id"]
                assert cell == whole or (cell.startswith("…") and whole.endswith(cell[1:])), (cell, whole)
                assert len(cell) >= render.COACH_MIN
        else:
            assert " ".join(out.split()).count(f"(hidden to fit {width} columns: {hidden};") == 1, out
            assert "…" not in out  # nothing cut: columns go whole
