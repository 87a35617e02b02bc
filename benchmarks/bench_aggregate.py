"""Benchmark: snapshots over a 10-million-event store (30 days, 1,000 organisations,
~1.3 million artifacts, ~11,000 small files), side by side in one run:

* a rebuild of every hourly and daily snapshot of the month (720 + 30 buckets), and
  ``voicepipe aggregate --rebuild`` (hourly snapshots only within their 7-day
  retention: 168 + 30);
* a pandas implementation of the same hourly metrics, as a reference;
* the artifact index built from nothing (once: the first run after upgrading);
* one incremental run after an hour of new events;
* compaction of every closed hour;
* an incremental run after compaction (must find nothing to do);
* the rebuilds and pandas again on the compacted store (721 files instead of ~11,000);
* peak RSS of each phase (each runs in its own process).

    python benchmarks/bench_aggregate.py             # uses/creates benchmarks/.cache/store-10m
    python benchmarks/bench_aggregate.py --events 1000000
    python benchmarks/bench_aggregate.py --rounds 3   # medians of 3 (rebuilds and pandas
                                                      # interleaved; incremental on 3 copies)

The cached store is never modified: each run works on a hard-linked copy (files are
only ever replaced or unlinked, never written in place, so this is safe).
Targets (issue 3): rebuild ≤ 10 s and ≥ 3× faster than pandas; incremental ≤ 1 s;
peak RSS ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

UTC = dt.timezone.utc


def _rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork and exec, so a phase would report at least the parent's peak (which is
    large when the parent has just generated the store)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------- phases


def phase_rebuild(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    from voicepipe_obs.aggregate import aggregate

    t = time.perf_counter()
    r = aggregate(root, now=end, since=start, until=end)
    return {
        "seconds": time.perf_counter() - t,
        "note": f"{r.hourly_written} hourly + {r.daily_written} daily buckets, {r.events_scanned:,} events",
    }


def phase_rebuild_retention(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    """`voicepipe aggregate --rebuild`: hourly snapshots only within their 7-day retention."""
    from voicepipe_obs.aggregate import aggregate

    t = time.perf_counter()
    r = aggregate(root, now=end, rebuild=True)
    return {
        "seconds": time.perf_counter() - t,
        "note": f"{r.hourly_written} hourly + {r.daily_written} daily buckets, {r.events_scanned:,} events",
    }


def phase_index(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    """The artifact index built from nothing (what the first aggregate run after
    upgrading does once; every later run recomputes only the hours with new files)."""
    from voicepipe_obs import artifact_index
    from voicepipe_obs.query import vetted_files

    t = time.perf_counter()
    r = artifact_index.refresh(root, vetted_files(root))
    return {
        "seconds": time.perf_counter() - t,
        "note": f"{r.hours_computed} hours → {r.files_written} index files",
    }


def phase_incremental(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    from voicepipe_obs.aggregate import aggregate

    t = time.perf_counter()
    r = aggregate(root, now=end + dt.timedelta(hours=1))
    return {
        "seconds": time.perf_counter() - t,
        "note": f"{r.new_files} new files → {r.hourly_written} hourly + {r.daily_written} daily, "
        f"{r.events_scanned:,} events scanned",
    }


def phase_compact(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    from voicepipe_obs.maintenance import compact

    t = time.perf_counter()
    r = compact(root, now=end + dt.timedelta(hours=2), grace=dt.timedelta(0))
    return {
        "seconds": time.perf_counter() - t,
        "note": f"{r.files_in:,} files → {r.files_out} ({r.duplicates_dropped:,} duplicates dropped)",
    }


def phase_pandas(root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    """The same hourly metrics (per organisation and for all) with pandas."""
    import numpy as np
    import pandas as pd
    import pyarrow.dataset as ds

    t = time.perf_counter()
    from voicepipe_obs.aggregate import EVENT_PROJECTION

    cols = [c for c in EVENT_PROJECTION if c != "error_code"]  # what the metrics read
    files = sorted(str(p) for p in (root / "events").glob("date=*/hour=*/*.parquet"))
    table = ds.dataset(files, format="parquet").to_table(columns=cols)
    table = table.append_column("ts_us", table["timestamp"].cast("int64"))
    df = table.to_pandas()
    df = df.drop_duplicates("event_id")
    df["bucket"] = df["ts_us"] - df["ts_us"] % 3_600_000_000
    t_ = df["event_type"]
    first = df[t_ == "artifact_received"].groupby("artifact_id")["timestamp"].min()
    done = t_ == "artifact_completed"
    df["e2e"] = np.nan
    df.loc[done, "e2e"] = (
        df.loc[done, "timestamp"] - df.loc[done, "artifact_id"].map(first)
    ).dt.total_seconds() * 1000

    def masked(mask: pd.Series, col: str) -> pd.Series:
        return df[col].where(mask)

    stages = {
        "transcription": (["transcription_completed"], "transcription_failed"),
        "claims_extraction": (["claims_extracted"], "claims_extraction_failed"),
        "entity_resolution": (
            ["entity_resolution_completed", "entity_needs_disambiguation"],
            "entity_resolution_failed",
        ),
        "draft_generation": (["drafts_generated"], "draft_generation_failed"),
    }
    feats = pd.DataFrame({"bucket": df["bucket"], "org": df["organization_id"]})
    for name in ("artifact_received", "artifact_completed", "artifact_failed", "retry_initiated",
                 "retry_succeeded", "retry_failed"):  # fmt: skip
        feats[name] = (t_ == name).astype("int64")
    for stage, (ok, bad) in stages.items():
        feats[f"{stage}_dur"] = masked(t_.isin(ok), "duration_ms")
        feats[f"{stage}_ok"] = t_.isin(ok).astype("int64")
        feats[f"{stage}_bad"] = (t_ == bad).astype("int64")
    er = t_.isin(stages["entity_resolution"][0]) & df["entity_count"].notna()
    feats["tconf"] = masked(t_ == "transcription_completed", "confidence_score")
    feats["cconf"] = masked(t_ == "claims_extracted", "confidence_score")
    feats["ent"] = df["entity_count"].where(er).astype("float64")
    feats["dis"] = df["disambiguation_count"].fillna(0).where(er).astype("float64")
    feats["claims"] = df["claim_count"].where(t_ == "claims_extracted").astype("float64")
    feats["drafts"] = df["draft_count"].where(t_ == "drafts_generated").astype("float64")
    feats["cost"] = df["ai_cost"]
    feats["cost_art"] = df["artifact_id"].where(df["ai_cost"].notna())
    feats["e2e"] = df["e2e"]

    def metrics(keys: list[str]) -> pd.DataFrame:
        g = feats.groupby(keys, sort=False, dropna=True)
        out = g[["artifact_received", "artifact_completed", "artifact_failed", "retry_initiated",
                 "retry_succeeded", "retry_failed"]].sum()  # fmt: skip
        for stage in stages:
            out[f"avg_{stage}_latency_ms"] = g[f"{stage}_dur"].mean()
            out[f"p95_{stage}_latency_ms"] = g[f"{stage}_dur"].quantile(0.95)
            ok, bad = g[f"{stage}_ok"].sum(), g[f"{stage}_bad"].sum()
            out[f"{stage}_failure_rate"] = bad / (ok + bad).replace(0, np.nan)
        out["avg_end_to_end_latency_ms"] = g["e2e"].mean()
        for q in (0.5, 0.95, 0.99):
            out[f"p{round(q * 100)}_end_to_end_latency_ms"] = g["e2e"].quantile(q)
        fin = out["artifact_completed"] + out["artifact_failed"]
        out["overall_failure_rate"] = out["artifact_failed"] / fin.replace(0, np.nan)
        out["avg_transcript_confidence"] = g["tconf"].mean()
        out["avg_claim_confidence"] = g["cconf"].mean()
        ent = g["ent"].sum(min_count=1)
        dis = g["dis"].sum(min_count=1)
        out["auto_resolution_rate"] = (ent - dis) / ent.replace(0, np.nan)
        out["disambiguation_rate"] = dis / ent.replace(0, np.nan)
        out["total_claims_extracted"] = g["claims"].sum()
        out["total_entities_resolved"] = ent.fillna(0)
        out["total_drafts_generated"] = g["drafts"].sum()
        out["total_ai_cost"] = g["cost"].sum()
        out["avg_cost_per_artifact"] = out["total_ai_cost"] / g["cost_art"].nunique().replace(0, np.nan)
        return out

    per_org = metrics(["bucket", "org"])
    all_orgs = metrics(["bucket"])
    rows = len(per_org) + len(all_orgs)
    seconds = time.perf_counter() - t
    received = int(all_orgs["artifact_received"].sum())
    return {"seconds": seconds, "note": f"{rows:,} hourly rows (hourly only), {received:,} receipts"}


PHASES = {
    "rebuild": phase_rebuild,
    "rebuild_retention": phase_rebuild_retention,
    "incremental": phase_incremental,
    "compact": phase_compact,
    "index": phase_index,
    "pandas": phase_pandas,
}


def _median(results: list[dict[str, object]]) -> dict[str, object]:
    """One row for repeated runs of a phase: the median time, the largest peak RSS,
    the last run's note plus the range."""
    times = sorted(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
    r = dict(results[-1])
    r["seconds"] = statistics.median(times)
    r["rss_mb"] = max(float(x["rss_mb"]) for x in results)  # type: ignore[arg-type]
    if len(times) > 1:
        r["note"] = f"{r['note']} (median of {len(times)}: {times[0]:.2f}–{times[-1]:.2f} s)"
    return r


def run_phase(name: str, root: Path, start: dt.datetime, end: dt.datetime) -> dict[str, object]:
    """Run one phase in a fresh process; its timing, peak RSS and a note."""
    cmd = [sys.executable, __file__, "--phase", name, "--root", str(root),
           "--start", start.isoformat(), "--end", end.isoformat()]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the rebuilds, pandas and the incremental run this many times each (medians)",
    )
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--start", help=argparse.SUPPRESS)
    ap.add_argument("--end", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:  # child process
        start, end = dt.datetime.fromisoformat(args.start), dt.datetime.fromisoformat(args.end)
        result = PHASES[args.phase](args.root, start, end)
        result["rss_mb"] = _rss_mb()
        print(json.dumps(result))
        return

    from gen_store import append_hour, ensure_store, machine_speed, store_info

    cached = ensure_store(events=args.events)
    info = store_info(cached)
    start, end = dt.datetime.fromisoformat(str(info["start"])), dt.datetime.fromisoformat(str(info["end"]))
    work = cached.parent / f"work-{os.getpid()}"
    shutil.copytree(cached, work, copy_function=os.link)
    print(
        f"store: {info['rows']:,} events, {info['artifacts']:,} artifacts, {info['files']:,} files, "
        f"{start:%Y-%m-%d} → {end:%Y-%m-%d}; {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    speed_before = machine_speed()
    rows: list[tuple[str, dict[str, object]]] = []
    paired: dict[str, list[float]] = {}  # layout → pandas / DuckDB of each round

    def repeated(phases: list[tuple[str, str]], layout: str) -> None:
        """Run the phases in turn, ``--rounds`` times (interleaved, so a noisy
        neighbour hits them alike); keep each one's median time and largest RSS, and
        each round's pandas / DuckDB ratio (its two runs a few seconds apart: on a
        shared machine the same work's CPU time varies by half from one minute to
        the next, so a ratio within one round is steadier than a ratio of medians)."""
        runs: dict[str, list[dict[str, object]]] = {label: [] for label, _ in phases}
        for _ in range(args.rounds):
            for label, phase in phases:
                runs[label].append(run_phase(phase, work, start, end))
        for label, results in runs.items():
            rows.append((label, _median(results)))
        duck, pandas = (runs[label] for label, phase in phases if phase in ("rebuild", "pandas"))
        paired[layout] = [
            float(p["seconds"]) / float(d["seconds"])  # type: ignore[arg-type]
            for d, p in zip(duck, pandas, strict=True)
        ]

    try:
        # once, first: the rebuilds below then find the index current, as after any run
        rows.append(("artifact index, first build", run_phase("index", work, start, end)))
        repeated(
            [
                ("all 720 hours + 30 days (--since/--until)", "rebuild"),
                ("aggregate --rebuild (hourly: 7-day retention)", "rebuild_retention"),
                ("pandas reference (hourly only)", "pandas"),
            ],
            "as written",
        )
        # the incremental run changes the store: the rounds before the last run on
        # hard-linked copies of the aggregated store, each given the same new hour;
        # the last one on the store itself (the phases below build on it)
        incs: list[dict[str, object]] = []
        for i in range(args.rounds):
            target = work if i == args.rounds - 1 else work.parent / f"{work.name}-inc{i}"
            if target != work:
                shutil.copytree(work, target, copy_function=os.link)
            try:
                added = append_hour(target, end)
                incs.append(run_phase("incremental", target, start, end))
            finally:
                if target != work:
                    shutil.rmtree(target, ignore_errors=True)
        r = _median(incs)
        r["note"] = f"+{added:,} events; " + str(r["note"])
        rows.append(("incremental after 1 new hour", r))
        rows.append(("compaction", run_phase("compact", work, start, end)))
        rows.append(("incremental after compaction", run_phase("incremental", work, start, end)))
        repeated(
            [
                ("compacted: all 720 hours + 30 days", "rebuild"),
                ("compacted: aggregate --rebuild", "rebuild_retention"),
                ("compacted: pandas reference", "pandas"),
            ],
            "compacted",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"machine speed (gen_store.machine_speed): {speed_before:.2f} s before, {machine_speed():.2f} s after"
    )
    width = max(len(label) for label, _ in rows)
    print(f"{'phase':<{width}}  {'seconds':>8}  {'peak RSS':>9}  notes")
    for label, r in rows:
        print(f"{label:<{width}}  {float(r['seconds']):>8.2f}  {float(r['rss_mb']):>6.0f} MB  {r['note']}")  # type: ignore[arg-type]
    sec = {label: float(r["seconds"]) for label, r in rows}  # type: ignore[arg-type]
    print(
        f"pandas / DuckDB (all hours and days): "
        f"{sec['pandas reference (hourly only)'] / sec['all 720 hours + 30 days (--since/--until)']:.1f}× as written, "
        f"{sec['compacted: pandas reference'] / sec['compacted: all 720 hours + 30 days']:.1f}× compacted"
    )
    if args.rounds > 1:
        print(
            "the same, round by round (median; range): "
            + ", ".join(
                f"{statistics.median(r):.1f}× {layout} ({min(r):.1f}–{max(r):.1f})"
                for layout, r in paired.items()
            )
        )


if __name__ == "__main__":
    main()
