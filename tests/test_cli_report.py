"""`voicepipe report ...` and `voicepipe sql` through click's CliRunner (and, for
--follow and --watch, as real subprocesses) on the fixed dataset of
test_reports.py with a frozen clock.

Table output is compared with golden files in tests/golden/; regenerate them with
``VOICEPIPE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_cli_report.py`` and review
the diff.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from test_reports import NOW, build_dataset
from voicepipe_obs.cli import main

GOLDEN = Path(__file__).parent / "golden"
NOW_ISO = NOW.isoformat()


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report") / "data"
    build_dataset(root)
    return root


def run(runner: Any, root: Path, *args: str, utc: bool = True) -> Any:
    argv = ["--data", str(root), "report", "--now", NOW_ISO, *args]
    if utc:
        argv.append("--utc")
    return runner.invoke(main, argv, catch_exceptions=False)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("VOICEPIPE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}: run with VOICEPIPE_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from {path}"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------ golden tables

TABLE_CASES = {
    "dashboard": ["dashboard"],
    "pipeline": ["pipeline"],
    "pipeline_claims": ["pipeline", "--stage", "claims_extraction"],
    "artifacts": ["artifacts", "--since", "7d"],
    "artifacts_collapsed": ["artifacts", "--since", "7d", "--collapsed"],
    "artifacts_expanded": ["artifacts", "--since", "24h", "--expanded", "--limit", "2"],
    "artifacts_expanded_failed": ["artifacts", "--since", "24h", "--expanded", "--status", "failed"],
    "artifact_a-001": ["artifact", "a-001"],
    "artifact_a-002": ["artifact", "a-002"],
    "artifact_a-005": ["artifact", "a-005"],
    "metrics_24h": ["metrics", "--range", "24h"],
    "metrics_7d": ["metrics", "--range", "7d"],
    "metrics_1h": ["metrics", "--range", "1h"],
    "events": ["events", "--limit", "15"],
    "events_errors": ["events", "--errors-only"],
    "alerts": ["alerts"],
    "alerts_history": ["alerts", "--history"],
    "retries": ["retries"],
}


@pytest.mark.parametrize("name", sorted(TABLE_CASES))
def test_table_output_matches_golden_and_fits_100_columns(
    runner: Any, store_root: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(store_root.parent)  # `--data data`: suggested commands carry a stable path
    result = run(runner, Path(store_root.name), *TABLE_CASES[name])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # not a TTY, and NO_COLOR is set
    assert max(len(line) for line in out.splitlines()) <= 100
    # the event log shows event ids, which differ from run to run: same-width placeholders
    check_golden(name, re.sub(r"\b[0-9a-f]{16}[0-9]{12}\b", "<event_id>".ljust(28, "."), out))


def test_single_event_golden(runner: Any, store_root: Path) -> None:
    listing = json.loads(run(runner, store_root, "events", "--artifact", "a-001", "--format", "json").stdout)
    ev = next(r for r in listing["rows"] if r["event_type"] == "transcription_completed")
    result = run(runner, store_root, "event", ev["event_id"])
    assert result.exit_code == 0, result.stderr
    check_golden("event", result.stdout.replace(ev["event_id"], "<event_id>"))
    data = json.loads(run(runner, store_root, "event", ev["event_id"], "--format", "json").stdout)
    assert data["confidence_score"] == 0.94 and data["ai_model"] == "whisper-1"
    assert data["transcript_word_count"] == 120 and data["duration_ms"] == 5200.0
    assert data["timestamp"] == "2026-11-28T09:15:07.200000Z"
    rows = list(
        csv.DictReader(
            io.StringIO(run(runner, store_root, "event", ev["event_id"], "--format", "csv").stdout)
        )
    )
    assert rows[0]["event_id"] == ev["event_id"] and rows[0]["ai_model"] == "whisper-1"


# -------------------------------------------------------------- every format

ALL_REPORTS = [
    ["dashboard"],
    ["pipeline"],
    ["artifacts"],
    ["artifact", "a-001"],
    ["metrics"],
    ["events"],
    ["alerts"],
    ["retries"],
]


@pytest.mark.parametrize("args", ALL_REPORTS, ids=lambda a: a[0])
@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_every_report_in_every_format(runner: Any, store_root: Path, args: list[str], fmt: str) -> None:
    result = run(runner, store_root, *args, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    if fmt == "json":
        json.loads(result.stdout)
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(result.stdout)))
        assert rows and all(len(r) == len(rows[0]) for r in rows)


def test_dashboard_json_numbers(runner: Any, store_root: Path) -> None:
    data = json.loads(run(runner, store_root, "dashboard", "--format", "json").stdout)
    cards = data["cards"]
    assert cards["active_artifacts"] == 2  # a-003 transcribing, a-006 at claims extraction
    assert cards["completed_today"] == 2  # a-001, a-005
    assert cards["completed_yesterday_same_time"] == 0  # a-004 completed at 15:00, after 12:00
    assert cards["completed_change"] is None  # nothing to divide by: NULL, not 0
    assert cards["failed_today"] == 1
    assert cards["failure_rate_today"] == pytest.approx(1 / 3)
    assert cards["cost_today"] == pytest.approx(0.006 + 0.012 + 0.02 + 0.004 + 0.008 + 0.01 + 0.02 + 0.005)
    # a-001: 21 s; a-005: received yesterday 16:00, completed today 08:01
    assert cards["avg_end_to_end_latency_ms_today"] == pytest.approx((21_000 + 57_660_000) / 2)
    assert cards["ai_service_status"] == "closed"
    assert cards["ai_service_changed_at"] == "2026-11-28T11:40:00Z"
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["transcription"]["queue_depth"] == 1 and stages["claims_extraction"]["queue_depth"] == 1
    # claims extraction in the last 24 h: a-001, a-005 done, a-002 failed (a-004 at 15:00 yesterday is in)
    assert stages["claims_extraction"]["failure_rate"] == pytest.approx(1 / 4)
    assert stages["claims_extraction"]["health"] == "yellow"  # 25% > 10% warning, not > 25% critical
    assert stages["entity_resolution"]["health"] == "green"
    assert len(data["recent_events"]) == 20
    assert data["recent_events"][0]["event_type"] == "claims_extraction_started"
    csv_rows = list(
        csv.DictReader(io.StringIO(run(runner, store_root, "dashboard", "--format", "csv").stdout))
    )
    assert {"section": "cards", "key": "failed_today", "value": "1"} in csv_rows


def test_artifacts_json_and_csv_numbers(runner: Any, store_root: Path) -> None:
    data = json.loads(run(runner, store_root, "artifacts", "--since", "30d", "--format", "json").stdout)
    assert data["total"] == 7 and data["next_page"] is None
    by_id = {r["artifact_id"]: r for r in data["rows"]}
    assert by_id["a-001"]["end_to_end_latency_ms"] == 21_000
    assert by_id["a-001"]["total_ai_cost"] == pytest.approx(0.038)
    # one entity flagged, then resolved by bob: none left to review
    assert by_id["a-001"]["claim_count"] == 4 and by_id["a-001"]["disambiguation_count"] == 0
    assert by_id["a-002"]["action"] == "retry" and by_id["a-001"]["action"] is None
    assert by_id["a-003"]["total_ai_cost"] is None  # no cost recorded: NULL, not 0
    text = run(runner, store_root, "artifacts", "--since", "30d", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["artifact_id"] for r in rows] == [r["artifact_id"] for r in data["rows"]]
    assert rows[0]["received_at"].endswith("Z")
    assert next(r for r in rows if r["artifact_id"] == "a-003")["total_ai_cost"] == ""


def test_metrics_json_numbers(runner: Any, store_root: Path) -> None:
    data = json.loads(run(runner, store_root, "metrics", "--range", "24h", "--format", "json").stdout)
    cards = data["cards"]
    # since 2026-11-27 13:00: received a-004, a-005, a-001, a-002, a-003, a-006
    assert cards["artifacts_received"] == 6
    assert cards["artifacts_processed"] == 5  # completed a-004, a-005, a-001; failed a-005 (yesterday), a-002
    assert cards["completion_rate"] == pytest.approx(3 / 5)
    assert cards["disambiguation_backlog"] == 2  # a-007's 2 (a-001's 1 was resolved by a reviewer)
    assert len(data["series"]) == 24 and data["bucket_seconds"] == 3600
    assert sum(b["artifacts_completed"] for b in data["series"]) == 3
    assert sum(h["count"] for h in data["confidence_histogram"]) == 5
    orgs = {o["organization_id"]: o for o in data["organizations"]}
    assert orgs["org-b"]["artifacts_received"] == 3 and orgs["org-a"]["artifacts_failed"] == 1
    text = run(runner, store_root, "metrics", "--range", "24h", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 24 and sum(int(r["artifacts_received"]) for r in rows) == 6
    assert list(rows[0]) == list(data["series"][0])  # every field of the JSON series


# ----------------------------------------------------- filters and pagination


def _ids(runner: Any, root: Path, *args: str) -> list[str]:
    result = run(runner, root, "artifacts", "--since", "30d", *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return [r["artifact_id"] for r in json.loads(result.stdout)["rows"]]


def test_artifact_filters(runner: Any, store_root: Path) -> None:
    assert _ids(runner, store_root, "--status", "failed") == ["a-002"]
    assert _ids(runner, store_root, "--org", "org-b") == ["a-003", "a-005", "a-004"]
    assert sorted(_ids(runner, store_root, "--channel", "app")) == ["a-002", "a-004", "a-006"]
    assert _ids(runner, store_root, "--search", "a-00", "--sort", "id", "--asc") == [
        f"a-00{i}" for i in range(1, 8)
    ]
    assert _ids(runner, store_root, "--search", "b") == []
    assert _ids(runner, store_root, "--sort", "cost", "--limit", "1") == ["a-004"]  # $0.045
    assert _ids(runner, store_root, "--sort", "cost", "--asc", "--limit", "3") == ["a-002", "a-006", "a-007"]
    assert _ids(runner, store_root, "--since", "2026-11-27", "--until", "2026-11-28") == ["a-005", "a-004"]
    assert _ids(runner, store_root, "--sort", "latency", "--limit", "1") == ["a-005"]


def test_pagination_walks_every_artifact_once(runner: Any, store_root: Path) -> None:
    seen: list[str] = []
    page: int | None = 1
    while page is not None:
        result = run(
            runner,
            store_root,
            "artifacts",
            "--since",
            "30d",
            "--limit",
            "3",
            "--page",
            str(page),
            "--format",
            "json",
        )
        data = json.loads(result.stdout)
        seen += [r["artifact_id"] for r in data["rows"]]
        page = data["next_page"]
    assert sorted(seen) == [f"a-00{i}" for i in range(1, 8)] and len(seen) == 7
    table = run(runner, store_root, "artifacts", "--since", "30d", "--limit", "3").stdout
    assert "1–3 of 7 artifacts" in table and "next page: --page 2" in table
    result = run(runner, store_root, "artifacts", "--limit", "201")
    assert result.exit_code == 2


def test_event_filters(runner: Any, store_root: Path) -> None:
    def rows(*args: str) -> list[dict[str, Any]]:
        result = run(runner, store_root, "events", *args, "--format", "json")
        assert result.exit_code == 0, result.stderr
        return list(json.loads(result.stdout)["rows"])

    assert {r["event_type"] for r in rows("--type", "artifact_failed", "--type", "retry_initiated")} == {
        "artifact_failed",
        "retry_initiated",
    }
    assert len(rows("--type", "artifact_failed")) == 2
    errors = rows("--errors-only", "--limit", "100")
    assert {r["artifact_id"] for r in errors if r["artifact_id"]} == {"a-002", "a-005"}
    assert all(r["kind"] == "failure" or r["error_code"] or r["error_message"] for r in errors)
    a1 = rows("--artifact", "a-001", "--limit", "100")
    assert len(a1) == 11 and all(r["artifact_id"] == "a-001" for r in a1)
    times = [r["timestamp"] for r in a1]
    assert times == sorted(times, reverse=True)  # newest first
    assert {r["artifact_id"] for r in rows("--org", "org-b", "--limit", "100")} == {"a-003", "a-004", "a-005"}
    assert {r["pipeline_stage"] for r in rows("--stage", "confirmation")} == set()
    assert len(rows("--since", "2026-11-25", "--until", "2026-11-26", "--limit", "100")) == 10
    assert len(rows("--limit", "3")) == 3
    text = run(runner, store_root, "events", "--artifact", "a-002", "--format", "csv").stdout
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 6 and parsed[0]["event_type"] == "artifact_failed"


# --------------------------------------------------------------- hostile input

HOSTILE = [
    "' OR 1=1 --",
    "a-001' OR '1'='1",
    "../../../etc/passwd",
    "/etc/passwd",
    "'; DROP TABLE events; --",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_values_match_nothing(runner: Any, store_root: Path, value: str) -> None:
    before = _files(store_root)
    for args in (
        ["artifacts", "--since", "30d", "--search", value],
        ["artifacts", "--since", "30d", "--channel", value],
    ):
        result = run(runner, store_root, *args, "--format", "json")
        assert result.exit_code == 0, (args, result.stderr)
        assert json.loads(result.stdout)["rows"] == [], args
    for args in (  # an organisation or artifact id the store does not know is an error
        ["artifacts", "--since", "30d", "--org", value],
        ["events", "--org", value],
        ["events", "--artifact", value],
        ["retries", "--artifact", value],
    ):
        result = run(runner, store_root, *args, "--format", "json")
        assert result.exit_code == 1, (args, result.stderr)
        assert result.stdout == "" and result.stderr.startswith("voicepipe: error: no "), args
    assert run(runner, store_root, "artifact", value).exit_code == 1
    assert run(runner, store_root, "event", value).exit_code == 1
    assert _files(store_root) == before


def test_hostile_identifiers_and_long_values_are_refused(runner: Any, store_root: Path) -> None:
    long = "a" * 10_000
    for args in (
        ["artifacts", "--org", long],
        ["artifacts", "--search", long],
        ["events", "--artifact", long],
        ["artifact", long],
        ["events", "--type", "artifact_failed' OR 1=1 --"],
        ["artifacts", "--sort", "received_at; DROP TABLE events"],
        ["artifacts", "--status", "failed' OR '1'='1"],
        ["metrics", "--range", "1 day"],
    ):
        result = run(runner, store_root, *args)
        assert result.exit_code == 2, (args[:2], result.stdout[:200])
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    result = run(runner, store_root, "events", "--type", "artifact_faild")
    assert "did you mean 'artifact_failed'" in result.stderr


@pytest.mark.parametrize("value", ["yesterday'--", "2 hours", "12/11/2026", "7x"])
def test_bad_since_names_the_accepted_forms(runner: Any, store_root: Path, value: str) -> None:
    result = run(runner, store_root, "events", "--since", value)
    assert result.exit_code == 2
    assert "30m" in result.stderr and "2h" in result.stderr and "7d" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------- empty store, colour


@pytest.mark.parametrize("args", [*ALL_REPORTS, ["event", "x"], ["pipeline", "--format", "json"]], ids=str)
def test_empty_or_missing_store_is_a_friendly_error(runner: Any, root: Path, args: list[str]) -> None:
    for where in (root, root / "nope"):
        result = runner.invoke(main, ["--data", str(where), "report", *args])
        if args[0] == "alerts" and where == root:  # no alert log yet is not an error
            assert result.exit_code == 0 and "voicepipe check" in result.stdout
            continue
        assert result.exit_code == 1, result.stdout
        assert result.stdout == ""
        assert "voicepipe demo" in result.stderr and "VOICEPIPE_DATA" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_local_time_by_default(runner: Any, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        out = run(runner, store_root, "artifact", "a-001", utc=False).stdout
        utc_out = run(runner, store_root, "artifact", "a-001").stdout
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert "14:45:00 ● artifact_received" in out and "local time" in out
    assert "09:15:00 ● artifact_received" in utc_out and "(UTC)" in utc_out


def test_unknown_artifact_is_a_one_line_error(runner: Any, store_root: Path) -> None:
    result = run(runner, store_root, "artifact", "zzz")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("voicepipe: error: no events for artifact 'zzz'")
    assert "--search" in result.stderr


def test_expanded_and_collapsed_exclude_each_other(runner: Any, store_root: Path) -> None:
    assert run(runner, store_root, "artifacts", "--expanded", "--collapsed").exit_code == 2


# ------------------------------------------------------------------------ sql


def sql(runner: Any, root: Path, query: str, *args: str) -> Any:
    return runner.invoke(main, ["--data", str(root), "sql", query, *args], catch_exceptions=False)


def test_sql_reads_the_views(runner: Any, store_root: Path) -> None:
    result = sql(
        runner, store_root, "SELECT status, count(*) AS n FROM artifacts GROUP BY ALL ORDER BY status"
    )
    assert result.exit_code == 0, result.stderr
    assert "completed" in result.stdout and "(4 rows)" in result.stdout
    data = json.loads(sql(runner, store_root, "SELECT count(*) AS n FROM events", "--format", "json").stdout)
    assert data == [{"n": 60}]
    text = sql(runner, store_root, "SELECT artifact_id FROM artifacts ORDER BY 1", "--format", "csv").stdout
    assert text.splitlines() == ["artifact_id"] + [f"a-00{i}" for i in range(1, 8)]
    assert sql(runner, store_root, "SELECT * FROM snapshots_daily", "--format", "json").exit_code == 0
    assert sql(runner, store_root, "SELECT * FROM alerts", "--format", "json").exit_code == 0


def test_sql_table_says_which_zone_its_times_are_in(runner: Any, store_root: Path) -> None:
    """Times are shown without an offset, as in every report: the row count says in
    which zone (a result without times says nothing of zones)."""
    query = "SELECT TIMESTAMPTZ '2026-03-02 12:00:00+00' AS t"
    utc = sql(runner, store_root, query, "--utc").stdout.splitlines()
    assert utc[-2:] == ["2026-03-02 12:00:00", "(1 row; times in UTC)"]
    local = sql(runner, store_root, query).stdout.splitlines()[-1]
    assert local.startswith("(1 row; times in local time")
    assert sql(runner, store_root, "SELECT 1 AS x").stdout.splitlines()[-1] == "(1 row)"


@pytest.mark.parametrize(
    "query",
    [
        "COPY (SELECT * FROM events) TO '{out}/stolen.csv'",
        "COPY (SELECT 1) TO '{root}/inside.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_parquet('{out}/*.parquet')",
        "SELECT * FROM glob('/*')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "PRAGMA threads=1",
        "ATTACH '{out}/x.db' AS x",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; COPY (SELECT 1) TO '{out}/two.csv'",
        "DROP VIEW events",
    ],
)
def test_sql_is_locked_down(runner: Any, store_root: Path, tmp_path: Path, query: str) -> None:
    before = _files(store_root)
    result = sql(runner, store_root, query.format(out=tmp_path, root=store_root))
    assert result.exit_code == 2, result.stdout
    assert result.stderr.startswith("voicepipe: error: ")
    assert result.stdout == ""
    assert _files(store_root) == before
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.db"))


def test_sql_errors_are_one_line(runner: Any, store_root: Path) -> None:
    result = sql(runner, store_root, "SELECT nope FROM events")
    assert result.exit_code == 2 and "SQL error" in result.stderr and "Traceback" not in result.stderr
    assert sql(runner, store_root, "   ").exit_code == 2


@pytest.mark.parametrize("statement", ["INSTALL httpfs", "  install httpfs", "LOAD httpfs", "ATTACH 'x.db'"])
def test_sql_refusal_names_the_statement_as_written(runner: Any, store_root: Path, statement: str) -> None:
    result = sql(runner, store_root, statement)
    word = statement.split()[0].upper()
    assert result.exit_code == 2
    assert f"only read-only queries are allowed (got {word})" in result.stderr


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_sql_repeated_column_names_keep_every_value(runner: Any, store_root: Path, fmt: str) -> None:
    result = sql(runner, store_root, "SELECT 1 AS a, 2 AS a, 3 AS a_2, 4 AS b", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    expected = {"a": 1, "a_3": 2, "a_2": 3, "b": 4}  # a_2 is taken: the second `a` becomes a_3
    if fmt == "json":
        assert json.loads(result.stdout) == [expected]
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(result.stdout)))
        assert rows == [list(expected), [str(v) for v in expected.values()]]
    else:
        head, _, values = result.stdout.splitlines()[:3]
        assert head.split() == list(expected) and values.split() == ["1", "2", "3", "4"]
    assert "repeated column names made unique: a_3 (a)" in result.stderr


def test_sql_join_of_tables_sharing_column_names(runner: Any, store_root: Path) -> None:
    query = (
        "SELECT a.artifact_id, a.status, b.artifact_id, b.status FROM artifacts a "
        "JOIN artifacts b ON b.artifact_id = 'a-001' WHERE a.artifact_id = 'a-002'"
    )
    data = json.loads(sql(runner, store_root, query, "--format", "json").stdout)
    assert data == [
        {"artifact_id": "a-002", "status": "failed", "artifact_id_2": "a-001", "status_2": "completed"}
    ]


# ------------------------------------------------ suggested retry commands work


def _suggested_commands(text: str) -> list[str]:
    """Every `voicepipe ...` command a report printed, continuation lines joined."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        at = lines[i].find("voicepipe --")
        at = at if at >= 0 else lines[i].find("voicepipe retry")
        if at < 0:
            i += 1
            continue
        command = lines[i][at:]
        while command.endswith(" \\"):
            i += 1
            command = command[:-2] + " " + lines[i].strip()
        out.append(command)
        i += 1
    return out


