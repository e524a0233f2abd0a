"""A synthetic MARS: deterministic, learnable-but-not-trivial pedestrians in MARS's on-disk layout.

Each identity has a look (clothing colours from a small palette, so colours alone are ambiguous; an
upper-body pattern, sleeves, an optional bag, body height and build). Each camera has a colour cast,
a gain and a background colour. Each tracklet adds background clutter, detector jitter, walking
motion, illumination flicker, pixel noise and, with `occlusion_prob` per frame, a partial or full
occluder. Every identity is seen by every camera, `tracklets_per_id` times per camera. The test
split also holds distractor (pid 0) and junk (pid -1, off-centre fragments) tracklets, like MARS.

Everything is drawn from random streams keyed by (seed, what, which), so an identity's look does not
change when other settings do, and the same config always yields the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gltr_platform.data.index import DatasetError
from gltr_platform.data.mars import DISTRACTOR_PID, JUNK_PID, mars_frame_name

GENERATOR_VERSION = 1  # bump when the output changes, so cached datasets are regenerated
COMPLETE_MARKER = ".complete"
JPEG_QUALITY = 90

# Keys of the random streams, so each kind of draw has its own independent stream.
_PLAN, _QUERY, _LOOK, _CAMERA, _TRACK = range(5)
_DISTRACTOR_LOOKS, _JUNK_LOOKS = 10_000, 20_000

# Clothing palettes (RGB in 0..1). Few colours, so many identities share them.
_UPPER = np.array(
    [
        [0.80, 0.10, 0.10], [0.10, 0.25, 0.70], [0.08, 0.10, 0.30], [0.15, 0.55, 0.20],
        [0.45, 0.45, 0.15], [0.90, 0.80, 0.20], [0.95, 0.50, 0.10], [0.45, 0.15, 0.55],
        [0.95, 0.60, 0.70], [0.92, 0.92, 0.90], [0.50, 0.50, 0.52], [0.08, 0.08, 0.08],
        [0.45, 0.28, 0.15], [0.10, 0.50, 0.50], [0.45, 0.05, 0.10], [0.85, 0.78, 0.60],
    ]
)  # fmt: skip
_LOWER = np.array(
    [
        [0.20, 0.30, 0.55], [0.08, 0.08, 0.10], [0.45, 0.45, 0.48], [0.70, 0.62, 0.45],
        [0.35, 0.22, 0.12], [0.10, 0.12, 0.30], [0.88, 0.88, 0.85], [0.35, 0.38, 0.18],
    ]
)  # fmt: skip
_SKIN = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.52], [0.67, 0.46, 0.32], [0.42, 0.27, 0.18]])

# Part labels of the label map a frame is painted from.
_BG, _SKIN_L, _HAIR, _UPPER_L, _PATTERN, _LOWER_L, _SHOES, _BAG, _NUM_LABELS = range(9)
_PLAIN, _HSTRIPES, _VSTRIPES, _CHECKS = range(4)


class SyntheticConfig(BaseModel):
    """What to generate; every field is part of the cache key of `ensure_synthetic_mars`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_ids: int = Field(32, ge=1, description="training identities (pids 1..num_ids)")
    num_test_ids: int = Field(32, ge=1, description="test identities (pids after the train ones)")
    num_cameras: int = Field(4, ge=2, le=9, description="cameras; every identity is seen by all")
    tracklets_per_id: int = Field(2, ge=1, le=9999, description="tracklets per identity PER CAMERA")
    min_frames: int = Field(8, ge=1, description="shortest tracklet, frames")
    max_frames: int = Field(32, ge=1, le=999, description="longest tracklet, frames (MARS: F001..F999)")
    height: int = Field(64, ge=16, le=1024, description="frame height, pixels")
    width: int = Field(32, ge=8, le=1024, description="frame width, pixels")
    occlusion_prob: float = Field(0.1, ge=0.0, le=1.0, description="chance a frame has an occluder")
    seed: int = Field(0, ge=0)
    num_distractor_tracklets: int = Field(8, ge=0, le=9999, description="pid 0 tracklets in test")
    num_junk_tracklets: int = Field(8, ge=0, le=9999, description="pid -1 tracklets in test")

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames={self.min_frames} > max_frames={self.max_frames}")
        if self.num_ids + self.num_test_ids > 9999:
            raise ValueError("MARS names have 4-digit pids: num_ids + num_test_ids must be <= 9999")
        return self


