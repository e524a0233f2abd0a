"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017) of query x gallery distances.

Every query and gallery entry is a probe over their union (N = Q + G entries). As the authors' code:

- the original distance d(i, j) is the squared Euclidean distance of the L2-normalised features (the
  square of `compute_distance_matrix`'s), divided by the largest in row i;
- R(i), the k-reciprocal neighbours: j is among i's k1+1 nearest and i among j's (i itself included);
- R*(i): R(i) joined by R'(c) for each c in R(i) whose round(k1/2)-reciprocal set R'(c) has more than
  2/3 of its members in R(i);
- V[i, j] = exp(-d(i, j)) over R*(i), normalised to sum 1; local query expansion then replaces V[i] by
  the mean of V over i's k2 nearest entries (k2 = 1: no expansion);
- the Jaccard distance J(i, j) = 1 - sum_k min(V[i,k], V[j,k]) / sum_k max(V[i,k], V[j,k]), which is
  1 - m / (2 - m) for m = sum_k min(...) since every row of V sums to 1;
- the result is (1 - lambda) J + lambda d over query rows and gallery columns.

Neighbour lists follow a stable sort: equal distances are ranked by entry order (queries first).

Two paths give the same result to float rounding. `block_size=None` is the straightforward one, the
reference in tests: the N x N distance matrix, its full argsort and a dense V before and after query
expansion, about 6 N^2 x 4 B at its peak (5 GB at MARS scale, N = 14,160). With `block_size=B` no N x N
matrix exists: B rows of distances at a time give each entry's nearest neighbours and its row maximum,
V is kept sparse (its rows have tens to hundreds of non-zeros), and the Jaccard numerators come from an
inverted index of V's gallery rows, B query rows at a time. Its memory is one normalised copy of the
features, two (Q, G) float32 matrices (one becomes the result), V (about 12 B a non-zero; tens of MB at
MARS scale) and temporaries of a few B x N x 4 B: block_size bounds the part that is not fixed by the data.
"""

from __future__ import annotations

import torch


def rerank_distances(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int | None = 256,
) -> torch.Tensor:
    """(Q, D) x (G, D) features -> (Q, G) re-ranked distances; `block_size=None`: the dense reference path."""
    feats, k1, k2 = _check_inputs(query, gallery, k1, k2, lambda_value, block_size)
    n, nq = len(feats), len(query)
    k = min(k1 + 1, n)  # as slicing the first k1+1 of a shorter ranking would
    k_half = min(round(k1 / 2) + 1, n)
    k_qe = min(k2, n)
    if block_size is None:
        return _rerank_dense(feats, nq, k, k_half, k_qe, lambda_value)
    return _rerank_blocked(feats, nq, k, k_half, k_qe, lambda_value, block_size)


def _check_inputs(query, gallery, k1, k2, lambda_value, block_size):
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(lambda_value, bool) or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1] (the weight of the original distance), got {lambda_value!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None (dense), got {block_size!r}")
    q, g = torch.as_tensor(query), torch.as_tensor(gallery)
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(q.shape)} and {tuple(g.shape)}")
    if len(q) == 0 or len(g) == 0:
        raise ValueError(f"need at least one query and one gallery entry, got {len(q)} and {len(g)}")
    feats = torch.cat([q, g]).float()  # a new tensor, so normalised in place: one copy of the features
    if not torch.isfinite(feats).all():
        raise ValueError("features contain NaN or infinite values")
    return feats.div_(feats.norm(dim=1, keepdim=True).clamp_min(1e-12)), k1, k2  # as F.normalize


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (2.0 - 2.0 * (a @ b.T)).clamp_min(0.0)  # |a - b|^2 of unit vectors


def _rerank_dense(feats, nq, k, k_half, k_qe, lambda_value):
    n = len(feats)
    dist = _squared_distances(feats, feats)
    dist /= dist.max(dim=1, keepdim=True).values.clamp_min(torch.finfo(dist.dtype).tiny)
    ranking = dist.sort(dim=1, stable=True).indices[:, : max(k, k_qe)]  # the full sort, then only its head
    rows = torch.arange(n, device=feats.device)
    half = _reciprocal(ranking[:, :k_half], rows)
    members = _expanded_neighbours(ranking[:, :k], ranking[:, :k_half], half, rows)
    valid = members < n
    cols = members.clamp(max=n - 1)
    weights = torch.where(valid, torch.exp(-dist.gather(1, cols)), 0.0)
    total = weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    v = torch.zeros_like(dist).scatter_add_(1, cols, weights / total)  # padding slots add 0 (to column N-1)
    if k_qe > 1:
        expanded = torch.zeros_like(v)
        for t in range(k_qe):
            expanded += v[ranking[:, t]]
        v = expanded / k_qe
    shared = torch.empty(nq, n - nq, device=feats.device)
    for i in range(nq):  # only the columns where query i has weight can contribute to its minima
        nz = v[i].nonzero().squeeze(1)
        shared[i] = torch.minimum(v[i, nz], v[nq:, nz]).sum(dim=1)
    return _combine(shared, dist[:nq, nq:].clone(), lambda_value)


def _rerank_blocked(feats, nq, k, k_half, k_qe, lambda_value, block_size):
    n, device = len(feats), feats.device
    # Pass 1: each entry's nearest neighbours and row maximum; the query rows' gallery distances kept.
    ranking = torch.empty(n, max(k, k_qe), dtype=torch.long, device=device)
    row_max = torch.empty(n, device=device)
    original = torch.empty(nq, n - nq, device=device)
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        block = _squared_distances(feats[s:e], feats)
        ranking[s:e] = _stable_smallest(block, ranking.shape[1])
        row_max[s:e] = block.max(dim=1).values
        if s < nq:
            original[s : min(e, nq)] = block[: min(e, nq) - s, nq:]
    row_max.clamp_min_(torch.finfo(row_max.dtype).tiny)
    original /= row_max[:nq, None]
    # Pass 2: V as compressed sparse rows, then the query expansion over the same rows.
    half = _reciprocal(ranking[:, :k_half], torch.arange(n, device=device))
    v = _sparse_weights(feats, ranking[:, :k], ranking[:, :k_half], half, row_max, block_size)
    if k_qe > 1:
        v = _expand_queries(v, ranking[:, :k_qe], block_size)
    shared = _shared_weight(v, nq, block_size)
    return _combine(shared, original, lambda_value)


def _combine(shared: torch.Tensor, original: torch.Tensor, lambda_value: float) -> torch.Tensor:
    """(1 - lambda) J + lambda d, in place in both (Q, G) inputs: temporaries would be the peak of the blocked path."""
    jaccard = shared.neg_().add_(2.0).reciprocal_().mul_(-2.0).add_(2.0)  # 1 - m / (2 - m) = 2 - 2 / (2 - m)
    return original.mul_(lambda_value).add_(jaccard, alpha=1.0 - lambda_value)


def _stable_smallest(block: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's k smallest entries, in the order of a stable full sort of the row."""
    values, idx = torch.topk(block, k, dim=1, largest=False)
    idx, by_column = idx.sort(dim=1)
    idx = idx.gather(1, values.gather(1, by_column).sort(dim=1, stable=True).indices)
    # topk picks arbitrarily among entries tied with the k-th value; where a tie straddles the cut, the
    # full sort decides (rows with duplicated features only).
    kth = block.gather(1, idx[:, -1:])
    straddles = (block <= kth).sum(dim=1) > k
    if straddles.any():
        idx[straddles] = block[straddles].sort(dim=1, stable=True).indices[:, :k]
    return idx


def _reciprocal(ranking: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, k) bool: `ranking[rows]`'s entry j also has the row among its own k nearest."""
    forward = ranking[rows]  # (B, k)
    return (ranking[forward] == rows[:, None, None]).any(dim=2)  # (B, k, k) -> (B, k)


def _expanded_neighbours(ranking, ranking_half, half, rows):
    """R*(row) as (B, W) sorted entry indices padded with N: R(row) and each R'(c) it mostly contains."""
    n = len(ranking)
    forward = ranking[rows]  # (B, k)
    reciprocal = _reciprocal(ranking, rows)  # (B, k)
    candidates = ranking_half[forward]  # (B, k, k_half): R'(c) of every c among the k nearest
    in_half = half[forward]
    in_r = (candidates[..., None] == forward[:, None, None, :]) & reciprocal[:, None, None, :]
    overlap = (in_r.any(dim=3) & in_half).sum(dim=2)  # (B, k)
    size = in_half.sum(dim=2)
    accepted = reciprocal & (3 * overlap > 2 * size)  # more than 2/3 of R'(c), in integers
    own = torch.where(reciprocal, forward, n)
    joined = torch.where(accepted[..., None] & in_half, candidates, n).flatten(1)
    members = torch.cat([own, joined], dim=1).sort(dim=1).values
    repeated = torch.zeros_like(members, dtype=torch.bool)
    repeated[:, 1:] = members[:, 1:] == members[:, :-1]
    return members.masked_fill(repeated, n)


class _SparseRows:
    """Compressed sparse rows: row i holds `cols[ptr[i]:ptr[i+1]]` (ascending) and their `vals`."""

    def __init__(self, ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor):
        self.ptr, self.cols, self.vals = ptr, cols, vals

    def row_ids(self) -> torch.Tensor:
        """The row of each stored value."""
        counts = self.ptr[1:] - self.ptr[:-1]
        return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def _sparse_weights(feats, ranking, ranking_half, half, row_max, block_size) -> _SparseRows:
    n = len(feats)
    counts, cols, vals = [], [], []
    for s in range(0, n, block_size):
        rows = torch.arange(s, min(s + block_size, n), device=feats.device)
        members = _expanded_neighbours(ranking, ranking_half, half, rows)
        valid = members < n
        r, c = rows[:, None].expand_as(members)[valid], members[valid]  # row-major: grouped by row
        w = torch.exp(-_pair_distances(feats, r, c, block_size) / row_max[r])
        per_row = valid.sum(dim=1)
        total = torch.zeros(len(rows), device=feats.device).index_add_(0, r - s, w)
        counts.append(per_row)
        cols.append(c)
        vals.append(w / total[r - s])
    return _SparseRows(_pointers(torch.cat(counts)), torch.cat(cols), torch.cat(vals))


def _pair_distances(feats: torch.Tensor, r: torch.Tensor, c: torch.Tensor, block_size: int) -> torch.Tensor:
    """Squared distances of the pairs (r[i], c[i]) alone: a (B, N) block would be a second full pass.

    Pairs go in chunks whose gathered features are about a (block_size, N) block of floats.
    """
    n, dim = feats.shape
    chunk = max(1, block_size * n // (2 * dim))
    dots = feats.new_empty(len(r))
    for s in range(0, len(r), chunk):
        dots[s : s + chunk] = (feats[r[s : s + chunk]] * feats[c[s : s + chunk]]).sum(dim=1)
    return (2.0 - 2.0 * dots).clamp_min(0.0)


def _expand_queries(v: _SparseRows, nearest: torch.Tensor, block_size: int) -> _SparseRows:
    """V[i] <- mean of V over i's k2 nearest rows, `block_size` rows at a time."""
    n, k_qe = nearest.shape
    device = v.vals.device
    counts, cols, vals = [], [], []
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        sources = nearest[s:e].reshape(-1)  # (B * k2,) rows of V to average
        lengths = v.ptr[sources + 1] - v.ptr[sources]
        owner = torch.repeat_interleave(torch.arange(e - s, device=device).repeat_interleave(k_qe), lengths)
        at = _segment_positions(v.ptr[sources], lengths)
        keys = owner * n + v.cols[at]
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        summed = torch.zeros(len(unique), device=device).index_add_(0, inverse, v.vals[at])
        counts.append(torch.bincount(unique // n, minlength=e - s))
        cols.append(unique % n)
        vals.append(summed / k_qe)
    return _SparseRows(_pointers(torch.cat(counts)), torch.cat(cols), torch.cat(vals))


def _shared_weight(v: _SparseRows, nq: int, block_size: int) -> torch.Tensor:
    """(Q, G): sum_k min(V[q, k], V[g, k]), from an inverted index (column -> gallery rows) of V."""
    n = len(v.ptr) - 1
    device = v.vals.device
    rows = v.row_ids()
    gallery = rows >= nq
    g_rows, g_cols, g_vals = rows[gallery], v.cols[gallery], v.vals[gallery]
    by_col = torch.argsort(g_cols, stable=True)
    index_rows, index_vals = g_rows[by_col] - nq, g_vals[by_col]
    col_ptr = _pointers(torch.bincount(g_cols, minlength=n))
    col_len = col_ptr[1:] - col_ptr[:-1]
    # Pairs (query entry, gallery entry sharing its column) per query: a group's pairs take ~40 B each in
    # temporaries, so a tenth of a (block_size, N) block of them costs about as much as that block of floats.
    q_end = int(v.ptr[nq])
    pairs = torch.zeros(nq, dtype=torch.long, device=device).index_add_(0, rows[:q_end], col_len[v.cols[:q_end]])
    cumulative = pairs.cumsum(0).tolist()
    shared = torch.zeros(nq, n - nq, device=device)
    s = 0
    while s < nq:
        budget = (cumulative[s - 1] if s else 0) + block_size * n // 10
        e = s + 1
        while e < min(s + block_size, nq) and cumulative[e] <= budget:
            e += 1
        lo, hi = int(v.ptr[s]), int(v.ptr[e])
        cols, a = v.cols[lo:hi], v.vals[lo:hi]
        lengths = col_len[cols]
        at = _segment_positions(col_ptr[cols], lengths)
        owner = torch.repeat_interleave(rows[lo:hi] - s, lengths)
        m = torch.minimum(torch.repeat_interleave(a, lengths), index_vals[at])
        shared[s:e].view(-1).index_add_(0, owner * (n - nq) + index_rows[at], m)
        s = e
    return shared


def _pointers(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _segment_positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated ranges `starts[i] : starts[i] + lengths[i]`."""
    offsets = torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths)
    return offsets + torch.arange(int(lengths.sum()), device=starts.device)
