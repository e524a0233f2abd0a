"""A sweep over GLTR's temporal design: Ray Tune + Optuna (TPE) + ASHA, every trial a Ray Train run.

Shape: the driver opens one MLflow parent run, then `Tuner.fit()` runs `run_trial` per sampled
configuration. A trial is a function trainable that calls the same `run_training` as
`train_gltr.py`, with Tune's `TuneReportCallback` forwarding each epoch so ASHA can stop it early and
with its own MLflow child run. Afterwards the driver ends the child runs ASHA stopped, writes the
results table and Optuna's plots to the parent run, and registers the best trial's model as
`models:/<name>@champion`.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field
from ray import tune
from ray.tune.execution import class_cache
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from gltr_platform.data.cache_root import DEFAULT_CACHE_ROOT
from gltr_platform.train.config import ConfigError, TrainConfig, validate_config
from gltr_platform.train.tracking import (
    check_tracking_store,
    end_run,
    git_commit,
    log_json,
    resolve_tracking_uri,
    start_run,
)
from gltr_platform.train.trainer import MODEL_URI_TAG, dataset_tags, existing_run, run_training
from gltr_platform.tune.search_space import SearchSpace, check_sweepable, trial_config

SWEEP_TAG = "gltr.sweep_name"
METRIC = "best_val_mAP"
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class SweepSettings(BaseModel):
    """Budget and machinery of a sweep (the search space and the base TrainConfig are separate)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    trials: int = Field(6, ge=1, description="number of trials (Optuna samples)")
    time_budget_s: float | None = Field(None, gt=0, description="stop starting trials after this many seconds")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    grace_period: int | None = Field(None, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung")
    seed: int = 0
    study_storage: str | None = Field(None, description="Optuna storage URL (default: sqlite in the sweep dir)")
    storage_path: str = Field("~/ray_results/gltr-sweeps", description="Tune and checkpoint storage")
    register_as: str = Field("gltr", description="Model Registry name for the champion")
    trial_cpus: float = Field(0.05, gt=0, description="CPU reserved for each trial's driver")
    trial_max_failures: int = Field(1, ge=0, description="retries of a trial whose driver died (e.g. spot node)")
    search: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna TPE, random, or the full grid")
    early_stopping: bool = Field(True, description="ASHA early stopping (off: every trial runs all epochs)")


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    experiment: str
    tracking_uri: str
    table: pd.DataFrame
    best: dict[str, Any] | None
    champion_version: str | None
    champion_name: str
    study_name: str
    study_storage: str


def local_dir(path: str) -> Path:
    """A local storage path, ~ expanded and absolute."""
    return Path(os.path.expanduser(path)).absolute()


def run_trial(params: dict[str, Any], base: dict[str, Any], parent_run_id: str, sweep: str, storage: str) -> None:
    """Tune function trainable: one Ray Train run with the sampled parameters."""
    ctx = tune.get_context()
    name = ctx.get_trial_name()
    cfg = trial_config(validate_config(base), trial_params(params), name=name, storage_path=storage)
    uri = resolve_tracking_uri(cfg.run.tracking_uri)
    resume = existing_run(uri, cfg.run.experiment, name) is not None  # a restored sweep re-enters
    run_training(
        cfg,
        resume=resume,
        callbacks=[TuneReportCallback()],
        parent_run_id=parent_run_id,
        extra_tags={SWEEP_TAG: sweep, "tune.trial_id": ctx.get_trial_id()},
    )


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters: sampled ones as they are, a grid search's combination unpacked."""
    config = dict(config)
    return {**config.pop("combo", {}), **config}


def run_sweep(
    base: TrainConfig,
    space: SearchSpace,
    settings: SweepSettings,
    resume: bool = False,
    connect: Callable[[], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep and return its results; the parent MLflow run always ends.

    `connect` (joining the Ray cluster) runs once the inputs are checked, before anything is created.
    """
    check_sweepable(base)
    uri = resolve_tracking_uri(base.run.tracking_uri)
    check_tracking_store(uri)
    base = base.model_copy(update={"run": base.run.model_copy(update={"tracking_uri": uri})})
    name = settings.name or f"sweep-{uuid.uuid4().hex[:8]}"
    tune_root = str(local_dir(settings.storage_path)) if "://" not in settings.storage_path else settings.storage_path
    experiment_path = f"{tune_root.rstrip('/')}/{name}"
    restorable = tune.Tuner.can_restore(experiment_path)
    if resume and not restorable:
        raise ConfigError(f"--resume: no sweep named {name!r} under {tune_root} to resume")
    if not resume and restorable:
        raise ConfigError(f"a sweep named {name!r} already exists under {tune_root}: pass --resume or another --name")
    data_tags = dataset_tags(base)  # sync the dataset once here, so trials find it in the cache
    if connect is not None:
        connect()
    study_url = settings.study_storage or _default_study_url(tune_root, name)
    storage = optuna.storages.RDBStorage(study_url)
    parent = _parent_run(uri, base, space, settings, name, data_tags, study_url, resume)
    failed = True
    try:
        _keep_credentials_out_of_trial_runtime_envs()
        results = _tuner(base, space, settings, name, tune_root, experiment_path, parent, storage, resume).fit()
        _end_trial_runs(uri, base.run.experiment, parent, results, base.train.epochs)
        table = results_table(uri, base.run.experiment, parent, results)
        study = None if settings.search == "grid" else optuna.load_study(study_name=name, storage=storage)
        if study is not None:
            _fail_orphaned_trials(study)
        _log_parent_artifacts(uri, parent, table, study)
        best, version = _register_champion(uri, parent, table, settings.register_as)
        failed = False
        return SweepOutcome(
            name,
            parent,
            base.run.experiment,
            uri,
            table,
            best,
            version,
            settings.register_as,
            name,
            study_url,
        )
    finally:
        end_run(uri, parent, failed)


def _keep_credentials_out_of_trial_runtime_envs() -> None:
    """Stop Tune from copying the driver's AWS keys into every trial actor's runtime_env.

    Ray writes runtime envs into runtime_env_agent.log on every node and serves them to `ray list actors
    --detail` and the dashboard, so keys copied there leak. Trials take their credentials from their node
    instead, like every other Ray process: the instance profile on a cluster, the environment the local
    Ray inherited from this driver, or ~/.aws.
    """
    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(AWS_CREDENTIAL_VARS)


def _default_study_url(tune_root: str, name: str) -> str:
    if "://" in tune_root:  # Tune results in S3: keep the study beside the driver instead
        directory = Path(os.path.expanduser(DEFAULT_CACHE_ROOT)) / "optuna"
    else:
        directory = Path(tune_root) / name
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'optuna.db'}"


def _parent_run(uri, base, space, settings, name, data_tags, study_url, resume) -> str:
    client = MlflowClient(uri)
    if resume:
        exp = client.get_experiment_by_name(base.run.experiment)
        found = client.search_runs([exp.experiment_id], f"tags.`{SWEEP_TAG}` = '{name}' and tags.`gltr.role` = 'sweep'")
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    params = {
        "search_space": json.dumps(space.model_dump(mode="json")),
        **{f"sweep.{k}": v for k, v in settings.model_dump().items() if k != "study_storage"},
        **{k: v for k, v in base.flat().items() if k.startswith(("data.", "train.", "scaling.")) or k == "preset"},
    }
    tags = {
        SWEEP_TAG: name,
        "gltr.role": "sweep",
        "git.commit": git_commit(),
        "optuna.study": name,
        "optuna.storage": study_url,
        **data_tags,
    }
    return start_run(uri, base.run.experiment, name, params, tags)


def _tuner(base, space, settings, name, tune_root, experiment_path, parent, storage, resume) -> tune.Tuner:
    trials_storage = f"{tune_root.rstrip('/')}/{name}-train"
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base.model_dump(mode="json"),
            parent_run_id=parent,
            sweep=name,
            storage=trials_storage,
        ),
        {"CPU": settings.trial_cpus},
    )
    if resume:
        return tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    sampler = (
        optuna.samplers.RandomSampler(seed=settings.seed)
        if settings.search == "random"
        else optuna.samplers.TPESampler(seed=settings.seed)
    )
    param_space = space.tune_space()
    if settings.search == "grid":  # every categorical combination once, in order: no sampler needed
        searcher = None
        param_space = {"combo": tune.grid_search(space.grid())}
    else:
        searcher = OptunaSearch(metric=METRIC, mode="max", sampler=sampler, study_name=name, storage=storage)
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            # One past the last epoch: at max_t ASHA would stop the trial at its final report, killing it
            # before it logs its model. Trials that reach the end finish on their own.
            max_t=base.train.epochs + 1,
            grace_period=min(settings.grace_period or base.train.eval_every, base.train.epochs),
            reduction_factor=settings.reduction_factor,
        )
        if settings.early_stopping
        else None
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=1 if settings.search == "grid" else settings.trials,
            max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s,
            trial_name_creator=lambda trial: f"{name}-{trial.trial_id}",
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=tune_root,
            # A trial restarted after its driver died re-enters run_training, which resumes its Ray Train
            # run from the last checkpoint and its MLflow run (see run_trial).
            failure_config=tune.FailureConfig(max_failures=settings.trial_max_failures),
        ),
    )


def child_runs(uri: str, experiment: str, parent: str) -> list:
    """The trials' MLflow runs of a sweep."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000)


def _end_trial_runs(uri: str, experiment: str, parent: str, results, epochs: int) -> None:
    """End the runs of trials that Tune stopped without error (ASHA, the time budget) as FINISHED.

    Tune stops a trial by ending its process, so its run cannot end itself: depending on where the stop
    lands, the run is left RUNNING or marked FAILED by the dying trial. Tune's results say what happened;
    the run of a trial that really failed ends FAILED.
    """
    client = MlflowClient(uri)
    ended_cleanly = {(r.metrics or {}).get("trial_id"): r for r in results if not r.error}
    for run in child_runs(uri, experiment, parent):
        result = ended_cleanly.get(run.data.tags.get("tune.trial_id"))
        if run.info.status == "FINISHED":
            continue
        if result is None:  # the trial failed: never leave its run RUNNING
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED")
            continue
        if result.metrics.get("epoch", epochs) < epochs:
            client.set_tag(run.info.run_id, "tune.stopped_early", "true")
        client.set_terminated(run.info.run_id, "FINISHED")


def results_table(uri: str, experiment: str, parent: str, results) -> pd.DataFrame:
    """One row per trial: its parameters, best and last validation metrics, epochs run, test metrics."""
    runs = {r.data.tags.get("tune.trial_id"): r for r in child_runs(uri, experiment, parent)}
    rows = []
    for result in results:
        cfg, metrics = trial_params(result.config or {}), result.metrics or {}
        run = runs.get(metrics.get("trial_id"))
        rows.append(
            {
                "trial": run.info.run_name if run else metrics.get("trial_id"),
                "dilations": cfg.get("dilations"),
                "seq_len": cfg.get("seq_len"),
                "attention_width": cfg.get("attention_width"),
                **{k: cfg[k] for k in ("lr", "weight_decay") if k in cfg},
                "epochs_run": metrics.get("epoch"),
                "best_val_mAP": metrics.get(METRIC),
                "val_rank1": metrics.get("val_rank1"),
                "test_rank1": metrics.get("test_rank1"),
                "test_mAP": metrics.get("test_mAP"),
                "stopped_early": bool(run and run.data.tags.get("tune.stopped_early") == "true"),
                "error": bool(result.error),
                "mlflow_run_id": run.info.run_id if run else None,
                "model_uri": run.data.tags.get(MODEL_URI_TAG) if run else None,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("best_val_mAP", ascending=False, na_position="last").reset_index(drop=True)
    return table


def _fail_orphaned_trials(study: optuna.Study) -> None:
    """Optuna trials still RUNNING after the sweep were asked for by a driver that was killed before it
    could tell Optuna the result (the restored sweep re-asks for them): mark them FAIL so the study's
    completed trials are exactly the trials Tune ran."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _log_parent_artifacts(uri: str, parent: str, table: pd.DataFrame, study: optuna.Study | None) -> None:
    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        table.to_csv(csv, index=False)
        client.log_artifact(parent, str(csv))
        for path in write_study_plots(study, Path(tmp) / "plots") if study is not None else []:
            client.log_artifact(parent, str(path), artifact_path="plots")


def write_study_plots(study: optuna.Study, directory: Path) -> list[Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates, HTML and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vis_mpl

    directory.mkdir(parents=True, exist_ok=True)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {
        "optimization_history": (vis.plot_optimization_history, vis_mpl.plot_optimization_history, 1),
        "param_importances": (vis.plot_param_importances, vis_mpl.plot_param_importances, 2),
        "parallel_coordinate": (vis.plot_parallel_coordinate, vis_mpl.plot_parallel_coordinate, 1),
    }
    written = []
    for name, (plotly_fn, mpl_fn, needed) in plots.items():
        if len(completed) < needed:
            continue
        try:
            # Interactive HTML with plotly.js embedded (works offline), and a PNG for a quick look.
            plotly_fn(study).write_html(directory / f"{name}.html", include_plotlyjs=True)
            written.append(directory / f"{name}.html")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = mpl_fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(directory / f"{name}.png", dpi=110)
            plt.close(fig)
            written.append(directory / f"{name}.png")
        except (ValueError, RuntimeError) as e:  # e.g. importances need parameters that varied
            print(f"note: skipped the {name} plot: {e}")
    return written


def _register_champion(uri: str, parent: str, table: pd.DataFrame, register_as: str):
    """Register the best trial that finished (and so logged a model) as `register_as@champion`."""
    import mlflow

    finished = table[table["model_uri"].notna()] if len(table) else table
    if not len(finished):
        return None, None
    best = finished.iloc[0].to_dict()
    client = MlflowClient(uri)
    log_json(uri, parent, best, "best_config.json")
    mlflow.set_tracking_uri(uri)
    try:
        version = mlflow.register_model(best["model_uri"], register_as).version
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias(register_as, "champion", version)
    for key in ("best_val_mAP", "val_rank1", "val_mAP", "test_rank1", "test_mAP"):
        if best.get(key) is not None and best[key] == best[key]:
            client.set_model_version_tag(register_as, version, key, f"{best[key]:.4f}")
    for key in ("dilations", "seq_len", "attention_width", "trial", "mlflow_run_id"):
        client.set_model_version_tag(register_as, version, key, str(best[key]))
    client.set_tag(parent, "champion", f"models:/{register_as}/{version}")
    return best, str(version)
