"""Rendering: turns the plain data that :mod:`voicepipe_obs.reports` returns into
text — tables (tabulate), horizontal bar charts, sparklines, histograms, the
pipeline flow graph, status cards — and writes JSON and CSV.

Formatting conventions live here and nowhere else: durations humanised (``850ms``,
``5.2s``, ``3m 10s``), dollars, percentages, NULL as ``–`` (never 0), times in local
time unless a time zone is given, colour only when asked for (the CLI asks on a
TTY without ``NO_COLOR``). Everything fits :attr:`Style.width` (100 columns unless
the CLI gives the terminal's width or ``--width``): tables cut descriptive columns,
hide the least important ones or move them to a line under each row, but never cut
an id people paste (artifact, alert, event, organisation); cards, charts and the
flow graph are laid out for at most 100 columns.

This module runs no queries and reads no files; it must not import duckdb.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

WIDTH: Final = 100
#: Narrowest and widest layout (``--width``, the terminal).
MIN_WIDTH: Final = 60
MAX_WIDTH: Final = 1000
NULL: Final = "–"
ELLIPSIS: Final = "…"

_ANSI: Final = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "grey": "90",
    "bold": "1",
    "dim": "2",
}

#: event kind → colour (dashboard and timelines colour-code events)
KIND_COLOURS: Final = {"success": "green", "failure": "red", "info": "cyan"}
#: health → (mark, colour). Marks differ in shape so they survive without colour.
HEALTH_MARKS: Final = {
    "green": ("●", "green"),
    "yellow": ("▲", "yellow"),
    "red": ("✖", "red"),
    "none": ("○", "grey"),
}
STATUS_COLOURS: Final = {
    "completed": "green",
    "failed": "red",
    "retrying": "yellow",
    "received": "cyan",
    "transcribing": "cyan",
    "transcribed": "cyan",
    "processing": "cyan",
}
SPARK_CHARS: Final = "▁▂▃▄▅▆▇█"
BAR_CHARS: Final = " ▏▎▍▌▋▊▉█"


def colour_wanted(stream: IO[str] | None, env: Mapping[str, str] | None = None) -> bool:
    """Colour only on a TTY and never when NO_COLOR is set (to anything)."""
    env = os.environ if env is None else env
    if "NO_COLOR" in env:
        return False
    if env.get("TERM") == "dumb":
        return False
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def output_width(stream: IO[str] | None, explicit: int | None = None) -> int:
    """The width to lay reports out for: ``explicit`` (``--width``) if given; the
    terminal's width (``shutil.get_terminal_size``, which honours ``$COLUMNS``) when
    ``stream`` is a TTY; else :data:`WIDTH` (100), so pipes, files and tests get the
    same output wherever they run. Kept within [:data:`MIN_WIDTH`, :data:`MAX_WIDTH`]."""
    if explicit is not None:
        return max(MIN_WIDTH, min(explicit, MAX_WIDTH))
    try:
        tty = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return WIDTH
    import shutil

    return max(MIN_WIDTH, min(shutil.get_terminal_size((WIDTH, 24)).columns, MAX_WIDTH))


@dataclass(frozen=True)
class Style:
    """How to render: colour on/off, the time zone for times (None = local), width."""

    colour: bool = False
    tz: dt.tzinfo | None = None
    width: int = WIDTH

    @property
    def chart_width(self) -> int:
        """Cards, bar charts and the flow graph: the width, but at most 100 (they
        gain nothing from a wider terminal)."""
        return min(self.width, WIDTH)

    def paint(self, text: str, colour: str | None) -> str:
        if not self.colour or not colour or not text:
            return text
        return f"\x1b[{_ANSI[colour]}m{text}\x1b[0m"

    def bold(self, text: str) -> str:
        return self.paint(text, "bold")

    def tzname(self, at: dt.datetime | None = None) -> str:
        """The zone times are shown in: ``UTC``, ``local time, CET`` (the local
        zone's abbreviation at ``at``, default now) or the zone's name."""
        if self.tz is dt.timezone.utc:
            return "UTC"
        if self.tz is None:
            when = at if at is not None else dt.datetime.now(dt.timezone.utc)
            abbrev = to_tz(when, None).tzname()
            return f"local time, {abbrev}" if abbrev else "local time"
        return str(self.tz)


# ---------------------------------------------------------------- value formatting


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_duration(ms: float | None) -> str:
    """850ms, 5.2s, 3m 10s, 2h 05m, 3d 4h; NULL as –."""
    if is_null(ms):
        return NULL
    assert ms is not None
    if ms < 0:
        return "-" + fmt_duration(-ms)
    if ms < 1000:
        return f"{ms:.0f}ms"
    secs = ms / 1000
    if secs < 59.95:
        return f"{secs:.1f}s"
    total = round(secs)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s" if total % 60 else f"{total // 60}m"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600}h"


def fmt_money(usd: float | None, decimals: int | None = None) -> str:
    """$12.34 (or $0.0060 under a dollar); NULL as –. ``decimals``: that many
    instead (a table column's, from :func:`money_decimals`)."""
    if is_null(usd):
        return NULL
    assert usd is not None
    if decimals is None:
        decimals = 2 if abs(usd) >= 1 or usd == 0 else 4
    return f"${usd:,.{decimals}f}"


#: a cost column shows cents when every non-zero cost in it is at least this much
CENTS_FROM: Final = 0.10


def money_decimals(values: Iterable[float | None]) -> int:
    """The decimals of a table's cost column, the same for every row so that the
    column reads (and lines up) as one: 2 (cents) when every non-zero cost in it is
    at least 10 cents — each then keeps two significant digits or more — else 4,
    so that small costs stay visible ($0.0060, not $0.01) and the larger ones beside
    them get the same four ($2.5900 beside $0.0060). NULLs and zeros do not count."""
    shown = [abs(v) for v in values if v is not None and not is_null(v) and v]
    return 2 if all(v >= CENTS_FROM for v in shown) else 4


def fmt_money_column(values: Sequence[float | None]) -> list[str]:
    """``values`` as one cost column: :func:`fmt_money` at :func:`money_decimals`."""
    decimals = money_decimals(values)
    return [fmt_money(v, decimals) for v in values]


def fmt_pct(ratio: float | None, digits: int = 1) -> str:
    """A ratio 0..1 as a percentage; NULL as –."""
    if is_null(ratio):
        return NULL
    assert ratio is not None
    return f"{ratio * 100:.{digits}f}%"


def fmt_change(ratio: float | None) -> str:
    """A relative change as +12.0% / -3.5%; NULL as –."""
    if is_null(ratio):
        return NULL
    assert ratio is not None
    return f"{ratio * 100:+.1f}%"


def fmt_num(value: float | int | None, digits: int = 2) -> str:
    if is_null(value):
        return NULL
    assert value is not None
    if isinstance(value, int):
        return f"{value:,}"
    if float(value).is_integer() and digits == 0:
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def fmt_int(value: int | float | None) -> str:
    if is_null(value):
        return NULL
    assert value is not None
    return f"{int(value):,}"


def fmt_rate(per_hour: float | None) -> str:
    if is_null(per_hour):
        return NULL
    assert per_hour is not None
    return f"{per_hour:.1f}/h"


def to_tz(ts: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.astimezone(tz)


def fmt_time(ts: dt.datetime | None, style: Style, *, date: bool = True, seconds: bool = True) -> str:
    """A timestamp in the style's time zone: ``2026-11-28 09:15:08`` (or time only)."""
    if ts is None:
        return NULL
    local = to_tz(ts, style.tz)
    fmt = ("%Y-%m-%d " if date else "") + ("%H:%M:%S" if seconds else "%H:%M")
    return local.strftime(fmt)


def fmt_text(value: Any) -> str:
    if is_null(value):
        return NULL
    return str(value)


def truncate(text: str, width: int) -> str:
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


def truncate_start(text: str, width: int) -> str:
    """``text`` cut to ``width`` at its start, keeping its end — where names like
    ``coach-northwind-06`` differ from their neighbours: ``…thwind-06``."""
    if len(text) <= width:
        return text
    if width <= 1:
        return truncate(text, width)
    return ELLIPSIS + text[len(text) - (width - 1) :]


def stage_title(stage: str | None) -> str:
    """claims_extraction → Claims Extraction."""
    if not stage:
        return NULL
    return " ".join(part.capitalize() for part in stage.split("_"))


# ------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Fitted:
    """A table laid out to a width: its text, the columns hidden to make it fit
    (say so under the table) and those moved to a line under each row."""

    text: str
    hidden: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()


#: Narrowest a cut column gets (or its header, if longer).
MIN_CUT: Final = 6
#: A text column moved under its row is cut to the line when at least this much of
#: the line is left, else it starts a line of its own.
MIN_TEXT: Final = 20


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], **layout: Any) -> str:
    """A plain table (tabulate "simple") that fits ``width`` columns: the text of
    :func:`fit_table`, which takes the same options."""
    return fit_table(rows, headers, **layout).text


def fit_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    *,
    width: int = WIDTH,
    align: Sequence[str] | None = None,
    max_col: int = 40,
    shrink: Sequence[int] | None = None,
    ids: Sequence[int] = (),
    drop: Sequence[int] = (),
    priority: Sequence[int] | None = None,
    labels: Mapping[int, str | None] | None = None,
    min_cut: Mapping[int, int] | None = None,
    keep_end: Sequence[int] = (),
    colours: Sequence[Sequence[str | None]] | None = None,
    style: Style | None = None,
) -> Fitted:
    """A plain table (tabulate "simple") that fits ``width`` columns.

    Cells are already-formatted strings (NULL shown as –). Columns in ``ids`` (an
    artifact, alert, event or organisation id: something people paste) are never
    cut. Other cells longer than ``max_col`` are cut with …; if the table is still
    too wide, the column gap narrows to one space, then the ``shrink`` columns (by
    default every column that is not an id; the widest first) are cut, down to
    their header or ``min_cut[column]`` (default :data:`MIN_CUT`) characters — cut
    at their end, or at their start for the columns in ``keep_end``
    (:func:`truncate_start`).
    If that is not enough, the columns
    in ``drop`` are hidden, in that order (``hidden``: say so under the table).

    As a last resort the table keeps the columns that fit, taken in ``priority``
    order (default: left to right; the ``shrink`` columns only when every column
    fits), and shows the others on a line under each row (``moved``), as
    ``label value`` pairs joined by `` · ``: ``labels`` maps a column to its label
    (default: the header in lower case; "" for none; None leaves the column out
    there). Those lines wrap between pairs and never cut an id; a cut column's
    text is cut to the line. ``colours`` (per cell) are applied after layout so
    ANSI codes never count towards the width.
    """
    ncols = len(headers)
    id_set = set(ids)
    text_rows = [[NULL if is_null(c) else str(c).replace("\n", " ") for c in row] for row in rows]
    for row in text_rows:
        for i, cell in enumerate(row):
            if i not in id_set:
                row[i] = truncate(cell, max_col)
    cuttable = [i for i in (range(ncols) if shrink is None else shrink) if i not in id_set]

    def natural(i: int) -> int:
        return max([len(headers[i])] + [len(r[i]) for r in text_rows])

    def layout(cols: Sequence[int], cut: Sequence[int]) -> tuple[dict[int, int], int] | None:
        """Column widths (and the gap) that fit ``cols`` in the width, cutting only
        ``cut``; None if they cannot fit."""
        ws = {i: natural(i) for i in cols}
        gap = 2 if sum(ws.values()) + 2 * (len(cols) - 1) <= width else 1
        total = sum(ws.values()) + gap * (len(cols) - 1)
        candidates = [i for i in cut if i in ws]
        least = min_cut or {}
        floor = {i: min(ws[i], max(len(headers[i]), least.get(i, MIN_CUT))) for i in candidates}
        if total - sum(ws[i] - floor[i] for i in candidates) > width:
            return None
        while total > width:
            i = max((c for c in candidates if ws[c] > floor[c]), key=lambda c: ws[c])
            target = max(ws[i] - (total - width), floor[i])
            total -= ws[i] - target
            ws[i] = target
        return ws, gap

    hidden: list[int] = []
    moved: list[int] = []
    fitted = layout(range(ncols), cuttable)
    if fitted is None:
        for k in range(1, len(drop) + 1):
            cols = [i for i in range(ncols) if i not in drop[:k]]
            fitted = layout(cols, cuttable)
            if fitted is not None:
                hidden = list(drop[:k])
                break
    if fitted is None:
        hidden = list(drop)
        order = [i for i in (priority if priority is not None else range(ncols)) if i not in hidden]
        keep: list[int] = []
        for i in order:
            if i in cuttable and shrink is not None:
                continue  # text columns go under the row, where they have room
            trial = layout(sorted([*keep, i]), ())
            if trial is not None or not keep:
                keep.append(i)
        moved = [i for i in order if i not in keep]
        keep.sort()
        fitted = layout(keep, ()) or ({i: natural(i) for i in keep}, 1)
    ws, gap = fitted
    cols = sorted(ws)
    for row in text_rows:
        for i in cols:
            if len(row[i]) > ws[i]:
                row[i] = truncate_start(row[i], ws[i]) if i in keep_end else truncate(row[i], ws[i])
    body = [[row[i] for i in cols] for row in text_rows]
    colalign = [align[i] for i in cols] if align else None
    import tabulate as tabulate_mod

    saved, tabulate_mod.MIN_PADDING = tabulate_mod.MIN_PADDING, 0  # widths above are exact
    try:
        out = _tabulate(body, [headers[i] for i in cols], colalign, gap)
    finally:
        tabulate_mod.MIN_PADDING = saved
    lines = out.split("\n")
    if style is not None and style.colour and colours is not None:
        # header, rule, then one line per row
        for r, row_colours in enumerate(colours):
            li = r + 2
            if li >= len(lines):
                break
            line = lines[li]
            for j, c in enumerate(cols):
                colour = row_colours[c]
                cell = body[r][j]
                if colour and cell and cell in line:
                    line = line.replace(cell, style.paint(cell, colour), 1)
            lines[li] = line
    if moved:
        names = labels or {}
        out_lines = lines[:2]
        for r, line in enumerate(lines[2 : 2 + len(text_rows)]):
            out_lines.append(line)
            parts: list[tuple[str, bool]] = []
            for i in moved:
                label = names.get(i, headers[i].lower())
                cell = text_rows[r][i]
                if label is None or not cell or cell == NULL:
                    continue
                parts.append((f"{label} {cell}" if label else cell, i in cuttable))
            out_lines += _under_row(parts, width)
        lines = out_lines
    return Fitted(
        "\n".join(lines),
        tuple(headers[i] for i in hidden),
        tuple(headers[i] for i in moved),
    )


