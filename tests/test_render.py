"""The rendering module: value formatting, tables that fit 100 columns, charts, the
flow graph, colour rules, JSON and CSV writers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from typing import Any

import pytest

from voicepipe_obs import render
from voicepipe_obs.render import Style

UTC = dt.timezone.utc


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "–"),
        (float("nan"), "–"),
        (0, "0ms"),
        (850, "850ms"),
        (999.4, "999ms"),
        (5200, "5.2s"),
        (59_940, "59.9s"),
        (60_000, "1m"),
        (190_000, "3m 10s"),
        (3_600_000, "1h 00m"),
        (7_500_000, "2h 05m"),
        (3 * 86_400_000 + 4 * 3_600_000, "3d 4h"),
        (-1500, "-1.5s"),
    ],
)
def test_fmt_duration(ms: float | None, text: str) -> None:
    assert render.fmt_duration(ms) == text


def test_money_percent_and_null_are_never_zero() -> None:
    assert render.fmt_money(None) == "–"
    assert render.fmt_money(0.0) == "$0.00"
    assert render.fmt_money(0.006) == "$0.0060"
    assert render.fmt_money(1234.5) == "$1,234.50"
    assert render.fmt_pct(None) == "–"
    assert render.fmt_pct(0.0) == "0.0%"
    assert render.fmt_pct(0.125) == "12.5%"
    assert render.fmt_change(0.12) == "+12.0%"
    assert render.fmt_change(-0.035) == "-3.5%"
    assert render.fmt_int(None) == "–"
    assert render.fmt_int(1234) == "1,234"


def _grid_row(artifact_id: str, cost: float | None) -> dict[str, Any]:
    return {
        "artifact_id": artifact_id,
        "status": "completed",
        "source_channel": "app",
        "coach_user_id": "coach-1",
        "organization_id": "org-a",
        "claim_count": 1,
        "disambiguation_count": 0,
        "end_to_end_latency_ms": 1000.0,
        "total_ai_cost": cost,
        "received_at": dt.datetime(2026, 3, 4, 12, tzinfo=UTC),
    }


def _cost_column(table: str) -> list[str]:
    lines = table.splitlines()
    start = lines[0].index("Cost") + len("Cost")  # right-aligned under its header
    return [line[:start].split()[-1] for line in lines[2:]]


@pytest.mark.parametrize(
    ("costs", "shown"),
    [
        # every cost at least 10 cents: cents for all (not $2.59 beside $0.9001)
        ([2.59, 0.9001, None, 12.0], ["$2.59", "$0.90", "–", "$12.00"]),
        # a small cost keeps four decimals, and so does every other row of the column
        ([2.59, 0.006, 0.0], ["$2.5900", "$0.0060", "$0.0000"]),
        ([0.0119, 0.056], ["$0.0119", "$0.0560"]),
        ([1234.5, 0.05], ["$1,234.5000", "$0.0500"]),
    ],
)
def test_a_cost_column_has_one_precision(costs: list[float | None], shown: list[str]) -> None:
    assert render.fmt_money_column(costs) == shown
    rows = [_grid_row(f"a-{i}", c) for i, c in enumerate(costs)]
    table, hidden = render._grid(rows, Style(tz=UTC, width=200), False)
    assert hidden == [] and _cost_column(table) == shown
    # --expanded: one grid per row, one precision for the page
    data = {"rows": rows, "total": len(rows), "first": 1, "last": len(rows), "next_page": None}
    expanded = render.render_artifacts(
        {**data, "generated_at": dt.datetime(2026, 3, 4, tzinfo=UTC)}, Style(tz=UTC, width=200), expanded=True
    )
    for value in shown:
        assert f" {value} " in expanded or value == "–"


def test_times_follow_the_style_time_zone() -> None:
    ts = dt.datetime(2026, 11, 28, 9, 15, 8, tzinfo=UTC)
    assert render.fmt_time(ts, Style(tz=UTC)) == "2026-11-28 09:15:08"
    kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert render.fmt_time(ts, Style(tz=kolkata), date=False) == "14:45:08"
    assert render.fmt_time(None, Style()) == "–"


def test_table_fits_the_width_and_cuts_long_cells() -> None:
    rows = [["a-1", "x" * 300, "ok"], ["a-2", "short", "y" * 80]]
    out = render.table(rows, ["ID", "Message", "Other"], width=100)
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "…" in out
    assert "a-1" in out and "a-2" in out
    out = render.table([[None, 1]], ["A", "B"])
    assert "–" in out.splitlines()[2]


def test_table_colour_does_not_change_layout() -> None:
    rows = [["a-1", "failed"], ["a-2", "completed"]]
    plain = render.table(rows, ["ID", "Status"])
    coloured = render.table(
        rows, ["ID", "Status"], colours=[[None, "red"], [None, "green"]], style=Style(colour=True)
    )
    assert "\x1b[31mfailed\x1b[0m" in coloured
    assert render._visible_len(coloured) == len(plain)
    assert "\x1b[" not in render.table(rows, ["ID", "Status"], colours=[[None, "red"]] * 2, style=Style())


def test_bar_chart_scales_to_the_largest_value_and_fits() -> None:
    out = render.bar_chart([("a", 10.0, "10"), ("b", 5.0, "5"), ("c", None, "–")], width=60)
    lines = out.splitlines()
    assert all(len(line) <= 60 for line in lines)
    full = lines[0].count("█")
    assert full > 0
    assert abs(lines[1].count("█") - full / 2) <= 1
    assert "█" not in lines[2] and lines[2].endswith("–")
    assert render.bar_chart([]) == "  (no data)"


def test_sparkline() -> None:
    assert render.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert render.sparkline([None, 1.0, None, 3.0]) == " ▁ █"
    assert render.sparkline([]) == ""
    assert render.sparkline([None, None]) == "  "
    assert render.sparkline([2, 2]) == "▄▄"


def test_histogram_labels_bins() -> None:
    out = render.histogram([{"lo": 0.0, "hi": 0.5, "count": 2}, {"lo": 0.5, "hi": 1.0, "count": 4}])
    assert "0.00–0.50" in out and "0.50–1.00" in out
    assert render.histogram([{"lo": 0.0, "hi": 1.0, "count": 0}]) == "  (no data)"


def test_flow_graph_marks_health_by_shape_and_fits() -> None:
    stages: list[dict[str, Any]] = [
        {
            "stage": "ingestion",
            "health": "green",
            "queue_depth": 2,
            "avg_latency_ms": None,
            "throughput_per_hour": 10,
        },
        {
            "stage": "transcription",
            "health": "yellow",
            "queue_depth": 0,
            "avg_latency_ms": 5200,
            "throughput_per_hour": 9.5,
        },
        {
            "stage": "claims_extraction",
            "health": "red",
            "queue_depth": 7,
            "avg_latency_ms": 61000,
            "throughput_per_hour": 1,
        },
        {
            "stage": "entity_resolution",
            "health": "none",
            "queue_depth": 0,
            "avg_latency_ms": None,
            "throughput_per_hour": 0,
        },
        {
            "stage": "draft_generation",
            "health": "green",
            "queue_depth": 1,
            "avg_latency_ms": 800,
            "throughput_per_hour": 3,
        },
    ]
    out = render.flow_graph(stages, style=Style())
    lines = out.splitlines()
    assert lines[0] == (
        "[Ingestion] → [Transcription] → [Claims Extraction] → [Entity Resolution] → [Draft Generation]"
    )
    assert (
        "● ok" in lines[1]
        and "▲ degraded" in lines[1]
        and "✖ failing" in lines[1]
        and "○ no data" in lines[1]
    )
    assert lines[1].index("▲") == lines[0].index("[Transcription]") + 1
    assert "queue 7" in lines[2] and "1m 01s avg" in lines[3] and "9.5/h" in lines[4]
    assert max(len(line) for line in lines) <= 100
    coloured = render.flow_graph(stages, style=Style(colour=True))
    assert "\x1b[31m" in coloured and "\x1b[33m" in coloured


def test_cards_fit_100_columns() -> None:
    out = render.cards([("Title", "12", "sub line " * 10)] * 4, style=Style())
    assert all(len(line) <= 100 for line in out.splitlines())
    assert out.count("┌") == 4


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, True, True),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, False),
        ({}, False, False),
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_colour_only_on_a_tty_and_never_with_no_color(env: dict[str, str], tty: bool, expected: bool) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert render.colour_wanted(Stream(), env) is expected
    assert render.colour_wanted(None, env) is False


def test_json_writer_uses_utc_iso_and_null_for_nan() -> None:
    kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))
    data = {
        "t": dt.datetime(2026, 11, 28, 14, 45, tzinfo=kolkata),
        "x": float("nan"),
        "nested": [{"v": math.inf}],
        "d": dt.date(2026, 11, 28),
    }
    out = json.loads(render.to_json(data))
    assert out == {"t": "2026-11-28T09:15:00Z", "x": None, "nested": [{"v": None}], "d": "2026-11-28"}
    assert list(json.loads(render.to_json({"b": 1, "a": 2}))) == ["b", "a"]


def test_csv_writer() -> None:
    rows = [
        {"a": 1, "b": None, "t": dt.datetime(2026, 1, 1, tzinfo=UTC), "m": {"k": "v"}},
        {"a": "x,y", "b": 2.5},
    ]
    text = render.to_csv(rows, ["a", "b", "t", "m"])
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed == [
        ["a", "b", "t", "m"],
        ["1", "", "2026-01-01T00:00:00Z", '{"k": "v"}'],
        ["x,y", "2.5", "", ""],
    ]


def test_machine_output_rounds_float_noise_and_ratios() -> None:
    noisy = {
        "cost_today": 0.8412020000000006,
        "total_ai_cost": 0.018841999999999998,
        "failure_rate": 1 / 3,
        "completed_change": -0.4862385321100917,
        "avg_end_to_end_latency_ms": 15079.493428571428,
        "ai_cost": 0.0000012345,  # a stored sub-microdollar cost survives
        "rows": [{"overall_failure_rate": 2 / 3}],
    }
    out = json.loads(render.to_json(noisy))
    assert out == {
        "cost_today": 0.841202,
        "total_ai_cost": 0.018842,
        "failure_rate": 0.333333,
        "completed_change": -0.486239,
        "avg_end_to_end_latency_ms": 15079.4934286,
        "ai_cost": 0.0000012345,
        "rows": [{"overall_failure_rate": 0.666667}],
    }
    assert json.loads(render.to_json(noisy, rounded=False)) == noisy  # `voicepipe sql`
    text = render.to_csv([noisy], ["cost_today", "failure_rate", "avg_end_to_end_latency_ms"])
    assert text.splitlines()[1] == "0.841202,0.333333,15079.4934286"
    dash = {
        "cards": {"cost_today": 0.8412020000000006, "failure_rate_today": 1 / 3},
        "stages": [],
        "alerts": [],
    }
    assert render.csv_dashboard(dash).splitlines()[1:] == [
        "cards,cost_today,0.841202",
        "cards,failure_rate_today,0.333333",
        "alerts,active,0",
        "alerts,pending,0",
    ]


@pytest.mark.parametrize("width", [100, 70, 52])
def test_shell_command_wraps_into_lines_that_paste_as_one_command(width: int) -> None:
    import shlex

    words = ["voicepipe", "--data", "/srv/voice pipe/data", "retry", "art-20261128-112656-844d66"]
    command = shlex.join([*words, "--full", "--app", "voicepipe_obs._examples.voice_pipeline"])
    lines = render.shell_command(command, width=width, prefix="  full   ")
    assert all(len(line) <= width for line in lines), lines
    assert all(line.endswith(" \\") for line in lines[:-1]) and not lines[-1].endswith("\\")
    assert lines[0].startswith("  full   voicepipe")
    assert all(line.startswith("      ") for line in lines[1:])  # the prefix's indent + 4
    # the shell reads backslash-newline as nothing: the lines are the command
    assert shlex.split(" ".join(line.removesuffix("\\") for line in lines)[9:]) == shlex.split(command)
    for line in lines[1:]:  # an option never parts from its value
        assert not line.strip().endswith(("--data \\", "--app \\", "retry \\"))


def test_dashboard_cards_never_cut_their_text() -> None:
    """Every card line fits its box (no …), even with large numbers."""
    cards = {
        "active_artifacts": 123_456,
        "completed_today": 123_456,
        "completed_yesterday_same_time": 1_234_567,
        "completed_change": -0.8999,
        "failed_today": 12_345,
        "failure_rate_today": 0.0909,
        "avg_end_to_end_latency_ms_today": 7_500_000.0,
        "ai_service_status": None,
        "ai_service_changed_at": None,
        "cost_today": 12_345.678,
    }
    data = {
        "generated_at": dt.datetime(2026, 11, 28, 12, tzinfo=UTC),
        "window_start": dt.datetime(2026, 11, 27, tzinfo=UTC),
        "cards": cards,
        "stages": [],
        "alerts": [],
        "recent_events": [],
    }
    data["stages"] = [{"stage": "ingestion", "health": "green", "queue_depth": 1, "throughput_per_hour": 1.0}]
    for breaker in (None, "open", "closed"):
        cards["ai_service_status"] = breaker
        cards["ai_service_changed_at"] = (
            None if breaker is None else dt.datetime(2026, 11, 28, 11, tzinfo=UTC)
        )
        out = render.render_dashboard(data, Style(tz=UTC))
        boxes = [line for line in out.splitlines() if line.startswith("│")]
        assert len(boxes) == 6 and not any("…" in line for line in boxes), out
    assert "│ 123,456  (-90.0%)" in out and "vs 1,234,567 by now yesterday" in out
    cards["ai_service_status"] = None
    assert "no breaker events since 11-27" in render.render_dashboard(data, Style(tz=UTC))
