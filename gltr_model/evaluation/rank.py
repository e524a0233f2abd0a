"""CMC and mAP for re-ID retrieval, in the two protocols published video re-ID numbers use.

`"torchreid"`: per query, gallery entries with the same pid *and* camera are removed; queries left with
no true match are skipped; AP is the mean of the precision at each true-match position.

`"official"` (the MATLAB evaluation shipped with MARS, used by GLTR): gallery pid -1 is junk, as are
same-pid same-camera entries; junk is skipped in the ranking; every query counts in the denominators
(one without a true match scores 0); AP is the trapezoidal rule over recall, starting from precision 1.

Ties in distance are broken by gallery order (a stable sort, as MATLAB's `sort`).

`evaluate_rank` sorts no gallery row. A true match's rank is one plus the number of valid entries ahead of
it, so per query it takes the few true-match distances (sorted, with gallery order among equal ones) and
counts, for each, the entries ahead of it with one vectorised comparison over the row: O(G) per true match,
whatever the features, since nothing depends on where the matches fall in the ranking. The comparison runs
over the row less its same-identity entries and the junk runs, cut into segments at those skipped columns;
within a segment every column is on one side of each true match, so ties follow gallery order exactly by
comparing with `<` after the match and with `<=` (as `< nextafter(t)`) before it. On a gallery sorted by
identity (MARS) that is two segments per query. The counts come from the comparisons packed into a bool
buffer, summed 8 bytes at a time. `evaluate_rank_reference` is the straightforward per-query loop of the same
protocols: the oracle in tests and the baseline in the benchmark.
"""

from __future__ import annotations

from typing import NamedTuple

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
    block_size: int = 16,
) -> tuple[np.ndarray, float]:
    """Return `(cmc, mAP)`: `cmc[k]` is the fraction of queries matched within the top k+1, mAP in [0, 1]."""
    d, qp, gp, qc, gc = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, protocol, max_rank)
    # NaN and inf propagate through a sum, so one cheap pass clears almost every matrix; only a sum that
    # overflowed needs the exact check.
    if not np.isfinite(d.sum()) and not np.isfinite(d).all():
        raise ValueError("distmat contains NaN or infinite distances: check the features")
    rows, cols = _same_identity(qp, gp, np.argsort(gp, kind="stable"))
    junk = gc[cols] == qc[rows]
    if protocol == "official":
        junk |= gp[cols] == -1
    match_row, match_col, t, k = _true_matches(d, rows[~junk], cols[~junk], len(qp))
    start = np.cumsum(k) - k
    junk_runs = _runs(np.flatnonzero(gp == -1)) if protocol == "official" else np.zeros((0, 2), np.int64)
    segments = _segments(rows, cols, k, junk_runs, d.shape[1])
    thresholds = _segment_thresholds(segments, match_col, t, k, start)
    ahead = np.zeros(len(t), dtype=np.int64)
    queries = np.flatnonzero(k)
    width = -(-d.shape[1] // _LANE_SPAN) * _LANE_SPAN
    buffer = np.empty((_max_block_matches(k[queries], block_size), width), dtype=bool)
    for s in range(0, len(queries), block_size):
        block = queries[s : s + block_size]
        lo, hi = start[block[0]], start[block[-1]] + k[block[-1]]
        ahead[lo:hi] = _count_ahead(d, block, segments, thresholds, start, k, buffer)
    # A true match is preceded by the valid entries ahead of it and by the true matches before it in its row.
    ranks = ahead + (np.arange(len(t)) - start[match_row]) + 1
    first, ap = _first_and_ap(ranks, k, protocol)
    return _summarise(first, ap, max_rank, protocol)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, protocol, max_rank):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {PROTOCOLS}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    d = torch.as_tensor(distmat).detach().cpu()
    if d.dtype not in (torch.float32, torch.float64):
        d = d.double()  # exact for every narrower float and for integers up to 2**53
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(d.shape)}")
    if d.shape[0] == 0:
        raise ValueError("distmat has no query rows")
    qp, gp, qc, gc = (np.asarray(a).astype(np.int64).reshape(-1) for a in
                      (q_pids, g_pids, q_camids, g_camids))  # fmt: skip
    if len(qp) != d.shape[0] or len(qc) != d.shape[0]:
        raise ValueError(f"{d.shape[0]} query rows but {len(qp)} query pids / {len(qc)} camids")
    if len(gp) != d.shape[1] or len(gc) != d.shape[1]:
        raise ValueError(f"{d.shape[1]} gallery columns but {len(gp)} pids / {len(gc)} camids")
    return np.ascontiguousarray(d.numpy()), qp, gp, qc, gc