#: Indent of the line under a row that holds the columns moved there.
UNDER_INDENT: Final = "    "


def _under_row(parts: Sequence[tuple[str, bool]], width: int) -> list[str]:
    """``(text, cuttable)`` parts as lines under a table row: joined by `` · ``,
    wrapped between parts; a part that may be cut is cut to the line (on a line of
    its own when less than :data:`MIN_TEXT` is left); others are never cut."""
    lines: list[str] = []
    line = ""
    for text, cuttable in parts:
        sep = " · " if line else ""
        room = width - len(UNDER_INDENT) - len(line) - len(sep)
        if len(text) <= room:
            line += sep + text
            continue
        if cuttable and room >= MIN_TEXT:
            line += sep + truncate(text, room)
            continue
        if line:
            lines.append(UNDER_INDENT + line)
        line = truncate(text, width - len(UNDER_INDENT)) if cuttable else text
    if line:
        lines.append(UNDER_INDENT + line)
    return lines


def _tabulate(rows: list[list[str]], headers: Sequence[str], colalign: list[str] | None, gap: int) -> str:
    from tabulate import DataRow, Line, TableFormat, tabulate

    fmt: Any = "simple"
    if gap != 2:
        sep = " " * gap
        fmt = TableFormat(
            lineabove=None,
            linebelowheader=Line("", "-", sep, ""),
            linebetweenrows=None,
            linebelow=None,
            headerrow=DataRow("", sep, ""),
            datarow=DataRow("", sep, ""),
            padding=0,
            with_header_hide=None,
        )
    if not rows:
        return tabulate([], headers=list(headers), tablefmt=fmt, disable_numparse=True)
    return tabulate(rows, headers=list(headers), tablefmt=fmt, colalign=colalign, disable_numparse=True)


# ------------------------------------------------------------------------- charts


def _bar(value: float, vmax: float, width: int) -> str:
    if vmax <= 0 or value <= 0:
        return ""
    cells = value / vmax * width
    full = int(cells)
    part = round((cells - full) * 8)
    if part == 8:
        full, part = full + 1, 0
    out = "█" * full + (BAR_CHARS[part] if part else "")
    return out if out else "▏"


