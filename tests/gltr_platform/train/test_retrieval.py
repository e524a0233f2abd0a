"""Retrieval metrics from features: the plain ranking always, the k-reciprocal re-ranking beside it on request."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from gltr_model.evaluation import evaluate_rank, rerank_distances
from gltr_platform.data.index import Tracklet
from gltr_platform.train import retrieval
from gltr_platform.train.config import build_config
from gltr_platform.train.retrieval import rank_metrics, retrieval_metrics

ROOT = Path(__file__).resolve().parents[3]


def split(n_ids: int = 12, per_id: int = 5, seed: int = 0):
    """Noisy identity clusters: the first tracklet of each identity is a query (camera 0), the rest gallery."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, 16, generator=g)
    feats = centres.repeat_interleave(per_id, dim=0) + 1.2 * torch.randn(n_ids * per_id, 16, generator=g)
    query = [Tracklet((), pid, 0, "query") for pid in range(n_ids)]
    gallery = [Tracklet((), pid, 1, "gallery") for pid in range(n_ids) for _ in range(per_id - 1)]
    is_query = torch.arange(n_ids * per_id) % per_id == 0
    return feats[is_query], feats[~is_query], query, gallery


def test_plain_metrics_only_unless_re_ranking_is_asked_for():
    qf, gf, query, gallery = split()
    metrics, cmc = rank_metrics(qf, gf, query, gallery, protocol="official", prefix="test_")
    assert set(metrics) == {"test_rank1", "test_rank5", "test_rank10", "test_rank20", "test_mAP"}
    assert len(cmc) == 20 and metrics["test_rank1"] == cmc[0]


def test_re_ranked_rank1_and_map_are_reported_beside_the_unchanged_plain_ones():
    qf, gf, query, gallery = split()
    plain, plain_cmc = rank_metrics(qf, gf, query, gallery, protocol="official", prefix="test_")
    both, cmc = rank_metrics(qf, gf, query, gallery, protocol="official", prefix="test_", rerank=True)
    assert set(both) == set(plain) | {"test_rank1_rerank", "test_mAP_rerank"}
    assert {k: both[k] for k in plain} == plain and (cmc == plain_cmc).all()
    ids = ([t.pid for t in query], [t.pid for t in gallery], [t.camid for t in query], [t.camid for t in gallery])
    expected_cmc, expected_mAP = evaluate_rank(rerank_distances(qf, gf), *ids, protocol="official")
    assert both["test_rank1_rerank"] == pytest.approx(expected_cmc[0])
    assert both["test_mAP_rerank"] == pytest.approx(expected_mAP)
    assert both["test_mAP_rerank"] != plain["test_mAP"]  # it really ranked differently


def test_retrieval_metrics_passes_the_switch_from_extraction_to_ranking(monkeypatch):
    qf, gf, query, gallery = split()
    features = {id(query): qf, id(gallery): gf}
    monkeypatch.setattr(retrieval, "extract_features", lambda model, tracklets, source, **kw: features[id(tracklets)])
    metrics, _ = retrieval_metrics(None, query, gallery, None, protocol="torchreid", prefix="", rerank=True)
    assert {"mAP", "mAP_rerank", "rank1_rerank"} <= set(metrics)
    metrics, _ = retrieval_metrics(None, query, gallery, None, protocol="torchreid", prefix="")
    assert "mAP_rerank" not in metrics


def test_re_ranking_is_off_by_default_and_a_data_setting():
    assert build_config("cpu-demo").data.rerank is False
    assert build_config("cpu-demo", {"data.rerank": True}).data.rerank is True


def test_the_evaluate_command_line_takes_rerank():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "experiments" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.build_parser().parse_args(["--data", "synthetic", "--rerank"]).rerank is True
    assert cli.build_parser().parse_args(["--data", "synthetic"]).rerank is False
