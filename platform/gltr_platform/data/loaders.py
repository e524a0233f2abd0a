"""Datasets and DataLoaders: tracklets + a FrameSource in, batches of clips (train) or tracklets (test) out.

Training randomness (which frames, which flip/crop/erase) is a pure function of (seed, epoch, draw,
index), where `draw` numbers the samples of an epoch across all ranks. The train loader's sampler hands
those keys to the dataset with every index, so batches are the same with 0 or 8 workers, no two samples
(in whichever worker) share a random stream, and persistent workers need no epoch update: the epoch
travels with the index instead of living in a copy of the dataset inside each worker process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gltr_platform.data.clip_sampling import SamplingMode, chunk_indices, sample_clip
from gltr_platform.data.index import FrameSource, Tracklet, relabel
from gltr_platform.data.pk_sampler import DistributedPKSampler
from gltr_platform.data.tracklet_sampler import DistributedTrackletSampler
from gltr_platform.data.transforms import ClipTransform, decode_frames

TestMode = Literal["whole", "chunks", "evenly"]
SamplerKind = Literal["pk", "tracklets"]


class ClipKey(NamedTuple):
    """What a training sample's randomness derives from, besides the dataset seed."""

    epoch: int
    draw: int  # the sample's position in the epoch, unique across ranks
    index: int  # the tracklet


def load_frames(source: FrameSource, tracklet: Tracklet, indices: np.ndarray) -> list[torch.Tensor]:
    """Read and decode the frames at `indices` of `tracklet`; repeated indices are decoded once."""
    wanted = indices.tolist()
    # Plain Python rather than np.unique: on 8-64 indices it is several times cheaper.
    position = {frame: k for k, frame in enumerate(dict.fromkeys(wanted))}
    names = [tracklet.frames[frame] for frame in position]
    decoded = decode_frames([source.read_frame(name) for name in names], names)
    return [decoded[position[frame]] for frame in wanted]


class TrainClipDataset(Dataset):
    """A training sample is (clip (T, 3, H, W) float, label, camid) for one tracklet."""

    def __init__(
        self,
        tracklets: Sequence[Tracklet],
        source: FrameSource,
        seq_len: int,
        sampling: SamplingMode,
        transform: ClipTransform,
        label_map: dict[int, int] | None = None,
        seed: int = 0,
    ):
        self.tracklets = list(tracklets)
        self.source = source
        self.seq_len = seq_len
        self.sampling = sampling
        self.transform = transform
        self.label_map = relabel(self.tracklets) if label_map is None else label_map
        self.labels = [self.label_map[t.pid] for t in self.tracklets]
        self.seed = seed
        self.epoch = 0  # used only for plain integer indexing, outside the train loader

    def set_epoch(self, epoch: int) -> None:
        """Epoch for plain integer indexing; the train loader passes the epoch in each ClipKey."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, key: int | ClipKey) -> tuple[torch.Tensor, int, int]:
        if not isinstance(key, ClipKey):
            key = ClipKey(self.epoch, int(key), int(key))
        tracklet = self.tracklets[key.index]
        rng = np.random.default_rng([self.seed, key.epoch, key.draw, key.index])
        indices = sample_clip(len(tracklet), self.seq_len, self.sampling, rng)
        frames = load_frames(self.source, tracklet, indices)
        # v2 transforms draw from torch's global generator: seed it from this sample's stream, and
        # restore it afterwards so the caller's own randomness (num_workers=0) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(rng.integers(2**63)))
            clip = self.transform(frames)
        return clip, self.labels[key.index], tracklet.camid


class KeyedSampler(Sampler[ClipKey]):
    """A training sampler (PK or plain tracklets) whose indices come tagged as ClipKeys for TrainClipDataset."""

    def __init__(self, sampler: DistributedPKSampler | DistributedTrackletSampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call at the start of every epoch, on every rank)."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        """The wrapped sampler's checkpoint state."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the wrapped sampler's checkpoint state."""
        self.sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[ClipKey]:
        s = self.sampler
        for position, index in enumerate(s):
            yield ClipKey(s.epoch, position * s.num_replicas + s.rank, index)

    def __len__(self) -> int:
        return len(self.sampler)


class TestTrackletDataset(Dataset):
    """A test sample is (frames, pid, camid) for one whole tracklet.

    `frames` is (n, 3, H, W) for mode "whole", (seq_len, 3, H, W) for "evenly", and
    (num_chunks, chunk_len, 3, H, W) for "chunks" (see clip_sampling.chunk_indices), which lets the
    evaluator push a long tracklet through the model a few chunks at a time. pid is the dataset's own.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        tracklets: Sequence[Tracklet],
        source: FrameSource,
        transform: ClipTransform,
        mode: TestMode = "whole",
        seq_len: int | None = None,
        chunk_len: int | None = None,
    ):
        if mode not in ("whole", "chunks", "evenly"):
            raise ValueError(f'unknown test mode {mode!r}; expected "whole", "chunks" or "evenly"')
        if mode == "evenly" and seq_len is None:
            raise ValueError('test mode "evenly" needs seq_len')
        if mode == "chunks" and chunk_len is None:
            raise ValueError('test mode "chunks" needs chunk_len')
        self.tracklets = list(tracklets)
        self.source = source
        self.transform = transform
        self.mode = mode
        self.seq_len = seq_len
        self.chunk_len = chunk_len

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        tracklet = self.tracklets[index]
        n = len(tracklet)
        if self.mode == "whole":
            indices = np.arange(n)
        elif self.mode == "evenly":
            indices = sample_clip(n, self.seq_len, "evenly")
        else:
            indices = chunk_indices(n, self.chunk_len)
        frames = self.transform(load_frames(self.source, tracklet, indices.reshape(-1)))
        return frames.reshape(*indices.shape, *frames.shape[1:]), tracklet.pid, tracklet.camid