def bar_chart(
    items: Sequence[tuple[str, float | None, str]],
    *,
    width: int = WIDTH,
    style: Style | None = None,
    colour: str | None = "cyan",
) -> str:
    """Horizontal bars: one line per (label, value, formatted value); NULL → –."""
    if not items:
        return "  (no data)"
    label_w = min(max(len(label) for label, _, _ in items), 24)
    value_w = max(len(text) for _, _, text in items)
    bar_w = max(width - label_w - value_w - 6, 10)
    vmax = max((float(v) for _, v, _ in items if v is not None and not is_null(v)), default=0.0)
    lines = []
    for label, value, text in items:
        bar = "" if is_null(value) else _bar(float(value or 0), float(vmax), bar_w)
        if style is not None:
            bar = style.paint(bar, colour)
        pad = " " * (bar_w - (len(bar) if style is None or not style.colour else _visible_len(bar)))
        lines.append(f"  {truncate(label, label_w):<{label_w}} {bar}{pad} {text:>{value_w}}")
    return "\n".join(line.rstrip() for line in lines)


def _visible_len(text: str) -> int:
    import re

    return len(re.sub(r"\x1b\[[0-9;]*m", "", text))


def sparkline(values: Sequence[float | None]) -> str:
    """▁▂▃▄▅▆▇█ scaled between min and max; a NULL value is a space."""
    present = [float(v) for v in values if v is not None and not is_null(v)]
    if not present:
        return " " * len(values)
    lo, hi = min(present), max(present)
    span = hi - lo
    out = []
    for v in values:
        if is_null(v):
            out.append(" ")
        elif span == 0:
            out.append(SPARK_CHARS[0] if hi == 0 else SPARK_CHARS[3])
        else:
            assert v is not None
            out.append(SPARK_CHARS[min(int((float(v) - lo) / span * 7 + 0.5), 7)])
    return "".join(out)


def histogram(bins: Sequence[Mapping[str, Any]], *, width: int = WIDTH, style: Style | None = None) -> str:
    """Bins with ``lo``, ``hi`` and ``count`` as horizontal bars."""
    items = [(f"{b['lo']:.2f}–{b['hi']:.2f}", float(b["count"]), fmt_int(b["count"])) for b in bins]
    if not any(v for _, v, _ in items):
        return "  (no data)"
    return bar_chart(items, width=width, style=style, colour="magenta")


# --------------------------------------------------------------- cards and graph


def cards(items: Sequence[tuple[str, str, str]], *, style: Style, per_row: int = 3) -> str:
    """Status cards: (title, value, sub-line) in boxes, at most ``per_row`` to a
    line: fewer when the width (:attr:`Style.chart_width`) would cut their text."""
    width = style.chart_width
    longest = max((len(t) for item in items for t in item), default=0)
    heading = max((len(t) for item in items for t in item[:2]), default=0)

    def inner_for(n: int) -> int:
        return (width - 2 * (n - 1)) // n - 2

    # as many to a line as keep every text whole; else as many as keep titles and
    # values whole (a sub-line may be cut rather than stack the cards one per line)
    per_row = next(
        (n for n in range(per_row, 0, -1) if inner_for(n) - 1 >= longest),
        next((n for n in range(per_row, 0, -1) if inner_for(n) - 1 >= heading), 1),
    )
    inner = inner_for(per_row)
    out: list[str] = []
    for start in range(0, len(items), per_row):
        chunk = items[start : start + per_row]
        top = "  ".join("┌" + "─" * inner + "┐" for _ in chunk)
        bottom = "  ".join("└" + "─" * inner + "┘" for _ in chunk)
        titles = "  ".join(
            "│" + style.paint(f" {truncate(t, inner - 1):<{inner - 1}}", "dim") + "│" for t, _, _ in chunk
        )
        values = "  ".join(
            "│" + style.bold(f" {truncate(v, inner - 1):<{inner - 1}}") + "│" for _, v, _ in chunk
        )
        subs = "  ".join("│" + f" {truncate(s, inner - 1):<{inner - 1}}" + "│" for _, _, s in chunk)
        out += [top, titles, values, subs, bottom]
    return "\n".join(out)


def flow_graph(stages: Sequence[Mapping[str, Any]], *, style: Style) -> str:
    """``[Ingestion] → [Transcription] → …`` with, under each box, its health mark,
    queue depth, average latency and throughput per hour. When the boxes do not fit
    :attr:`Style.chart_width` on one line they continue on the next (the line ends
    in ``→``)."""
    width = style.chart_width
    boxes = [f"[{stage_title(s['stage'])}]" for s in stages]
    cells: list[list[tuple[str, str | None]]] = []
    for s in stages:
        mark, colour = HEALTH_MARKS.get(str(s.get("health") or "none"), HEALTH_MARKS["none"])
        label = {"green": "ok", "yellow": "degraded", "red": "failing", "none": "no data"}.get(
            str(s.get("health") or "none"), "no data"
        )
        cells.append(
            [
                (f"{mark} {label}", colour),
                (f"queue {fmt_int(s.get('queue_depth'))}", None),
                (f"{fmt_duration(s.get('avg_latency_ms'))} avg", None),
                (fmt_rate(s.get("throughput_per_hour")), None),
            ]
        )
    rows: list[list[int]] = [[]]
    used = 0
    for i, box in enumerate(boxes):
        need = len(box) + (3 if rows[-1] else 0)
        more = 2 if i < len(boxes) - 1 else 0  # a row that continues ends in " →"
        if rows[-1] and used + need + more > width:
            rows.append([])
            need = len(box)
            used = 0
        rows[-1].append(i)
        used += need
    lines: list[str] = []
    for n, row in enumerate(rows):
        if n:
            lines.append("")
        last_row = n == len(rows) - 1
        head = " → ".join(boxes[i] for i in row) + ("" if last_row else " →")
        lines.append(style.bold(head) if style.colour else head)
        widths = [len(boxes[i]) + 3 for i in row]
        widths[-1] = len(boxes[row[-1]])
        for k in range(4):
            parts = []
            for i, w in zip(row, widths, strict=True):
                text, paint = cells[i][k]
                cell = truncate(" " + text, w)
                parts.append(style.paint(cell, paint) + " " * (w - len(cell)))
            lines.append("".join(parts).rstrip())
    return "\n".join(lines)


def section(title: str, style: Style) -> str:
    """A title (wrapped to the width) underlined with ─."""
    lines = _wrapped(title, style.width) or [title]
    return "\n".join(style.bold(line) for line in lines) + "\n" + "─" * max(len(line) for line in lines)


def shell_command(command: str, *, width: int = WIDTH, prefix: str = "") -> list[str]:
    """A shell command as lines of at most ``width`` (after ``prefix`` on the first;
    later lines indented 4 more than the prefix's own indent): cut before an option
    (``--app MODULE`` stays together), every line but the last ending in `` \\`` so
    the lines paste into a shell as one command. Never cuts a word; a word longer
    than the width gets a line of its own."""
    import shlex

    try:
        words = [shlex.quote(w) for w in shlex.split(command)]
    except ValueError:  # not shell syntax: print it as it is
        return [prefix + command]
    chunks: list[str] = []  # "voicepipe", "--data ROOT", "retry ID", "--full", "--app MODULE"
    for w in words:
        opens = w.startswith("-") or w == "retry"
        last = chunks[-1] if chunks else ""
        if not opens and " " not in last and (last.startswith("-") or last == "retry"):
            chunks[-1] += " " + w  # an option's value, the subcommand's argument
        else:
            chunks.append(w)
    indent = " " * (len(prefix) - len(prefix.lstrip(" ")) + 4)
    lines: list[str] = []
    line = prefix + chunks[0]
    for i, chunk in enumerate(chunks[1:], start=2):
        room = width - (0 if i == len(chunks) else 2)  # a line that continues ends in " \\"
        if len(line) + 1 + len(chunk) <= room:
            line += " " + chunk
        else:
            lines.append(line + " \\")
            line = indent + chunk
    lines.append(line)
    return lines


def _wrapped(
    text: str,
    width: int,
    indent: str = "",
    *,
    subsequent: str | None = None,
    prose: bool = False,
    max_lines: int | None = None,
) -> list[str]:
    """``text`` wrapped to ``width`` at spaces, never splitting a word (an id longer
    than the line gets a line of its own) unless ``prose`` (free text such as an
    error message: long words are split, and at most ``max_lines`` lines, the last
    ending in …)."""
    import textwrap

    return textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent + "  " if subsequent is None else subsequent,
        break_long_words=prose,
        break_on_hyphens=False,
        max_lines=max_lines if prose else None,
        placeholder=" " + ELLIPSIS,
    )


def _joined(parts: Sequence[str], width: int, indent: str = "  ", subsequent: str = "    ") -> list[str]:
    """Parts joined by `` · `` on lines of at most ``width``, breaking only between
    parts (a part longer than a line is cut: parts are descriptive text)."""
    lines: list[str] = []
    line = indent
    for part in parts:
        sep = " · " if line.strip() else ""
        if len(line) + len(sep) + len(part) <= width:
            line += sep + part
            continue
        if line.strip():
            lines.append(line)
        line = subsequent + truncate(part, width - len(subsequent))
    if line.strip():
        lines.append(line)
    return lines