RETRY_REPORTS = {
    "artifact": ["artifact", "a-002"],
    "expanded": ["artifacts", "--since", "7d", "--expanded", "--status", "failed"],
    "pipeline": ["pipeline", "--stage", "claims_extraction"],
}
EXAMPLE_APP = "voicepipe_obs._examples.voice_pipeline"


@pytest.fixture
def retry_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The report dataset at ``my data/vp`` (relative: a path with a space, not the
    default root), and the handler registry and default recorder reset after the
    retries ran."""
    from retry_apps import helpers

    monkeypatch.chdir(tmp_path)
    root = Path("my data") / "vp"
    build_dataset(tmp_path / root)
    yield root
    helpers.reset()


@pytest.mark.parametrize("how", ["config", "demo-root", "placeholder"])
@pytest.mark.parametrize("report", sorted(RETRY_REPORTS))
def test_suggested_retry_commands_work_when_pasted(
    runner: Any, retry_root: Path, tmp_path: Path, report: str, how: str
) -> None:
    """What `report artifact|artifacts --expanded|pipeline` prints runs as printed
    (shell-quoted, with the report's --data and --config, and --app unless retry.app
    names the module): here with --dry-run appended."""
    config = Path("conf dir") / "vp.toml"
    config.parent.mkdir()
    config.write_text(f'[retry]\napp = "{EXAMPLE_APP}"\n' if how == "config" else "")
    if how == "demo-root":  # what `voicepipe demo` leaves: its commands need the demo's app
        (retry_root / "_state").mkdir()
        (retry_root / "_state" / "demo.json").write_text('{"written_by": "voicepipe demo"}')
    argv = ["--data", str(retry_root), "--config", str(config), "report", "--now", NOW_ISO]
    result = runner.invoke(main, [*argv, *RETRY_REPORTS[report], "--utc"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    if report == "pipeline":  # the Action column is readable, the command under the table
        assert "voicepip…" not in result.stdout and "retry ↓" in result.stdout
    commands = _suggested_commands(result.stdout)
    assert commands and all(" a-002" in c for c in commands)
    for command in commands:
        words = shlex.split(command)
        assert words[:5] == ["voicepipe", "--data", str(retry_root), "--config", str(config)]
        if how == "config":
            assert "--app" not in words
        elif how == "demo-root":
            assert words[-2:] == ["--app", EXAMPLE_APP]
        else:
            assert words[-2:] == ["--app", "MODULE"]
            assert "MODULE: the module that registers your retry handlers" in result.stdout
            words[-1] = EXAMPLE_APP  # what the note asks the user to do
        ran = runner.invoke(main, [*words[1:], "--dry-run"], catch_exceptions=False)
        assert ran.exit_code == 0, (command, ran.stderr)
        assert ran.stdout.startswith("would retry a-002 [")
    data = json.loads(runner.invoke(main, [*argv, *RETRY_REPORTS[report], "--format", "json"]).stdout)
    assert data["retry_note"] is None if how != "placeholder" else data["retry_note"].startswith("MODULE")


def test_retry_commands_omit_data_when_the_root_was_not_given(
    runner: Any, retry_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root found by $VOICEPIPE_DATA is found again by the pasted command."""
    monkeypatch.setenv("VOICEPIPE_DATA", str(retry_root))
    result = runner.invoke(main, ["report", "--now", NOW_ISO, "artifact", "a-002"], catch_exceptions=False)
    assert _suggested_commands(result.stdout) == [
        "voicepipe retry a-002 --app MODULE",
        "voicepipe retry a-002 --full --app MODULE",
    ]