def config_digest(config: SyntheticConfig) -> str:
    """A short hash naming the dataset `config` generates (generator version included)."""
    text = json.dumps({"version": GENERATOR_VERSION, **config.model_dump()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_synthetic_mars(cache_dir: str | Path, config: SyntheticConfig) -> Path:
    """The synthetic MARS for `config` under `cache_dir`, generated once and reused afterwards.

    It is written to a hidden temporary folder beside its final place and renamed there when
    complete, so a reader (or a racing writer on the same node) never sees a half-written dataset.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"synthetic-mars-{config_digest(config)}"
    if (final / COMPLETE_MARKER).is_file():
        return final
    if final.exists():
        raise DatasetError(
            f"{final} exists but has no {COMPLETE_MARKER} marker, so it was not written by "
            "ensure_synthetic_mars: delete it to regenerate"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by the node's workers
        generate_synthetic_mars(tmp, config)
        (tmp / COMPLETE_MARKER).write_text(config.model_dump_json() + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def generate_synthetic_mars(root: str | Path, config: SyntheticConfig) -> Path:
    """Write a synthetic MARS (bbox_train/, bbox_test/, info/) to `root`, a new or empty folder."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; synthetic MARS is written to a new folder")
    plan = np.random.default_rng([config.seed, _PLAN])
    train = _plan_identities(range(1, config.num_ids + 1), config, plan)
    test = _plan_others(JUNK_PID, config.num_junk_tracklets, _JUNK_LOOKS, config, plan)
    test += _plan_others(DISTRACTOR_PID, config.num_distractor_tracklets, _DISTRACTOR_LOOKS, config, plan)
    test_ids = range(config.num_ids + 1, config.num_ids + config.num_test_ids + 1)
    test += _plan_identities(test_ids, config, plan)
    queries = _choose_queries(test, np.random.default_rng([config.seed, _QUERY]))

    painter = _Painter(config)
    info = root / "info"
    info.mkdir(parents=True)
    for split, tracks in (("train", train), ("test", test)):
        names = painter.write(root / f"bbox_{split}", tracks)
        (info / f"{split}_name.txt").write_text("".join(n + "\n" for n in names))
        _savemat(info / f"tracks_{split}_info.mat", f"track_{split}_info", _track_rows(tracks))
    _savemat(info / "query_IDX.mat", "query_IDX", np.array([queries], dtype=np.int32) + 1)
    return root


@dataclass(frozen=True)
class _Track:
    """One planned tracklet; its rows in the name list follow from the order of the plan."""

    pid: int
    camera: int  # 1-based, as in the file names
    number: int  # the T of the file names, 1-based per (pid, camera)
    length: int
    look: int  # key of the appearance stream: the pid, or a fresh one per distractor/junk tracklet


def _plan_identities(pids: range, config: SyntheticConfig, plan: np.random.Generator) -> list[_Track]:
    """`tracklets_per_id` tracklets of every identity in every camera, in MARS's name order."""
    tracks = []
    for pid in pids:
        for camera in range(1, config.num_cameras + 1):
            lengths = plan.integers(config.min_frames, config.max_frames + 1, config.tracklets_per_id)
            tracks += [_Track(pid, camera, t + 1, int(n), pid) for t, n in enumerate(lengths)]
    return tracks


def _plan_others(
    pid: int, count: int, look_base: int, config: SyntheticConfig, plan: np.random.Generator
) -> list[_Track]:
    """`count` one-off tracklets under `pid` (distractors or junk) spread over random cameras."""
    cameras = np.sort(plan.integers(1, config.num_cameras + 1, count))
    lengths = plan.integers(config.min_frames, config.max_frames + 1, count)
    tracks, seen = [], {}
    for i, (camera, n) in enumerate(zip(cameras.tolist(), lengths.tolist(), strict=True)):
        seen[camera] = seen.get(camera, 0) + 1
        tracks.append(_Track(pid, camera, seen[camera], n, look_base + i))
    return tracks


def _choose_queries(test: list[_Track], rng: np.random.Generator) -> list[int]:
    """0-based test rows that are queries, chosen as MARS does.

    For each identity seen by two or more cameras, one tracklet per camera becomes a query, but only
    while another camera of that identity keeps a tracklet in the gallery.
    """
    by_pid: dict[int, dict[int, list[int]]] = {}
    for row, track in enumerate(test):
        if track.pid > DISTRACTOR_PID:
            by_pid.setdefault(track.pid, {}).setdefault(track.camera, []).append(row)
    queries = []
    for cameras in by_pid.values():
        left = {camera: len(rows) for camera, rows in cameras.items()}
        for camera in rng.permutation(sorted(cameras)).tolist():
            if any(n > 0 for c, n in left.items() if c != camera):
                rows = cameras[camera]
                queries.append(rows[int(rng.integers(len(rows)))])
                left[camera] -= 1
    return sorted(queries)


def _track_rows(tracks: list[_Track]) -> np.ndarray:
    """MARS track info rows [start, end, pid, camid], 1-based inclusive rows of the name list."""
    lengths = np.array([t.length for t in tracks])
    end = np.cumsum(lengths)
    rows = [end - lengths + 1, end, [t.pid for t in tracks], [t.camera for t in tracks]]
    return np.stack([np.asarray(c) for c in rows], axis=1).astype(np.int32)


def _savemat(path: Path, key: str, value: np.ndarray) -> None:
    """Save one variable as a MATLAB 5 .mat file, byte-for-byte reproducibly."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {key: value})
    data = bytearray(buffer.getvalue())
    # savemat stamps the time into the 116-byte header text; a fixed text keeps runs identical.
    data[:116] = b"MATLAB 5.0 MAT-file, synthetic MARS (gltr_platform)".ljust(116)
    path.write_bytes(bytes(data))


@dataclass(frozen=True)
class _Look:
    """What an identity wears and how it is built; lengths are fractions of body height."""

    palette: np.ndarray  # (_NUM_LABELS, 3): colour per part label
    pattern: int
    period: float
    phase: float
    short_sleeves: bool
    bag_side: int  # -1 left, +1 right, 0 no bag
    height: float  # body height / frame height
    shoulder: float  # half shoulder width
    legs_from: float  # where the legs start

    @staticmethod
    def draw(rng: np.random.Generator) -> _Look:
        """A random look."""
        palette = np.zeros((_NUM_LABELS, 3))
        palette[_SKIN_L] = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 0.03, 3)
        palette[_HAIR] = rng.uniform(0.02, 0.35) * np.array([1.0, 0.8, 0.6])
        palette[_UPPER_L] = _UPPER[rng.integers(len(_UPPER))] + rng.normal(0, 0.04, 3)
        palette[_PATTERN] = _UPPER[rng.integers(len(_UPPER))] + rng.normal(0, 0.04, 3)
        palette[_LOWER_L] = _LOWER[rng.integers(len(_LOWER))] + rng.normal(0, 0.04, 3)
        palette[_SHOES] = rng.uniform(0.02, 0.6) * np.ones(3)
        palette[_BAG] = rng.uniform(0.05, 0.7, 3)
        return _Look(
            palette=np.clip(palette, 0.0, 1.0),
            pattern=int(rng.choice(4, p=[0.4, 0.25, 0.15, 0.2])),
            period=float(rng.uniform(0.035, 0.09)),
            phase=float(rng.uniform()),
            short_sleeves=bool(rng.random() < 0.4),
            bag_side=int(rng.choice([-1, 0, 0, 1])),
            height=float(rng.uniform(0.78, 0.95)),
            shoulder=float(rng.uniform(0.10, 0.15)),
            legs_from=float(rng.uniform(0.48, 0.56)),
        )


@dataclass(frozen=True)
class _Camera:
    """How a camera sees: a colour cast (RGB gains with mean 1), a gain, the scene's colour."""

    cast: np.ndarray
    gain: float
    scene: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator) -> _Camera:
        """A random camera."""
        cast = rng.uniform(0.8, 1.2, 3)
        scene = rng.uniform(0.3, 0.65) + rng.normal(0, 0.06, 3)  # greyish, tinted
        return _Camera(cast / cast.mean(), float(rng.uniform(0.7, 1.25)), scene)


