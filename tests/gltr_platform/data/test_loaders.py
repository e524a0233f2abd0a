"""Train and test loaders over small JPEG tracklets written into tmp_path."""

import numpy as np
import pytest
import torch
from PIL import Image

from gltr_platform.data.index import DatasetError, DirectoryFrameSource, Tracklet
from gltr_platform.data.loaders import (
    ClipKey,
    TestTrackletDataset,
    TrainClipDataset,
    build_test_loader,
    build_train_loader,
    load_frames,
)
from gltr_platform.data.transforms import build_test_transform, build_train_transform

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")

H, W, T = 32, 16, 4
PIDS = (3, 8, 15, 42, 77, 100)  # dataset pids, deliberately not 0..N-1


def write_tracklets(root, split="train", pids=PIDS) -> list[Tracklet]:
    """Per pid, tracklets of varied lengths (some shorter than T); every frame has its own colour."""
    tracklets = []
    rng = np.random.default_rng(0)
    for pid in pids:
        for t, length in enumerate((2, 6, 9)[: 2 + pid % 2]):
            names = []
            for f in range(length):
                name = f"{split}/{pid:04d}/t{t}_f{f:03d}.jpg"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, size=(H * 2, W * 2, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / name, quality=90)
                names.append(name)
            tracklets.append(Tracklet(tuple(names), pid, camid=t % 2, split=split))
    return tracklets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return write_tracklets(root), DirectoryFrameSource(root)


def train_dataset(data, seed=0, sampling="restricted"):
    tracklets, source = data
    return TrainClipDataset(tracklets, source, T, sampling, build_train_transform(H, W), seed=seed)


def train_loader(data, num_workers=0, p=2, k=3, **kwargs):
    tracklets, source = data
    return build_train_loader(
        tracklets, source, build_train_transform(H, W), seq_len=T, batch_size=p * k, k=k, **kwargs,
        num_workers=num_workers,
    )  # fmt: skip


def epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_train_sample_is_a_normalised_clip_with_relabelled_identity_and_camera(data):
    tracklets, _ = data
    dataset = train_dataset(data)
    for i, tracklet in enumerate(tracklets):
        clip, label, camid = dataset[i]
        assert clip.shape == (T, 3, H, W) and clip.dtype == torch.float32
        assert label == PIDS.index(tracklet.pid) and camid == tracklet.camid


def test_train_sample_is_reproducible_per_seed_epoch_and_draw(data):
    a, b = train_dataset(data, seed=1), train_dataset(data, seed=1)
    key = ClipKey(epoch=2, draw=5, index=4)
    assert torch.equal(a[key][0], b[key][0])
    assert not torch.equal(a[key][0], a[ClipKey(3, 5, 4)][0]), "epochs differ"
    assert not torch.equal(a[key][0], a[ClipKey(2, 6, 4)][0]), "two draws of one tracklet differ"
    assert not torch.equal(a[key][0], train_dataset(data, seed=2)[key][0]), "seeds differ"


def test_train_sampling_leaves_the_callers_torch_random_state_alone(data):
    dataset = train_dataset(data)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[0]
    assert torch.equal(torch.rand(3), expected)


def test_a_cycled_short_tracklet_reads_and_decodes_each_frame_once(data):
    tracklets, source = data
    short = next(t for t in tracklets if len(t) == 2)
    reads = []

    class CountingSource:
        def read_frame(self, frame: str) -> bytes:
            reads.append(frame)
            return source.read_frame(frame)

    frames = load_frames(CountingSource(), short, np.array([0, 1, 0, 1, 0]))
    assert sorted(reads) == sorted(short.frames)
    assert frames[0] is frames[2] is frames[4] and frames[1] is frames[3]


def test_train_loader_yields_p_identities_times_k_clips(data):
    loader = train_loader(data, p=2, k=3)
    batches = epoch_batches(loader, 0)
    assert len(batches) == len(loader) == len(PIDS) // 2
    for clips, labels, camids in batches:
        assert clips.shape == (6, T, 3, H, W)
        assert sorted(torch.bincount(labels).tolist())[-2:] == [3, 3]
        assert labels.max() < len(PIDS) and camids.dtype == torch.int64


