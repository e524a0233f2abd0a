"""Benchmark: syncing a packed dataset from S3 vs the naive one-object-per-frame layout.

Starts moto's S3 server on loopback in its own process, generates a synthetic MARS of a few thousand
256x128 JPEG frames, and downloads the same frames several ways, at the same concurrency:

* naive:   every frame its own object, fetched with a thread pool of MAX_CONCURRENCY GETs;
* sync:    `shard_cache.sync` of the packed dataset (manifest, locking, sha256 checks, renames);
* ceiling: a plain parallel boto3 download of the same shard objects, nothing else;
* ceiling + sha256: the same, then hashing the shards, i.e. the least a verified download costs.

A second run packs a few hundred MB of stand-in frames, to compare sync with the ceiling where the
fixed costs (client, manifest GET) no longer dominate. Prints markdown tables and appends them, dated,
to BENCHMARKS.md at the repository root.

    .venv/bin/python bench/bench_sync.py [--repeats 7] [--scale-mb 256] [--no-append]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from report import append_section  # bench/ is on sys.path when a script runs

from gltr_platform.data import s3
from gltr_platform.data.index import DatasetIndex, Tracklet
from gltr_platform.data.mars import read_mars
from gltr_platform.data.pack import pack
from gltr_platform.data.shard_cache import sync
from gltr_platform.data.synthetic import SyntheticConfig, ensure_synthetic_mars

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-sync"
SHARD_SIZE = 8 * 2**20
SCALE_SHARD_SIZE = 32 * 2**20


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a child process on a free loopback port (its own GIL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto server did not start within 30 s")


def timed(
    methods: dict[str, Callable[[], object]], repeats: int, reset: Callable[[], None]
) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, client CPU seconds) of each method over `repeats` rounds.

    The methods take turns within each round, so drifting background load affects them alike;
    `reset` runs before every run.
    """
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            reset()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in methods}


def upload_frames(client, frames: list[tuple[str, Path]]) -> None:
    """The naive layout: one object per frame."""
    with ThreadPoolExecutor(s3.MAX_CONCURRENCY) as pool:
        list(pool.map(lambda kf: client.upload_file(str(kf[1]), BUCKET, kf[0]), frames))


def download_frames(client, keys: list[str], dest: Path) -> None:
    """Fetch every frame object into a file of its own, MAX_CONCURRENCY requests in flight."""

    def get(key: str) -> None:
        path = dest / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    with ThreadPoolExecutor(s3.MAX_CONCURRENCY) as pool:
        list(pool.map(get, keys))


def download_shards(client, keys: list[str], dest: Path) -> None:
    """The ceiling: the shard objects through one transfer manager, no checks at all."""
    dest.mkdir(parents=True, exist_ok=True)
    with s3.create_transfer_manager(client) as manager:
        futures = [manager.download(BUCKET, k, str(dest / Path(k).name)) for k in keys]
        for f in futures:
            f.result()


def download_shards_and_hash(client, keys: list[str], dest: Path) -> None:
    """The ceiling plus what sync adds per byte: a sha256 of every shard (in parallel)."""
    download_shards(client, keys, dest)

    def digest(key: str) -> str:
        with open(dest / Path(key).name, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(digest, keys))


class RandomFrames:
    """Stand-in frames of incompressible bytes, to pack a dataset of any size in seconds."""

    def __init__(self, frame_bytes: int):
        self.frame_bytes = frame_bytes
        self.block = os.urandom(64 * 2**20)

    def read_frame(self, frame: str) -> bytes:
        start = int(frame[1:8]) * 7919 % (len(self.block) - self.frame_bytes)
        return self.block[start : start + self.frame_bytes]


