"""The per-worker training loop: plain PyTorch, with Ray Train at its edges (prepare_model, report).

Every worker runs `train_loop_per_worker(config)`. Rank r draws its own batches (PK, or its share of
the shuffled tracklets), DDP averages the gradients, and every epoch all ranks call `ray.train.report`
(rank 0 attaches the checkpoint). On a restart after a failure the loop resumes from
`ray.train.get_checkpoint()` at the next epoch, or, when that checkpoint is damaged, from the newest
earlier one in the run's storage that loads.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from gltr_model import GLTR, ReIDLoss
from gltr_platform.data.index import DatasetIndex, FrameSource, Tracklet, carve_validation, relabel
from gltr_platform.data.loaders import build_train_loader
from gltr_platform.data.transforms import build_train_transform, normalize_clip
from gltr_platform.train.checkpoint import (
    epoch_dir_name,
    load_resumable_state,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
    stored_checkpoints,
    upload_with_retries,
)
from gltr_platform.train.config import TrainConfig
from gltr_platform.train.datasets import open_training_data
from gltr_platform.train.retrieval import retrieval_metrics

CHECKPOINT_SCORE = "ckpt_score"  # what Ray Train keeps the best `run.keep_checkpoints` of: see checkpoint_score


@dataclass
class Splits:
    train: list[Tracklet]
    val_query: list[Tracklet]
    val_gallery: list[Tracklet]
    test: DatasetIndex
    label_map: dict[int, int]
    source: FrameSource


def build_model(cfg: TrainConfig, num_classes: int) -> GLTR:
    """The GLTR network described by `cfg.model`."""
    m = cfg.model
    return GLTR(
        num_classes,
        backbone=m.backbone,
        pretrained=m.pretrained,
        last_stride=m.last_stride,
        frame_dim=m.frame_dim,
        dilations=m.dilations,
        include_input=m.include_input,
        attention_width=m.attention_width,
        dropout=m.dropout,
        bnneck=m.bnneck,
    )


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (official) or Adam, weight decay on every parameter, at `cfg.effective_lr`."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.effective_lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=cfg.effective_lr, weight_decay=o.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay by lr_gamma every lr_step epochs, after an optional linear warmup (stepped per epoch)."""
    o = cfg.optim

    def factor(epoch: int) -> float:  # epoch counts from 0 here
        warm = min(1.0, (epoch + 1) / o.warmup_epochs) if o.warmup_epochs else 1.0
        return warm * o.lr_gamma ** (epoch // o.lr_step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a grad scaler); no autocast on CPU unless asked."""
    if cfg.train.amp == "off" or (cfg.train.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.train.amp == "fp16" or (cfg.train.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def prepare_splits(cfg: TrainConfig) -> Splits:
    """Dataset (synced once per node), the validation split carved from training ids, and labels.

    With `data.val_ids = 0` there is no validation split: every training identity is trained on.
    """
    index, source, _ = open_training_data(cfg)
    if cfg.data.val_ids == 0:
        return Splits(list(index.train), [], [], index, relabel(index.train), source)
    val = carve_validation(index.train, cfg.data.val_ids, seed=cfg.train.seed)
    return Splits(val.train, val.query, val.gallery, index, relabel(val.train), source)


def validates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether `epoch` ends with validation: every eval_every epochs and the last, if there is a split."""
    return cfg.data.val_ids > 0 and (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs)


def checkpoint_score(cfg: TrainConfig, epoch: int, val_map: float | None) -> float:
    """The score Ray Train ranks checkpoints by (higher is kept).

    With validation: the validation mAP on validated epochs, -1 otherwise (first to go). Without it
    there is nothing to rank by, so the epoch: the newest `run.keep_checkpoints` checkpoints are kept.
    """
    if cfg.data.val_ids == 0:
        return float(epoch)
    return -1.0 if val_map is None else float(val_map)


def build_loader(cfg: TrainConfig, splits: Splits, rank: int = 0, world: int = 1):
    """This rank's training loader (`data.sampler`); it hands out uint8 clips (train_one_epoch normalises)."""
    return build_train_loader(
        splits.train,
        splits.source,
        build_train_transform(
            cfg.data.height,
            cfg.data.width,
            flip_p=cfg.data.flip_p,
            pad=round(cfg.data.width / 12.8) if cfg.data.pad is None else cfg.data.pad,
            erase_p=cfg.data.erase_p,
            normalize=False,  # 4x less to move between processes and to the GPU
        ),
        seq_len=cfg.data.seq_len,
        batch_size=cfg.train.batch_size,
        sampler=cfg.data.sampler,
        k=cfg.train.num_instances,
        sampling=cfg.data.sampling,
        seed=cfg.train.seed,
        num_replicas=world,
        rank=rank,
        num_workers=cfg.data.loader_workers,
        label_map=splits.label_map,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: one process per worker (GPU), `config` is a TrainConfig as a dict."""
    cfg = TrainConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed + rank)

    splits = prepare_splits(cfg)
    model = build_model(cfg, num_classes=len(splits.label_map))
    use_channels_last = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")
    if use_channels_last:  # NHWC convolutions on tensor cores; activations follow the weights' layout
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)  # moves to the device, wraps in DDP when world > 1
    core = model.module if hasattr(model, "module") else model
    forward = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    criterion = ReIDLoss(cfg.optim.label_smoothing, cfg.optim.triplet_weight, cfg.optim.triplet_margin)
    loader = build_loader(cfg, splits, rank, world)

    start_epoch, best_val, taken = 1, 0.0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = _resume_state(checkpoint, rank)
        taken = stored_checkpoints(checkpoint) if rank == 0 else []
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        loader.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        start_epoch, best_val = state["epoch"] + 1, state.get("best_val", 0.0)
    resumed_from = start_epoch - 1 if checkpoint else None

    extract = {
        "height": cfg.data.height,
        "width": cfg.data.width,
        "mode": cfg.data.test_mode,
        "seq_len": cfg.data.seq_len,
        "chunk_len": cfg.data.test_chunk_len,
        "device": device,
    }
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        loader.sampler.set_epoch(epoch)
        metrics = train_one_epoch(forward, loader, criterion, optimizer, scaler, dtype, device)
        metrics["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        metrics["epoch"] = epoch
        # Identical on every rank when DDP keeps replicas in sync: a cheap check tests and users can read.
        metrics["param_checksum"] = float(sum(p.detach().double().sum() for p in core.parameters()))
        metrics["host"] = ray.util.get_node_ip_address()  # which node this rank ran on (an MLflow tag)
        if epoch == start_epoch and resumed_from is not None:  # in MLflow: where a restarted run picked up
            metrics["resumed_from_epoch"] = resumed_from
        last = epoch == cfg.train.epochs
        val_map = None
        if validates(cfg, epoch):
            _sync_buffers(core)
            val, _ = retrieval_metrics(
                core, splits.val_query, splits.val_gallery, splits.source,
                protocol="torchreid", prefix="val_", **extract,
            )  # fmt: skip
            metrics.update(val)
            val_map = val["val_mAP"]
            best_val = max(best_val, val_map)
        metrics[CHECKPOINT_SCORE] = checkpoint_score(cfg, epoch, val_map)
        if cfg.data.val_ids > 0:  # without a validation split there is no best to report (the Tune metric)
            metrics["best_val_mAP"] = best_val
        if last:
            if val_map is None:
                _sync_buffers(core)
            test, cmc = retrieval_metrics(
                core, splits.test.query, splits.test.gallery, splits.source,
                protocol=cfg.data.protocol, prefix="test_", rerank=cfg.data.rerank, **extract,
            )  # fmt: skip
            metrics.update(test)
            metrics["test_cmc"] = [float(x) for x in cmc]
        # Every rank's RNG state goes into the checkpoint so a resumed run draws what it would have.
        rngs = _gather(rng_state())
        with tempfile.TemporaryDirectory() as tmp:
            report_checkpoint = None
            if rank == 0:
                save_state(
                    tmp,
                    {
                        "epoch": epoch,
                        "model": core.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "sampler": loader.sampler.state_dict(),
                        "rng": rngs,
                        "best_val": best_val,
                        "num_classes": len(splits.label_map),
                        "config": cfg.model_dump(mode="json"),
                    },
                )
                report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                metrics,
                checkpoint=report_checkpoint,
                checkpoint_dir_name=epoch_dir_name(epoch, taken),
                checkpoint_upload_fn=upload_with_retries,
            )


def train_one_epoch(
    model: nn.Module,
    loader,
    criterion: ReIDLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, float]:
    """One pass over this rank's batches; loss and accuracy are averaged over all ranks."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, clips
    start = time.perf_counter()
    for clips, labels, _ in loader:
        clips = clips.to(device, non_blocking=True)
        if clips.dtype == torch.uint8:
            clips = normalize_clip(clips)
        labels = labels.to(device, non_blocking=True)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            logits, embeddings = model(clips)
            loss = criterion(logits.float(), embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(labels)
        totals += torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n], dtype=torch.float64)
    elapsed = time.perf_counter() - start
    if torch.distributed.is_initialized():
        totals = totals.to(device)
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
    loss_sum, correct, clips_seen = totals.tolist()
    return {
        "loss": loss_sum / max(clips_seen, 1),
        "train_acc": correct / max(clips_seen, 1),
        "clips_per_s": clips_seen / max(elapsed, 1e-9),
    }


def _sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics before evaluating.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank holds the
    statistics of its own last batch. Without this, ranks would embed their share of the tracklets with
    slightly different models, and the metrics would not be those of the checkpointed model.
    """
    if torch.distributed.is_initialized():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _resume_state(checkpoint: ray.train.Checkpoint, rank: int) -> dict[str, Any]:
    """The state to resume from: rank 0 picks it (falling back past a damaged checkpoint), every rank loads it.

    Deciding once keeps the replicas identical even if storage answers the ranks differently.
    """
    if rank == 0:
        state, chosen = load_resumable_state(checkpoint)
        _broadcast(chosen.path)
        return state
    path = _broadcast(None)
    with ray.train.Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as directory:
        return load_state(directory)


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj: Any) -> list[Any]:
    if not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
