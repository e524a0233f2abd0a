"""Benchmark: what training under Ray Train costs per epoch, against a bare single-process PyTorch loop.

Both loops train the same GLTR (cpu-demo preset) on the same synthetic dataset, with the same model,
optimizer, loss, PK loader and seed, built by the functions in `gltr_platform/train/loop.py`:

* bare:  `train_one_epoch` called in this process, torch.set_num_threads(1), a warm-up epoch, then N
         timed epochs; nothing else (no checkpoint, no report, no MLflow).
* ray:   `run_training` (the CLI's path) on a local Ray with 2 CPUs and one 1-CPU worker (Ray gives a
         1-CPU worker OMP_NUM_THREADS=1, so torch runs 1 thread there too: checked below), N+2 epochs.
         Epoch 1 is the warm-up, epochs 2..N+1 are timed, the last one is left out because it also runs
         validation and the test evaluation. Then the same with 2 workers of 1 CPU each (DDP, gloo).

Two ratios, ray / bare:

* step time: from `clips_per_s`, which `train_one_epoch` measures around its batch loop (load, forward,
  backward, step) in both loops alike: what running inside a Ray worker does to the training steps.
* epoch wall time: the time between the ends of consecutive epochs on the worker, i.e. the batch loop
  plus everything the Ray loop adds once per epoch: the parameter checksum, gathering RNG states,
  writing state.pt (model + Adam state), copying it to run storage and the `ray.train.report` barrier.
  The end of each epoch is the modification time of its persisted checkpoint (`run.keep_checkpoints`
  is raised so that none is deleted). Not a controller callback: Ray Train's controller polls its
  workers every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so the times at which a UserCallback sees the
  reports are quantised to 2 s, too coarse for epochs of a few seconds.

Not in either ratio, reported on their own lines: start-up (from calling `run_training` to the end of
epoch 1, less one steady epoch: the driver's checks, opening the dataset, creating the MLflow run, Ray
starting the controller and the worker group, the worker building its model and loader), the final
epoch with its evaluations, and MLflow's end-of-run logging. The MLflow store and run storage are
temporary and removed afterwards.

    .venv/bin/python bench/bench_train_overhead.py [--epochs 4] [--ids 64] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from mlflow.tracking import MlflowClient
from report import append_section  # bench/ is on sys.path when a script runs

from gltr_model import ReIDLoss
from gltr_platform.train.checkpoint import STATE_FILE, rng_state, save_state
from gltr_platform.train.config import TrainConfig, build_config
from gltr_platform.train.loop import (
    build_loader,
    build_model,
    build_optimizer,
    build_scheduler,
    prepare_splits,
    train_one_epoch,
)
from gltr_platform.train.trainer import run_training


@dataclass
class Timed:
    """Per timed epoch: wall seconds and clips/s; plus what surrounds them."""

    epoch_s: list[float]
    clips_per_s: list[float]
    startup_s: float = 0.0
    total_s: float = 0.0

    @property
    def best_epoch_s(self) -> float:
        return min(self.epoch_s)

    @property
    def best_clips_per_s(self) -> float:
        return max(self.clips_per_s)

    def row(self, label: str) -> str:
        """A markdown table row: best and median of the timed epochs."""
        return (
            f"| {label} | {self.best_epoch_s:.2f} | {statistics.median(self.epoch_s):.2f} "
            f"| {self.best_clips_per_s:.1f} | {statistics.median(self.clips_per_s):.1f} |"
        )


def bench_config(work: Path, epochs: int, ids: int, workers: int = 1) -> TrainConfig:
    """cpu-demo on a synthetic dataset of `ids` training identities; no validation before the end."""
    return build_config(
        "cpu-demo",
        {
            "data.source": "synthetic",
            "data.cache_dir": str(work / "cache"),
            "data.synthetic_ids": ids,
            "train.epochs": epochs,
            "train.eval_every": 10_000,
            "scaling.num_workers": workers,
            "scaling.cpus_per_worker": 1,
            "run.name": f"overhead-{workers}w",
            "run.storage_path": str(work / "storage"),
            "run.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
            "run.keep_checkpoints": epochs + 1,  # keep every epoch: their times are the epoch ends
        },
    )


def bare_loop(cfg: TrainConfig, epochs: int, threads: int) -> tuple[Timed, float, float]:
    """A warm-up epoch and `epochs` timed ones in this process; also the cost of one state.pt write."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)  # as rank 0 of the Ray loop
    splits = prepare_splits(cfg)
    model = build_model(cfg, num_classes=len(splits.label_map))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = ReIDLoss(cfg.optim.label_smoothing, cfg.optim.triplet_weight, cfg.optim.triplet_margin)
    loader = build_loader(cfg, splits)  # what train_loop_per_worker builds, as rank 0 of 1
    timed = Timed([], [])
    for epoch in range(1, epochs + 2):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        metrics = train_one_epoch(model, loader, criterion, optimizer, scaler, None, torch.device("cpu"))
        scheduler.step()
        if epoch > 1:
            timed.epoch_s.append(time.perf_counter() - start)
            timed.clips_per_s.append(metrics["clips_per_s"])
    state = {
        "epoch": epochs + 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": loader.sampler.state_dict(),
        "rng": [rng_state()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        writes = []
        for _ in range(3):
            start = time.perf_counter()
            save_state(tmp, state)
            writes.append(time.perf_counter() - start)
        size_mb = (Path(tmp) / STATE_FILE).stat().st_size / 2**20
    return timed, statistics.median(writes), size_mb


def ray_loop(cfg: TrainConfig, timed_epochs: int) -> Timed:
    """`run_training` for warm-up + timed + final epochs; epoch ends from the persisted checkpoints."""
    start = time.time()
    outcome = run_training(cfg, log_model=False)
    total = time.time() - start
    run_dir = Path(outcome.storage_path) / cfg.run.name
    ends = {
        int(d.name.removeprefix("epoch-")): (d / STATE_FILE).stat().st_mtime
        for d in run_dir.glob("epoch-*")
        if (d / STATE_FILE).exists()
    }
    assert sorted(ends) == list(range(1, cfg.train.epochs + 1)), f"checkpoints kept: {sorted(ends)}"
    history = MlflowClient(cfg.run.tracking_uri).get_metric_history(outcome.mlflow_run_id, "clips_per_s")
    rates = {m.step: m.value for m in history}
    timed_range = range(2, timed_epochs + 2)
    epoch_s = [ends[e] - ends[e - 1] for e in timed_range]
    return Timed(
        epoch_s=epoch_s,
        clips_per_s=[rates[e] for e in timed_range],
        startup_s=ends[1] - start - statistics.median(epoch_s),
        total_s=total,
    )


@ray.remote(num_cpus=1)
def worker_threads() -> tuple[str | None, int]:
    """What a 1-CPU Ray process sets up for torch: OMP_NUM_THREADS and torch's thread count."""
    import torch as t

    return os.environ.get("OMP_NUM_THREADS"), t.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs N (default: %(default)s)")
    parser.add_argument("--ids", type=int, default=64, help="synthetic training identities (default: %(default)s)")
    parser.add_argument("--no-append", action="store_true", help="print only, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    n = args.epochs

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    try:
        cfg1 = bench_config(work, n + 2, args.ids, workers=1)
        bare, write_s, state_mb = bare_loop(cfg1, n, threads=1)
        print(bare.row("bare"))

        MlflowClient(cfg1.run.tracking_uri).search_experiments()  # create the store outside the timings
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            omp, threads = ray.get(worker_threads.remote())
            one = ray_loop(cfg1, n)
            print(one.row("ray, 1 worker"))
            two = ray_loop(bench_config(work, n + 2, args.ids, workers=2), n)
            print(two.row("ray, 2 workers"))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()[0]
    step_ratio = bare.best_clips_per_s / one.best_clips_per_s
    epoch_ratio = one.best_epoch_s / bare.best_epoch_s
    clips = round(bare.best_clips_per_s * bare.best_epoch_s)
    body = f"""
Same model (GLTR, resnet18, cpu-demo: {cfg1.data.seq_len}x{cfg1.data.height}x{cfg1.data.width} clips, \
batch {cfg1.train.batch_size} = P {cfg1.p} x K {cfg1.train.num_instances}), same synthetic data \
({args.ids} ids, ~{clips} clips per epoch on 1 worker), same seed; {n} timed epochs after a warm-up epoch. \
Best (other processes on a shared machine only ever add time) and median. torch threads: 1 in the bare \
loop; a 1-CPU Ray worker gets OMP_NUM_THREADS={omp} and torch.get_num_threads()={threads}.

| loop | s/epoch best | median | clips/s best | median |
|---|---:|---:|---:|---:|
{bare.row("bare PyTorch, 1 thread")}
{one.row("Ray Train, 1 worker x 1 CPU")}
{two.row("Ray Train, 2 workers x 1 CPU (DDP, gloo)")}

- **step-time overhead, Ray 1 worker / bare: {step_ratio:.2f}x** (clips/s inside `train_one_epoch`: \
load, forward, backward, optimizer step).
- **epoch wall-time overhead, Ray 1 worker / bare: {epoch_ratio:.2f}x** (worker-side time between \
consecutive epoch ends: the batch loop plus checksum, RNG gather, state.pt write + copy to storage, \
report). One state.pt is {state_mb:.0f} MiB (model + Adam state) and takes {write_s:.2f} s to write \
here, before the copy to run storage.
- Not in the ratios: start-up (driver checks, dataset open, MLflow run, Ray controller and worker \
group, model and loader build; time to the end of epoch 1 less one epoch): {one.startup_s:.1f} s with \
1 worker, {two.startup_s:.1f} s with 2; the whole `run_training` ({n + 2} epochs incl. final validation \
and test, MLflow logging): {one.total_s:.1f} s with 1 worker, {two.total_s:.1f} s with 2.
- Load average (1 min) of the machine: {load_before:.1f} before, {load_after:.1f} after; above \
{os.cpu_count()} the cores were shared with other work and the medians drift from the best.
- 2 workers x 1 CPU vs 1 worker: {two.best_clips_per_s / one.best_clips_per_s:.2f}x clips/s \
(on 2 cores that also host the Ray controller, raylet and this driver).
"""
    title = "Ray Train loop overhead vs a bare PyTorch loop (bench_train_overhead.py)"
    if args.no_append:
        print(body)
    else:
        append_section(title, body)


if __name__ == "__main__":
    main()