def random_index(total_bytes: int, frame_bytes: int) -> DatasetIndex:
    """Tracklets of 32 RandomFrames names adding up to about `total_bytes`."""
    n = total_bytes // frame_bytes // 32
    train = [Tracklet(tuple(f"f{t * 32 + i:07d}.jpg" for i in range(32)), t // 4, t % 4, "train") for t in range(n)]
    return DatasetIndex("random", train, [], [], protocol="official")


def packed_methods(uri: str, shard_keys: list[str], out: Path) -> dict[str, Callable[[], object]]:
    """sync, the plain download of the same shard objects, and that download plus hashing."""
    return {
        "sync: packed shards (verified)": lambda: sync(uri, out, progress=False),
        "ceiling: plain parallel shard download": lambda: download_shards(s3.make_client(), shard_keys, out),
        "ceiling + sha256 of each shard afterwards": lambda: download_shards_and_hash(
            s3.make_client(), shard_keys, out
        ),
    }


def table(results: dict[str, tuple[float, float]], total_bytes: int) -> str:
    """Markdown rows: seconds, MB/s, client CPU, ratio to the ceiling, factor over naive."""
    ceiling = results["ceiling: plain parallel shard download"][0]
    naive = results.get("naive: one object per frame", (None,))[0]
    mb = total_bytes / 1e6
    rows = [
        "| method | seconds | MB/s | client CPU s | ratio to ceiling | factor over naive |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (sec, cpu) in results.items():
        factor = f"{naive / sec:.1f}x" if naive else "-"
        rows.append(f"| {name} | {sec:.2f} | {mb / sec:.0f} | {cpu:.2f} | {ceiling / sec:.2f} | {factor} |")
    return "\n".join(rows)


def main() -> None:
    """Run the benchmark and append its tables to BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of the packed methods (median); naive runs once")
    parser.add_argument("--scale-mb", type=int, default=256, help="size of the at-scale run, MiB")
    parser.add_argument("--no-append", action="store_true", help="print only, leave BENCHMARKS.md")
    args = parser.parse_args()

    config = SyntheticConfig(
        num_ids=16,
        num_test_ids=8,
        num_cameras=3,
        tracklets_per_id=2,
        min_frames=20,
        max_frames=36,
        height=256,
        width=128,
        num_distractor_tracklets=4,
        num_junk_tracklets=4,
    )
    t0 = time.perf_counter()
    root = ensure_synthetic_mars(REPO / ".cache" / "bench", config)
    print(f"synthetic MARS at {root} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    index = read_mars(root, "official")
    paths = sorted({f for s in ("train", "gallery") for t in getattr(index, s) for f in t.frames})
    frames = [(f"naive/{Path(p).relative_to(root).as_posix()}", Path(p)) for p in paths]
    total = sum(p.stat().st_size for _, p in frames)

    server, endpoint = start_s3_server()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    out = work / "out"

    def reset() -> None:
        shutil.rmtree(out, ignore_errors=True)

    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        client = s3.make_client()
        client.create_bucket(Bucket=BUCKET)
        manifest = pack(root, f"s3://{BUCKET}/packed", shard_size_bytes=SHARD_SIZE, progress=False)
        t0 = time.perf_counter()
        upload_frames(client, frames)
        upload_naive_s = time.perf_counter() - t0
        shard_keys = [f"packed/{s.name}" for s in manifest.shards]
        keys = [k for k, _ in frames]
        # Every method starts from nothing, so each creates its own client inside the timing.
        naive = lambda: download_frames(s3.make_client(), keys, out)  # noqa: E731
        results = timed({"naive: one object per frame": naive}, 1, reset)
        uri = f"s3://{BUCKET}/packed"
        results |= timed(packed_methods(uri, shard_keys, out), args.repeats, reset)
        reset()
        sync(uri, out, progress=False)
        cached = timed({"hit": lambda: sync(uri, out, progress=False)}, 5, lambda: None)["hit"][0]

        big = random_index(args.scale_mb * 2**20, 15_000)
        big_manifest = pack(
            big, f"s3://{BUCKET}/big", frames=RandomFrames(15_000), shard_size_bytes=SCALE_SHARD_SIZE,
            progress=False,
        )  # fmt: skip
        big_keys = [f"big/{s.name}" for s in big_manifest.shards]
        scale = timed(packed_methods(f"s3://{BUCKET}/big", big_keys, out), args.repeats, reset)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    small_table = table(results, total) + (
        f"\n| re-sync, cache hit (manifest GET only) | {cached:.3f} | - | - | - | - |"
    )
    scale_table = table(scale, big_manifest.total_bytes)
    setup = (
        f"moto S3 server on loopback in its own process (server and client share the machine's "
        f"cores); {s3.MAX_CONCURRENCY} concurrent requests and a fresh client for every method; "
        f"median of {args.repeats} interleaved runs (naive: 1). Small: {len(frames)} frames of "
        f"256x128 JPEG ({total / 1e6:.1f} MB) from a synthetic MARS, packed into "
        f"{len(manifest.shards)} shards of <= {SHARD_SIZE // 2**20} MiB (naive upload "
        f"{upload_naive_s:.1f} s). At scale: {big_manifest.total_bytes / 1e6:.0f} MB of 15 kB "
        f"stand-in frames in {len(big_manifest.shards)} shards of <= {SCALE_SHARD_SIZE // 2**20} MiB "
        "(too many objects to upload one per frame in the time)."
    )
    sync_s, bare_s, hashed_s = (scale[name][0] for name in packed_methods("", [], out))
    reading = (
        f"At scale, sync reaches {bare_s / sync_s:.2f} of the bare ceiling and {hashed_s / sync_s:.2f} "
        f"of the ceiling + sha256; the difference between those two is the sha256 check of every "
        f"shard, CPU that on this machine competes with the S3 server itself."
    )
    print(small_table, scale_table, setup, reading, sep="\n\n")
    if not args.no_append:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        append_section(
            "S3 sync: packed shards vs one object per frame",
            f"Load average {load}; Python {platform.python_version()}. `bench/bench_sync.py`. {setup}\n\n"
            f"Small (synthetic MARS):\n\n{small_table}\n\nAt scale:\n\n{scale_table}\n\n{reading}",
        )


if __name__ == "__main__":
    main()
