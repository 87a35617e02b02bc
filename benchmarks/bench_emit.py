"""Cost of recording: the hot path, the background flush and the total CPU per event.

Prints one table, side by side from the same run (median over rounds):

- a bare call of a no-op function;
- the same function under ``@rec.stage`` (two events per call), with the default
  durability ("spool") and with durability="sync";
- the same function under an OpenTelemetry SDK span (BatchSpanProcessor, an
  exporter that discards), for scale;
- one ``rec.emit`` call;
- the background flush per event: rows → per-column lists → Arrow → zstd Parquet
  with page checksums, fsync and rename, at 10,000-event batches;
- total process CPU per event, flush and spool included: a Recorder records
  ``--calls`` stage runs and is closed; process CPU time / events written.

Targets (issue 2): decorated stage ≤ 0.25 × the OpenTelemetry span of the same run;
total CPU per event, flush included, ≤ 5 µs.

Run:  .venv/bin/python benchmarks/bench_emit.py [--rounds 7] [--calls 20000]
Needs the ``bench`` extra (opentelemetry-sdk) for the OpenTelemetry row.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import voicepipe_obs as vp


def per_call(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall µs, thread-CPU µs) per call of fn over ``calls`` calls."""
    wall = time.perf_counter()
    cpu = time.thread_time()
    for _ in range(calls):
        fn()
    return (
        (time.perf_counter() - wall) / calls * 1e6,
        (time.thread_time() - cpu) / calls * 1e6,
    )


def noop() -> int:
    return 1


def otel_case() -> Callable[[], object] | None:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:  # pragma: no cover
        return None

    class Discard(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")

    def traced() -> int:
        with tracer.start_as_current_span("transcription"):
            return noop()

    return traced


def recorder_cases(tmp: Path) -> dict[str, tuple[vp.Recorder, Callable[[], object]]]:
    cases: dict[str, tuple[vp.Recorder, Callable[[], object]]] = {}
    for durability in ("spool", "sync"):
        rec = vp.Recorder(tmp / durability, durability=durability)  # type: ignore[arg-type]
        cases[f"@rec.stage, durability={durability}"] = (rec, rec.stage("transcription")(noop))
    rec = vp.Recorder(tmp / "emit")
    cases["rec.emit(...)  (one event)"] = (
        rec,
        lambda: rec.emit("rate_limit_hit", ai_model="gpt-4o-mini"),
    )
    return cases


def flush_cost(tmp: Path, batch: int, rounds: int) -> float:
    """CPU µs per event to write one batch of realistic rows as Parquet (median)."""
    rec = vp.Recorder(tmp / "rows", durability="memory", flush_interval=3600, batch_size=10**9)
    stage = rec.stage("claims_extraction")
    with rec.artifact("a-1", organization_id="org-1", coach_user_id="coach-1", source_channel="app"):
        for i in range(batch // 2):
            with stage as st:
                st.annotate(claim_count=i % 7, confidence_score=0.9, ai_cost=0.001, ai_model="gpt-4o")
    rec._stop = True  # keep the rows: take them exactly as the flusher would
    rows = [*(rec._current.rows or []), *rec._pending]
    rec._pending.clear()
    rec._current.rows, rec._current.n = [], 0
    rec.close()
    times = []
    for r in range(rounds):
        t = time.thread_time()  # CPU: the fsync's wait for the disk is not CPU
        rec._write_rows(rows, f"bench-{r}")
        times.append((time.thread_time() - t) / len(rows) * 1e6)
    return statistics.median(times)


def total_cpu(tmp: Path, calls: int, durability: str) -> float:
    """Process CPU µs per event, from the first call to a completed close()."""
    rec = vp.Recorder(tmp / f"total-{durability}", durability=durability)  # type: ignore[arg-type]
    fn = rec.stage("transcription")(noop)
    fn()
    rec.flush()  # threads started, writer imported: steady state from here
    before = rec.stats()["written"]
    cpu = time.process_time()
    for _ in range(calls):
        fn()
    rec.close()
    spent = time.process_time() - cpu
    events = rec.stats()["written"] - before
    return spent / events * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=10_000)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cases: dict[str, Callable[[], object]] = {"bare call": noop}
        recs = recorder_cases(tmp)
        traced = otel_case()
        if traced is not None:
            cases["OpenTelemetry SDK span (batch, discarding exporter)"] = traced
        cases.update({name: fn for name, (_, fn) in recs.items()})
        for fn in cases.values():  # warm up: threads, imports, first spool segment
            per_call(fn, 1000)
        for rec, _ in recs.values():
            rec.flush()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():  # interleaved, so load changes hit every case
                results[name].append(per_call(fn, args.calls))
            for rec, _ in recs.values():
                rec.flush()  # keep memory flat between rounds (not timed)
            gc.collect()
        for rec, _ in recs.values():
            rec.close()

        flush_us = flush_cost(tmp, args.batch, args.rounds)
        totals = {
            d: statistics.median(total_cpu(tmp, 2 * args.calls, d) for _ in range(5))
            for d in ("spool", "memory")
        }

    med = {
        name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
        for name, r in results.items()
    }
    otel = med.get("OpenTelemetry SDK span (batch, discarding exporter)")
    stage = med["@rec.stage, durability=spool"]
    print(
        f"voicepipe_obs emit benchmark: {args.rounds} rounds × {args.calls:,} calls, median; Python {sys.version.split()[0]}"
    )
    print()
    print(f"{'case':55s} {'wall µs/call':>13s} {'CPU µs/call':>12s} {'× OTel span':>12s}")
    print("-" * 95)
    for name, (wall, cpu) in med.items():
        ratio = f"{wall / otel[0]:.2f}" if otel else "-"
        print(f"{name:55s} {wall:13.2f} {cpu:12.2f} {ratio:>12s}")
    print(f"{'background flush per event (10k batch → zstd Parquet)':55s} {'':13s} {flush_us:12.2f}")
    for d, us in totals.items():
        print(f"{'total process CPU per event, durability=' + d:55s} {'':13s} {us:12.2f}")
    print()
    if otel:
        ok = stage[0] <= 0.25 * otel[0]
        print(
            f"target stage ≤ 0.25 × OTel span: {stage[0]:.2f} vs {0.25 * otel[0]:.2f} µs → {'met' if ok else 'MISSED'}"
        )
    ok = totals["spool"] <= 5.0
    print(
        f"target total CPU per event ≤ 5 µs (spool): {totals['spool']:.2f} µs → {'met' if ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