def test_train_loader_is_the_same_with_two_workers_and_reshuffles_per_epoch(data):
    serial = train_loader(data, num_workers=0)
    parallel = train_loader(data, num_workers=2)
    assert parallel.persistent_workers and not serial.persistent_workers
    for epoch in (0, 1):
        expected, got = epoch_batches(serial, epoch), epoch_batches(parallel, epoch)
        for (clip_a, label_a, cam_a), (clip_b, label_b, cam_b) in zip(expected, got, strict=True):
            assert torch.equal(clip_a, clip_b)
            assert torch.equal(label_a, label_b) and torch.equal(cam_a, cam_b)
    first, second = epoch_batches(serial, 0), epoch_batches(serial, 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_train_loader_sampler_checkpoints_and_resumes_the_epoch(data):
    loader = train_loader(data, seed=4)
    loader.sampler.set_epoch(3)
    expected = [labels.tolist() for _, labels, _ in loader]
    resumed = train_loader(data)
    resumed.sampler.load_state_dict(loader.sampler.state_dict())
    assert loader.sampler.state_dict() == {"epoch": 3, "seed": 4}
    assert [labels.tolist() for _, labels, _ in resumed] == expected


def test_train_loaders_of_two_ranks_split_the_identities(data):
    ranks = [train_loader(data, p=1, k=2, num_replicas=2, rank=r) for r in (0, 1)]
    labels = [{int(x) for _, y, _ in epoch_batches(loader, 0) for x in y} for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert not labels[0] & labels[1]


@pytest.mark.parametrize(
    ("mode", "options", "shape"),
    [
        ("whole", {}, lambda n: (n, 3, H, W)),
        ("evenly", {"seq_len": T}, lambda n: (T, 3, H, W)),
        ("chunks", {"chunk_len": 4}, lambda n: (max(1, -(-n // 4)), 4, 3, H, W)),
    ],
)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_yields_each_tracklet_in_order_with_its_own_pid(data, mode, options, shape, num_workers):
    tracklets, source = data
    loader = build_test_loader(
        tracklets, source, build_test_transform(H, W), mode=mode, batch_size=3,
        num_workers=num_workers, **options,
    )  # fmt: skip
    frames = [f for batch, _, _ in loader for f in batch]
    pids = [int(p) for _, batch_pids, _ in loader for p in batch_pids]
    assert pids == [t.pid for t in tracklets]
    assert [tuple(f.shape) for f in frames] == [shape(len(t)) for t in tracklets]


def test_test_whole_mode_keeps_every_frame_in_order(data):
    tracklets, source = data
    dataset = TestTrackletDataset(tracklets, source, build_test_transform(H, W), mode="whole")
    chunked = TestTrackletDataset(tracklets, source, build_test_transform(H, W), mode="chunks", chunk_len=4)
    index = next(i for i, t in enumerate(tracklets) if len(t) == 9)
    whole, pid, camid = dataset[index]
    chunks, _, _ = chunked[index]
    assert (pid, camid) == (tracklets[index].pid, tracklets[index].camid)
    assert torch.equal(chunks[0], whole[0:4]) and torch.equal(chunks[-1], whole[5:9])


def test_test_dataset_needs_the_length_its_mode_uses(data):
    tracklets, source = data
    with pytest.raises(ValueError, match="seq_len"):
        TestTrackletDataset(tracklets, source, build_test_transform(H, W), mode="evenly")
    with pytest.raises(ValueError, match="chunk_len"):
        TestTrackletDataset(tracklets, source, build_test_transform(H, W), mode="chunks")


def test_a_corrupt_jpeg_raises_dataset_error_naming_the_frame(tmp_path):
    [tracklet, *_] = write_tracklets(tmp_path, pids=(5,))
    bad = tracklet.frames[1]
    (tmp_path / bad).write_bytes(b"\xff\xd8 this is not really a jpeg")
    source = DirectoryFrameSource(tmp_path)
    dataset = TestTrackletDataset([tracklet], source, build_test_transform(H, W))
    with pytest.raises(DatasetError, match=bad):
        dataset[0]
    train = TrainClipDataset([tracklet], source, T, "evenly", build_train_transform(H, W))
    with pytest.raises(DatasetError, match=bad):
        train[0]


def test_tracklets_loader_visits_every_tracklet_once_in_batches_with_a_short_last_one(data):
    tracklets, _ = data
    loader = train_loader(data, p=4, k=1, sampler="tracklets")  # 15 tracklets: batches of 4, 4, 4, 3
    batches = epoch_batches(loader, 0)
    labels = sorted(int(x) for _, y, _ in batches for x in y)

    assert [len(y) for _, y, _ in batches] == [4, 4, 4, 3] and len(loader) == 4
    assert labels == sorted(PIDS.index(t.pid) for t in tracklets)


def test_tracklets_loaders_of_two_ranks_share_the_epoch_without_overlap(data):
    ranks = [train_loader(data, p=4, k=1, sampler="tracklets", num_replicas=2, rank=r) for r in (0, 1)]
    draws = [[key.index for key in loader.sampler] for loader in ranks]

    assert len(ranks[0]) == len(ranks[1]) == 2  # 7 tracklets each: batches of 4 and 3
    assert not set(draws[0]) & set(draws[1]) and len(draws[0]) == len(draws[1]) == 7


def test_tracklets_loader_sampler_checkpoints_and_resumes_the_epoch(data):
    loader = train_loader(data, p=4, k=1, sampler="tracklets", seed=4)
    loader.sampler.set_epoch(3)
    expected = [labels.tolist() for _, labels, _ in loader]
    resumed = train_loader(data, p=4, k=1, sampler="tracklets")
    resumed.sampler.load_state_dict(loader.sampler.state_dict())

    assert [labels.tolist() for _, labels, _ in resumed] == expected


def test_an_unknown_sampler_is_rejected(data):
    with pytest.raises(ValueError, match="unknown sampler"):
        train_loader(data, sampler="random")


def test_tracklets_loader_drops_a_last_batch_of_one_clip_which_batchnorm_cannot_train_on(data):
    loader = train_loader(data, p=7, k=1, sampler="tracklets")  # 15 tracklets: 7, 7 and a lone one
    sizes = [len(y) for _, y, _ in epoch_batches(loader, 0)]

    assert loader.drop_last and sizes == [7, 7] and len(loader) == 2