def _same_identity(qp, gp, by_pid):
    """(row, column) of every gallery entry with its query's pid, rows ascending, columns ascending within."""
    start = np.searchsorted(gp, qp, side="left", sorter=by_pid)
    n = np.searchsorted(gp, qp, side="right", sorter=by_pid) - start
    rows = np.repeat(np.arange(len(qp)), n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return rows, by_pid[np.repeat(start, n) + within]


def _true_matches(d, rows, cols, n_queries):
    """Row, column and distance of every true match in ranking order (row, distance, gallery order); k per row.

    `rows`, `cols` come ascending (rows, then columns within a row), so a stable sort by (row, distance)
    keeps gallery order among equal distances.
    """
    t = np.take(d.ravel(), rows * d.shape[1] + cols)  # a flat gather is ~3x faster than d[rows, cols]
    order = np.lexsort((t, rows))
    return rows[order], cols[order], t[order], np.bincount(rows, minlength=n_queries)


def _runs(columns):
    """Ascending columns as `[start, stop)` runs of consecutive ones, shape (runs, 2)."""
    if len(columns) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(columns) != 1) + 1
    return np.stack([columns[np.r_[0, breaks]], columns[np.r_[breaks - 1, len(columns) - 1]] + 1], axis=1)


class _Segments(NamedTuple):
    """Column ranges `[lo, hi)` to compare, sorted by (row, lo), and where each lands in its packed row."""

    row: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    pos: np.ndarray  # first column in the query's packed row of comparisons
    width: np.ndarray  # per query: columns compared in all


def _segments(rows, cols, k, junk_runs, n_gallery):
    """Per query with a true match: the gallery minus its same-identity entries and minus the junk runs."""
    keep = k[rows] > 0
    r, lo, hi = rows[keep], cols[keep], cols[keep] + 1
    if len(junk_runs):
        queries = np.flatnonzero(k)
        r = np.concatenate([r, np.repeat(queries, len(junk_runs))])
        lo = np.concatenate([lo, np.tile(junk_runs[:, 0], len(queries))])
        hi = np.concatenate([hi, np.tile(junk_runs[:, 1], len(queries))])
    order = np.lexsort((lo, r))
    r, lo, hi = r[order], lo[order], hi[order]
    # Skipped intervals may overlap, so the gap before each starts where everything earlier in its row ended
    # (the row offset keeps the running maximum within a row).
    offset = r * (n_gallery + 1)
    reach = np.maximum.accumulate(offset + hi) - offset
    first, last = np.diff(r, prepend=-1) != 0, np.diff(r, append=-1) != 0
    seg_row = np.concatenate([r, r[last]])
    seg_lo = np.concatenate([np.where(first, 0, np.roll(reach, 1)), reach[last]])
    seg_hi = np.concatenate([lo, np.full(int(last.sum()), n_gallery)])
    keep = seg_hi > seg_lo
    order = np.lexsort((seg_lo[keep], seg_row[keep]))
    seg_row, seg_lo, seg_hi = seg_row[keep][order], seg_lo[keep][order], seg_hi[keep][order]
    length = seg_hi - seg_lo
    width = np.bincount(seg_row, weights=length, minlength=len(k)).astype(np.int64)
    row_first = np.cumsum(width) - width
    pos = np.cumsum(length) - length - row_first[seg_row]
    return _Segments(seg_row, seg_lo, seg_hi, pos, width)