class _Painter:
    """Renders and writes tracklets; holds the per-camera settings and the pixel grid."""

    def __init__(self, config: SyntheticConfig):
        self.config = config
        self.ys = (np.arange(config.height, dtype=np.float32) + 0.5)[None, :, None]  # (1, H, 1)
        self.xs = (np.arange(config.width, dtype=np.float32) + 0.5)[None, None, :]  # (1, 1, W)
        self.cameras = {
            camera: _Camera.draw(np.random.default_rng([config.seed, _CAMERA, camera]))
            for camera in range(1, config.num_cameras + 1)
        }
        self.looks: dict[int, _Look] = {}

    def look(self, key: int) -> _Look:
        """The (cached) look of appearance stream `key`."""
        if key not in self.looks:
            self.looks[key] = _Look.draw(np.random.default_rng([self.config.seed, _LOOK, key]))
        return self.looks[key]

    def write(self, split_dir: Path, tracks: list[_Track]) -> list[str]:
        """Write every tracklet as JPEG frames under `split_dir`/<pid4>/; the names, in order."""
        names = []
        test = int(split_dir.name == "bbox_test")
        for row, track in enumerate(tracks):
            frames = self.render(track, np.random.default_rng([self.config.seed, _TRACK, test, row]))
            track_names = [mars_frame_name(track.pid, track.camera, track.number, f + 1) for f in range(len(frames))]
            folder = split_dir / track_names[0][:4]  # MARS files a frame under its name's pid part
            folder.mkdir(parents=True, exist_ok=True)
            for name, frame in zip(track_names, frames, strict=True):
                Image.fromarray(frame).save(folder / name, format="JPEG", quality=JPEG_QUALITY)
            names += track_names
        return names

    def render(self, track: _Track, rng: np.random.Generator) -> np.ndarray:
        """The frames of one tracklet, (T, H, W, 3) uint8."""
        cfg, n = self.config, track.length
        h, w = cfg.height, cfg.width
        look = self.look(track.look)
        camera = self.cameras[track.camera]

        # Motion, one value per frame, shaped (T, 1, 1) to broadcast over the grid. The detector box
        # follows the person loosely (jitter, scale drift); walking swings limbs, scrolls the scene.
        drift = np.clip(np.cumsum(rng.normal(0, 0.012, n)), -0.1, 0.1)
        cx = w * (0.5 + rng.normal(0, 0.03) + drift)
        scale = rng.uniform(0.92, 1.0) * np.clip(1 + np.cumsum(rng.normal(0, 0.008, n)), 0.9, 1.1)
        if track.pid == JUNK_PID:  # junk: a badly placed box showing a fragment of someone
            cx += rng.choice([-1, 1]) * w * rng.uniform(0.35, 0.6)
            scale *= rng.uniform(1.2, 1.6)
        walk = rng.uniform(0, 2 * np.pi) + np.arange(n) * rng.uniform(0.5, 0.9)
        bh = h * look.height * scale  # body height in pixels
        top = h * (1 - rng.uniform(0.01, 0.04)) - bh - 0.012 * h * np.abs(np.sin(walk))
        swing = 0.35 * np.sin(walk)
        cx, bh, top, swing = (a.astype(np.float32)[:, None, None] for a in (cx, bh, top, swing))

        v = (self.ys - top) / bh  # (T, H, 1): 0 at the top of the head, 1 at the soles
        dx = (self.xs - cx) / bh  # (T, 1, W): horizontal offset from the body axis
        adx = np.abs(dx)
        label = np.zeros((n, h, w), dtype=np.uint8)

        legs_v = v - look.legs_from
        in_legs = (legs_v >= 0) & (v < 1)
        stride = swing * 0.3 * legs_v
        legs = in_legs & ((np.abs(dx + 0.055 - stride) < 0.05) | (np.abs(dx - 0.055 + stride) < 0.05))
        label[legs] = _LOWER_L
        label[legs & (v > 0.955)] = _SHOES

        in_torso = (v >= 0.14) & (legs_v < 0)
        torso = in_torso & (adx < look.shoulder * (1 - 0.15 * (v - 0.14) / (look.legs_from - 0.14)))
        label[torso] = _UPPER_L
        if look.pattern != _PLAIN:
            across = ((dx / look.period + look.phase) % 1) < 0.5
            down = ((v / look.period + look.phase) % 1) < 0.5
            stripes = {_HSTRIPES: down, _VSTRIPES: across, _CHECKS: across ^ down}[look.pattern]
            label[torso & stripes] = _PATTERN

        arm_v = v - 0.15
        in_arms = (arm_v >= 0) & (v < look.legs_from + 0.04)
        reach = look.shoulder + 0.025
        arms = in_arms & (
            (np.abs(dx + reach + swing * 0.15 * arm_v) < 0.025) | (np.abs(dx - reach + swing * 0.15 * arm_v) < 0.025)
        )
        label[arms] = _UPPER_L
        if look.short_sleeves:
            label[arms & (arm_v > 0.1)] = _SKIN_L
        if look.bag_side:
            bag = (np.abs(v - 0.42) < 0.09) & (np.abs(dx - look.bag_side * (reach + 0.03)) < 0.045)
            label[bag] = _BAG

        head = (dx / 0.062) ** 2 + ((v - 0.075) / 0.075) ** 2 < 1
        label[head] = _SKIN_L
        label[head & (v < 0.04)] = _HAIR

        img = look.palette.astype(np.float32)[label]  # (T, H, W, 3)
        person = label != _BG
        img *= np.where(person, 1.1 - 0.8 * adx, 1.0)[..., None]  # rounded body: darker at the sides
        img = np.where(person[..., None], img, self._background(n, camera.scene, rng))
        self._occlude(img, rng)
        flicker = camera.gain * rng.uniform(0.9, 1.1) * (1 + rng.normal(0, 0.03, n))
        img *= (camera.cast[None, :] * flicker[:, None]).astype(np.float32)[:, None, None, :]
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.03)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    def _background(self, n: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, H, W, 3) scene behind the person: a cluttered strip scrolling as the box follows."""
        h, w = self.config.height, self.config.width
        span = w * 2
        scene = np.empty((h, span, 3), dtype=np.float32)
        scene[:] = np.clip(colour + rng.normal(0, 0.08, 3), 0, 1)
        ground = int(h * rng.uniform(0.55, 0.8))
        scene[ground:] *= rng.uniform(0.6, 0.9)
        for _ in range(int(rng.integers(2, 8))):
            y0, x0 = rng.integers(0, h), rng.integers(0, span)
            y1, x1 = y0 + rng.integers(h // 8, h // 2), x0 + rng.integers(w // 8, w)
            scene[y0:y1, x0:x1] = 0.5 * rng.uniform(0, 1, 3) + 0.5 * rng.uniform(0.1, 0.8)
        scene += rng.normal(0, 0.04, scene.shape).astype(np.float32)
        start = rng.integers(0, span - w)
        speed = rng.uniform(-1.5, 1.5)  # pixels per frame
        offset = (start + speed * np.arange(n)).astype(np.int64) % (span - w)
        columns = offset[:, None] + np.arange(w)[None, :]  # (T, W)
        return scene[:, columns].transpose(1, 0, 2, 3)

    def _occlude(self, img: np.ndarray, rng: np.random.Generator) -> None:
        """Paint an occluder over some frames: a full cover, or a band from the bottom or a side."""
        h, w = self.config.height, self.config.width
        for t in np.flatnonzero(rng.random(len(img)) < self.config.occlusion_prob).tolist():
            colour = rng.uniform(0, 1, 3).astype(np.float32)
            kind = rng.choice(["full", "bottom", "side"], p=[0.2, 0.5, 0.3])
            if kind == "full":
                img[t] = colour
            elif kind == "bottom":
                img[t, h - int(h * rng.uniform(0.25, 0.6)) :] = colour
            elif rng.random() < 0.5:
                img[t, :, : int(w * rng.uniform(0.3, 0.6))] = colour
            else:
                img[t, :, w - int(w * rng.uniform(0.3, 0.6)) :] = colour