# --------------------------------------------------------------- JSON and CSV


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if hasattr(value, "item"):  # numpy / decimal-like scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


#: Significant digits of floats in report JSON and CSV: enough for any stored
#: value, few enough that sums carry no binary noise (0.841202, not 0.8412020000000006).
FLOAT_DIGITS: Final = 12
#: Decimal places of rates and ratios (keys ending in these) in report JSON and CSV.
RATIO_PLACES: Final = 6
_RATIO_KEYS: Final = ("_rate", "rate_today", "_ratio", "_change")


def machine_float(value: float, key: str | None = None) -> float:
    """A float as report JSON and CSV write it: rates and ratios (by their key) to
    :data:`RATIO_PLACES` decimal places, anything else to :data:`FLOAT_DIGITS`
    significant digits."""
    if math.isnan(value) or math.isinf(value):
        return value
    if key is not None and key.endswith(_RATIO_KEYS):
        return round(value, RATIO_PLACES)
    return float(f"{value:.{FLOAT_DIGITS}g}")


def _clean(value: Any, key: str | None = None, *, rounded: bool = False) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return machine_float(value, key) if rounded else value
    if isinstance(value, Mapping):
        return {str(k): _clean(v, str(k), rounded=rounded) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, key, rounded=rounded) for v in value]
    return value


def to_json(data: Any, *, rounded: bool = True, indent: int | None = 2) -> str:
    """JSON with UTC ISO-8601 times (``…Z``), NaN as null; keys in report order.
    ``rounded``: floats as :func:`machine_float` writes them (reports); False writes
    them as they are (``voicepipe sql``). ``indent=None``: one line (JSON Lines)."""
    return json.dumps(_clean(data, rounded=rounded), default=_json_default, indent=indent, ensure_ascii=False)


def write_json_rows(
    head: Mapping[str, Any],
    rows: Iterable[Mapping[str, Any]],
    tail: Any,
    stream: IO[str],
) -> int:
    """One JSON object written as it is produced — ``head``'s keys, then ``rows``
    (streamed: never all in memory), then the keys ``tail(number of rows)`` returns
    — formatted as :func:`to_json` would. Returns the number of rows."""
    stream.write("{\n")
    for key, value in head.items():
        stream.write(f"  {json.dumps(key)}: {to_json(value).replace(chr(10), chr(10) + '  ')},\n")
    stream.write('  "rows": [')
    n = 0
    for row in rows:
        stream.write(("," if n else "") + "\n    " + to_json(row).replace("\n", "\n    "))
        n += 1
    stream.write("\n  ]" if n else "]")
    for key, value in tail(n).items():
        stream.write(f",\n  {json.dumps(key)}: {to_json(value).replace(chr(10), chr(10) + '  ')}")
    stream.write("\n}\n")
    return n


def _csv_cell(value: Any, key: str | None = None, *, rounded: bool = True) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return _json_default(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return machine_float(value, key) if rounded else value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(
            _clean(value, key, rounded=rounded), default=_json_default, ensure_ascii=False, sort_keys=True
        )
    return value


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, rounded: bool = True) -> str:
    """CSV with a header row; times as UTC ISO-8601, NULL as an empty cell, nested
    values as JSON text, floats as in :func:`to_json`."""
    buf = io.StringIO()
    write_csv(rows, columns, buf, rounded=rounded)
    return buf.getvalue()


def write_csv(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], stream: IO[str], *, rounded: bool = True
) -> int:
    """:func:`to_csv` written to ``stream`` row by row (``rows`` may be a generator
    over more than fits in memory). Returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow([_csv_cell(row.get(c), c, rounded=rounded) for c in columns])
        n += 1
    return n


# ===================================================================== reports
# One renderer per report: plain data from voicepipe_obs.reports in, text out.


def _kind_colour(kind: str | None) -> str | None:
    return KIND_COLOURS.get(str(kind))


def _short_time(ts: dt.datetime | None, style: Style) -> str:
    return NULL if ts is None else to_tz(ts, style.tz).strftime("%m-%d %H:%M:%S")


#: event kind → mark; marks differ in shape so they survive without colour.
_KIND_MARK: Final = {"success": "✓", "failure": "✗", "info": "·"}
#: The same in a timeline, where an info event is a dot on the line.
_TIMELINE_MARK: Final = {"success": "✓", "failure": "✗", "info": "●"}


def _without_duration(detail: str, duration: str) -> str:
    """An event's detail less its leading duration (shown in its own column)."""
    if duration != NULL and (detail == duration or detail.startswith(duration + ", ")):
        return detail[len(duration) + 2 :]
    return detail


def _event_table(rows: Sequence[Mapping[str, Any]], style: Style, *, full: bool = True) -> str:
    """The event log. ``full`` (``report events``): Time, Event, Stage, Artifact,
    Org, Duration, Event ID and Details, one line per event when the width allows,
    else the columns that do not fit on a line under each event (ids never cut).
    Otherwise (the dashboard's feed) Time, Event, Artifact and Details."""
    if full:
        headers = ["Time", "Event", "Stage", "Artifact", "Org", "Duration", "Event ID", "Details"]
        ids = [3, 4, 6]
        priority = [0, 1, 3, 4, 6, 5, 2, 7]
        labels: dict[int, str | None] = {2: "stage", 3: "artifact", 4: "org", 5: "", 6: "id", 7: ""}
        align = ["left"] * 5 + ["right"] + ["left"] * 2
    else:
        headers = ["Time", "Event", "Artifact", "Details"]
        ids = [2]
        priority = [0, 1, 2, 3]
        labels = {2: "artifact", 3: ""}
        align = ["left"] * 4
    body, colours = [], []
    for r in rows:
        duration = fmt_duration(r.get("duration_ms"))
        event = f"{_KIND_MARK.get(str(r.get('kind')), '·')} {r.get('event_type')}"
        detail = str(r.get("detail") or "")
        if full:
            cells = [
                _short_time(r.get("timestamp"), style),
                event,
                fmt_text(r.get("pipeline_stage")),
                fmt_text(r.get("artifact_id")),
                fmt_text(r.get("organization_id")),
                duration,
                fmt_text(r.get("event_id")),
                _without_duration(detail, duration),
            ]
        else:
            cells = [_short_time(r.get("timestamp"), style), event, fmt_text(r.get("artifact_id")), detail]
        body.append(cells)
        colours.append([None, _kind_colour(r.get("kind"))] + [None] * (len(headers) - 2))
    return fit_table(
        body,
        headers,
        width=style.width,
        align=align,
        ids=ids,
        shrink=[len(headers) - 1],
        min_cut={len(headers) - 1: MIN_TEXT},
        priority=priority,
        labels=labels,
        max_col=style.width,
        colours=colours,
        style=style,
    ).text


def _header(title: str, data: Mapping[str, Any], style: Style) -> str:
    """``title  ·  2026-11-28 10:57:10 (UTC)``; the time on a line of its own when
    both do not fit the width."""
    generated = data.get("generated_at")
    when = f"{fmt_time(generated, style)} ({style.tzname(generated)})"
    if len(title) + 5 + len(when) <= style.width:
        return f"{style.bold(title)}  ·  {when}"
    return "\n".join([*(style.bold(line) for line in _wrapped(title, style.width)), when])


def render_dashboard(data: Mapping[str, Any], style: Style) -> str:
    c = data["cards"]
    breaker = c.get("ai_service_status")
    if breaker is None:
        window = data.get("window_start")
        service = "OK"
        since = "no breaker events" + (f" since {to_tz(window, style.tz):%m-%d}" if window else "")
    else:
        service = "DOWN (breaker open)" if breaker == "open" else "OK (breaker closed)"
        since = "since " + fmt_time(c.get("ai_service_changed_at"), style)
    change = "" if is_null(c["completed_change"]) else f"  ({fmt_change(c['completed_change'])})"
    items = [
        ("Active artifacts", fmt_int(c["active_artifacts"]), "in flight now"),
        (
            "Completed today",
            fmt_int(c["completed_today"]) + change,
            f"vs {fmt_int(c['completed_yesterday_same_time'])} by now yesterday",
        ),
        ("Failed today", fmt_int(c["failed_today"]), f"failure rate {fmt_pct(c['failure_rate_today'])}"),
        (
            "Avg end-to-end latency",
            fmt_duration(c["avg_end_to_end_latency_ms_today"]),
            "artifacts completed today",
        ),
        ("AI service", service, since),
        ("Cost today", fmt_money(c["cost_today"]), "sum of ai_cost"),
    ]
    parts = [_header("voicepipe dashboard", data, style), "", cards(items, style=style), ""]
    parts += [section("Pipeline (last 24h)", style), flow_graph(data["stages"], style=style), ""]
    parts.append(section("Active alerts", style))
    parts.append(_alerts_table(data["alerts"], style) if data["alerts"] else "  none")
    pending = int(data.get("alerts_pending") or 0)
    if pending:
        parts += _wrapped(
            f"+ {pending} pending: raised if {'their conditions hold' if pending != 1 else 'its condition holds'}"
            " (`voicepipe report alerts`)",
            style.width,
            "  ",
        )
    parts += ["", section(f"Latest {len(data['recent_events'])} events", style)]
    parts.append(
        _event_table(data["recent_events"], style, full=False) if data["recent_events"] else "  none"
    )
    return "\n".join(parts)