# ------------------------------------------------------------ empty pages, help


def test_a_page_past_the_end_names_the_last_page(runner: Any, store_root: Path) -> None:
    result = run(runner, store_root, "artifacts", "--since", "7d", "--limit", "2", "--page", "99")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == (
        "page 99 is past the end (7 artifacts, 2 per page): the last page is --page 4"
    )
    data = json.loads(
        run(runner, store_root, "artifacts", "--since", "7d", "--limit", "2", "--format", "json").stdout
    )
    assert data["last_page"] == 4 and data["next_page"] == 2


@pytest.mark.parametrize(
    ("args", "footer"),
    [
        (
            ["--org", "org-a", "--since", "2026-11-01", "--until", "2026-11-02"],
            "no artifacts for organisation org-a were received in this window",
        ),
        (
            ["--org", "org-a", "--status", "retrying"],
            "no artifacts for organisation org-a match these filters",
        ),
        (["--status", "retrying"], "no artifacts match these filters"),
        (["--since", "2026-11-01", "--until", "2026-11-02"], "no artifacts were received in this window"),
    ],
)
def test_an_empty_grid_says_why(runner: Any, store_root: Path, args: list[str], footer: str) -> None:
    result = run(runner, store_root, "artifacts", *args)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == footer
    assert "(of 0)" not in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["retry"],
        ["config", "show"],
        ["sql"],
        *(["report", name] for name in ("dashboard", "metrics", "events")),
    ],
    ids=" ".join,
)
def test_format_help_names_only_the_accepted_formats(runner: Any, command: list[str]) -> None:
    import click

    from voicepipe_obs.cli import LAZY_COMMANDS

    cmd: Any = main
    ctx = click.Context(main)
    for name in command:
        cmd = cmd.get_command(ctx, name)
    option = next(p for p in cmd.params if p.name == "fmt")
    accepted = set(option.type.choices)
    for fmt in ("table", "json", "csv"):
        assert (fmt in option.help) == (fmt in accepted), (command, option.help)
    assert LAZY_COMMANDS  # the lazy group loaded every command above


