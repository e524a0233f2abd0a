"""Shared data fixtures: a tiny synthetic MARS on disk and the real MARS metadata."""

from pathlib import Path

import boto3
import pytest

from gltr_platform.data.manifest import MANIFEST_NAME
from gltr_platform.data.pack import pack
from gltr_platform.data.synthetic import SyntheticConfig, generate_synthetic_mars

# The repository is cloned with the shared data folder beside it (../shared).
SHARED = Path(__file__).resolve().parents[3].parent / "shared"

TINY_MARS = SyntheticConfig(
    num_ids=8,
    num_test_ids=6,
    num_cameras=3,
    tracklets_per_id=2,
    min_frames=4,
    max_frames=12,
    height=64,
    width=32,
    occlusion_prob=0.1,
    seed=0,
    num_distractor_tracklets=3,
    num_junk_tracklets=2,
)


@pytest.fixture(scope="session")
def synthetic_mars_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic MARS (8 train ids, 6 test ids, 3 cameras, 4-12 frames of 64x32), read-only."""
    return generate_synthetic_mars(tmp_path_factory.mktemp("synthetic-mars") / "mars", TINY_MARS)


SHARD = 256 * 1024  # about 5 shards of the tiny dataset


@pytest.fixture(scope="module")
def packed_dir(synthetic_mars_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic MARS packed in SHARD-sized shards: the bytes S3 must deliver intact."""
    dest = tmp_path_factory.mktemp("packed") / "mars"
    pack(synthetic_mars_root, dest, shard_size_bytes=SHARD, progress=False)
    return dest


@pytest.fixture
def packed_uri(packed_dir: Path, s3_bucket: str) -> str:
    """The packed tiny MARS in a fresh bucket, uploaded straight to the server (each test may damage its copy)."""
    client = boto3.session.Session().client("s3")
    for path in sorted(packed_dir.rglob("*.bin")) + [packed_dir / MANIFEST_NAME]:
        client.upload_file(str(path), s3_bucket, f"mars/v1/{path.relative_to(packed_dir).as_posix()}")
    return f"s3://{s3_bucket}/mars/v1"


@pytest.fixture(scope="session")
def mars_info_dir() -> Path:
    """The real MARS track metadata (tracks_*_info.mat, query_IDX.mat) in ../shared/data/mars-info."""
    path = SHARED / "data" / "mars-info"
    if not (path / "tracks_test_info.mat").is_file():
        pytest.fail(f"real MARS metadata missing at {path}: clone the shared folder beside the repo")
    return path
