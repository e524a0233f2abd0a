"""CMC/mAP under both protocols: hand-worked cases, agreement with the per-query oracle, real MARS layout."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from gltr_model.evaluation import evaluate_rank, evaluate_rank_reference

MARS_INFO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mars-info"


def one_query(distances, g_pids, g_camids, protocol, q_pid=1, q_camid=0, max_rank=4):
    return evaluate_rank(
        np.array([distances], dtype=np.float32),
        [q_pid],
        g_pids,
        [q_camid],
        g_camids,
        max_rank=max_rank,
        protocol=protocol,
    )


# gallery: same pid+camera (dropped), a negative, a match, a negative, a match
CASE = ([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 1, 3, 1], [0, 1, 1, 1, 2])


def test_torchreid_drops_same_camera_matches_and_averages_precision_at_hits():
    cmc, mAP = one_query(*CASE, "torchreid")
    assert cmc.tolist() == [0, 1, 1, 1]  # the same-camera hit at distance 0.1 does not count
    assert mAP == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_official_ap_is_the_trapezoid_over_recall():
    cmc, mAP = one_query(*CASE, "official")
    assert cmc.tolist() == [0, 1, 1, 1]
    # hits at ranks 2 and 4: (precision before + precision at hit) / 2 per recall step of 1/2
    assert mAP == pytest.approx(0.5 * ((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2))


def test_official_first_rank_hit_starts_from_precision_one():
    cmc, mAP = one_query([0.1, 0.2], [1, 5], [1, 1], "official")
    assert cmc[0] == 1 and mAP == pytest.approx(1.0)


def test_pid_minus_one_is_junk_only_in_the_official_protocol():
    case = ([0.1, 0.2, 0.3], [-1, 1, 4], [1, 1, 1])
    cmc, mAP = one_query(*case, "official")
    assert cmc[0] == 1 and mAP == pytest.approx(1.0)
    cmc, mAP = one_query(*case, "torchreid")
    assert cmc[0] == 0 and mAP == pytest.approx(0.5)


def test_query_without_a_true_match_is_skipped_by_torchreid_and_scores_zero_officially():
    dist = np.array([[0.1, 0.2], [0.1, 0.2]], dtype=np.float32)
    args = (dist, [1, 9], [1, 9], [0, 0], [1, 0])  # query 2's only pid-9 entry is in its own camera
    cmc, mAP = evaluate_rank(*args, max_rank=2, protocol="torchreid")
    assert cmc.tolist() == [1, 1] and mAP == 1.0
    cmc, mAP = evaluate_rank(*args, max_rank=2, protocol="official")
    assert cmc.tolist() == [0.5, 0.5] and mAP == 0.5


def test_no_query_with_a_match_is_an_error_for_torchreid():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(np.zeros((1, 2)), [1], [2, 3], [0], [1, 1], protocol="torchreid")


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
def test_ties_are_broken_by_gallery_order(protocol):
    cmc, _ = one_query([0.5, 0.5], [2, 1], [1, 1], protocol)
    assert cmc[0] == 0  # the negative comes first in the gallery
    cmc, _ = one_query([0.5, 0.5], [1, 2], [1, 1], protocol)
    assert cmc[0] == 1


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_rank(np.zeros((1, 1)), [1], [1], [0], [1], protocol="matlab")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((1, 1), np.nan), [1], [1], [0], [1])
    with pytest.raises(ValueError, match="gallery columns"):
        evaluate_rank(np.zeros((1, 2)), [1], [1], [0], [1])


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_the_per_query_oracle_on_random_data_with_ties(protocol, seed):
    rng = np.random.default_rng(seed)
    q, g = rng.integers(5, 40), rng.integers(20, 120)
    q_pids, g_pids = rng.integers(-1, 8, q), rng.integers(-1, 8, g)
    q_camids, g_camids = rng.integers(0, 3, q), rng.integers(0, 3, g)
    dist = (rng.integers(0, 6, (q, g)) if seed % 2 else rng.random((q, g))).astype(np.float32)
    args = (dist, q_pids, g_pids, q_camids, g_camids)
    cmc, mAP = evaluate_rank(*args, max_rank=10, protocol=protocol, block_size=7)
    ref_cmc, ref_mAP = evaluate_rank_reference(*args, max_rank=10, protocol=protocol)
    np.testing.assert_allclose(cmc, ref_cmc)
    assert mAP == pytest.approx(ref_mAP, abs=1e-12)


def agree_with_oracle(args, protocol, max_rank=10, **kwargs):
    cmc, mAP = evaluate_rank(*args, max_rank=max_rank, protocol=protocol, **kwargs)
    ref_cmc, ref_mAP = evaluate_rank_reference(*args, max_rank=max_rank, protocol=protocol)
    np.testing.assert_allclose(cmc, ref_cmc)
    assert mAP == pytest.approx(ref_mAP, abs=1e-12)
    return cmc, mAP


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
def test_true_match_behind_every_other_entry_is_ranked_last(protocol):
    # one true match, farther than every negative and junk entry
    g_pids, g_camids = [2, 3, -1, 1, 4, 1], [0, 0, 1, 0, 2, 1]
    cmc, mAP = one_query([0.1, 0.2, 0.3, 0.4, 0.5, 0.9], g_pids, g_camids, protocol, max_rank=6)
    valid = 4 if protocol == "official" else 5  # same-camera pid 1 is junk; pid -1 too, officially
    assert cmc.tolist() == [0] * (valid - 1) + [1] * (7 - valid)
    # official: trapezoid from precision 0 just before the hit (no earlier hits) to 1 / rank at it
    assert mAP == pytest.approx(1 / valid if protocol == "torchreid" else (0 + 1 / valid) / 2)


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
def test_rows_where_every_distance_ties_rank_in_gallery_order(protocol):
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(-1, 4, 12), rng.integers(-1, 4, 50)
    q_camids, g_camids = rng.integers(0, 2, 12), rng.integers(0, 2, 50)
    for value in (0.0, 0.7):
        dist = np.full((12, 50), value, dtype=np.float32)
        agree_with_oracle((dist, q_pids, g_pids, q_camids, g_camids), protocol, max_rank=50)


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
def test_negatives_tied_between_true_matches_go_by_gallery_order(protocol):
    # pid 1 matches at columns 1 and 4, negatives at columns 0, 2, 3, 5: all at the same distance,
    # and a closer and a farther negative around them
    distances = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.9]
    g_pids, g_camids = [2, 1, 3, 2, 1, 4, 5, 6], [1] * 8
    cmc, mAP = one_query(distances, g_pids, g_camids, protocol, max_rank=8)
    assert cmc.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # order: col 6, 0, 1, 2, 3, 4, ...
    agree_with_oracle((np.array([distances], dtype=np.float32), [1], g_pids, [0], g_camids), protocol)


def test_negative_zero_ties_with_zero():
    dist = np.array([[0.0, -0.0, 0.0, 1.0]], dtype=np.float32)
    for protocol in ("torchreid", "official"):
        cmc, _ = agree_with_oracle((dist, [1], [2, 1, 1, 3], [0], [1, 1, 1, 1]), protocol, max_rank=3)
        assert cmc[0] == 0 and cmc[1] == 1


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
def test_block_size_does_not_change_the_result(protocol):
    rng = np.random.default_rng(7)
    q_pids, g_pids = rng.integers(-1, 30, 300), rng.integers(-1, 30, 700)
    q_camids, g_camids = rng.integers(0, 6, 300), rng.integers(0, 6, 700)
    dist = rng.random((300, 700)).astype(np.float32)
    dist[:, ::7] = np.round(dist[:, ::7], 2)  # some exact ties as well
    args = (dist, q_pids, g_pids, q_camids, g_camids)
    results = [evaluate_rank(*args, protocol=protocol, block_size=bs) for bs in (1, 13, 128, 10_000)]
    for cmc, mAP in results[1:]:
        np.testing.assert_array_equal(cmc, results[0][0])
        assert mAP == pytest.approx(results[0][1], abs=1e-12)
    agree_with_oracle(args, protocol, max_rank=20)


def test_torch_float64_and_integer_distances_give_the_same_ranking():
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 50, (20, 60))
    ids = (rng.integers(0, 5, 20), rng.integers(-1, 5, 60), rng.integers(0, 3, 20), rng.integers(0, 3, 60))
    for protocol in ("torchreid", "official"):
        expected = agree_with_oracle((dist, *ids), protocol)
        for d in (dist.astype(np.float32), torch.tensor(dist, dtype=torch.float64), torch.tensor(dist)):
            cmc, mAP = evaluate_rank(d, *ids, max_rank=10, protocol=protocol)
            np.testing.assert_array_equal(cmc, expected[0])
            assert mAP == expected[1]


def test_empty_query_set_is_an_error():
    with pytest.raises(ValueError, match="no query rows"):
        evaluate_rank(np.zeros((0, 3)), [], [1, 2, 3], [], [0, 0, 0], protocol="official")


def mars_test_split(protocol):
    tracks = scipy.io.loadmat(MARS_INFO / "tracks_test_info.mat")["track_test_info"]
    query = scipy.io.loadmat(MARS_INFO / "query_IDX.mat")["query_IDX"].ravel().astype(int) - 1
    pids, camids = tracks[:, 2].astype(int), tracks[:, 3].astype(int) - 1
    gallery = np.arange(len(tracks))
    if protocol == "torchreid":
        gallery = np.setdiff1d(np.flatnonzero(pids != -1), query)
    return pids[query], camids[query], pids[gallery], camids[gallery]


@pytest.mark.parametrize(("protocol", "num_gallery"), [("torchreid", 9330), ("official", 12180)])
def test_real_mars_structure_perfect_and_noisy_features(protocol, num_gallery):
    q_pids, q_camids, g_pids, g_camids = mars_test_split(protocol)
    assert (len(q_pids), len(g_pids)) == (1980, num_gallery)
    # perfect features: same identity at distance 0, others at 1 -> every query matched at rank 1
    perfect = (q_pids[:, None] != g_pids[None, :]).astype(np.float32)
    cmc, mAP = evaluate_rank(perfect, q_pids, g_pids, q_camids, g_camids, protocol=protocol)
    assert cmc[0] == 1.0 and mAP == pytest.approx(1.0)
    # noisy identity features: agrees with the oracle at full scale
    rng = np.random.default_rng(0)
    centres = {pid: rng.normal(size=32) for pid in np.union1d(q_pids, g_pids)}
    qf = torch.tensor(np.stack([centres[p] + 1.2 * rng.normal(size=32) for p in q_pids]))
    gf = torch.tensor(np.stack([centres[p] + 1.2 * rng.normal(size=32) for p in g_pids]))
    dist = torch.cdist(qf, gf).float().numpy()
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, protocol=protocol)
    ref_cmc, ref_mAP = evaluate_rank_reference(dist, q_pids, g_pids, q_camids, g_camids, protocol=protocol)
    np.testing.assert_allclose(cmc, ref_cmc)
    assert mAP == pytest.approx(ref_mAP, abs=1e-9)
    assert 0.05 < mAP < 0.95 and np.all(np.diff(cmc) >= 0)


@pytest.mark.parametrize("protocol", ["torchreid", "official"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_heavy_ties_on_a_shuffled_gallery_follow_gallery_order(protocol, levels):
    # a few distinct distances, so nearly every entry ties with some true match; pids scattered over the
    # gallery, so same-identity columns interleave with everything else (and junk, officially)
    rng = np.random.default_rng(levels)
    q_pids, g_pids = rng.integers(-1, 6, 40), rng.permutation(np.repeat(np.arange(-1, 6), 30))
    q_camids, g_camids = rng.integers(0, 3, 40), rng.integers(0, 3, len(g_pids))
    dist = rng.integers(0, levels, (40, len(g_pids))).astype(np.float32)
    for block_size in (1, 5, 64):
        agree_with_oracle((dist, q_pids, g_pids, q_camids, g_camids), protocol, max_rank=30, block_size=block_size)


@pytest.mark.parametrize(("protocol", "num_gallery"), [("torchreid", 9330), ("official", 12180)])
def test_real_mars_structure_uninformative_features(protocol, num_gallery):
    # features that carry no identity: true matches spread over the whole ranking
    q_pids, q_camids, g_pids, g_camids = mars_test_split(protocol)
    rng = np.random.default_rng(1)
    qf, gf = torch.tensor(rng.normal(size=(len(q_pids), 16))), torch.tensor(rng.normal(size=(num_gallery, 16)))
    dist = torch.cdist(qf, gf).float().numpy()
    cmc, mAP = agree_with_oracle((dist, q_pids, g_pids, q_camids, g_camids), protocol, max_rank=20)
    assert mAP < 0.02 and cmc[0] < 0.02
    # and rounded to two decimals, so ties with true matches are everywhere
    rounded = np.round(dist[:300] + rng.random((300, 1)), 2).astype(np.float32)
    agree_with_oracle((rounded, q_pids[:300], g_pids, q_camids[:300], g_camids), protocol, max_rank=20)
