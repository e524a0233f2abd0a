"""k-reciprocal re-ranking: the published algorithm transcribed as loops, the dense and blocked paths agreeing
with it and with each other, hand-checkable properties, and input errors."""

import numpy as np
import pytest
import torch

from gltr_model.evaluation import compute_distance_matrix, evaluate_rank, rerank_distances


def rerank_loops(query, gallery, k1, k2, lambda_value):
    """Zhong et al. (CVPR 2017) one entry at a time, in float64: the oracle for both paths."""
    f = torch.nn.functional.normalize(torch.cat([query, gallery]).double(), dim=1).numpy()
    n, nq = len(f), len(query)
    d = ((f[:, None] - f[None]) ** 2).sum(axis=2)
    d /= d.max(axis=1, keepdims=True)
    ranking = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in ranking[i, : k + 1] if i in ranking[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            half = reciprocal(c, round(k1 / 2))
            if len(set(half) & set(r)) > 2 / 3 * len(half):
                expanded |= set(half)
        members = sorted(expanded)
        w = np.exp(-d[i, members])
        v[i, members] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[ranking[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.array(
        [[1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(nq, n)] for i in range(nq)]
    )
    return (1 - lambda_value) * jaccard + lambda_value * d[:nq, nq:]


def clustered(n_ids, per_id, dim, noise, seed):
    """Features of `n_ids` identities, `per_id` each: a random centre plus Gaussian noise; and their pids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    pids = torch.arange(n_ids).repeat_interleave(per_id)
    return centres[pids] + noise * torch.randn(len(pids), dim, generator=g), pids


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (4, 1), (6, 3)])
def test_dense_path_matches_the_published_algorithm_entry_by_entry(k1, k2):
    feats, _ = clustered(10, 6, 8, 0.8, seed=k1)
    q, g = feats[:15], feats[15:]
    expected = rerank_loops(q, g, k1, k2, 0.3)
    got = rerank_distances(q, g, k1=k1, k2=k2, block_size=None)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("block_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (4, 1), (10, 3)])
def test_blocked_path_matches_the_dense_path_for_every_block_size(block_size, k1, k2):
    feats, _ = clustered(20, 8, 32, 1.0, seed=block_size)
    q, g = feats[:40], feats[40:]
    dense = rerank_distances(q, g, k1=k1, k2=k2, block_size=None)
    blocked = rerank_distances(q, g, k1=k1, k2=k2, block_size=block_size)
    assert blocked.shape == (40, 120)
    torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-5)


def test_paths_agree_with_duplicated_features_where_ties_decide_the_neighbours():
    feats, _ = clustered(6, 5, 8, 0.5, seed=3)
    q = torch.cat([feats[:6], feats[:2]])  # the same tracklet twice as a query, and in the gallery too
    g = torch.cat([feats[6:], feats[6:12], feats[:3]])
    dense = rerank_distances(q, g, k1=5, k2=3, block_size=None)
    torch.testing.assert_close(rerank_distances(q, g, k1=5, k2=3, block_size=3), dense, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dense.numpy(), rerank_loops(q, g, 5, 3, 0.3), atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 16])
def test_lambda_one_returns_the_squared_distances_scaled_per_query_so_the_ranking_is_unchanged(block_size):
    feats, pids = clustered(12, 6, 16, 1.2, seed=0)
    is_query = torch.arange(len(pids)) % 6 == 0
    q, g, q_pids, g_pids = feats[is_query], feats[~is_query], pids[is_query], pids[~is_query]
    got = rerank_distances(q, g, lambda_value=1.0, block_size=block_size)
    # the row maximum runs over queries and gallery alike
    squared = compute_distance_matrix(q, torch.cat([q, g])) ** 2
    torch.testing.assert_close(got, squared[:, len(q) :] / squared.max(dim=1, keepdim=True).values)
    ids = (q_pids, g_pids, np.zeros(len(q)), np.ones(len(g)))
    assert evaluate_rank(got, *ids)[1] == pytest.approx(evaluate_rank(compute_distance_matrix(q, g), *ids)[1])


def test_a_query_nearest_to_another_identitys_tight_cluster_is_matched_after_re_ranking():
    # In a plane (the large first coordinate keeps the normalised features nearly planar): the query sits
    # 1.0 from b*, a member of identity B's tight cluster, and 1.2 from three tracklets of its own identity
    # A around it. b*'s four nearest are B, so b* is no reciprocal neighbour of the query; A's are.
    plane = {
        "query": (0, 0), "b*": (1, 0), "a1": (-0.6, 1.04), "a2": (-1.2, 0), "a3": (-0.6, -1.04),
        "b1": (1.6, 0.3), "b2": (1.6, -0.3), "b3": (1.8, 0.4), "b4": (1.8, -0.4),
    }  # fmt: skip
    f = {name: torch.tensor([20.0, x, y]) for name, (x, y) in plane.items()}
    names = ["b*", "a1", "a2", "a3", "b1", "b2", "b3", "b4"]
    q, g = f["query"][None], torch.stack([f[name] for name in names])
    ids = ([1], [2, 1, 1, 1, 2, 2, 2, 2], [0], [1] * 8)
    cmc, mAP = evaluate_rank(compute_distance_matrix(q, g), *ids, max_rank=4)
    assert cmc[0] == 0 and mAP == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)  # b* first, then A's
    for block_size in (None, 2):
        # k2 = 1: expanding the query with its nearest neighbour, b*, would bring the confusion back
        reranked = rerank_distances(q, g, k1=4, k2=1, block_size=block_size)
        cmc, mAP = evaluate_rank(reranked, *ids, max_rank=4)
        assert cmc[0] == 1 and mAP == 1.0
        assert reranked[0, 0] > 0.7  # Jaccard 1 (no shared neighbours), plus 0.3 x b*'s scaled distance


def test_re_ranking_raises_map_on_noisy_clusters():
    feats, pids = clustered(40, 6, 32, 1.3, seed=1)
    is_query = torch.arange(len(pids)) % 6 == 0
    q, g = feats[is_query], feats[~is_query]
    ids = (pids[is_query], pids[~is_query], np.zeros(int(is_query.sum())), np.ones(int((~is_query).sum())))
    _, before = evaluate_rank(compute_distance_matrix(q, g), *ids)
    _, after = evaluate_rank(rerank_distances(q, g), *ids)
    assert after > before + 0.02


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": torch.zeros(3)}, r"features must be \(N, D\) with the same D, got \(3,\)"),
        ({"gallery": torch.zeros(4, 5)}, r"same D, got \(2, 4\) and \(4, 5\)"),
        ({"query": torch.zeros(0, 4)}, "at least one query and one gallery entry, got 0 and 6"),
        ({"k1": 0}, "k1 must be a positive integer, got 0"),
        ({"k2": 2.5}, "k2 must be a positive integer, got 2.5"),
        ({"k1": True}, "k1 must be a positive integer, got True"),
        ({"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
        ({"block_size": 0}, "block_size must be a positive integer or None"),
        ({"query": torch.tensor([[0.0, float("nan"), 0.0, 0.0], [1.0, 0, 0, 0]])}, "NaN or infinite"),
    ],
)
def test_invalid_input_is_refused_with_a_message_that_names_it(kwargs, message):
    args = {"query": torch.ones(2, 4), "gallery": torch.ones(6, 4), **kwargs}
    with pytest.raises(ValueError, match=message):
        rerank_distances(**args)


def test_k1_larger_than_the_set_uses_every_entry_as_the_reference_code_does():
    feats, _ = clustered(2, 3, 4, 0.3, seed=0)
    got = rerank_distances(feats[:2], feats[2:], k1=20, k2=6, block_size=None)
    np.testing.assert_allclose(got.numpy(), rerank_loops(feats[:2], feats[2:], 20, 6, 0.3), atol=1e-5)
    torch.testing.assert_close(rerank_distances(feats[:2], feats[2:], k1=20, k2=6, block_size=1), got)