def _shown(rows: Sequence[Any], total: int | None, which: str, noun: str = "") -> str:
    """The count of a limited list: ``total`` (or ``len(rows)``) and ``noun``, then,
    when ``rows`` are not all of them, which ones are listed and how to see more."""
    n = len(rows) if total is None else int(total)
    out = f"{fmt_int(n)}{noun}"
    if n > len(rows):
        out += f"; the {which} {fmt_int(len(rows))} shown, --limit N shows more"
    return out


def render_pipeline(data: Mapping[str, Any], style: Style) -> str:
    parts = [_header("voicepipe pipeline", data, style), f"window since {fmt_time(data['since'], style)}"]
    for s in data["stages"]:
        parts += [
            "",
            section(
                f"{stage_title(s['stage'])}: {fmt_int(s['completions'])} done, {fmt_int(s['failures'])} failed "
                f"({fmt_pct(s['failure_rate'])}), avg {fmt_duration(s['avg_latency_ms'])}, "
                f"p95 {fmt_duration(s['p95_latency_ms'])}",
                style,
            ),
        ]
        parts.append(
            f"At this stage now ({_shown(s['in_progress'], s.get('in_progress_total'), 'longest')}):"
        )
        if s["in_progress"]:
            parts.append(
                table(
                    [
                        [
                            r["artifact_id"],
                            r["status"],
                            fmt_duration(r["elapsed_ms"]),
                            fmt_text(r["coach_user_id"]),
                            fmt_text(r["organization_id"]),
                            fmt_text(r["source_channel"]),
                        ]
                        for r in s["in_progress"]
                    ],
                    ["Artifact", "Status", "In stage", "Coach", "Org", "Channel"],
                    width=style.width,
                    ids=[0, 4],
                    shrink=[3, 5],
                    priority=[0, 1, 2, 4, 3, 5],
                )
            )
        parts.append("Latency by hour (avg, last 24h):")
        hours = s["latency_by_hour"]
        if any(h["count"] for h in hours):
            parts.append(
                bar_chart(
                    [
                        (
                            fmt_time(h["hour_start"], style, date=False, seconds=False),
                            h["avg_latency_ms"],
                            f"{fmt_duration(h['avg_latency_ms'])} ({h['count']})",
                        )
                        for h in hours
                    ],
                    width=style.chart_width,
                    style=style,
                )
            )
        else:
            parts.append("  (no completions in the last 24h)")
        parts.append("Errors by code:")
        if s["errors"]:
            parts.append(
                table(
                    [
                        [
                            e["error_code"],
                            fmt_int(e["count"]),
                            fmt_time(e["last_seen"], style),
                            fmt_text(e["example_message"]),
                        ]
                        for e in s["errors"]
                    ],
                    ["Error code", "Count", "Last seen", "Example"],
                    align=["left", "right", "left", "left"],
                    width=style.width,
                    shrink=[3],
                    min_cut={3: MIN_TEXT},
                    labels={3: ""},
                )
            )
        else:
            parts.append("  none")
        parts.append(
            f"Retry queue ({_shown(s['retry_queue'], s.get('retry_queue_total'), 'latest', ' failed here')}):"
        )
        if s["retry_queue"]:
            parts.append(
                table(
                    [
                        [
                            r["artifact_id"],
                            fmt_time(r["failed_at"], style),
                            fmt_text(r["error_code"]),
                            fmt_text(r["organization_id"]),
                            fmt_int(r["retry_count"]),
                            "retry ↓" if r["retry_options"] else "used up",
                        ]
                        for r in s["retry_queue"]
                    ],
                    ["Artifact", "Failed at", "Error", "Org", "Retries", "Action"],
                    width=style.width,
                    ids=[0, 3],
                    shrink=[2],
                    priority=[0, 5, 1, 3, 4, 2],
                )
            )
            commands = [r["retry_options"][0]["command"] for r in s["retry_queue"] if r["retry_options"]]
            if commands:
                parts += _wrapped(
                    "Retry commands (resume at the failed stage; --full re-runs everything):", style.width
                )
                for command in commands:
                    parts += shell_command(command, width=style.width, prefix="  ")
    if data.get("retry_note"):
        parts += ["", *_wrapped(data["retry_note"], style.width)]
    return "\n".join(parts)


def _artifact_cells(r: Mapping[str, Any], style: Style, collapsed: bool, cost_decimals: int) -> list[str]:
    if collapsed:
        return [
            r["artifact_id"],
            r["status"],
            fmt_text(r["organization_id"]),
            fmt_time(r["received_at"], style),
        ]
    return [
        r["artifact_id"],
        r["status"],
        fmt_text(r["source_channel"]),
        fmt_text(r["coach_user_id"]),
        fmt_text(r["organization_id"]),
        fmt_int(r["claim_count"]),
        fmt_int(r["disambiguation_count"]),
        fmt_duration(r["end_to_end_latency_ms"]),
        fmt_money(r["total_ai_cost"], cost_decimals),
        _short_time(r["received_at"], style)[:-3],
        r.get("action") or "",
    ]


ARTIFACT_HEADERS: Final = [
    "Artifact ID",
    "Status",
    "Source",
    "Coach",
    "Org",
    "Claims",
    "Disambig.",
    "Latency",
    "Cost",
    "Created",
    "Action",
]
ARTIFACT_HEADERS_COLLAPSED: Final = ["Artifact ID", "Status", "Org", "Created"]


#: Columns the grid hides, in this order, when ids leave no room (CSV/JSON keep them).
_GRID_DROPPABLE: Final = ("Source", "Coach", "Disambig.", "Claims", "Cost", "Latency", "Created")
#: The grid cuts coach ids (at their start) to no fewer characters than this, and
#: only when that shows every column.
COACH_MIN: Final = 10


def _grid(
    rows: Sequence[Mapping[str, Any]],
    style: Style,
    collapsed: bool,
    *,
    colour: bool = True,
    cost_decimals: int | None = None,
) -> tuple[str, list[str]]:
    """The artifact grid fitted to the width. Artifact and organisation ids are never
    cut (they must stay copyable). When the grid is wider than the width:

    1. the column gap narrows to one space;
    2. then, if that lets every column show, the Coach column is cut at its start
       (``coach-northwind-06`` → ``…thwind-06``: coach ids differ at their end),
       to no fewer than :data:`COACH_MIN` characters — so that 140 columns show
       the whole grid even with 31-character artifact ids;
    3. else the least important columns are hidden (:data:`_GRID_DROPPABLE`, in
       order, as few as needed; Coach whole or not at all);
    4. if the ids still do not fit, the org goes on a line under its row.

    Returns (table, hidden columns)."""
    headers = list(ARTIFACT_HEADERS_COLLAPSED if collapsed else ARTIFACT_HEADERS)
    if cost_decimals is None:
        cost_decimals = money_decimals(r["total_ai_cost"] for r in rows)
    cells = [_artifact_cells(r, style, collapsed, cost_decimals) for r in rows]
    align = ["left"] * 4 if collapsed else ["left"] * 5 + ["right"] * 4 + ["left"] * 2
    colours: list[list[str | None]] = [[None] * len(headers) for _ in rows]
    for row_colours, r in zip(colours, rows, strict=True):
        row_colours[1] = STATUS_COLOURS.get(str(r["status"]))
    droppable = () if collapsed else _GRID_DROPPABLE

    def fit(shrink: list[int]) -> Fitted:
        return fit_table(
            cells,
            headers,
            align=align,
            width=style.width,
            ids=[headers.index("Artifact ID"), headers.index("Org")],
            shrink=shrink,
            min_cut={i: COACH_MIN for i in shrink},
            keep_end=shrink,
            drop=[headers.index(h) for h in droppable],
            max_col=60,
            colours=colours if colour else None,
            style=style,
        )

    if not collapsed:
        whole = fit([headers.index("Coach")])
        if not whole.hidden and not whole.moved:
            return whole.text, []
    fitted = fit([])
    return fitted.text, list(fitted.hidden)