def collate_tracklets(
    batch: list[tuple[torch.Tensor, int, int]],
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Batch test tracklets of different lengths: (list of frame tensors, pids, camids)."""
    frames, pids, camids = zip(*batch, strict=True)
    return list(frames), torch.tensor(pids), torch.tensor(camids)


def build_train_loader(
    tracklets: Sequence[Tracklet],
    source: FrameSource,
    transform: ClipTransform,
    *,
    seq_len: int,
    batch_size: int,
    sampler: SamplerKind = "pk",
    k: int = 1,
    sampling: SamplingMode = "consecutive",
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    label_map: dict[int, int] | None = None,
) -> DataLoader:
    """Batches of (clips (batch_size, T, 3, H, W), labels, camids) for this rank.

    sampler "pk": every identity once per epoch, batch_size / k identities x k tracklets per batch.
    sampler "tracklets": every tracklet once per epoch, shuffled (the official GLTR epoch); this rank's
    last batch of an epoch may be short (but never a single clip). Call `loader.sampler.set_epoch(epoch)`
    at the start of every epoch; `loader.sampler.state_dict()` is what a checkpoint needs to resume the
    sample order.
    """
    dataset = TrainClipDataset(tracklets, source, seq_len, sampling, transform, label_map, seed)
    if sampler == "pk":
        if batch_size % k:
            raise ValueError(f"batch_size {batch_size} is not divisible by k {k}")
        chosen = DistributedPKSampler(dataset.labels, batch_size // k, k, num_replicas, rank, seed=seed)
    elif sampler == "tracklets":
        chosen = DistributedTrackletSampler(len(dataset), num_replicas, rank, seed=seed)
    else:
        raise ValueError(f'unknown sampler {sampler!r}; expected "pk" or "tracklets"')
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=KeyedSampler(chosen),
        # A short last batch is trained on, as officially, unless it is a single clip: BatchNorm cannot
        # train on a batch of one. Every rank's share has the same length, so all ranks drop it or none.
        drop_last=len(chosen) % batch_size == 1,
        **_worker_options(num_workers, prefetch_factor),
    )


def build_test_loader(
    tracklets: Sequence[Tracklet],
    source: FrameSource,
    transform: ClipTransform,
    *,
    mode: TestMode = "whole",
    seq_len: int | None = None,
    chunk_len: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    prefetch_factor: int = 2,
) -> DataLoader:
    """Tracklets in order, batched as (list of frame tensors, pids, camids) by collate_tracklets."""
    dataset = TestTrackletDataset(tracklets, source, transform, mode, seq_len, chunk_len)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_tracklets,
        **_worker_options(num_workers, prefetch_factor),
    )


def _worker_options(num_workers: int, prefetch_factor: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_workers": num_workers,
        # Pinned host memory only pays off for asynchronous copies to a GPU.
        "pin_memory": torch.cuda.is_available(),
    }
    if num_workers > 0:
        # Workers start once per run, not once per epoch: forking decoders every epoch is slow.
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return options
