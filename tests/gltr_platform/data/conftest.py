"""Shared data fixtures: a tiny synthetic MARS on disk, the real MARS metadata, and writers of tiny
iLIDS-VID and PRID-2011 copies in their published layouts."""

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import boto3
import numpy as np
import pytest
import scipy.io
from PIL import Image

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


def png_frame(pid: int, camid: int, frame: int) -> bytes:
    """A tiny 8x16 RGB PNG whose colour tells its person, camera and frame apart."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 16), (pid % 256, 100 * camid + frame % 100, frame // 100)).save(buffer, "PNG")
    return buffer.getvalue()


def write_frames(folder: Path, names: Sequence[str], pid: int, camid: int) -> None:
    folder.mkdir(parents=True)
    for frame, name in enumerate(names):
        (folder / name).write_bytes(png_frame(pid, camid, frame))


def _write_ilidsvid(root: Path, persons: Sequence[int], ls_set: np.ndarray | None, frames: int = 4) -> Path:
    """root/i-LIDS-VID/sequences/cam{1,2}/personNNN/camC_personNNN_FFFFF.png, and unless `ls_set` is None
    root/train-test people splits/train_test_splits_ilidsvid.mat holding it, as scipy writes MATLAB files."""
    for camid, camera in enumerate(("cam1", "cam2")):
        for pid in persons:
            first = 300 + 7 * pid  # sequences start mid-video, e.g. cam1_person001_00317.png
            names = [f"{camera}_person{pid:03d}_{first + f:05d}.png" for f in range(frames)]
            write_frames(root / "i-LIDS-VID" / "sequences" / camera / f"person{pid:03d}", names, pid, camid)
    if ls_set is not None:
        split_dir = root / "train-test people splits"
        split_dir.mkdir()
        scipy.io.savemat(split_dir / "train_test_splits_ilidsvid.mat", {"ls_set": ls_set})
    return root


@pytest.fixture
def write_ilidsvid() -> Callable[..., Path]:
    """write(root, persons, ls_set, frames=4): a tiny iLIDS-VID in its published layout."""
    return _write_ilidsvid


def _write_prid2011(root: Path, cameras: dict[str, dict[int, int]], splits: list | None = None) -> Path:
    """root/prid_2011/multi_shot/{cam_a,cam_b}/person_NNNN/FFFF.png with {camera: {pid: frames}}, and
    torchreid's root/splits_prid2011.json when `splits` is given."""
    for camid, camera in enumerate(("cam_a", "cam_b")):
        for pid, n in cameras.get(camera, {}).items():
            names = [f"{f:04d}.png" for f in range(1, n + 1)]
            write_frames(root / "prid_2011" / "multi_shot" / camera / f"person_{pid:04d}", names, pid, camid)
    if splits is not None:
        (root / "splits_prid2011.json").write_text(json.dumps(splits))
    return root


@pytest.fixture
def write_prid2011() -> Callable[..., Path]:
    """write(root, {camera: {pid: frames}}, splits=None): a tiny PRID-2011 in its published layout."""
    return _write_prid2011