def test_metrics_range_help_matches_the_buckets(runner: Any) -> None:
    from voicepipe_obs.reports import RANGES

    result = runner.invoke(main, ["report", "metrics", "--help"])
    help_text = " ".join(result.stdout.split())
    assert RANGES["1h"][1].total_seconds() == 300 and "1h (5-minute buckets)" in help_text
    assert RANGES["6h"][1].total_seconds() == 1800 and "6h (30-minute)" in help_text
    assert "hourly buckets up to 24h" not in help_text


# ------------------------------------------------ metrics wording, machine output


def test_metrics_without_snapshots_are_exact_not_approximate(runner: Any, store_root: Path) -> None:
    """No daily snapshot: the 7d figures come from raw events, exactly, and the
    report does not mark them ≈ or say they need the raw events."""
    from voicepipe_obs import aggregate

    result = run(runner, store_root, "metrics", "--range", "7d")
    assert "computed from raw events" in result.stdout
    assert "≈" not in result.stdout and "need the raw events" not in result.stdout
    data = json.loads(run(runner, store_root, "metrics", "--range", "7d", "--format", "json").stdout)
    assert data["unavailable"] == [] and data["snapshot_buckets"] == 0
    start = dt.datetime.fromisoformat(data["start"].replace("Z", "+00:00"))
    exact = aggregate.window_metrics(store_root, start, NOW)[0]
    assert data["cards"]["p95_end_to_end_latency_ms"] == pytest.approx(exact["p95_end_to_end_latency_ms"])
    assert data["cards"]["avg_end_to_end_latency_ms"] == pytest.approx(exact["avg_end_to_end_latency_ms"])


