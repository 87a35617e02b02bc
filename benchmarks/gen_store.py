"""Generate (and cache) a synthetic event store for benchmarks: 10 million events over
30 days, 1,000 organisations (Zipf-like volume), ~1.3 million artifacts, written with
pyarrow straight into the DESIGN §5 layout as ~10-20 small files per hour — what a
fleet of Recorders leaves behind before compaction. ~0.2% of events are written twice
(duplicate event_ids) so deduplication is exercised.

    python benchmarks/gen_store.py            # builds benchmarks/.cache/store-10m (once)
    python benchmarks/gen_store.py --events 1000000 --path /tmp/store-1m

Library use (the reporting benchmark reuses it)::

    from gen_store import ensure_store
    root = ensure_store()          # Path of the cached root, built on first use

The store is deterministic for given parameters (seeded), so figures are comparable
between runs. Only pyarrow and numpy are used: the generator does not depend on the
code it benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from voicepipe_obs.events import SCHEMA_VERSION, SCHEMA_VERSION_KEY, arrow_schema

CACHE = Path(__file__).resolve().parent / ".cache"
START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
US_HOUR = 3_600_000_000
EVENTS_PER_ARTIFACT = 7.7  # mean of the template mix below

STAGES = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")
DONE = {
    "transcription": "transcription_completed",
    "claims_extraction": "claims_extracted",
    "entity_resolution": "entity_resolution_completed",
    "draft_generation": "drafts_generated",
}
MEDIAN_MS = {
    "transcription": 3000.0,
    "claims_extraction": 2000.0,
    "entity_resolution": 800.0,
    "draft_generation": 2500.0,
}
ERRORS = {
    "transcription": ("TimeoutError", "WhisperAPIError"),
    "claims_extraction": ("RateLimitError", "JSONDecodeError"),
    "entity_resolution": ("LookupError",),
    "draft_generation": ("RateLimitError", "ContextLengthError"),
}


def default_path(events: int = 10_000_000) -> Path:
    return CACHE / f"store-{events // 1_000_000}m" if events >= 1_000_000 else CACHE / f"store-{events}"


def ensure_store(
    path: Path | None = None,
    *,
    events: int = 10_000_000,
    days: int = 30,
    orgs: int = 1000,
    files_per_hour: tuple[int, int] = (10, 20),
    seed: int = 7,
    verbose: bool = True,
) -> Path:
    """The root of a generated store, generating it on first use (cached by a marker
    file holding the parameters; a half-built store is regenerated)."""
    root = Path(path) if path is not None else default_path(events)
    params = {
        "events": events,
        "days": days,
        "orgs": orgs,
        "files_per_hour": list(files_per_hour),
        "seed": seed,
        "event_ids": "recorder",
    }
    marker = root / "_generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    table = generate_events(events=events, days=days, orgs=orgs, seed=seed, start=START)
    n_files = write_hourly_files(root, table, files_per_hour=files_per_hour, seed=seed)
    info = {
        "params": params,
        "rows": table.num_rows,
        "files": n_files,
        "artifacts": pc.count_distinct(table["artifact_id"]).as_py(),
        "start": START.isoformat(),
        "end": (START + dt.timedelta(days=days)).isoformat(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    marker.write_text(json.dumps(info, indent=1))
    if verbose:
        print(f"generated {root}: {info}", file=sys.stderr)
    return root


def store_info(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "_generated.json").read_text()))


def machine_speed() -> float:
    """Seconds one core takes for a fixed pure-Python loop (10 million additions),
    printed beside benchmark tables: on this shared VM the same work's CPU time
    varies by half from one hour to the next, so a table compares with another only
    when their speeds do (0.41–0.74 s seen on one night; it is noisy itself)."""
    start = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - start


# ------------------------------------------------------------------- generation


def _templates() -> list[tuple[float, list[tuple[str, str | None]]]]:
    """(share of artifacts, [(event kind, stage)]) — kinds: received, start, done,
    fail, completed, failed, retry_initiated, retry_failed."""
    full: list[tuple[str, str | None]] = [("received", None)]
    for s in STAGES:
        full += [("start", s), ("done", s)]
    full.append(("completed", None))
    short: list[tuple[str, str | None]] = [("received", None)]
    for s in STAGES[:2]:
        short += [("start", s), ("done", s)]
    short.append(("completed", None))
    out = [(0.40, full), (0.45, short)]
    for i, s in enumerate(STAGES):
        seq: list[tuple[str, str | None]] = [("received", None)]
        for prev in STAGES[:i]:
            seq += [("start", prev), ("done", prev)]
        seq += [("start", s), ("fail", s), ("failed", None)]
        out.append((0.025, seq))
        out.append((0.0125, [*seq, ("retry_initiated", None), ("retry_failed", None)]))
    return out


def generate_events(
    *, events: int, days: int, orgs: int, seed: int, start: dt.datetime, id_prefix: str = "ev"
) -> pa.Table:
    """An Arrow table (event schema) of about ``events`` events, artifacts received
    uniformly over ``days`` days from ``start``."""
    rng = np.random.default_rng(seed)
    templates = _templates()
    shares = np.array([t[0] for t in templates])
    shares = shares / shares.sum()
    mean_len = float(sum(p * len(t) for p, (_, t) in zip(shares, templates, strict=True)))
    n_art = int(events / mean_len)
    start_us = int(start.timestamp() * 1_000_000)
    span_us = days * 24 * US_HOUR - 40 * 60 * 1_000_000
    weights = 1.0 / np.arange(1, orgs + 1) ** 0.8
    weights /= weights.sum()
    org_names = pa.array([f"org-{i:04d}" for i in range(orgs)])
    which = rng.choice(len(templates), size=n_art, p=shares)
    cols: dict[str, list[pa.Array]] = {name: [] for name in arrow_schema().names}
    art_base = 0
    for ti, (_, tpl) in enumerate(templates):
        idx = np.flatnonzero(which == ti)
        n = len(idx)
        if n == 0:
            continue
        art = idx.astype(np.int64)
        org = rng.choice(orgs, size=n, p=weights)
        t = start_us + rng.integers(0, span_us, size=n)
        per_step: list[dict[str, object]] = []
        for kind, stage in tpl:
            fields: dict[str, object] = {"kind": kind, "stage": stage}
            if kind == "start":
                t = t + rng.integers(20_000, 400_000, size=n)
            elif kind in ("done", "fail"):
                assert stage is not None
                dur = rng.lognormal(np.log(MEDIAN_MS[stage]), 0.5, size=n)
                if kind == "fail":
                    dur = dur * rng.uniform(0.2, 3.0, size=n)
                t = t + (dur * 1000).astype(np.int64)
                fields["duration_ms"] = np.round(dur, 3)
            elif kind in ("completed", "failed"):
                t = t + rng.integers(5_000, 200_000, size=n)
            elif kind == "retry_initiated":
                t = t + rng.integers(60_000_000, 1_800_000_000, size=n)
            elif kind == "retry_failed":
                t = t + rng.integers(1_000_000, 20_000_000, size=n)
            fields["ts"] = t.copy()
            per_step.append(fields)
        for fields in per_step:
            kind, stage = fields["kind"], fields["stage"]
            ts = np.asarray(fields["ts"], dtype=np.int64)
            etype = {
                "received": "artifact_received",
                "completed": "artifact_completed",
                "failed": "artifact_failed",
                "retry_initiated": "retry_initiated",
                "retry_failed": "retry_failed",
            }.get(str(kind))
            extra: dict[str, pa.Array] = {}
            if kind == "start":
                etype = f"{stage}_started"
            elif kind == "done":
                etype = DONE[str(stage)]
                extra["duration_ms"] = pa.array(fields["duration_ms"], pa.float64())
                if stage == "transcription":
                    extra["confidence_score"] = pa.array(np.round(rng.beta(9, 1.2, size=n), 4))
                    extra["ai_cost"] = pa.array(np.round(rng.uniform(0.001, 0.02, size=n), 5))
                    extra["transcript_word_count"] = pa.array(rng.integers(20, 600, size=n).astype(np.int32))
                elif stage == "claims_extraction":
                    short = len(tpl) == 6
                    claims = np.zeros(n, np.int32) if short else rng.poisson(4, size=n).astype(np.int32) + 1
                    extra["claim_count"] = pa.array(claims)
                    extra["confidence_score"] = pa.array(np.round(rng.beta(8, 2, size=n), 4))
                    extra["ai_cost"] = pa.array(np.round(rng.uniform(0.002, 0.03, size=n), 5))
                elif stage == "entity_resolution":
                    ent = rng.poisson(3, size=n).astype(np.int32) + 1
                    dis = rng.binomial(ent, 0.1).astype(np.int32)
                    extra["entity_count"] = pa.array(ent)
                    extra["disambiguation_count"] = pa.array(dis)
                    etype_arr = np.where(
                        dis > 0, "entity_needs_disambiguation", "entity_resolution_completed"
                    )
                    extra["event_type"] = pa.array(etype_arr)
                elif stage == "draft_generation":
                    extra["draft_count"] = pa.array(rng.integers(1, 4, size=n).astype(np.int32))
                    extra["ai_cost"] = pa.array(np.round(rng.uniform(0.005, 0.05, size=n), 5))
            elif kind == "fail":
                etype = f"{stage}_failed" if stage != "claims_extraction" else "claims_extraction_failed"
                extra["duration_ms"] = pa.array(fields["duration_ms"], pa.float64())
                codes = pa.array(ERRORS[str(stage)])
                code = codes.take(pa.array(rng.integers(0, len(codes), size=n)))
                extra["error_code"] = code
                extra["error_message"] = code
            elif kind == "failed":
                extra["error_code"] = pa.array(np.full(n, "StageFailed"))
            assert etype is not None
            cols["event_type"].append(extra.pop("event_type", None) or pa.array(np.full(n, etype)))
            cols["timestamp"].append(pa.array(ts, pa.int64()))
            cols["artifact_id"].append(pa.array(art + art_base, pa.int64()))
            cols["organization_id"].append(org_names.take(pa.array(org)))
            cols["pipeline_stage"].append(
                pa.array(
                    np.full(n, stage if stage is not None else ("ingestion" if kind == "received" else None))
                )
                if stage is not None or kind == "received"
                else pa.nulls(n, pa.string())
            )
            status = {"received": "received", "completed": "completed", "failed": "failed"}.get(str(kind))
            cols["new_status"].append(pa.array(np.full(n, status)) if status else pa.nulls(n, pa.string()))
            cols["source_channel"].append(
                pa.array(np.where(rng.random(n) < 0.7, "whatsapp", "app"))
                if kind == "received"
                else pa.nulls(n, pa.string())
            )
            if kind == "retry_initiated" or kind == "retry_failed":
                extra["retry_attempt"] = pa.array(np.ones(n, np.int32))
            for name in (
                "duration_ms",
                "confidence_score",
                "ai_cost",
                "claim_count",
                "entity_count",
                "disambiguation_count",
                "draft_count",
                "transcript_word_count",
                "error_code",
                "error_message",
                "retry_attempt",
            ):
                typ = arrow_schema().field(name).type
                cols[name].append(extra[name].cast(typ) if name in extra else pa.nulls(n, typ))
    schema = arrow_schema()
    n_rows = sum(len(a) for a in cols["timestamp"])
    ids = pa.array(np.arange(n_rows, dtype=np.int64)).cast(pa.string())
    arrays: list[pa.Array] = []
    for field in schema:
        name = field.name
        if name == "event_id":
            # like the Recorder's: 16 hex digits of its writer + a 12-digit counter
            writer = hashlib.sha256(id_prefix.encode()).hexdigest()[:16]
            arrays.append(pc.binary_join_element_wise(pa.scalar(writer), pc.utf8_lpad(ids, 12, "0"), ""))
        elif name == "timestamp":
            arrays.append(pa.concat_arrays(cols[name]).cast(pa.timestamp("us", tz="UTC")))
        elif name == "artifact_id":
            ints = pa.concat_arrays(cols[name]).cast(pa.string())
            arrays.append(pc.binary_join_element_wise(pa.scalar(f"{id_prefix}-art-"), ints, ""))
        elif cols[name]:
            arrays.append(pa.concat_arrays([a.cast(field.type) for a in cols[name]]))
        else:
            arrays.append(pa.nulls(n_rows, field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    # duplicates: ~0.2% of rows written a second time (a retried flush)
    dup = rng.choice(n_rows, size=n_rows // 500, replace=False)
    return pa.concat_tables([table, table.take(pa.array(np.sort(dup)))])


def write_hourly_files(
    root: Path,
    table: pa.Table,
    *,
    files_per_hour: tuple[int, int] = (10, 20),
    seed: int = 7,
    stem: str = "gen",
) -> int:
    """Split rows into their UTC hour partitions and each hour into 10-20 files."""
    rng = np.random.default_rng(seed + 1)
    ts = table["timestamp"].cast(pa.int64()).to_numpy()
    hours = ts // US_HOUR
    order = np.argsort(hours, kind="stable")
    table = table.take(pa.array(order))
    hours = hours[order]
    bounds = np.flatnonzero(np.diff(hours)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(hours)]])
    schema = arrow_schema().with_metadata({SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})
    n_files = 0
    for lo, hi in zip(starts, ends, strict=True):
        hour = int(hours[lo])
        when = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
        d = root / "events" / f"date={when:%Y-%m-%d}" / f"hour={when:%H}"
        d.mkdir(parents=True, exist_ok=True)
        part = table.slice(lo, hi - lo)
        k = int(rng.integers(files_per_hour[0], files_per_hour[1] + 1))
        k = max(1, min(k, part.num_rows))
        which = rng.integers(0, k, size=part.num_rows)
        by_file = np.argsort(which, kind="stable")
        counts = np.bincount(which, minlength=k)
        pos = 0
        for i in range(k):
            if counts[i] == 0:
                continue
            chunk = part.take(pa.array(by_file[pos : pos + counts[i]])).cast(schema)
            pos += counts[i]
            path = d / f"{when:%Y%m%dT%H}0000-{stem}-{i:02d}.parquet"
            tmp = d / f".{path.name}.tmp"
            pq.write_table(chunk, tmp, compression="zstd")
            os.replace(tmp, path)
            n_files += 1
    return n_files


def append_hour(
    root: Path, hour_start: dt.datetime, *, events: int = 14_000, orgs: int = 1000, seed: int = 99
) -> int:
    """Write about one hour of new events (new artifacts received in that hour) as
    10-20 files, like live Recorders would. Returns the number of events written."""
    table = generate_events(
        events=events, days=1, orgs=orgs, seed=seed, start=hour_start, id_prefix=f"new{seed}"
    )
    ts = table["timestamp"].cast(pa.int64()).to_numpy()
    lo = int(hour_start.timestamp() * 1_000_000)
    # the generator spreads receipts over a day: squeeze them into the hour instead
    shifted = lo + (ts - lo) // 24
    table = table.set_column(
        table.schema.get_field_index("timestamp"),
        "timestamp",
        pa.array(shifted).cast(pa.timestamp("us", tz="UTC")),
    )
    write_hourly_files(root, table, seed=seed, stem=f"new{seed}")
    return table.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--path", type=Path, default=None, help="store root (default: benchmarks/.cache/store-10m)"
    )
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--orgs", type=int, default=1000)
    args = ap.parse_args()
    root = ensure_store(args.path, events=args.events, days=args.days, orgs=args.orgs)
    print(json.dumps(store_info(root), indent=1))


if __name__ == "__main__":
    main()
