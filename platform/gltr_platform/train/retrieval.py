"""Retrieval metrics of a model on a query/gallery split, with feature extraction shared across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gltr_model.evaluation import compute_distance_matrix, evaluate_rank, rerank_distances
from gltr_platform.data.index import FrameSource, Tracklet
from gltr_platform.data.loaders import build_test_loader
from gltr_platform.data.transforms import build_test_transform

CMC_RANKS = (1, 5, 10, 20)
FRAMES_PER_PASS = 256


@torch.no_grad()
def extract_features(
    model: nn.Module,
    tracklets: Sequence[Tracklet],
    source: FrameSource,
    *,
    height: int,
    width: int,
    mode: str,
    seq_len: int,
    chunk_len: int,
    device: torch.device,
    num_workers: int = 0,
) -> torch.Tensor:
    """(len(tracklets), D) embeddings on CPU; with torch.distributed up, each rank embeds 1/world of them."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = list(range(rank, len(tracklets), world))
    loader = build_test_loader(
        [tracklets[i] for i in mine],
        source,
        build_test_transform(height, width),
        mode=mode,
        seq_len=seq_len,
        chunk_len=chunk_len,
        num_workers=num_workers,
    )
    was_training = model.training
    model.eval()
    feats = []
    for frames, _, _ in loader:
        for clip in frames:
            clip = clip.to(device, non_blocking=True)
            if mode == "chunks":  # (num_chunks, chunk_len, 3, H, W): chunks are clips of one tracklet
                per_pass = max(1, FRAMES_PER_PASS // clip.shape[1])  # bounded memory for long tracklets
                chunk_feats = torch.cat([model(part) for part in clip.split(per_pass)])
                feats.append(chunk_feats.mean(dim=0).float().cpu())
            else:  # (n, 3, H, W): the whole tracklet (or its evenly sampled frames) as one clip
                feats.append(model(clip[None])[0].float().cpu())
    model.train(was_training)
    local = torch.stack(feats) if feats else torch.empty(0)
    if world == 1:
        return local
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (mine, local))
    dim = next(f.shape[1] for _, f in gathered if f.numel())
    out = torch.empty(len(tracklets), dim)
    for indices, f in gathered:
        if indices:
            out[indices] = f
    return out


def retrieval_metrics(
    model: nn.Module,
    query: Sequence[Tracklet],
    gallery: Sequence[Tracklet],
    source: FrameSource,
    *,
    protocol: str,
    prefix: str,
    rerank: bool = False,
    **extract_kwargs,
) -> tuple[dict[str, float], np.ndarray]:
    """`{prefix}rank1/5/10/20` and `{prefix}mAP` of the model's features, plus the full CMC curve."""
    qf = extract_features(model, query, source, **extract_kwargs)
    gf = extract_features(model, gallery, source, **extract_kwargs)
    return rank_metrics(qf, gf, query, gallery, protocol=protocol, prefix=prefix, rerank=rerank)


def rank_metrics(
    qf: torch.Tensor,
    gf: torch.Tensor,
    query: Sequence[Tracklet],
    gallery: Sequence[Tracklet],
    *,
    protocol: str,
    prefix: str,
    rerank: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and CMC curve of features; `rerank` adds `{prefix}rank1_rerank` and `{prefix}mAP_rerank`."""
    ids = ([t.pid for t in query], [t.pid for t in gallery], [t.camid for t in query], [t.camid for t in gallery])
    cmc, mAP = evaluate_rank(compute_distance_matrix(qf, gf), *ids, max_rank=max(CMC_RANKS), protocol=protocol)
    metrics = {f"{prefix}rank{r}": float(cmc[r - 1]) for r in CMC_RANKS}
    metrics[f"{prefix}mAP"] = float(mAP)
    if rerank:
        # The curve stays the plain ranking's; re-ranking adds its two headline numbers beside it.
        reranked, reranked_mAP = evaluate_rank(rerank_distances(qf, gf), *ids, max_rank=1, protocol=protocol)
        metrics[f"{prefix}rank1_rerank"] = float(reranked[0])
        metrics[f"{prefix}mAP_rerank"] = float(reranked_mAP)
    return metrics, cmc