def test_metrics_of_an_unknown_org_total_zero_cost(runner: Any, store_root: Path) -> None:
    from voicepipe_obs import reports
    from voicepipe_obs.render import Style, render_metrics

    data = reports.metrics(store_root, now=NOW, range_="24h", org="nope")  # the library: zeros
    assert data["cards"]["total_ai_cost"] == 0 and data["cards"]["artifacts_received"] == 0
    assert {b["total_ai_cost"] for b in data["series"]} == {0}
    assert "│ $0.00 " in render_metrics(data, Style(tz=dt.timezone.utc))
    result = run(runner, store_root, "metrics", "--org", "nope")  # the CLI: a misspelt org
    assert result.exit_code == 1 and "no organisation 'nope'" in result.stderr


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


@pytest.mark.parametrize("args", ALL_REPORTS, ids=lambda a: a[0])
def test_machine_output_carries_no_float_noise(runner: Any, store_root: Path, args: list[str]) -> None:
    data = json.loads(run(runner, store_root, *args, "--format", "json").stdout)
    for f in _floats(data):
        assert len(repr(f).lstrip("-").replace(".", "").lstrip("0").split("e")[0]) <= 12, f
    text = run(runner, store_root, *args, "--format", "csv").stdout
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            try:
                value = float(cell)
            except ValueError:
                continue
            assert value == float(f"{value:.12g}"), cell


