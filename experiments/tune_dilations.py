"""Search GLTR's temporal design (dilation pyramid, clip length T, attention width) with Ray Tune + Optuna.

    python experiments/tune_dilations.py                       # the CPU demo: synthetic data, local Ray
    python experiments/tune_dilations.py --preset paper --data s3://bucket/mars-packed \\
        --space experiments/search_spaces/mars.yaml --trials 40 --max-concurrent 4 --gpu

Each trial is a Ray Train run (its own workers), ASHA stops weak trials early on validation mAP (a
preset without a validation split, such as paper, holds out 8 training identities here), every trial
is an MLflow child run of the sweep's parent run, and the best model is registered as
models:/<--register-as>@champion. Exit codes: 0 done, 1 the sweep failed, 2 bad input, 3 a service
(MLflow, S3, Ray) unreachable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gltr_platform.cli import Parser, connect_ray, joins_cluster, parse_overrides, positive_int, run_main
from gltr_platform.train.config import PRESETS, ConfigError, DataConfig, build_config

DEFAULT_SPACE = Path(__file__).resolve().parent / "search_spaces" / "cpu_demo.yaml"


def build_parser() -> Parser:
    p = Parser(
        prog="tune_dilations.py",
        description=(
            "Ray Tune + Optuna (TPE) + ASHA over GLTR's dilation rates, sequence length and attention "
            "width. Each trial is a distributed Ray Train run tracked as an MLflow child run; the best "
            "model is registered in the MLflow Model Registry with alias 'champion'. With no arguments: "
            "the CPU demo on synthetic data and a local Ray instance."
        ),
    )
    data = p.add_argument_group("what to train")
    data.add_argument(
        "--preset", default="cpu-demo", choices=sorted(PRESETS), help="base recipe (default: %(default)s)"
    )
    data.add_argument(
        "--data",
        help="dataset: s3://bucket/prefix (packed), a local packed or raw MARS/DukeV/iLIDS-VID/PRID-2011 directory, "
        "or 'synthetic'",
    )
    data.add_argument(
        "--space",
        type=Path,
        help="search space YAML (default: experiments/search_spaces/cpu_demo.yaml)",
    )
    data.add_argument("--epochs", type=int, help="epochs per trial, the ASHA maximum (sets train.epochs)")
    data.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a training setting, e.g. --set optim.lr=0.005 (repeatable)")  # fmt: skip
    budget = p.add_argument_group("budget and scheduling")
    budget.add_argument("--trials", type=positive_int, default=6, help="number of trials (default: %(default)s)")
    budget.add_argument(
        "--search",
        choices=["tpe", "random", "grid"],
        default="tpe",
        help="Optuna TPE (default), Optuna random sampling, or every combination of the space once",
    )
    budget.add_argument("--no-early-stopping", action="store_true", help="run every trial to the end (no ASHA)")
    budget.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop starting new trials after this")
    budget.add_argument("--max-concurrent", type=positive_int, default=2, help="trials at once (default: %(default)s)")
    budget.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (sets scaling.num_workers)")
    budget.add_argument("--cpus-per-worker", type=float, help="CPUs per training worker (sets scaling.cpus_per_worker)")
    budget.add_argument(
        "--gpu",
        action="store_true",
        help="train on GPUs (one per worker unless --set scaling.gpus_per_worker)",
    )
    budget.add_argument(
        "--grace-period",
        type=int,
        help="ASHA: epochs before a trial may be stopped (default: train.eval_every)",
    )
    budget.add_argument(
        "--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default: %(default)s)"
    )
    budget.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default: %(default)s)")
    where = p.add_argument_group("where results go")
    where.add_argument(
        "--name", help="sweep name: Tune experiment, Optuna study and MLflow parent run (default: generated)"
    )
    where.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name (Tuner.restore)")
    where.add_argument(
        "--storage-path",
        default="~/ray_results/gltr-sweeps",
        help="Tune results and checkpoints: a directory or s3://... (default: %(default)s)",
    )
    where.add_argument(
        "--study-storage",
        help="Optuna storage URL, any SQLAlchemy URL (default: sqlite file in the sweep directory)",
    )
    where.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    where.add_argument("--experiment", default="gltr-sweeps", help="MLflow experiment (default: %(default)s)")
    where.add_argument(
        "--register-as", default="gltr", help="Model Registry name of the champion (default: %(default)s)"
    )
    where.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from gltr_platform.train.datasets import check_source
        from gltr_platform.tune.search_space import load_search_space

        if args.resume and not args.name:
            raise ConfigError("--resume needs --name, the sweep to continue")
        overrides = parse_overrides(args.overrides)
        shortcuts = {
            "data.source": args.data,
            "train.epochs": args.epochs,
            "scaling.num_workers": args.workers_per_trial,
            "scaling.cpus_per_worker": args.cpus_per_worker,
            "scaling.use_gpu": True if args.gpu else None,
            "run.tracking_uri": args.tracking_uri,
            "run.experiment": args.experiment,
        }
        overrides.update({k: v for k, v in shortcuts.items() if v is not None})
        if args.preset == "cpu-demo":  # two single-worker trials share 2 cores
            overrides.setdefault("scaling.cpus_per_worker", 0.9)
        if PRESETS[args.preset].get("data", {}).get("val_ids") == 0:
            # Trials are ranked on validation mAP: a preset that trains on every identity (paper) holds
            # out the default number for a sweep, unless --set data.val_ids says otherwise.
            overrides.setdefault("data.val_ids", DataConfig.model_fields["val_ids"].default)
        base = build_config(args.preset, overrides)
        space = load_search_space(args.space or DEFAULT_SPACE, base)
        check_source(base)
        # The inputs are valid: only now the sweep's machinery (Ray, Optuna, MLflow, torch) is imported.
        from gltr_platform.tune.report import print_summary
        from gltr_platform.tune.sweep import SweepSettings, run_sweep

        settings = SweepSettings(
            name=args.name,
            trials=args.trials,
            time_budget_s=args.time_budget,
            max_concurrent=args.max_concurrent,
            grace_period=args.grace_period,
            reduction_factor=args.reduction_factor,
            seed=args.seed,
            study_storage=args.study_storage,
            storage_path=args.storage_path,
            register_as=args.register_as,
            search=args.search,
            early_stopping=not args.no_early_stopping,
        )

        def connect() -> None:
            connect_ray(args.ray_address, base.scaling, base.run.tracking_uri, settings.storage_path)

        if joins_cluster(args.ray_address):  # cheap: refuse what other hosts cannot reach before reading data
            connect()
        outcome = run_sweep(base, space, settings, resume=args.resume, connect=connect)
        print_summary(outcome)
        return 0 if outcome.best is not None else 1

    run_main(run, args.debug)


if __name__ == "__main__":
    main(sys.argv[1:])
