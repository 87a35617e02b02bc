"""Side by side: one incremental ``aggregate`` run after an hour of new events, with
the code of a git revision and with the working tree, alternating (this machine is
shared and noisy: only runs interleaved in one session compare).

    python benchmarks/ab_incremental.py --rev bcdcbb0 --rounds 5

Each version first aggregates its own hard-linked copy of the cached 10-million-event
store (as written; ~1 min each, kept under ``benchmarks/.cache/ab-<version>`` for the
next run of the same revision). Then, every round and for each version, it copies
that base, appends the same new hour (``gen_store.append_hour``) and times
``aggregate`` in a fresh process, so imports count, as they do for cron.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

RUN = """
import sys, time, datetime as dt
from voicepipe_obs.aggregate import aggregate
t = time.perf_counter()
r = aggregate(sys.argv[1], now=dt.datetime.fromisoformat(sys.argv[2]))
print(time.perf_counter() - t, r.new_files, r.hourly_written)
"""


def _run(src: Path, root: Path, now: dt.datetime) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(root), now.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare with the working tree")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from gen_store import append_hour, ensure_store, store_info

    cached = ensure_store()
    end = dt.datetime.fromisoformat(str(store_info(cached)["end"]))
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "src"
        archive = subprocess.run(
            ["git", "archive", args.rev, "src"], cwd=HERE.parent, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        versions = {args.rev: old_src, "working tree": HERE.parent / "src"}
        bases: dict[str, Path] = {}
        for name, src in versions.items():
            base = cached.parent / f"ab-{'work' if name == 'working tree' else name}"
            if name == "working tree" or not base.exists():  # the working tree may have changed
                shutil.rmtree(base, ignore_errors=True)
                shutil.copytree(cached, base, copy_function=os.link)
                print(f"{name}: first aggregate of the store, {_run(src, base, end):.1f} s", file=sys.stderr)
            bases[name] = base
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.rounds):
            for name, src in versions.items():
                trial = cached.parent / "ab-trial"
                shutil.rmtree(trial, ignore_errors=True)
                shutil.copytree(bases[name], trial, copy_function=os.link)
                try:
                    append_hour(trial, end)
                    times[name].append(_run(src, trial, end + dt.timedelta(hours=1)))
                finally:
                    shutil.rmtree(trial, ignore_errors=True)
    print(f"incremental aggregate after one new hour, {args.rounds} rounds alternating")
    for name, ts in times.items():
        print(f"  {name:<14} median {statistics.median(ts):.3f} s  ({min(ts):.3f}–{max(ts):.3f})")


if __name__ == "__main__":
    main()
