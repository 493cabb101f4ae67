"""Object throughput: PutObject/GetObject of 1 MB and 100 MB objects through moorage's S3 API, next to
the same files copied on local disk and next to moto's S3 server, in one run.

    .venv/bin/python bench/objects.py            # quick (the default): well under a minute
    .venv/bin/python bench/objects.py --full     # more repetitions

Each path moves the same random bytes from and to files in a temporary folder:

* **local disk**: PUT is ``shutil.copyfile`` of the source into a store folder plus ``fsync`` (moorage
  fsyncs every object before it becomes visible, so the floor pays it too); GET is ``copyfile`` back;
* **moorage**: a ``moorage serve`` on loopback; boto3's ``upload_file`` / ``download_file`` (its managed
  transfer: one PutObject / GetObject at 1 MB, 8 MB multipart parts and ranged GETs, 10 threads, at
  100 MB), signed as botocore signs for http:// (SHA-256 of each body plus a CRC32 checksum header);
* **moto**: moto's standalone server (``moto_server``, in-memory objects), the same boto3 calls.

A repetition writes a new key each time; MB/s is the object's size over the median time of the
repetitions (MB = 10^6 bytes). Ratios: moorage over local disk, moorage over moto. Results print as a
table and go to bench/results/objects-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from batch_support import S3Server  # noqa: E402
from e2e_support import MoorageServer  # noqa: E402

SIZES = {"1 MB": 1_000_000, "100 MB": 100_000_000}
QUICK = {"1 MB": 10, "100 MB": 2}
FULL = {"1 MB": 100, "100 MB": 5}


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def local_disk(source: Path, store: Path, back: Path, key: str) -> tuple[float, float]:
    target = store / key

    def put() -> None:
        shutil.copyfile(source, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return timed(put), timed(lambda: shutil.copyfile(target, back))


def through_s3(client: Any, bucket: str, source: Path, back: Path, key: str) -> tuple[float, float]:
    put = timed(lambda: client.upload_file(str(source), bucket, key))
    get = timed(lambda: client.download_file(bucket, key, str(back)))
    if back.stat().st_size != source.stat().st_size:
        raise RuntimeError(f"{key}: read back {back.stat().st_size} bytes of {source.stat().st_size}")
    return put, get


def run(args: argparse.Namespace) -> dict[str, Any]:
    reps = FULL if args.full else QUICK
    work = Path(tempfile.mkdtemp(prefix="bench-objects-"))
    results: dict[str, Any] = {}
    moorage = MoorageServer(work / "home").start(timeout=90)
    moto = S3Server(work)
    try:
        moto.start()
        import boto3

        clients = {
            "moorage": boto3.session.Session().client(
                "s3", endpoint_url=moorage.url, region_name="us-east-1", aws_access_key_id=moorage.access_key_id,
                aws_secret_access_key=moorage.secret_access_key),
            "moto": moto.client(),
        }
        for client in clients.values():
            client.create_bucket(Bucket="bench")
        store = work / "disk-store"
        store.mkdir()
        for label, size in SIZES.items():
            source, back = work / f"source-{size}", work / f"back-{size}"
            with open(source, "wb") as fh:
                for _ in range(size // 1_000_000):
                    fh.write(os.urandom(1_000_000))
            times: dict[str, list[tuple[float, float]]] = {"local disk": [], "moorage": [], "moto": []}
            for rep in range(reps[label]):
                key = f"obj-{size}-{rep}"
                times["local disk"].append(local_disk(source, store, back, key))
                for name, client in clients.items():
                    times[name].append(through_s3(client, "bench", source, back, key))
            results[label] = {
                name: {"put_MBps": size / 1e6 / statistics.median(t[0] for t in runs),
                       "get_MBps": size / 1e6 / statistics.median(t[1] for t in runs), "repetitions": len(runs)}
                for name, runs in times.items()}
            for path in (source, back):
                path.unlink()
    finally:
        moto.stop()
        moorage.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: dict[str, Any]) -> list[str]:
    lines = ["| object | op | local disk MB/s | moorage MB/s | moto MB/s | moorage / disk | moorage / moto |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, paths in results.items():
        for op, field in (("PUT", "put_MBps"), ("GET", "get_MBps")):
            disk, ours, moto = (paths[p][field] for p in ("local disk", "moorage", "moto"))
            lines.append(f"| {label} | {op} | {disk:,.0f} | {ours:,.0f} | {moto:,.0f} | {ours / disk:.2f}x | "
                         f"{ours / moto:.2f}x |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the default: 10 x 1 MB and 2 x 100 MB per path")
    parser.add_argument("--full", action="store_true", help="100 x 1 MB and 5 x 100 MB per path")
    args = parser.parse_args()
    results = run(args)
    lines = table(results)
    print("\n" + "\n".join(lines))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / "results" / f"objects-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from serving import host_info

    out.write_text(json.dumps({"timestamp": stamp, "settings": vars(args), "host": host_info(), "results": results,
                               "report": lines}, indent=1, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