def _artifacts_footer(data: Mapping[str, Any]) -> str:
    """``1–50 of 312 artifacts``, or why the page is empty."""
    total = int(data["total"])
    if data["rows"]:
        return f"{data['first']}–{data['last']} of {total} artifact{'s' if total != 1 else ''}"
    if total:
        last = data["last_page"]
        return (
            f"page {data['page']} is past the end ({total} artifact{'s' if total != 1 else ''}, "
            f"{data['limit']} per page): the last page is --page {last}"
        )
    f = data.get("filters") or {}
    org = f.get("org")
    narrowed = any(f.get(k) is not None for k in ("status", "channel", "search"))
    if org is not None:
        return f"no artifacts for organisation {org}" + (
            " match these filters" if narrowed else " were received in this window"
        )
    return "no artifacts match these filters" if narrowed else "no artifacts were received in this window"


def render_artifacts(
    data: Mapping[str, Any], style: Style, *, collapsed: bool = False, expanded: bool = False
) -> str:
    rows = data["rows"]
    footer = _artifacts_footer(data)
    if data["next_page"]:
        footer += f"  ·  next page: --page {data['next_page']}"
    parts = [_header("voicepipe artifacts", data, style)]
    hidden: list[str] = []
    if not expanded:
        grid, hidden = _grid(rows, style, collapsed)
        parts.append(grid)
    else:
        cost_decimals = money_decimals(r["total_ai_cost"] for r in rows)  # one for the page
        for r in rows:
            parts.append("")
            grid, row_hidden = _grid([r], style, False, cost_decimals=cost_decimals)
            hidden += [h for h in row_hidden if h not in hidden]
            parts.append(grid)
            parts += _joined(
                [
                    f"claims {fmt_int(r['claim_count'])}",
                    f"entities {fmt_int(r.get('entity_count'))} (needs review {fmt_int(r['disambiguation_count'])})",
                    f"drafts {fmt_int(r.get('draft_count'))}",
                ],
                style.width,
            )
            if r["status"] == "failed":
                parts.append(
                    truncate(
                        f"  error at {fmt_text(r['failed_stage'])}: {fmt_text(r['error_code'])}: "
                        f"{fmt_text(r['error_message'])}",
                        style.width,
                    )
                )
            for ev in r.get("timeline", []):
                parts.append(_timeline_line(ev, style, indent="  "))
            for opt in r.get("retry_options", []):
                parts += shell_command(
                    opt["command"], width=style.width, prefix=f"  retry ({opt['stage']}): "
                )
        if data.get("retry_note"):
            parts += ["", *_wrapped(data["retry_note"], style.width)]
    parts += ["", footer]
    if hidden:
        hidden = [h for h in ARTIFACT_HEADERS if h in hidden]
        parts += _wrapped(
            f"(hidden to fit {style.width} columns: {', '.join(hidden)}; a wider terminal or --width N "
            "shows them, --format csv has every field)",
            style.width,
            subsequent=" ",
        )
    return "\n".join(parts)


def _timeline_line(ev: Mapping[str, Any], style: Style, *, date: bool = False, indent: str = "") -> str:
    """``HH:MM:SS ✓ event_type (detail)``: ✓ success, ✗ failure, ● anything else
    (distinct shapes, so they read without colour), cut to the width."""
    kind = str(ev.get("kind"))
    mark = style.paint(_TIMELINE_MARK.get(kind, "●"), _kind_colour(kind))
    detail = f" ({ev['detail']})" if ev.get("detail") else ""
    line = f"{indent}{fmt_time(ev['timestamp'], style, date=date)} {mark} {ev['event_type']}{detail}"
    limit = style.width + (len(mark) - 1)
    return truncate(line, limit)


def render_artifact(data: Mapping[str, Any], style: Style) -> str:
    a = data["artifact"]
    status = style.paint(str(a["status"]), STATUS_COLOURS.get(str(a["status"])))
    lines = [f"{style.bold('Artifact ' + str(a['artifact_id']))}  {status}"]
    lines += _joined(
        [
            f"channel {fmt_text(a['source_channel'])}",
            f"coach {fmt_text(a['coach_user_id'])}",
            f"org {fmt_text(a['organization_id'])}",
            f"voice note {fmt_text(a['voice_note_id'])}",
        ],
        style.width,
    )
    lines += _joined(
        [
            f"created {fmt_time(a['received_at'], style)} ({style.tzname(a['received_at'])})",
            f"total processing {fmt_duration(a['processing_ms'])}",
            f"cost {fmt_money(a['total_ai_cost'])}",
        ],
        style.width,
    )
    lines += _joined(
        [
            f"claims {fmt_int(a['claim_count'])}",
            f"entities {fmt_int(a['entity_count'])} (needs review {fmt_int(a['disambiguation_count'])})",
            f"drafts {fmt_int(a['draft_count'])}",
            f"retries {fmt_int(a['retry_count'])}",
        ],
        style.width,
    )
    if a["status"] == "failed":
        lines += _wrapped(
            f"failed at {fmt_text(a['failed_stage'])}: {fmt_text(a['error_code'])}: "
            f"{fmt_text(a['error_message'])}",
            style.width,
            "  ",
            subsequent="    ",
            prose=True,
            max_lines=6,
        )
    lines += ["", section("Timeline", style)]
    day = None
    for ev in data["timeline"]:
        d = to_tz(ev["timestamp"], style.tz).date()
        if d != day:
            lines.append(style.paint(d.isoformat(), "dim"))
            day = d
        lines.append(_timeline_line(ev, style))
    lines += ["", section("Retry options", style)]
    if data["retry_options"]:
        for o in data["retry_options"]:
            lines += shell_command(o["command"], width=style.width, prefix=f"  {o['stage']:<18} ")
        if data.get("retry_note"):
            lines += _wrapped(data["retry_note"], style.width, "  ")
    elif a["status"] == "failed":
        lines.append("  none: the retry limit is reached")
    else:
        lines.append(f"  none ({a['status']}: only failed artifacts are retried)")
    lines += ["", section("Retry history", style)]
    if data["retries"]:
        lines.append(_retry_table(data["retries"], style, artifact=False))
    else:
        lines.append("  none")
    return "\n".join(lines)


#: Organisations listed in the metrics table (busiest first); JSON has them all.
ORG_ROWS: Final = 20


