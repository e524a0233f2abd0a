"""Frames/s of one DataLoader worker: decode + augment against plain JPEG decoding of the same frames.

Plain decoding (torchvision's libjpeg-turbo, one call per clip) is the ceiling a worker cannot beat; the
ratio says how much of a worker's time the rest of the pipeline takes. Frames are generated 256x128
JPEGs held in memory, so disk and S3 are not measured, and torch runs on one thread as in a worker.
Prints a markdown table and appends it as a dated section to BENCHMARKS.md at the repository root.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from report import append_section  # bench/ is on sys.path when a script runs
from torchvision.io import ImageReadMode, decode_jpeg

from gltr_platform.data.index import Tracklet
from gltr_platform.data.loaders import ClipKey, TrainClipDataset
from gltr_platform.data.transforms import build_test_transform, build_train_transform, decode_frames

HEIGHT, WIDTH, SEQ_LEN = 256, 128, 8
NUM_FRAMES = 496  # 62 clips of 8
ROUNDS = 9
TARGET = 0.7
REPO = Path(__file__).resolve().parents[1]
CEILING = "JPEG decode only (ceiling)"
SAMPLE = "TrainClipDataset sample as training uses it (uint8 out; normalised on the device)"


def person_like_frame(rng: np.random.Generator) -> np.ndarray:
    """A smooth 256x128 image with a few blobs and sensor noise: JPEG sizes close to MARS crops."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([x * rng.uniform(0.5, 2) + y * rng.uniform(0, 0.5) for _ in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), rng.uniform(10, 50)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def generate_frames(directory: Path) -> dict[str, bytes]:
    """Write NUM_FRAMES JPEGs to `directory`, then read them all into memory."""
    rng = np.random.default_rng(0)
    for i in range(NUM_FRAMES):
        Image.fromarray(person_like_frame(rng)).save(directory / f"{i:04d}.jpg", quality=90)
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.jpg"))}


class MemoryFrameSource:
    """FrameSource over bytes already in memory."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs

    def read_frame(self, frame: str) -> bytes:
        return self.blobs[frame]


def measure(blobs: dict[str, bytes]) -> dict[str, float]:
    """Median frames/s of each stage, the ceiling first and the full training sample last."""
    names = sorted(blobs)
    clips = [tuple(names[i : i + SEQ_LEN]) for i in range(0, len(names), SEQ_LEN)]
    encoded = [[torch.frombuffer(bytearray(blobs[n]), dtype=torch.uint8) for n in c] for c in clips]
    source = MemoryFrameSource(blobs)
    test_transform = build_test_transform(HEIGHT, WIDTH)
    train_transform = build_train_transform(HEIGHT, WIDTH)
    tracklets = [Tracklet(frames, pid, 0, "train") for pid, frames in enumerate(clips)]
    dataset = TrainClipDataset(tracklets, source, SEQ_LEN, "consecutive", train_transform)
    uint8_transform = build_train_transform(HEIGHT, WIDTH, normalize=False)
    training = TrainClipDataset(tracklets, source, SEQ_LEN, "consecutive", uint8_transform)

    def decode(i: int) -> list[torch.Tensor]:
        return decode_frames([source.read_frame(n) for n in clips[i]], clips[i])

    stages: dict[str, Callable[[int], object]] = {
        CEILING: lambda i: decode_jpeg(encoded[i], mode=ImageReadMode.RGB),
        "decode + test transform (stack, float, normalise)": lambda i: test_transform(decode(i)),
        "decode + train augmentation, uint8 out": lambda i: train_transform.geometry(decode(i)),
        "decode + train transform, float out": lambda i: train_transform(decode(i)),
        "TrainClipDataset sample, float out (normalised in the worker)": lambda i: dataset[ClipKey(0, i, i)],
        SAMPLE: lambda i: training[ClipKey(0, i, i)],
    }
    # Every stage runs on a clip before the next clip: load from other processes on a shared machine
    # then hits all stages alike, and the ratios hold even when absolute rates drift.
    rates: dict[str, list[float]] = {name: [] for name in stages}
    for round_ in range(ROUNDS + 1):
        seconds = dict.fromkeys(stages, 0.0)
        for i in range(len(clips)):
            for name, run in stages.items():
                start = time.perf_counter()
                run(i)
                seconds[name] += time.perf_counter() - start
        if round_ > 0:  # the first round warms caches and the allocator up
            for name in stages:
                rates[name].append(len(clips) * SEQ_LEN / seconds[name])
    return {name: statistics.median(r) for name, r in rates.items()}


def report(rates: dict[str, float], mean_kib: float) -> str:
    """The markdown table and the verdict against the target."""
    ceiling, sample = rates[CEILING], rates[SAMPLE]
    lines = [
        f"{NUM_FRAMES} generated {HEIGHT}x{WIDTH} JPEGs (mean {mean_kib:.1f} KiB), clips of {SEQ_LEN} "
        f"frames, bytes in memory, 1 torch thread, median of {ROUNDS} rounds with the stages "
        "interleaved clip by clip; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {os.getloadavg()[0]:.1f}.",
        "",
        "| stage | frames/s | ms per clip | share of ceiling |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {1e3 * SEQ_LEN / rate:.2f} | {rate / ceiling:.2f} |")
    verdict = "meets" if sample / ceiling >= TARGET else "is below"
    lines += [
        "",
        f"A training sample runs at **{sample / ceiling:.2f}** of the decode ceiling ({verdict} the "
        f"{TARGET} aim). The training loop takes uint8 clips from its loader (4x less to move between "
        "processes and to the GPU) and normalises them on the device (`normalize_clip`); the float row "
        "is the same sample normalised in the DataLoader worker instead.",
    ]
    return "\n".join(lines)


def main() -> None:
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        blobs = generate_frames(Path(tmp))
    mean_kib = statistics.mean(len(b) for b in blobs.values()) / 1024
    body = report(measure(blobs), mean_kib)
    print(body)
    append_section("Clip decode + augmentation per DataLoader worker", body)


if __name__ == "__main__":
    main()
