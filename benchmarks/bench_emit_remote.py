"""What an object-store root costs the pipeline: per-call latency of a ``@rec.stage``
function (two events per call) on a local root, and on an ``s3://`` root whose
store is down (a closed port: every upload fails and is retried with backoff), or
up (``--endpoint http://host:port`` of an S3 server, e.g. ``python -m moto.server``).

Prints, per root: median, p99 and maximum latency per call, and how long close()
took. The calls come in bursts of ``--burst`` with a short pause between, so that
the background writer and uploader run while the pipeline does.

Run:  .venv/bin/python benchmarks/bench_emit_remote.py [--calls 20000] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import voicepipe_obs as vp


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run(root: str | Path, calls: int, burst: int) -> tuple[list[float], float, dict[str, int]]:
    rec = vp.Recorder(root, flush_interval=0.2, close_timeout=2.0)

    @rec.stage("transcription")
    def work() -> None:
        pass

    lat = []
    perf = time.perf_counter
    for i in range(calls):
        start = perf()
        work()
        lat.append(perf() - start)
        if i % burst == burst - 1:
            time.sleep(0.01)
    start = time.monotonic()
    rec.close()
    return lat, time.monotonic() - start, rec.stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--endpoint", help="an S3 server to upload to (else only the store-down case)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vp-bench-remote-"))
    os.environ["VOICEPIPE_CACHE"] = str(tmp / "cache")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ.setdefault(name, value)
    cases: list[tuple[str, str | Path, str | None]] = [
        ("local root", tmp / "local", None),
        ("s3, store down", f"s3://down-{uuid.uuid4().hex[:8]}/data", closed_port()),
    ]
    if args.endpoint:
        from pyarrow import fs as pafs

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        host = args.endpoint.split("://", 1)[1]
        pafs.S3FileSystem(
            endpoint_override=host, scheme="http", allow_bucket_creation=True, region="us-east-1"
        ).create_dir(bucket)
        cases.append(("s3, store up", f"s3://{bucket}/data", args.endpoint))
    print(f"{args.calls} calls of a @rec.stage function (2 events each), bursts of {args.burst}")
    print(
        f"{'root':<16} {'median µs':>10} {'p99 µs':>10} {'p99.9 µs':>10} {'max ms':>8} {'close s':>8}  uploads"
    )
    for name, root, endpoint in cases:
        if endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        lat, took, stats = run(root, args.calls, args.burst)
        lat.sort()
        p99, p999 = lat[int(len(lat) * 0.99)], lat[int(len(lat) * 0.999)]
        uploads = (
            f"{stats['uploaded_files']} up, {stats['pending_uploads']} waiting, {stats['upload_errors']} errors"
            if "uploaded_files" in stats
            else "-"
        )
        print(
            f"{name:<16} {statistics.median(lat) * 1e6:>10.1f} {p99 * 1e6:>10.1f} {p999 * 1e6:>10.1f} "
            f"{lat[-1] * 1e3:>8.2f} {took:>8.2f}  {uploads}"
        )


if __name__ == "__main__":
    main()