def render_metrics(data: Mapping[str, Any], style: Style) -> str:
    c = data["cards"]
    scope = f"org {data['organization_id']}" if data.get("organization_id") else "all organisations"
    window = data.get("range_label") or f"last {data['range']}"
    parts = [_header(f"voicepipe metrics · {window} · {scope}", data, style)]
    import textwrap

    for note in data.get("notes") or ():
        for line in textwrap.wrap(f"note: {note}", style.width, subsequent_indent="      "):
            parts.append(style.paint(line, "yellow"))
    items = [
        (
            "Artifacts processed",
            fmt_int(c["artifacts_processed"]),
            f"{fmt_int(c['artifacts_received'])} received",
        ),
        ("Completion rate", fmt_pct(c["completion_rate"]), "of completed + failed"),
        (
            "End-to-end latency",
            fmt_duration(c["avg_end_to_end_latency_ms"]) + " avg",
            "p95 " + fmt_duration(c["p95_end_to_end_latency_ms"]),
        ),
        ("Total AI cost", fmt_money(c["total_ai_cost"]), "sum of ai_cost"),
        ("Auto-resolution rate", fmt_pct(c["auto_resolution_rate"]), "resolved without review"),
        ("Disambiguation backlog", fmt_int(c["disambiguation_backlog"]), "entities awaiting review"),
    ]
    parts += ["", cards(items, style=style), ""]
    daily = data["bucket_seconds"] >= 86400

    def label(ts: dt.datetime) -> str:
        if daily:
            return ts.strftime("%m-%d") + " UTC" if style.tz is not dt.timezone.utc else ts.strftime("%m-%d")
        return fmt_time(ts, style, date=False, seconds=False)

    series = data["series"]
    unit = (
        "day"
        if daily
        else ("hour" if data["bucket_seconds"] == 3600 else f"{data['bucket_seconds'] // 60} min")
    )
    parts.append(section(f"Throughput (completed per {unit})", style))
    parts.append(
        bar_chart(
            [
                (
                    label(r["period_start"]),
                    r["artifacts_completed"],
                    f"{r['artifacts_completed']} ✓ {r['artifacts_failed']} ✗",
                )
                for r in series
            ],
            width=style.chart_width,
            style=style,
            colour="green",
        )
    )
    parts += ["", section("Latency by stage (avg; p95)", style)]
    parts.append(
        bar_chart(
            [
                (
                    stage_title(s["stage"]),
                    s["avg_latency_ms"],
                    fmt_duration(s["avg_latency_ms"]) + "; p95 " + fmt_duration(s["p95_latency_ms"]),
                )
                for s in data["stages"]
            ],
            width=style.chart_width,
            style=style,
        )
    )
    rates = [r["overall_failure_rate"] for r in series]
    costs = [r["total_ai_cost"] for r in series]
    present = [x for x in rates if not is_null(x)]
    parts += [
        "",
        section("Trends (oldest → newest)", style),
        f"  failure rate  {sparkline(rates)}  "
        + (f"min {fmt_pct(min(present))} max {fmt_pct(max(present))}" if present else NULL),
        f"  cost          {sparkline(costs)}  total {fmt_money(c['total_ai_cost'])}",
        "",
        section(
            "Transcript confidence (transcription_completed"
            + (", last 24h)" if data.get("confidence_histogram_since") != data["start"] else ")"),
            style,
        ),
        histogram(data["confidence_histogram"], width=style.chart_width, style=style),
        "",
        section("Organisations", style),
    ]
    orgs = data["organizations"][:ORG_ROWS]
    if orgs:
        costs = fmt_money_column([o["total_ai_cost"] for o in orgs])
        fitted = fit_table(
            [
                [
                    fmt_text(o["organization_id"]),
                    fmt_int(o["artifacts_received"]),
                    fmt_int(o["artifacts_completed"]),
                    fmt_int(o["artifacts_failed"]),
                    fmt_duration(o["p95_end_to_end_latency_ms"]),
                    cost,
                    fmt_pct(o["overall_failure_rate"]),
                ]
                for o, cost in zip(orgs, costs, strict=True)
            ],
            ["Organisation", "Received", "Completed", "Failed", "p95 latency", "Cost", "Failure rate"],
            align=["left"] + ["right"] * 6,
            width=style.width,
            ids=[0],
            shrink=[],
            drop=[1, 4, 2],
        )
        parts.append(fitted.text)
        if fitted.hidden:
            parts += _wrapped(
                f"(hidden to fit {style.width} columns: {', '.join(fitted.hidden)}; --format json has them)",
                style.width,
                subsequent=" ",
            )
        if len(data["organizations"]) > ORG_ROWS:
            parts.append(
                f"(the {ORG_ROWS} busiest of {len(data['organizations'])} organisations; "
                "--format json lists all, --org ORG shows one)"
            )
    else:
        parts.append("  none")
    return "\n".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def render_events(data: Mapping[str, Any], style: Style) -> str:
    """The event log and a footer that says how many events matched, which of
    them are shown, and how to see the rest."""
    rows = data["rows"]
    total = data.get("total")
    zone = f"times in {style.tzname(data.get('generated_at'))}"
    limit = data.get("limit")
    page = int(data.get("page") or 1)
    if not rows:
        if total:
            last = max(1, -(-int(total) // int(limit))) if limit else 1
            return (
                f"page {page} is past the end ({_plural(int(total), 'event')}, {limit} per page): "
                f"the last page is --page {last}"
            )
        return "no events match these filters"
    first = int(data.get("offset") or 0) + 1
    last_row = first + len(rows) - 1
    if not data.get("truncated"):
        footer = "\n".join(_wrapped(f"{_plural(len(rows), 'event')} (newest first; {zone})", style.width))
    else:
        shown = f"{first:,}–{last_row:,}" if first > 1 or len(rows) > 1 else f"{first:,}"
        of = f"of {int(total):,}" if total is not None else "of more"
        footer = "\n".join(_wrapped(f"events {shown} {of} (newest first; {zone})", style.width))
        nxt = []
        if total is None or last_row < int(total):
            nxt.append(f"next page: --page {page + 1}")
        nxt += ["more per page: --limit N (at most 10000)", "all: --format csv"]
        footer += "\n" + "\n".join(_joined(nxt, style.width, indent="", subsequent=""))
    return _event_table(rows, style) + "\n\n" + footer


def render_event_line(ev: Mapping[str, Any], style: Style) -> str:
    """One line per event for --follow (like tail -f): the detail is cut to the
    width, never the artifact id (at a narrow width it goes on a second line)."""
    mark = style.paint(_KIND_MARK.get(str(ev.get("kind")), "·"), _kind_colour(ev.get("kind")))
    extra = len(mark) - 1  # colour codes
    head = f"{fmt_time(ev['timestamp'], style)} {mark} {ev['event_type']:<28}"
    artifact = fmt_text(ev.get("artifact_id"))
    detail = str(ev.get("detail") or "")
    line = f"{head} {artifact:<14}"
    if len(line) - extra > style.width:
        line = head.rstrip() + "\n" + UNDER_INDENT + artifact
    last = line.rsplit("\n", 1)[-1]
    room = style.width + (extra if "\n" not in line else 0) - len(last) - 2
    if detail and room >= MIN_CUT:
        line += "  " + truncate(detail, room)
    return "\n".join(part.rstrip() for part in line.split("\n"))


def render_event(ev: Mapping[str, Any], style: Style) -> str:
    lines = [f"{style.bold('Event ' + str(ev['event_id']))}  {ev['event_type']} ({ev.get('kind')})", ""]
    keys = [k for k in ev if k not in ("kind", "detail")]
    width = max(len(k) for k in keys)
    for k in keys:
        v = ev[k]
        if isinstance(v, dt.datetime):
            text = f"{fmt_time(v, style)} ({style.tzname(v)})"
        elif isinstance(v, Mapping):
            text = ", ".join(f"{kk}={vv}" for kk, vv in sorted(v.items())) if v else NULL
        else:
            text = fmt_text(v)
        room = style.width - width - 4
        if k.endswith("_id"):  # ids are never cut
            lines.append(f"  {k:<{width}}  {text}")
        else:
            lines += _wrapped(
                text, style.width, f"  {k:<{width}}  ", subsequent=" " * (width + 4), prose=True, max_lines=3
            ) or [f"  {k:<{width}}  {truncate(text, room)}"]
    if ev.get("detail"):
        lines += [
            "",
            *_wrapped(str(ev["detail"]), style.width, "  ", subsequent="  ", prose=True, max_lines=6),
        ]
    return "\n".join(lines)


def _alerts_table(rows: Sequence[Mapping[str, Any]], style: Style) -> str:
    """Alerts as entries of two lines (more when narrow): what and where first, the
    summary below, wrapped; the alert id (for `voicepipe alerts ack`) is never cut."""
    marks = {"critical": ("✖", "red"), "warning": ("▲", "yellow")}
    lines = []
    for r in rows:
        mark, colour = marks.get(str(r["severity"]), ("·", None))
        status = str(r["status"])
        if r.get("acknowledged_by"):
            status += f", acknowledged by {r['acknowledged_by']}"
        severity = f"{mark} {r['severity']}"
        one_line = (
            f"{severity}  {r['rule']}  {fmt_text(r['scope'])}  · raised {_short_time(r['raised_at'], style)}"
            f" · {status}"
        )
        head = (
            [one_line]
            if len(one_line) <= style.width
            else _joined(
                [
                    f"{severity}  {r['rule']}  {fmt_text(r['scope'])}",
                    f"raised {_short_time(r['raised_at'], style)}",
                    status,
                ],
                style.width,
                indent="",
                subsequent="    ",
            )
        )
        if colour and style.colour and head[0].startswith(severity):
            head[0] = style.paint(severity, colour) + head[0][len(severity) :]
        lines += head
        ref = f"(id {r['alert_id']})"
        summary = _wrapped(
            fmt_text(r.get("summary")), style.width, "    ", subsequent="    ", prose=True, max_lines=3
        )
        if summary and len(summary[-1]) + 2 + len(ref) <= style.width:
            summary[-1] += "  " + ref
        else:
            summary.append("    " + ref)
        lines += summary
    return "\n".join(lines)


def _pending_table(rows: Sequence[Mapping[str, Any]], style: Style, now: dt.datetime | None) -> str:
    """Pending raises and resolutions (``reports.pending_alerts``), as entries of two
    lines like the alerts': what would happen, to what, since when (a resolution:
    for how long, at ``now``, it has been clear) and in how long; then what it would
    be raised with, or the id of the alert that would resolve. A stale wait says why
    it is not about to happen."""
    lines = []
    for r in rows:
        raise_ = r["kind"] == "raise"
        since = _short_time(r["since"], style)
        severity = str(r.get("severity"))
        if r.get("stale"):
            mark, colour = "○ stale", "dim"
            when = [
                f"{'found' if raise_ else 'clear'} since {since}",
                f"last check that {'found it' if raise_ else 'found it clear'} {_short_time(r['seen_at'], style)}",
            ]
        else:
            mark, colour = ("◔ pending", "yellow") if raise_ else ("◑ resolving", "green")
            left = r.get("remaining_seconds")
            verb = "raised" if raise_ else "resolves"
            hold = "if it holds" if raise_ else "if still clear"
            clear = (
                f"clear since {since}"
                if now is None
                else f"clear for {fmt_duration(max((now - r['since']).total_seconds(), 0) * 1000)}"
            )
            when = [
                f"found since {since}" if raise_ else clear,
                f"{verb} at the next check {hold}"
                if not left
                else f"{verb} in {fmt_duration(float(left) * 1000)} {hold}",
            ]
        what = "  ".join([mark, *([severity] if r.get("severity") else []), r["rule"], fmt_text(r["scope"])])
        head = _joined([what, *when], style.width, "")
        if style.colour:
            head[0] = style.paint(mark, colour) + head[0][len(mark) :]
        lines += head
        if r.get("stale"):
            detail = (
                f"not about to {'be raised' if raise_ else 'resolve'}: no check since for longer than the "
                "wait allows (are checks running?); the next check starts the wait again"
                + ("" if raise_ else f" (id {r['alert_id']})")
            )
        elif not raise_:
            detail = f"(id {r['alert_id']})"
        elif r.get("found_now") is False:
            detail = "clear now: the next check ends the wait unless it finds the condition again"
        else:
            detail = fmt_text(r.get("summary"))
        lines += _wrapped(detail, style.width, "    ", subsequent="    ", prose=True, max_lines=3)
    return "\n".join(lines)


def render_alerts(data: Mapping[str, Any], style: Style) -> str:
    title = "voicepipe alerts" + (" · history" if data["history"] else " · active")
    parts = [_header(title, data, style)]
    if data["rows"]:
        parts.append(_alerts_table(data["rows"], style))
        parts.append(f"\n{_plural(len(data['rows']), 'alert')}")
    elif not data.get("alert_log_present") and not data.get("last_check"):
        parts += _wrapped(
            "no alert log yet: `voicepipe check` (run from cron) evaluates the rules and records alerts",
            style.width,
        )
    elif not data.get("alert_log_present"):
        parts.append("no alert raised yet")
    else:
        parts.append("no active alerts" if not data["history"] else "no alerts match these filters")
    waiting = data.get("pending") or []
    if waiting:
        parts += ["", section("Pending (for_minutes / keep_firing_minutes)", style)]
        parts.append(_pending_table(waiting, style, data.get("generated_at")))
        raises = sum(1 for w in waiting if w["kind"] == "raise" and not w.get("stale"))
        resolves = sum(1 for w in waiting if w["kind"] == "resolve" and not w.get("stale"))
        stale = sum(1 for w in waiting if w.get("stale"))
        counts = [f"{raises} pending raise{'s' if raises != 1 else ''}", f"{resolves} resolving"]
        parts.append("\n" + ", ".join(counts + ([f"{stale} stale"] if stale else [])))
    last = data.get("last_check")
    if last:
        n = int(last.get("active") or 0)
        active = f" ({n} active alert{'s' if n != 1 else ''})" if n else ""
        parts.append(
            f"last check {fmt_time(last['checked_at'], style, seconds=False)}: {last['status']}{active}"
        )
    return "\n".join(parts)


def _retry_table(rows: Sequence[Mapping[str, Any]], style: Style, *, artifact: bool) -> str:
    """Retries, one a row; the artifact id is never cut (the date goes first, then
    columns move to a line under each row)."""
    colours = {"succeeded": "green", "failed": "red", "pending": "yellow"}
    head = ["Initiated", *(["Artifact"] if artifact else []), "#", "Stage", "By", "Outcome"]
    head += ["Duration", "Error"]
    at = head.index("Outcome")
    tint = [[None] * at + [colours.get(r["outcome"])] + [None] * (len(head) - at - 1) for r in rows]
    ids = [1] if artifact else []
    priority = [0, *ids, at, head.index("#"), head.index("By"), head.index("Duration")]
    priority += [head.index("Stage"), head.index("Error")]
    fitted = Fitted("")
    for short in (False, True):
        body = [
            [
                (_short_time if short else fmt_time)(r["initiated_at"] or r["finished_at"], style),
                *([fmt_text(r["artifact_id"])] if artifact else []),
                fmt_int(r["attempt"]),
                fmt_text(r["stage"]),
                fmt_text(r["actor"]),
                r["outcome"],
                fmt_duration(r["duration_ms"]),
                fmt_text(r["error_code"]),
            ]
            for r in rows
        ]
        fitted = fit_table(
            body,
            head,
            width=style.width,
            ids=ids,
            shrink=[len(head) - 1],
            priority=priority,
            colours=tint,
            style=style,
        )
        if not fitted.moved:
            break
    return fitted.text


def render_retries(data: Mapping[str, Any], style: Style) -> str:
    t = data["totals"]
    parts = [_header("voicepipe retries", data, style)]
    parts += _joined(
        [
            f"{t['retries']} {'retry' if t['retries'] == 1 else 'retries'}",
            f"succeeded {t['succeeded']}",
            f"failed {t['failed']}",
            f"pending {t['pending']}",
        ],
        style.width,
        indent="",
        subsequent="",
    )
    rows = data["rows"]
    if not rows:
        parts += _wrapped("no retries recorded (`voicepipe retry ARTIFACT_ID` starts one)", style.width)
        return "\n".join(parts)
    parts.append(_retry_table(rows, style, artifact=True))
    if len(rows) < int(t["retries"]):
        parts.append(f"(the newest {len(rows):,} of {int(t['retries']):,}; --limit N shows more)")
    return "\n".join(parts)


def render_sql(data: Mapping[str, Any], style: Style) -> str:
    cols = data["columns"]
    body = [[_sql_cell(r[c], style) for c in cols] for r in data["rows"]]
    out = table(body, cols, width=style.width, max_col=60, labels={i: c for i, c in enumerate(cols)})
    n = len(data["rows"])
    # times are shown without an offset (as every report shows them), so say in which zone
    when = next((v for r in data["rows"] for v in r.values() if isinstance(v, dt.datetime)), None)
    zone = f"; times in {style.tzname(when)}" if when is not None else ""
    return out + f"\n({n} row{'s' if n != 1 else ''}{', truncated' if data.get('truncated') else ''}{zone})"


def _sql_cell(value: Any, style: Style) -> str:
    """A value as DuckDB returned it (a float in full, ``repr``-style: 28180213.0),
    NULL as NULL; times in the report's zone."""
    if is_null(value):
        return "NULL"
    if isinstance(value, dt.datetime):
        return fmt_time(value, style)
    return str(value)


# --------------------------------------------------------------- CSV shapes

#: report → the columns its CSV export carries (the report's main table).
CSV_COLUMNS: Final = {
    "dashboard": ("section", "key", "value"),
    "pipeline": (
        "stage",
        "completions",
        "failures",
        "failure_rate",
        "avg_latency_ms",
        "p95_latency_ms",
        "in_progress",
        "retry_queue",
        "top_error_code",
    ),
    "metrics": (  # the series' fields, as JSON has them
        "period_start",
        "artifacts_received",
        "artifacts_completed",
        "artifacts_failed",
        "overall_failure_rate",
        "avg_end_to_end_latency_ms",
        "p95_end_to_end_latency_ms",
        "total_ai_cost",
        "source",
    ),
}


def csv_dashboard(data: Mapping[str, Any]) -> str:
    def value(key: str, v: Any) -> Any:
        return machine_float(v, key) if isinstance(v, float) else v

    rows: list[dict[str, Any]] = [
        {"section": "cards", "key": k, "value": value(k, v)} for k, v in data["cards"].items()
    ]
    for s in data["stages"]:
        for k, v in s.items():
            if k != "stage":
                rows.append({"section": f"stage:{s['stage']}", "key": k, "value": value(k, v)})
    rows.append({"section": "alerts", "key": "active", "value": len(data["alerts"])})
    rows.append({"section": "alerts", "key": "pending", "value": int(data.get("alerts_pending") or 0)})
    return to_csv(rows, CSV_COLUMNS["dashboard"])


def csv_pipeline(data: Mapping[str, Any]) -> str:
    rows = [
        {
            **{
                k: s[k]
                for k in (
                    "stage",
                    "completions",
                    "failures",
                    "failure_rate",
                    "avg_latency_ms",
                    "p95_latency_ms",
                )
            },
            "in_progress": s.get("in_progress_total", len(s["in_progress"])),
            "retry_queue": s.get("retry_queue_total", len(s["retry_queue"])),
            "top_error_code": s["errors"][0]["error_code"] if s["errors"] else None,
        }
        for s in data["stages"]
    ]
    return to_csv(rows, CSV_COLUMNS["pipeline"])


def csv_artifact(data: Mapping[str, Any]) -> str:
    from .reports import EVENT_COLUMNS

    return to_csv(data["timeline"], EVENT_COLUMNS)
