"""DistributedTrackletSampler: every tracklet once per epoch, shuffled, disjoint and equal across ranks."""

import pytest
from torch.utils.data import DataLoader

from gltr_platform.data.tracklet_sampler import DistributedTrackletSampler

MARS_TRAIN_TRACKLETS = 8298


def rank_indices(n, num_replicas, epoch=0, seed=0):
    samplers = [DistributedTrackletSampler(n, num_replicas, rank, seed=seed) for rank in range(num_replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers, [s.indices() for s in samplers]


def test_one_rank_visits_every_tracklet_once_per_epoch_in_a_shuffled_order():
    _, [indices] = rank_indices(103, 1)

    assert sorted(indices) == list(range(103))
    assert indices != list(range(103))


def test_on_mars_one_rank_takes_the_official_830_steps_of_10_the_last_one_short():
    sampler = DistributedTrackletSampler(MARS_TRAIN_TRACKLETS)
    loader = DataLoader(range(MARS_TRAIN_TRACKLETS), batch_size=10, sampler=sampler)
    sizes = [len(batch) for batch in loader]

    assert len(loader) == len(sizes) == 830
    assert sizes[:-1] == [10] * 829 and sizes[-1] == 8


@pytest.mark.parametrize("num_replicas", [2, 3, 4, 8])
def test_ranks_get_disjoint_equal_shares_that_leave_out_fewer_than_one_per_rank(num_replicas):
    samplers, shares = rank_indices(103, num_replicas, epoch=2)
    seen = [i for share in shares for i in share]

    assert len({len(share) for share in shares}) == 1
    assert all(len(s) == len(share) == 103 // num_replicas for s, share in zip(samplers, shares, strict=True))
    assert len(seen) == len(set(seen)), "a tracklet appears twice in one epoch"
    assert 103 - len(seen) == 103 % num_replicas


def test_ranks_take_the_same_number_of_steps_so_ddp_stays_in_step():
    samplers, _ = rank_indices(MARS_TRAIN_TRACKLETS, 4)
    steps = [len(DataLoader(range(MARS_TRAIN_TRACKLETS), batch_size=10, sampler=s)) for s in samplers]

    assert steps == [208] * 4  # 8298 // 4 = 2074 tracklets per rank, 207 full batches and one of 4


def test_the_tracklets_left_out_change_between_epochs_so_every_one_is_trained_on():
    covered = set()
    for epoch in range(10):
        _, shares = rank_indices(103, 4, epoch=epoch)
        covered |= {i for share in shares for i in share}

    assert covered == set(range(103))


def test_same_seed_and_epoch_give_the_same_order_and_epochs_and_seeds_differ():
    _, a = rank_indices(103, 2, epoch=5)
    _, b = rank_indices(103, 2, epoch=5)
    _, c = rank_indices(103, 2, epoch=6)
    _, d = rank_indices(103, 2, epoch=5, seed=1)

    assert a == b
    assert a != c and a != d


def test_state_dict_round_trip_resumes_the_same_order():
    s = DistributedTrackletSampler(103, num_replicas=2, rank=1, seed=11)
    s.set_epoch(7)
    resumed = DistributedTrackletSampler(103, num_replicas=2, rank=1)
    resumed.load_state_dict(s.state_dict())

    assert s.state_dict() == {"epoch": 7, "seed": 11}
    assert list(resumed) == list(s) == s.indices()


def test_rank_outside_num_replicas_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        DistributedTrackletSampler(10, num_replicas=2, rank=2)


def test_fewer_tracklets_than_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="3 training tracklets cannot be shared by 4 ranks"):
        DistributedTrackletSampler(3, num_replicas=4)
