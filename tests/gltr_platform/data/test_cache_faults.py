"""A node-local cache that cannot take the dataset (read-only, disk full) fails the sync with one line
naming the cache and what to do, leaves nothing a later sync would trust, and a later sync with room
completes and verifies.

The faults are real: a read-only directory (chmod, or a read-only tmpfs when running as root, where
chmod does not stop writes); a disk that fills up (a small tmpfs when it can be mounted, and always the
file size limit RLIMIT_FSIZE, whose EFBIG stops a write as ENOSPC does).
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from gltr_platform.cli import BAD_INPUT
from gltr_platform.data.manifest import MANIFEST_NAME, parse_manifest
from gltr_platform.data.shard_cache import COMPLETE_MARKER, PackedDataset, _is_complete, sync


def cli_sync(uri: str, cache: Path, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """`python -m gltr_platform.data sync` in a fresh interpreter, optionally under RLIMIT_FSIZE."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run(
        [sys.executable, "-m", "gltr_platform.data", "sync", uri, "--cache", str(cache), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit if limit_file_size else None,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line a failed command printed, last on stderr (after any progress logging)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.endswith(errors[0] + "\n"), result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def writable(directory: Path) -> bool:
    try:
        (directory / ".probe").write_bytes(b"x")
    except OSError:
        return False
    (directory / ".probe").unlink()
    return True


def mount_tmpfs(directory: Path, options: str) -> bool:
    """Mount a tmpfs on `directory`; False where this process may not mount (not root, no CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    return done.returncode == 0


def umount(directory: Path) -> None:
    subprocess.run(["umount", str(directory)], check=True, timeout=30)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An empty directory this process cannot write to, and how it was made so; writable again after."""
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        how = "chmod 0555"
    elif mount_tmpfs(directory, "ro,size=1m"):
        how = "read-only tmpfs"
    else:
        # Root writes through chmod, and dropping to another uid needs an interpreter that uid may run.
        pytest.skip("root without permission to mount here: no way to make a directory read-only for root")
    assert not writable(directory), f"{how} did not make {directory} read-only"
    yield directory, how
    if how == "chmod 0555":
        directory.chmod(0o755)
    else:
        umount(directory)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Directories the test mounted a tmpfs on: unmounted after it, whatever its outcome."""
    mounted: list[Path] = []
    yield mounted
    for directory in mounted:
        umount(directory)


def entry_state(cache: Path) -> dict[str, object]:
    """What a sync left in `cache`: entries, completion markers, unfinished files."""
    return {
        "markers": sorted(str(p) for p in cache.rglob(COMPLETE_MARKER)),
        "unfinished": sorted(str(p) for p in cache.rglob("*") if ".part" in p.name or ".tmp-" in p.name),
    }


def manifest_of(uri: str):
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    raw = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_NAME}")
    return parse_manifest(raw["Body"].read(), uri)


def test_a_read_only_cache_fails_with_one_line_naming_it_and_writes_nothing(packed_uri, read_only_dir):
    cache, how = read_only_dir

    result = cli_sync(packed_uri, cache)

    print(f"read-only cache ({how}): exit {result.returncode}: {error_line(result)}")
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: cannot write to the dataset cache {cache} (")
    assert "make it writable or point --cache / data.cache_dir at a writable directory" in error_line(result)
    assert list(cache.iterdir()) == []


def test_a_read_only_parent_of_a_new_cache_directory_is_named_too(packed_uri, read_only_dir):
    cache = read_only_dir[0] / "datasets"

    result = cli_sync(packed_uri, cache)

    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: cannot write to the dataset cache {cache} (")


@pytest.mark.parametrize("mechanism", ["file size limit", "small tmpfs"])
def test_a_disk_that_fills_up_mid_sync_fails_clearly_and_a_later_sync_completes(
    packed_dir, packed_uri, s3_server, tmp_path, mounts, mechanism
):
    manifest = manifest_of(packed_uri)
    largest = max(s.size for s in manifest.shards)
    cache = tmp_path / "cache"
    cache.mkdir()
    if mechanism == "file size limit":
        # Room for the smaller shards only: EFBIG part-way through writing the larger ones.
        result = cli_sync(packed_uri, cache, limit_file_size=largest - 1000)
    else:
        # Room for about half of the shards: ENOSPC part-way through the download.
        if not mount_tmpfs(cache, f"size={manifest.total_bytes // 2}"):
            pytest.skip("cannot mount a tmpfs here (needs root); the file size limit variant covers disk full")
        mounts.append(cache)
        result = cli_sync(packed_uri, cache)

    print(f"disk full ({mechanism}): exit {result.returncode}: {error_line(result)}")
    assert result.returncode == BAD_INPUT
    assert error_line(result).startswith(f"error: the dataset cache {cache} has no room for mars (")
    assert "free space there or point --cache / data.cache_dir at a larger disk" in error_line(result)
    entry = cache / manifest.version_hash
    assert entry_state(cache) == {"markers": [], "unfinished": []}
    assert not _is_complete(entry, manifest)
    kept = sorted(entry.rglob("*.bin"))
    for shard in kept:  # whatever was kept is whole and verified
        assert hashlib.sha256(shard.read_bytes()).hexdigest() == next(
            s.sha256 for s in manifest.shards if entry / s.name == shard
        )

    # With room again (limit lifted, or the tmpfs made larger), the next sync fetches only what is missing.
    if mechanism == "small tmpfs":
        subprocess.run(["mount", "-o", f"remount,size={manifest.total_bytes * 2}", str(cache)], check=True)
    s3_server.log.clear()
    start = time.monotonic()
    ds = sync(packed_uri, cache, progress=False)
    PackedDataset.open(ds.root, verify=True)
    assert s3_server.log.count("GET", ".bin") == len(manifest.shards) - len(kept)
    for shard in manifest.shards:
        assert (ds.root / shard.name).read_bytes() == (packed_dir / shard.name).read_bytes()
    print(
        f"disk full ({mechanism}): {len(kept)} of {len(manifest.shards)} shards kept, the rest fetched again "
        f"in {time.monotonic() - start:.2f}s"
    )
