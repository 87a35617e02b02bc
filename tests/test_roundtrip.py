"""Property: any valid event recorded by a Recorder reads back unchanged from the
Parquet files with plain DuckDB (no voicepipe_obs code on the read side)."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voicepipe_obs as vp
from voicepipe_obs.events import (
    COLUMN_KINDS,
    COLUMN_NAMES,
    EVENT_TYPES,
    INT32_MAX,
    INT32_MIN,
    SETTABLE_FIELDS,
)

UTC = dt.timezone.utc

timestamps = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(9999, 12, 31, 23), timezones=st.just(UTC)
)
# the edges of every type, mixed in with ordinary values
int32s = st.one_of(st.sampled_from([INT32_MIN, INT32_MAX, 0, -1]), st.integers(INT32_MIN, INT32_MAX))
float64s = st.one_of(
    st.sampled_from(
        [0.0, -0.0, 5e-324, -1.7976931348623157e308, 1.7976931348623157e308, 2.2250738585072014e-308]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
)
texts = st.text(max_size=40)  # any unicode except lone surrogates, including "\x00" and astral planes

FIELD_VALUES = {
    "str": texts,
    "i32": int32s,
    "f64": float64s,
    "ts": timestamps,
    "map": st.dictionaries(texts, texts, max_size=4),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {"event_type": draw(st.sampled_from(EVENT_TYPES))}
    fields["timestamp"] = draw(timestamps)
    for name in sorted(SETTABLE_FIELDS):
        fields[name] = draw(st.none() | FIELD_VALUES[COLUMN_KINDS[name]])
    return fields


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(events(), min_size=1, max_size=12), durability=st.sampled_from(["spool", "sync", "memory"])
)
def test_events_read_back_equal_with_plain_duckdb(batch: list[dict[str, Any]], durability: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rec = vp.Recorder(root, strict=True, durability=durability)  # type: ignore[arg-type]
        expected: dict[str, dict[str, Any]] = {}
        for event in batch:
            fields = dict(event)
            event_type = fields.pop("event_type")
            event_id = rec.emit(event_type, **fields)
            assert event_id is not None and event_id not in expected
            expected[event_id] = {**event, "event_id": event_id}
        rec.close()
        assert rec.stats()["written"] == len(batch)

        glob = str(root / "events" / "**" / "*.parquet").replace("'", "''")
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
        names = rel.columns
        got = [dict(zip(names, row, strict=True)) for row in rel.fetchall()]

    assert sorted(r["event_id"] for r in got) == sorted(expected)
    for row in got:
        want = expected[row["event_id"]]
        for name in COLUMN_NAMES:
            value, wanted = row[name], want.get(name)
            if name == "pipeline_stage" and wanted is None:
                continue  # emit() fills in the event type's stage when none is given
            assert value == wanted, (name, value, wanted)
            if COLUMN_KINDS[name] == "f64" and wanted is not None:
                assert str(value) == str(wanted)  # bit-exact, including -0.0
        # the partition columns agree with the timestamp (UTC)
        assert str(row["date"]) == want["timestamp"].date().isoformat()
        assert int(row["hour"]) == want["timestamp"].hour
