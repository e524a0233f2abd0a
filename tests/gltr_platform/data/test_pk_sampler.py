"""DistributedPKSampler: P identities x K tracklets per batch, disjoint and equal across ranks."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from gltr_platform.data.pk_sampler import DistributedPKSampler


def make_labels(num_ids: int = 23, seed: int = 0) -> list[int]:
    """Identities with 1..9 tracklets each (some fewer than K), shuffled into dataset order."""
    g = torch.Generator().manual_seed(seed)
    labels = [pid for pid in range(num_ids) for _ in range(1 + pid % 9)]
    return [labels[i] for i in torch.randperm(len(labels), generator=g).tolist()]


def rank_batches(labels, p, k, num_replicas, epoch=0, seed=0, drop_last=True):
    samplers = [
        DistributedPKSampler(labels, p, k, num_replicas, rank, seed=seed, drop_last=drop_last)
        for rank in range(num_replicas)
    ]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers, [s.batches() for s in samplers]


def identities(labels, batch):
    return [labels[i] for i in batch]


@pytest.mark.parametrize("num_replicas", [1, 2, 4])
def test_every_batch_has_p_distinct_identities_with_k_tracklets_each(num_replicas):
    labels, p, k = make_labels(), 3, 4
    _, per_rank = rank_batches(labels, p, k, num_replicas)
    for batches in per_rank:
        for batch in batches:
            counts = Counter(identities(labels, batch))
            assert len(counts) == p and set(counts.values()) == {k}


def test_an_identity_with_enough_tracklets_gets_k_distinct_ones():
    labels = make_labels()
    _, [batches] = rank_batches(labels, 3, 4, 1)
    for batch in batches:
        for i in range(0, len(batch), 4):
            group = batch[i : i + 4]
            if labels.count(labels[group[0]]) >= 4:
                assert len(set(group)) == 4


@pytest.mark.parametrize("num_replicas", [2, 4])
def test_ranks_get_disjoint_identity_batches_and_the_same_number_of_batches(num_replicas):
    labels = make_labels()  # 23 identities: not divisible by P x num_replicas
    samplers, per_rank = rank_batches(labels, 2, 4, num_replicas, epoch=3)
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(b) == s.num_batches for s, b in zip(samplers, per_rank, strict=True))
    seen: set[int] = set()
    for batches in per_rank:
        ids = {pid for batch in batches for pid in identities(labels, batch)}
        assert not ids & seen, "an identity appears on two ranks in one epoch"
        seen |= ids


@pytest.mark.parametrize("num_replicas", [1, 2, 4])
def test_len_is_exact(num_replicas):
    labels = make_labels()
    samplers, per_rank = rank_batches(labels, 2, 3, num_replicas)
    for s, batches in zip(samplers, per_rank, strict=True):
        assert len(s) == len(list(s)) == sum(len(b) for b in batches)
        assert len(s) == 23 // (2 * num_replicas) * 2 * 3


def test_an_epoch_covers_all_identities_but_the_remainder_of_one_round():
    labels = make_labels()
    _, per_rank = rank_batches(labels, 3, 2, 2)
    covered = {pid for batches in per_rank for b in batches for pid in identities(labels, b)}
    assert len(covered) == 23 - 23 % (3 * 2)


def test_the_dropped_remainder_changes_between_epochs_so_every_identity_is_seen():
    labels = make_labels()
    covered = set()
    for epoch in range(10):
        _, per_rank = rank_batches(labels, 3, 2, 2, epoch=epoch)
        covered |= {pid for batches in per_rank for b in batches for pid in identities(labels, b)}
    assert covered == set(range(23))


def test_without_drop_last_the_last_round_is_filled_and_every_identity_is_seen():
    labels = make_labels()
    samplers, per_rank = rank_batches(labels, 3, 2, 2, drop_last=False)
    assert samplers[0].num_batches == 4  # ceil(23 / 6)
    covered = {pid for batches in per_rank for b in batches for pid in identities(labels, b)}
    assert covered == set(range(23))
    for batches in per_rank:
        assert all(len(set(identities(labels, b))) == 3 for b in batches)


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    labels = make_labels()
    _, a = rank_batches(labels, 3, 4, 2, epoch=5)
    _, b = rank_batches(labels, 3, 4, 2, epoch=5)
    _, c = rank_batches(labels, 3, 4, 2, epoch=6)
    _, d = rank_batches(labels, 3, 4, 2, epoch=5, seed=1)
    assert a == b
    assert a != c and a != d


def test_state_dict_round_trip_resumes_the_same_order():
    labels = make_labels()
    s = DistributedPKSampler(labels, 3, 4, seed=11)
    s.set_epoch(7)
    resumed = DistributedPKSampler(labels, 3, 4)
    resumed.load_state_dict(s.state_dict())
    assert s.state_dict() == {"epoch": 7, "seed": 11}
    assert resumed.batches() == s.batches()


def test_dataloader_with_batch_size_p_times_k_yields_the_pk_batches():
    labels = make_labels()
    s = DistributedPKSampler(labels, 3, 4, num_replicas=2, rank=1)
    loader = DataLoader(range(len(labels)), batch_size=s.batch_size, sampler=s, drop_last=True)
    assert [b.tolist() for b in loader] == s.batches()
    assert len(loader) == s.num_batches


def test_too_few_identities_for_p_times_num_replicas_is_a_clear_error():
    with pytest.raises(ValueError, match="only 23 identities"):
        DistributedPKSampler(make_labels(), p=6, k=4, num_replicas=4)
    DistributedPKSampler(make_labels(), p=23, k=4)  # exactly enough is fine


@pytest.mark.parametrize(("p", "k"), [(0, 4), (4, 0), (-1, 2)])
def test_p_and_k_below_one_are_rejected(p, k):
    with pytest.raises(ValueError, match="at least 1"):
        DistributedPKSampler(make_labels(), p=p, k=k)


def test_rank_outside_num_replicas_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        DistributedPKSampler(make_labels(), 2, 2, num_replicas=2, rank=2)