def test_reports_round_machine_output_but_sql_does_not(runner: Any, store_root: Path) -> None:
    """The day's costs add up to 0.085 (not exactly, as a float sum); rates have 6
    decimals. Your own query's values are written as DuckDB returns them."""
    data = json.loads(run(runner, store_root, "dashboard", "--format", "json").stdout)
    assert data["cards"]["cost_today"] == 0.085
    assert data["cards"]["failure_rate_today"] == 0.333333
    rows = list(csv.DictReader(io.StringIO(run(runner, store_root, "dashboard", "--format", "csv").stdout)))
    assert {"section": "cards", "key": "cost_today", "value": "0.085"} in rows
    query = "SELECT 0.1::DOUBLE + 0.2::DOUBLE AS x"
    assert json.loads(sql(runner, store_root, query, "--format", "json").stdout) == [{"x": 0.1 + 0.2}]
    assert sql(runner, store_root, query, "--format", "csv").stdout.split() == ["x", repr(0.1 + 0.2)]


# --------------------------------------------------- follow and watch (subprocess)

_WRITER = textwrap.dedent(
    """
    import sys
    from voicepipe_obs import Recorder
    rec = Recorder(sys.argv[1], flush_interval=0.1)
    rec.emit("artifact_received", artifact_id="live-1", organization_id="org-live", source_channel="app")
    rec.emit("transcription_failed", artifact_id="live-1", error_code="Boom", error_message="bad audio")
    rec.close()
    """
)


