"""CMC and mAP for re-ID retrieval, in the two protocols published video re-ID numbers use.

`"torchreid"`: per query, gallery entries with the same pid *and* camera are removed; queries left with
no true match are skipped; AP is the mean of the precision at each true-match position.

`"official"` (the MATLAB evaluation shipped with MARS, used by GLTR): gallery pid -1 is junk, as are
same-pid same-camera entries; junk is skipped in the ranking; every query counts in the denominators
(one without a true match scores 0); AP is the trapezoidal rule over recall, starting from precision 1.

Ties in distance are broken by gallery order (a stable sort, as MATLAB's `sort`).

`evaluate_rank` is vectorised over blocks of queries and never sorts a gallery row: the rank of each true
match is the number of valid gallery entries closer to the query, counted with one batched binary search
of the row against the query's (few) sorted true-match distances. Rows where a true match ties with
another entry fall back to an exact stable sort. `evaluate_rank_reference` is the straightforward
per-query loop of the same protocols: the oracle in tests and the baseline in the benchmark.
"""

from __future__ import annotations

import numpy as np
import torch

PROTOCOLS = ("torchreid", "official")


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 20,
    protocol: str = "torchreid",
    block_size: int = 256,
) -> tuple[np.ndarray, float]:
    """Return `(cmc, mAP)`: `cmc[k]` is the fraction of queries matched within the top k+1, mAP in [0, 1]."""
    d, qp, gp, qc, gc = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, protocol, max_rank)
    first = torch.zeros(d.shape[0], dtype=torch.long)  # rank of the first true match, 0 = none
    ap = torch.zeros(d.shape[0], dtype=torch.float64)
    for s in range(0, d.shape[0], block_size):
        e = min(s + block_size, d.shape[0])
        good, valid = _good_and_valid(qp[s:e], gp, qc[s:e], gc, protocol)
        ranks, k = _good_ranks(d[s:e], good, valid)
        first[s:e] = ranks[:, 0] if ranks.shape[1] else 0
        ap[s:e] = _average_precision(ranks, k, protocol)
    return _summarise(first, ap, max_rank, protocol)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, protocol, max_rank):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    d = torch.as_tensor(distmat)
    if d.dtype not in (torch.float32, torch.float64):
        d = d.float()
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(d.shape)}")
    if not torch.isfinite(d).all():
        raise ValueError("distmat contains NaN or infinite distances: check the features")
    qp, gp, qc, gc = (torch.as_tensor(np.asarray(a), dtype=torch.long).reshape(-1) for a in
                      (q_pids, g_pids, q_camids, g_camids))  # fmt: skip
    if len(qp) != d.shape[0] or len(qc) != d.shape[0]:
        raise ValueError(f"{d.shape[0]} query rows but {len(qp)} query pids / {len(qc)} camids")
    if len(gp) != d.shape[1] or len(gc) != d.shape[1]:
        raise ValueError(f"{d.shape[1]} gallery columns but {len(gp)} pids / {len(gc)} camids")
    return d.contiguous(), qp, gp, qc, gc


def _good_and_valid(qp, gp, qc, gc, protocol):
    """(B, G) masks: true matches, and entries that take part in the ranking (not junk)."""
    same_pid = qp[:, None] == gp[None, :]
    junk = same_pid & (qc[:, None] == gc[None, :])
    if protocol == "official":
        junk |= (gp == -1)[None, :]
    return same_pid & ~junk, ~junk


