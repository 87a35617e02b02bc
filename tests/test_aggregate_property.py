"""Property: for random event streams, every snapshot column equals a plain-Python
reference computed from the events by the DESIGN §6 definitions.

Streams span several hours and days (timestamps cluster around hour and midnight
boundaries), several organisations (and events without one), duplicate event_ids,
retries, failures, events without the optional fields, receipts far from their
completions, and late files written into old hours after a first incremental run.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicepipe_obs import aggregate as ag
from voicepipe_obs import store
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS, STAGE_COMPLETION_EVENTS, STAGE_FAILURE_EVENTS

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 1, 21, tzinfo=UTC)
BASE_US = store.to_us(BASE)
MIN_US = 60_000_000
NOW = dt.datetime(2026, 3, 6, tzinfo=UTC)

TYPES = [
    "artifact_received",
    "artifact_completed",
    "artifact_failed",
    "transcription_started",
    "transcription_completed",
    "transcription_failed",
    "claims_extracted",
    "claims_extraction_failed",
    "entity_resolution_completed",
    "entity_needs_disambiguation",
    "entity_resolution_failed",
    "drafts_generated",
    "draft_generation_failed",
    "retry_initiated",
    "retry_succeeded",
    "retry_failed",
    "entity_user_resolved",
    "circuit_breaker_opened",
]

# minutes from BASE (21:00): around 22:00, midnight, 01:00 and a day later
_MINUTES = st.one_of(
    st.integers(0, 60 * 52),
    st.sampled_from([59, 60, 61, 179, 180, 181, 60 * 27 - 1, 60 * 27, 60 * 51]),
)
_OPT_FLOAT = st.one_of(st.none(), st.floats(0, 5000, allow_nan=False).map(lambda x: round(x, 3)))
_OPT_SMALL = st.one_of(st.none(), st.integers(0, 6))


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    ts = BASE_US + draw(_MINUTES) * MIN_US + draw(st.integers(0, MIN_US - 1))
    return {
        "event_type": draw(st.sampled_from(TYPES)),
        "timestamp": ts,
        "artifact_id": draw(st.sampled_from(["a1", "a2", "a3", "a4", None])),
        "organization_id": draw(st.sampled_from(["o1", "o2", "o3", None])),
        "duration_ms": draw(_OPT_FLOAT),
        "confidence_score": draw(st.one_of(st.none(), st.floats(0, 1, allow_nan=False))),
        "claim_count": draw(_OPT_SMALL),
        "entity_count": draw(_OPT_SMALL),
        "disambiguation_count": draw(_OPT_SMALL),
        "draft_count": draw(_OPT_SMALL),
        "ai_cost": draw(st.one_of(st.none(), st.floats(0, 1, allow_nan=False))),
    }


def _row(event_id: str, ev: dict[str, Any]) -> list[Any]:
    row: list[Any] = [None] * NUM_COLUMNS
    row[COLUMN_INDEX["event_id"]] = event_id
    for key, value in ev.items():
        row[COLUMN_INDEX[key]] = value
    return row


# ------------------------------------------------------------------ the reference


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _avg(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def reference_metrics(evs: list[dict[str, Any]], first_receipt: dict[str, int]) -> dict[str, Any]:
    """DESIGN §6, one bucket and scope, written as plainly as possible."""
    out: dict[str, Any] = {}

    def of(*types: str) -> list[dict[str, Any]]:
        return [e for e in evs if e["event_type"] in types]

    out["artifacts_received"] = len(of("artifact_received"))
    out["artifacts_completed"] = len(of("artifact_completed"))
    out["artifacts_failed"] = len(of("artifact_failed"))
    stages = ["transcription", "claims_extraction", "entity_resolution", "draft_generation"]
    for stage in stages:
        durs = [e["duration_ms"] for e in of(*STAGE_COMPLETION_EVENTS[stage]) if e["duration_ms"] is not None]
        out[f"avg_{stage}_latency_ms"] = _avg(durs)
        out[f"p95_{stage}_latency_ms"] = _quantile(durs, 0.95)
    e2e = [
        (e["timestamp"] - first_receipt[e["artifact_id"]]) / 1000
        for e in of("artifact_completed")
        if e["artifact_id"] in first_receipt
    ]
    out["avg_end_to_end_latency_ms"] = _avg(e2e)
    out["p50_end_to_end_latency_ms"] = _quantile(e2e, 0.5)
    out["p95_end_to_end_latency_ms"] = _quantile(e2e, 0.95)
    out["p99_end_to_end_latency_ms"] = _quantile(e2e, 0.99)
    for stage in stages:
        failed = len(of(STAGE_FAILURE_EVENTS[stage]))
        done = len(of(*STAGE_COMPLETION_EVENTS[stage]))
        out[f"{stage}_failure_rate"] = _div(failed, done + failed)
    out["overall_failure_rate"] = _div(
        out["artifacts_failed"], out["artifacts_completed"] + out["artifacts_failed"]
    )
    out["avg_transcript_confidence"] = _avg(
        [e["confidence_score"] for e in of("transcription_completed") if e["confidence_score"] is not None]
    )
    out["avg_claim_confidence"] = _avg(
        [e["confidence_score"] for e in of("claims_extracted") if e["confidence_score"] is not None]
    )
    er = [e for e in of(*STAGE_COMPLETION_EVENTS["entity_resolution"]) if e["entity_count"] is not None]
    entities = sum(e["entity_count"] for e in er)
    pending = sum(e["disambiguation_count"] or 0 for e in er)
    out["auto_resolution_rate"] = _div(entities - pending, entities)
    out["disambiguation_rate"] = _div(pending, entities)
    out["total_claims_extracted"] = sum(e["claim_count"] or 0 for e in of("claims_extracted"))
    out["total_entities_resolved"] = entities
    out["total_drafts_generated"] = sum(e["draft_count"] or 0 for e in of("drafts_generated"))
    costs = [e for e in evs if e["ai_cost"] is not None]
    out["total_ai_cost"] = sum(e["ai_cost"] for e in costs)
    out["avg_cost_per_artifact"] = (
        _div(out["total_ai_cost"], len({e["artifact_id"] for e in costs if e["artifact_id"] is not None}))
        if costs
        else None
    )
    out["retries_initiated"] = len(of("retry_initiated"))
    out["retries_succeeded"] = len(of("retry_succeeded"))
    out["retries_failed"] = len(of("retry_failed"))
    # the disambiguation backlog's two terms (DESIGN §6 "derived")
    out["disambiguations_flagged"] = sum(
        e["disambiguation_count"] or 0 for e in of("entity_needs_disambiguation")
    )
    out["disambiguations_resolved"] = sum(e["disambiguation_count"] or 0 for e in of("entity_user_resolved"))
    return out


def reference(events: dict[str, dict[str, Any]]) -> dict[tuple[str, int, str | None], dict[str, Any]]:
    """(period_type, period_start µs, organization_id) → reference metrics."""
    first_receipt: dict[str, int] = {}
    for ev in events.values():
        if ev["event_type"] == "artifact_received" and ev["artifact_id"] is not None:
            a = ev["artifact_id"]
            first_receipt[a] = min(first_receipt.get(a, ev["timestamp"]), ev["timestamp"])
    buckets: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for ev in events.values():
        ts = ev["timestamp"]
        buckets["hourly", ts - ts % store.US_PER_HOUR].append(ev)
        buckets["daily", ts - ts % store.US_PER_DAY].append(ev)
    out = {}
    for (period, start), evs in buckets.items():
        out[period, start, None] = reference_metrics(evs, first_receipt)
        for org in {e["organization_id"] for e in evs} - {None}:
            scoped = [e for e in evs if e["organization_id"] == org]
            out[period, start, org] = reference_metrics(scoped, first_receipt)
    return out


def actual(root: Path) -> dict[tuple[str, int, str | None], dict[str, Any]]:
    out = {}
    for period in ("hourly", "daily"):
        for row in ag.read_snapshots(root, period):  # type: ignore[arg-type]
            key = (period, store.to_us(row["period_start"]), row["organization_id"])
            assert key not in out, f"duplicate snapshot row {key}"
            span = store.US_PER_HOUR if period == "hourly" else store.US_PER_DAY
            assert store.to_us(row["period_end"]) - key[1] == span
            out[key] = {k: row[k] for k in ag.METRIC_NAMES}
    return out


def assert_matches(root: Path, events: dict[str, dict[str, Any]]) -> None:
    want = reference(events)
    got = actual(root)
    assert set(got) == set(want)
    for key, ref in want.items():
        for name, value in ref.items():
            have = got[key][name]
            if value is None or have is None:
                assert have is None and value is None, (key, name, have, value)
            elif isinstance(value, int):
                assert have == value, (key, name, have, value)
            else:
                assert have == pytest.approx(value, rel=1e-9, abs=1e-6), (key, name, have, value)


# ---------------------------------------------------------------------- the test


_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_STREAMS = given(
    first=st.lists(_event(), min_size=1, max_size=40),
    late=st.lists(_event(), max_size=15),
    dup_share=st.integers(0, 3),
    split=st.integers(1, 4),
)


@_SETTINGS
@_STREAMS
def test_snapshots_equal_the_reference(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[dict[str, Any]],
    late: list[dict[str, Any]],
    dup_share: int,
    split: int,
) -> None:
    check_stream(tmp_path_factory.mktemp("prop"), first, late, dup_share, split)


@_SETTINGS
@_STREAMS
def test_snapshots_equal_the_reference_one_day_per_query(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    first: list[dict[str, Any]],
    late: list[dict[str, Any]],
    dup_share: int,
    split: int,
) -> None:
    """The same with every day its own chunk: rows of one chunk computed while the
    next loads, receipts and completions in different chunks, redone chunks."""
    monkeypatch.setattr(ag, "CHUNK_DAYS", 1)
    check_stream(tmp_path_factory.mktemp("prop1"), first, late, dup_share, split)


def check_stream(
    root: Path, first: list[dict[str, Any]], late: list[dict[str, Any]], dup_share: int, split: int
) -> None:
    """Write ``first`` (in ``split`` files plus duplicates), aggregate, compare; then
    write ``late`` (plus repeats) into old and new hours, aggregate, compare."""
    events: dict[str, dict[str, Any]] = {}
    rows = []
    for i, ev in enumerate(first):
        events[f"e{i}"] = ev
        rows.append(_row(f"e{i}", ev))
    # duplicates: the same events again, in other files
    dups = rows[:: max(1, 4 - dup_share)] if dup_share else []
    batches = [rows[i::split] for i in range(split)] + ([dups] if dups else [])
    for n, batch in enumerate(batches):
        if batch:
            store.write_event_rows(root, batch, f"first-{n}")
    ag.aggregate(root, now=NOW)
    assert_matches(root, events)
    if late:  # late files: old hours, new hours, and some repeats of known events
        late_rows = []
        for i, ev in enumerate(late):
            events[f"l{i}"] = ev
            late_rows.append(_row(f"l{i}", ev))
        late_rows += rows[:2]
        store.write_event_rows(root, late_rows, "late")
        ag.aggregate(root, now=NOW)
        assert_matches(root, events)
