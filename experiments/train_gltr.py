"""Train GLTR with Ray Train, tracked in MLflow.

    python experiments/train_gltr.py --preset cpu-demo --data s3://bucket/mars-packed --set train.epochs=4

Runs on the Ray cluster at --ray-address / $RAY_ADDRESS, or on a local Ray instance when none is given.
Exit codes: 0 done, 1 training failed, 2 bad input, 3 a service (MLflow, S3, Ray) unreachable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from gltr_platform.cli import Parser, connect_ray, joins_cluster, parse_overrides, run_main
from gltr_platform.train.config import PRESETS, ConfigError, build_config


def build_parser() -> Parser:
    parser = Parser(
        prog="train_gltr.py",
        description="Train GLTR (ResNet + dilated temporal pyramid + temporal self-attention) data-parallel "
        "with Ray Train; every epoch is checkpointed and logged to MLflow, the final model is logged there.",
    )
    parser.add_argument(
        "--preset", default="cpu-demo", choices=sorted(PRESETS), help="base recipe (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        help="dataset: s3://bucket/prefix of a packed dataset, a local packed or raw MARS/DukeV/iLIDS-VID/"
        "PRID-2011 directory, or 'synthetic' (sets data.source; data.split picks an iLIDS-VID/PRID-2011 split)",
    )
    parser.add_argument("--config", type=Path, help="YAML file with config sections (data, model, optim, train, ...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set model.dilations=[1,2,4] --set train.epochs=20 (repeatable)",
    )
    parser.add_argument("--name", help="run name (Ray Train run and MLflow run); needed by --resume")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run --name from its checkpoint")
    parser.add_argument("--workers", type=int, help="Ray Train workers (sets scaling.num_workers)")
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (sets scaling.use_gpu=true)")
    parser.add_argument("--storage-path", help="checkpoint storage: local directory or s3://bucket/prefix")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    parser.add_argument("--experiment", help="MLflow experiment name (default: gltr)")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def config_from_args(args):
    overrides = parse_overrides(args.overrides)
    shortcuts = {
        "data.source": args.data,
        "run.name": args.name,
        "scaling.num_workers": args.workers,
        "scaling.use_gpu": True if args.gpu else None,
        "run.storage_path": args.storage_path,
        "run.tracking_uri": args.tracking_uri,
        "run.experiment": args.experiment,
    }
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    base = None
    if args.config:
        try:
            base = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read --config {args.config}: {e}") from None
        if not isinstance(base, dict):
            raise ConfigError(f"--config {args.config} must hold a mapping of sections")
    if args.resume and not args.name:
        raise ConfigError("--resume needs --name, the run to continue")
    return build_config(args.preset, overrides, base)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from gltr_platform.train.datasets import check_source

        cfg = config_from_args(args)
        if args.print_config:
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
            print("# derived (logged as MLflow params):", json.dumps(cfg.derived()))
            return 0
        check_source(cfg)
        from gltr_platform.train.trainer import run_training, storage_path

        def connect() -> None:
            connect_ray(args.ray_address, cfg.scaling, cfg.run.tracking_uri, storage_path(cfg))

        if joins_cluster(args.ray_address):  # cheap: refuse what other hosts cannot reach before reading data
            connect()
        outcome = run_training(cfg, resume=args.resume, connect=connect)
        m = outcome.metrics
        print(f"\nrun {outcome.run_name} finished: {m.get('epoch')} epochs, MLflow run {outcome.mlflow_run_id}")
        validation = f"validation mAP {m['val_mAP']:.3f}" if "val_mAP" in m else "no validation split"
        print(
            f"test ({cfg.data.protocol} protocol): rank-1 {m.get('test_rank1', float('nan')):.3f}  "
            f"mAP {m.get('test_mAP', float('nan')):.3f}   {validation}"
        )
        if "test_mAP_rerank" in m:
            print(f"test re-ranked (k-reciprocal): rank-1 {m['test_rank1_rerank']:.3f}  mAP {m['test_mAP_rerank']:.3f}")
        print(f"model: {outcome.model_uri}\ncheckpoint: {outcome.checkpoint_path}")
        print(json.dumps({k: v for k, v in m.items() if k != "test_cmc"}, default=str))
        return 0

    run_main(run, args.debug)


if __name__ == "__main__":
    main(sys.argv[1:])
