"""Parsing of the time values users type on the command line: relative durations
(``30m``, ``2h``, ``7d``, ``1w``), ISO dates and datetimes (``2026-11-01``,
``2026-11-01T08:00``, ``2026-11-01 08:00:00+01:00``) and the words ``now``,
``today`` and ``yesterday``.

Pure functions of their arguments (the current time and the zone are parameters,
so tests freeze them); every result is a timezone-aware UTC datetime. Naive ISO
values and the words ``today`` / ``yesterday`` are read in the zone given as ``tz``:
UTC by default, or the local time zone with ``tz=None`` (what ``voicepipe report``
passes unless ``--utc``, so a time typed in is read in the zone the tables show).
Bad values raise :class:`UsageError` with a message listing the accepted forms, and
so do times outside [:data:`EARLIEST`, :data:`LATEST`): nothing in a store is older
than 1970, and the bound leaves room for the arithmetic callers do on a range.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from .errors import UsageError

UTC: Final = dt.timezone.utc

ACCEPTED_FORMS: Final = (
    "a duration before now such as 90s, 30m, 2h, 7d or 1w; "
    "an ISO date or datetime such as 2026-11-01 or 2026-11-01T08:00 (UTC unless an offset is given); "
    "or now, today, yesterday"
)


def accepted_forms(tz: dt.tzinfo | None = UTC) -> str:
    """:data:`ACCEPTED_FORMS`, naming the zone naive values are read in."""
    if tz is UTC:
        return ACCEPTED_FORMS
    zone = "local time" if tz is None else str(tz)
    return ACCEPTED_FORMS.replace("(UTC unless", f"({zone} unless")


#: The earliest and (exclusive) latest time a command accepts.
EARLIEST: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = dt.datetime(9999, 1, 1, tzinfo=UTC)
_OUT_OF_RANGE: Final = "use a time from 1970-01-01 up to 9998-12-31"

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(value: str) -> dt.timedelta:
    """``90s``, ``30m``, ``2h``, ``7d``, ``1w`` (a number and one unit) → timedelta;
    a bare ``0`` is no time at all (``compact --grace 0``), whatever the unit."""
    if value.strip() in ("0", "0.0"):
        return dt.timedelta(0)
    match = _DURATION.match(value)
    if match is None:
        raise UsageError(f"invalid duration {value!r}: use a number and a unit, e.g. 90s, 30m, 2h, 7d or 1w")
    try:
        return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
    except OverflowError:
        raise UsageError(
            f"invalid duration {value!r}: too large; use a number and a unit, e.g. 90s, 30m, 2h, 7d or 1w"
        ) from None


def check_in_range(when: dt.datetime, value: str) -> dt.datetime:
    """``when`` (aware) in UTC, or :class:`UsageError` naming ``value`` (what the user
    typed) when it lies before 1970-01-01 or in the year 9999 or later."""
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        early = utc is not None and utc < EARLIEST
        raise UsageError(
            f"invalid time {value!r}: {'before 1970-01-01' if early else 'out of range'}; {_OUT_OF_RANGE}"
        )
    return utc


def _in_zone(naive: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    """A naive wall-clock time in ``tz`` (None: the local time zone, with its DST rules
    for that date), as an aware datetime."""
    if tz is None:
        return naive.astimezone()  # the system's local rules for that date
    return naive.replace(tzinfo=tz)


def parse_since(value: str, now: dt.datetime, tz: dt.tzinfo | None = UTC) -> dt.datetime:
    """A point in time from a duration before ``now``, an ISO date/datetime or a word.

    ``parse_since("2h", now)`` is ``now - 2h``; ``parse_since("2026-11-01", now)`` is
    midnight that day in ``tz``; ``today`` is midnight of ``now``'s date in ``tz``.
    ``tz`` is UTC by default; None means the local time zone. A value with an offset
    (or ``Z``) is read with it whatever ``tz`` is.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    text = value.strip()
    lowered = text.lower()
    if lowered == "now":
        return check_in_range(now, value)
    if lowered in ("today", "yesterday"):
        day = now.astimezone(tz).date() - dt.timedelta(days=1 if lowered == "yesterday" else 0)
        return check_in_range(_in_zone(dt.datetime.combine(day, dt.time()), tz), value)
    if _DURATION.match(text):
        try:
            return check_in_range(now.astimezone(UTC) - parse_duration(text), value)
        except (OverflowError, UsageError):  # a duration too large, or before year 1
            raise UsageError(f"invalid time {value!r}: before 1970-01-01; {_OUT_OF_RANGE}") from None
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"invalid time {value!r}: use {accepted_forms(tz)}") from None
    if parsed.tzinfo is None:
        try:
            parsed = _in_zone(parsed, tz)
        except (OverflowError, ValueError, OSError):  # local time of year 1 or 9999
            raise UsageError(f"invalid time {value!r}: out of range; {_OUT_OF_RANGE}") from None
    return check_in_range(parsed, value)


def parse_until(value: str, now: dt.datetime, tz: dt.tzinfo | None = UTC) -> dt.datetime:
    """Like :func:`parse_since` (``--until 1h`` means one hour before now)."""
    return parse_since(value, now, tz)


def refuse_empty(flag: str, value: str | None) -> None:
    """An empty ``--since``/``--until`` (``--since "$START"`` with START unset) is a
    usage error, not the same as leaving the flag out."""
    if value is not None and not value.strip():
        raise UsageError(
            f"{flag} is empty: give a time such as 30m, 2h, 7d or 2026-11-01, or leave {flag} out"
        )


def parse_range(
    since: str | None, until: str | None, now: dt.datetime, tz: dt.tzinfo | None = UTC
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Both ends of a ``--since/--until`` pair, checking that since < until. Naive
    values and ``today``/``yesterday`` are read in ``tz`` (None: local time)."""
    refuse_empty("--since", since)
    refuse_empty("--until", until)
    lo = parse_since(since, now, tz) if since else None
    hi = parse_until(until, now, tz) if until else None
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"--since ({lo:%Y-%m-%d %H:%M}) must be before --until ({hi:%Y-%m-%d %H:%M})")
    return lo, hi
