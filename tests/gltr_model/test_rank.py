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


def mars_test_split(protocol):
    tracks = scipy.io.loadmat(MARS_INFO / "tracks_test_info.mat")["track_test_info"]
    query = scipy.io.loadmat(MARS_INFO / "query_IDX.mat")["query_IDX"].ravel().astype(int) - 1
    pids, camids = tracks[:, 2].astype(int), tracks[:, 3].astype(int) - 1
    if protocol == "official":
        gallery = np.arange(len(tracks))
    else:
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