def _good_ranks(d, good, valid):
    """1-based ranks among valid entries of each row's true matches, ascending: (B, kmax) and k (B,)."""
    b = d.shape[0]
    k = good.sum(dim=1)
    kmax = int(k.max()) if b else 0
    ranks = torch.zeros(b, kmax, dtype=torch.long)
    if kmax == 0:
        return ranks, k
    # The true-match distances of each row, sorted, padded with +inf: (B, kmax).
    rows, cols = good.nonzero(as_tuple=True)
    slot = torch.arange(len(rows)) - (torch.cumsum(k, 0) - k)[rows]
    gs = torch.full((b, kmax), float("inf"), dtype=d.dtype)
    gs[rows, slot] = d[rows, cols]
    gs = gs.sort(dim=1).values.contiguous()
    # Entry j is closer than true match i iff i >= pos_j (number of true matches <= d_j).
    dv = d.masked_fill(~valid, float("inf"))
    pos = torch.searchsorted(gs, dv, right=True)
    offsets = torch.arange(b)[:, None] * (kmax + 1)
    counts = torch.bincount((pos + offsets).flatten(), minlength=b * (kmax + 1)).view(b, kmax + 1)
    ranks = counts.cumsum(dim=1)[:, :kmax] + 1
    # A true match tied with another valid entry needs gallery order to break the tie: exact path.
    nearest_below = gs.gather(1, (pos - 1).clamp_min(0))  # largest true-match distance <= d_j
    equal = (pos > 0) & (nearest_below == dv) & valid
    within = torch.arange(kmax - 1)[None, :] < (k - 1)[:, None]  # pairs of real (not padded) matches
    ties = (equal.sum(dim=1) > k) | ((gs[:, 1:] == gs[:, :-1]) & within).any(dim=1)
    for r in ties.nonzero().flatten().tolist():
        exact = _good_ranks_exact(d[r], good[r], valid[r])
        ranks[r] = 0
        ranks[r, : len(exact)] = exact
    ranks[torch.arange(kmax)[None, :] >= k[:, None]] = 0
    return ranks, k


def _good_ranks_exact(d_row, good_row, valid_row):
    order = np.argsort(d_row.numpy(), kind="stable")
    valid = valid_row.numpy()[order]
    ranks = np.flatnonzero(good_row.numpy()[order][valid]) + 1
    return torch.from_numpy(ranks)


def _average_precision(ranks, k, protocol):
    """AP per row from the ascending 1-based ranks of its true matches (0 = padding)."""
    if ranks.shape[1] == 0:
        return torch.zeros(ranks.shape[0], dtype=torch.float64)
    i = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)[None, :]
    r = ranks.double()
    present = ranks > 0
    precision = torch.where(present, i / r.clamp_min(1), 0.0)
    if protocol == "official":
        # trapezoid between the previous position's precision (1 before the first) and this one
        prev = torch.where(r > 1, (i - 1) / (r - 1).clamp_min(1), 1.0)
        precision = torch.where(present, (precision + prev) / 2, 0.0)
    return precision.sum(dim=1) / k.clamp_min(1).double()


def _summarise(first, ap, max_rank, protocol):
    matched = first > 0
    if protocol == "torchreid":
        if not matched.any():
            raise ValueError("no query has a true match in the gallery: check the query/gallery split")
        denominator = int(matched.sum())
        ap = ap[matched]
    else:
        denominator = len(first)
    hits = first[matched & (first <= max_rank)]
    cmc = torch.bincount(hits - 1, minlength=max_rank)[:max_rank].cumsum(0).double() / denominator
    return cmc.numpy(), float(ap.sum() / denominator)


def evaluate_rank_reference(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20, protocol: str = "torchreid"
) -> tuple[np.ndarray, float]:
    """Per-query numpy loop of the same protocols (slow, obviously correct): the test oracle."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    cmc_sum, ap_sum, counted = np.zeros(max_rank), 0.0, 0
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        if protocol == "official":
            junk |= g_pids[order] == -1
        matches = (g_pids[order] == q_pids[q])[~junk]
        if not matches.any():
            counted += protocol == "official"  # official: the query counts, scoring zero
            continue
        counted += 1
        first = int(np.argmax(matches))
        if first < max_rank:
            cmc_sum[first:] += 1
        hits = np.cumsum(matches)
        positions = np.arange(1, len(matches) + 1)
        precision = hits / positions
        if protocol == "torchreid":
            ap_sum += precision[matches].mean()
        else:
            prev = np.concatenate([[1.0], precision[:-1]])
            ap_sum += ((precision + prev) / 2)[matches].sum() / matches.sum()
    if counted == 0:
        raise ValueError("no query has a true match in the gallery: check the query/gallery split")
    return cmc_sum / counted, ap_sum / counted