class _Lines:
    """Lines of a subprocess's stdout, read by a thread (select() on a buffered
    pipe misses lines already in Python's buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import queue
        import threading

        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.queue.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def get(self, deadline: float) -> str:
        import queue

        try:
            return self.queue.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            return ""


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from voicepipe_obs.cli import run; run()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.timeout(60)
def test_follow_sees_an_event_written_by_another_process(root: Path) -> None:
    build_dataset(root)
    proc = _cli(
        "--data",
        str(root),
        "report",
        "--now",
        NOW_ISO,
        "events",
        "--follow",
        "--limit",
        "3",
        "--interval",
        "0.1",
        "--utc",
    )
    try:
        deadline = time.monotonic() + 30
        lines_of = _Lines(proc)
        first = [lines_of.get(deadline) for _ in range(3)]
        assert "claims_extraction_started" in first[-1]  # the newest existing event, printed last
        writer = subprocess.run(
            [sys.executable, "-c", _WRITER, str(root)], capture_output=True, text=True, timeout=30
        )
        assert writer.returncode == 0, writer.stderr
        lines = []
        while time.monotonic() < deadline and not any("transcription_failed" in ln for ln in lines):
            line = lines_of.get(deadline)
            if line:
                lines.append(line)
        assert any("artifact_received" in ln and "live-1" in ln for ln in lines), lines
        assert any("transcription_failed" in ln and "Boom: bad audio" in ln for ln in lines), lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        # the lines carry no zone: the one line on stderr names it
        assert (
            proc.stderr.read() == f"voicepipe: following events under {root}, times in UTC (Ctrl-C to stop)\n"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_follow_json_lines_with_a_filter(root: Path) -> None:
    build_dataset(root)
    proc = _cli(
        "--data",
        str(root),
        "report",
        "--now",
        NOW_ISO,
        "events",
        "--follow",
        "--errors-only",
        "--limit",
        "1",
        "--interval",
        "0.1",
        "--format",
        "json",
    )
    try:
        deadline = time.monotonic() + 30
        lines_of = _Lines(proc)
        first = json.loads(lines_of.get(deadline))
        assert first["event_type"] == "circuit_breaker_opened"  # the newest the log marks ✗
        subprocess.run([sys.executable, "-c", _WRITER, str(root)], check=True, timeout=30)
        ev = json.loads(lines_of.get(deadline))
        assert ev["event_type"] == "transcription_failed" and ev["artifact_id"] == "live-1"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_dashboard_watch_redraws_until_ctrl_c(root: Path) -> None:
    build_dataset(root)
    proc = _cli("--data", str(root), "report", "dashboard", "--watch", "0.5", "--utc")
    try:
        deadline = time.monotonic() + 30
        lines_of = _Lines(proc)
        frames = 0
        while frames < 2 and time.monotonic() < deadline:
            line = lines_of.get(deadline)
            if line.startswith("voicepipe dashboard"):
                frames += 1
        assert frames == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_alerts_report_after_a_check(runner: Any, root: Path) -> None:
    from voicepipe_obs import alerts

    build_dataset(root)
    alerts.run_check(root, now=NOW, notify=False)
    expected = alerts.list_alerts(root, status="active")
    assert expected, "the fixture should raise at least one alert (inactivity since 10:00)"
    data = json.loads(run(runner, root, "alerts", "--format", "json").stdout)
    assert sorted(r["alert_id"] for r in data["rows"]) == sorted(a.alert_id for a in expected)
    table = run(runner, root, "alerts").stdout
    for a in expected:
        assert a.rule in table and a.alert_id in table
    dash = json.loads(run(runner, root, "dashboard", "--format", "json").stdout)
    assert len(dash["alerts"]) == len(expected)
    rows = list(csv.DictReader(io.StringIO(run(runner, root, "alerts", "--format", "csv").stdout)))
    assert {r["rule"] for r in rows} == {a.rule for a in expected}


def test_colour_is_used_when_asked_for(store_root: Path) -> None:
    """The CLI asks for colour only on a TTY without NO_COLOR (see test_render); when
    it does, failures are red and the flow graph's marks are coloured."""
    from voicepipe_obs import render, reports

    data = reports.dashboard(store_root, now=NOW)
    plain = render.render_dashboard(data, render.Style(tz=reports.UTC))
    coloured = render.render_dashboard(data, render.Style(colour=True, tz=reports.UTC))
    assert "\x1b[" not in plain
    assert "\x1b[31m✗ artifact_failed\x1b[0m" in coloured
    assert "\x1b[33m ▲ degraded" in coloured
    assert render._visible_len(coloured) == len(plain)
