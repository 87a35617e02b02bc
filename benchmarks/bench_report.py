"""Speed of the reporting side on the 10-million-event store of the aggregation
benchmark (benchmarks/gen_store.py, ``ensure_store()``).

Prints one table: the report functions measured in-process (median of rounds, each
round a fresh call: nothing cached between rounds) and ``voicepipe --help`` as a
subprocess (wall time, median). Two layouts of the same events:

- ``as written``: what a fleet of Recorders leaves (10-20 files per hour, ~11,000
  files, no snapshots); read-only, the cached store is not modified;
- ``compacted``: a copy after ``voicepipe compact`` (one file per hour, sorted by
  artifact_id) and ``voicepipe aggregate`` (hourly and daily snapshots, the artifact
  index) — what the documented cron lines keep the store at. Built once under
  benchmarks/.cache/.

``check (all rules)`` is ``voicepipe check``'s evaluation (alerts.evaluate): as
written there is no artifact index, so its queue-depth and stuck rules read every
event; compacted, they read the index.

Targets (issue 5): --help ≤ 0.3 s; report artifact ID ≤ 150 ms; report dashboard
≤ 1 s; report artifacts --status failed ≤ 1 s; report metrics --range 30d ≤ 0.5 s.

Run:  .venv/bin/python benchmarks/bench_report.py [--rounds 3] [--skip-compacted]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_store import CACHE, ensure_store, machine_speed, store_info

from voicepipe_obs import alerts, reports

UTC = dt.timezone.utc


def median_seconds(fn: Callable[[], object], rounds: int, *, slow: float = 10.0) -> float:
    """Median wall time of ``rounds`` calls; a call slower than ``slow`` seconds is
    not repeated (its single time is reported)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > slow:
            break
    return statistics.median(times)


def help_seconds(rounds: int) -> float:
    exe = Path(sys.executable).parent / "voicepipe"
    cmd = (
        [str(exe), "--help"]
        if exe.exists()
        else [sys.executable, "-c", "from voicepipe_obs.cli import run; run()", "--help"]
    )
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compacted_copy(source: Path, now: dt.datetime) -> Path:
    """A copy of ``source`` compacted and aggregated (cached by a marker file)."""
    from voicepipe_obs import aggregate, artifact_index, maintenance

    target = CACHE / f"{source.name}-compacted"
    marker = target / "_bench_report.json"
    version = (aggregate.snapshot_schema().metadata or {}).get(b"voicepipe.snapshot_version", b"").decode()
    want = {"source": store_info(source), "snapshot_version": version}
    if marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k in want} == want:
        if not artifact_index.Manifest.load(target).hours:  # built before the index, or by an older one
            t0 = time.perf_counter()
            aggregate.aggregate(target, now=now)
            print(f"indexed {target} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        return target
    if target.exists():
        shutil.rmtree(target)
    t0 = time.perf_counter()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("_generated.json"))
    maintenance.compact(target, now=now + dt.timedelta(hours=1), grace=dt.timedelta(0))
    aggregate.aggregate(target, now=now)
    marker.write_text(json.dumps(want | {"seconds": round(time.perf_counter() - t0, 1)}))
    print(f"built {target} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return target


def recent_failed_artifact(root: Path, now: dt.datetime, *, age: dt.timedelta = dt.timedelta(0)) -> str:
    """The latest artifact that failed in the two hours before ``now - age``."""
    import duckdb

    from voicepipe_obs.query import parquet_scan

    files = reports._files(root, now - age - dt.timedelta(hours=2), now - age)
    row = (
        duckdb.connect()
        .execute(
            f"SELECT artifact_id FROM {parquet_scan(files)} WHERE event_type = 'artifact_failed' "
            "ORDER BY timestamp DESC, artifact_id LIMIT 1"
        )
        .fetchone()
    )
    assert row is not None
    return str(row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-compacted", action="store_true", help="Only the store as written.")
    args = parser.parse_args(argv)

    root = ensure_store()
    info = store_info(root)
    now = dt.datetime.fromisoformat(str(info["end"]))
    layouts = {"as written": root}
    if not args.skip_compacted:
        layouts["compacted"] = compacted_copy(root, now)

    targets = {
        "voicepipe --help": 0.3,
        "report artifact ID": 0.15,
        "report artifact ID (15 days old)": None,
        "report dashboard": 1.0,
        "report artifacts --status failed": 1.0,
        "report metrics --range 30d": 0.5,
        "report events (latest 50)": None,
        "check (all rules)": None,
    }
    results: dict[str, dict[str, float]] = {name: {} for name in targets}
    help_s = help_seconds(max(args.rounds, 5))
    speed_before = machine_speed()
    for layout, path in layouts.items():
        aid = recent_failed_artifact(path, now)
        old = recent_failed_artifact(path, now, age=dt.timedelta(days=15))
        cases: dict[str, Callable[[], object]] = {
            "report artifact ID": lambda p=path, a=aid: reports.artifact_detail(p, a, now=now),
            "report artifact ID (15 days old)": lambda p=path, a=old: reports.artifact_detail(p, a, now=now),
            "report dashboard": lambda p=path: reports.dashboard(p, now=now),
            "report artifacts --status failed": lambda p=path: reports.artifacts(
                p, now=now, status="failed", since=now - dt.timedelta(hours=24)
            ),
            "report metrics --range 30d": lambda p=path: reports.metrics(p, now=now, range_="30d"),
            "report events (latest 50)": lambda p=path: reports.events(p, now=now, limit=50),
            "check (all rules)": lambda p=path: alerts.evaluate(p, now=now),
        }
        results["voicepipe --help"][layout] = help_s
        for name, fn in cases.items():
            results[name][layout] = median_seconds(fn, args.rounds)
            print(f"  {layout:<11} {name:<34} {results[name][layout]:8.3f} s", file=sys.stderr, flush=True)

    print(
        f"\nstore: {info['rows']:,} events, {info['artifacts']:,} artifacts, "
        f"{info['files']:,} files as written; now = {now.isoformat()}; median of {args.rounds} rounds; "
        f"machine speed (gen_store.machine_speed) {speed_before:.2f} s before, {machine_speed():.2f} s after"
    )
    header = f"{'measure':<36}" + "".join(f"{name:>14}" for name in layouts) + f"{'target':>10}"
    print(header)
    print("-" * len(header))
    for name, target in targets.items():
        cells = "".join(f"{results[name].get(layout, float('nan')):13.3f}s" for layout in layouts)
        print(f"{name:<36}{cells}{(f'{target:.2f}s' if target else '–'):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