def _segment_thresholds(seg, match_col, t, k, start):
    """Per segment, its query's true-match distances as thresholds for `<`, stacked into one column.

    Within a segment every column is on one side of each true match, so the stable order's tie rule becomes
    the comparison itself: an entry tied with a match is ahead of it only if its column is lower, which for
    floats is `x < nextafter(t, +inf)` before the match and `x < t` after it.
    """
    n = k[seg.row]
    pair = np.repeat(start[seg.row], n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    later_match = match_col[pair] >= np.repeat(seg.hi, n)
    above = np.nextafter(t, np.array(np.inf, dtype=t.dtype))
    return np.where(later_match, above[pair], t[pair]).reshape(-1, 1), np.cumsum(n) - n


def _max_block_matches(k, block_size):
    if len(k) == 0:
        return 0
    return int(np.add.reduceat(k, np.arange(0, len(k), block_size)).max())


# A packed row of bools is counted 8 bytes at a time as uint64 words: summing at most 255 words keeps every
# byte's count below 256, so no byte carries into the next. Rows are padded to a multiple of 8 * 255 bytes.
_LANE_SPAN = 8 * 255


def _count_true(mask):
    """Number of True values per row of a C-contiguous bool matrix whose width is a multiple of _LANE_SPAN."""
    n = mask.shape[0]
    words = mask.view(np.uint64).reshape(n, -1, 255).sum(axis=2)
    return words.view(np.uint8).reshape(n, -1).sum(axis=1, dtype=np.int64)


def _count_ahead(d, block, seg, thresholds, start, k, buffer):
    """For each true match of the `block` queries, the valid non-same-identity entries ahead of it."""
    (threshold, threshold_at), base = thresholds, int(start[block[0]])
    n_pairs = int(start[block[-1]] + k[block[-1]]) - base
    # Packed rows are as wide as the gallery less their skipped entries; what lies beyond is left from
    # earlier blocks, so clear it from the narrowest packed row of the block on, in one call.
    buffer[:n_pairs, int(seg.width[block].min()) :] = False
    first, stop = np.searchsorted(seg.row, [block[0], block[-1] + 1])
    off, n = start[seg.row[first:stop]] - base, k[seg.row[first:stop]]
    for r, lo, hi, pos, at, o, m in zip(
        *(a[first:stop].tolist() for a in (seg.row, seg.lo, seg.hi, seg.pos, threshold_at)),
        off.tolist(),
        n.tolist(),
        strict=True,
    ):
        np.less(d[r, lo:hi], threshold[at : at + m], out=buffer[o : o + m, pos : pos + hi - lo])
    return _count_true(buffer[:n_pairs])


def _first_and_ap(ranks, k, protocol):
    """Rank of the first true match (0 = none) and AP per row, from ascending ranks grouped by row."""
    start = np.cumsum(k) - k
    row = np.repeat(np.arange(len(k)), k)
    hits_before = (np.arange(len(ranks)) - start[row]).astype(np.float64)
    precision = (hits_before + 1) / ranks
    if protocol == "official":
        # trapezoid between the previous position's precision (1 before the first) and this one
        previous = np.where(ranks > 1, hits_before / np.maximum(ranks - 1, 1), 1.0)
        precision = (precision + previous) / 2
    ap = np.bincount(row, weights=precision, minlength=len(k)) / np.maximum(k, 1)
    first = np.zeros(len(k), dtype=np.int64)
    first[k > 0] = ranks[start[k > 0]]
    return first, ap


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
    cmc = np.cumsum(np.bincount(hits - 1, minlength=max_rank)[:max_rank]) / denominator
    return cmc, float(ap.sum() / denominator)


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
