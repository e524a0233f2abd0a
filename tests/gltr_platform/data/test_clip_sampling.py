"""Clip sampling: T frame indices from a tracklet of n frames, and test-time chunks."""

import numpy as np
import pytest

from gltr_platform.data.clip_sampling import chunk_indices, sample_clip


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_consecutive_takes_t_consecutive_frames_inside_the_tracklet():
    g = rng()
    for _ in range(200):
        idx = sample_clip(20, 8, "consecutive", g)
        assert idx.tolist() == list(range(idx[0], idx[0] + 8))
        assert idx[0] >= 0 and idx[-1] < 20


def test_consecutive_start_is_uniform_over_every_valid_start():
    g = rng()
    starts = {int(sample_clip(12, 8, "consecutive", g)[0]) for _ in range(500)}
    assert starts == set(range(12 - 8 + 1))


def test_restricted_takes_one_random_frame_from_each_of_t_equal_chunks():
    g = rng()
    n, t = 40, 8  # chunks of 5 frames: [0, 5), [5, 10), ...
    seen = np.zeros((t, 5), dtype=bool)
    for _ in range(500):
        idx = sample_clip(n, t, "restricted", g)
        chunk = idx // 5
        assert chunk.tolist() == list(range(t))
        seen[chunk, idx % 5] = True
    assert seen.all(), "every frame of every chunk is reachable"


def test_restricted_handles_chunks_of_unequal_length():
    g = rng()
    for n in range(9, 30):
        idx = sample_clip(n, 8, "restricted", g)
        assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < n


def test_evenly_is_deterministic_middle_of_each_chunk_and_needs_no_generator():
    assert sample_clip(40, 8, "evenly").tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_clip(41, 8, "evenly").tolist() == sample_clip(41, 8, "evenly").tolist()


@pytest.mark.parametrize("mode", ["consecutive", "restricted", "evenly"])
def test_short_tracklets_are_cycled_in_order(mode):
    assert sample_clip(3, 8, mode, rng()).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert sample_clip(1, 4, mode, rng()).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("mode", ["consecutive", "restricted", "evenly"])
def test_a_tracklet_of_exactly_t_frames_is_used_whole(mode):
    assert sample_clip(8, 8, mode, rng()).tolist() == list(range(8))


@pytest.mark.parametrize("mode", ["consecutive", "restricted"])
def test_same_generator_seed_gives_the_same_clips(mode):
    a, b = rng(7), rng(7)
    assert all(sample_clip(50, 8, mode, a).tolist() == sample_clip(50, 8, mode, b).tolist() for _ in range(20))


@pytest.mark.parametrize("mode", ["consecutive", "restricted"])
def test_random_modes_require_an_explicit_generator(mode):
    with pytest.raises(ValueError, match="Generator"):
        sample_clip(20, 8, mode)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_clip(20, 8, "random", rng())
    with pytest.raises(ValueError, match="at least one frame"):
        sample_clip(0, 8, "evenly")
    with pytest.raises(ValueError, match="at least one frame"):
        sample_clip(20, 0, "evenly")
    with pytest.raises(ValueError, match="at least one frame"):
        chunk_indices(20, 0)


def test_chunks_are_consecutive_equal_length_and_cover_every_frame():
    for n in range(1, 40):
        chunks = chunk_indices(n, 8)
        assert chunks.shape[1] == 8
        assert set(chunks.ravel().tolist()) == set(range(n))
        if n >= 8:
            assert np.all(np.diff(chunks, axis=1) == 1)
            assert chunks[-1, -1] == n - 1


def test_chunks_do_not_overlap_when_the_length_divides_the_tracklet():
    assert chunk_indices(24, 8).tolist() == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]


def test_last_chunk_ends_at_the_last_frame_and_overlaps_instead_of_repeating_frames():
    assert chunk_indices(10, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]


def test_a_tracklet_shorter_than_a_chunk_is_one_cycled_chunk():
    assert chunk_indices(3, 5).tolist() == [[0, 1, 2, 0, 1]]
