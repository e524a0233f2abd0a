"""Evaluate a registered (or logged) GLTR model on a dataset's query/gallery split and print CMC and mAP.

    python experiments/evaluate.py --model models:/gltr@champion --data s3://bucket/mars-packed

The preprocessing (frame size, clip length, test mode) comes from the model's training run; flags
override it. Exit codes: 0 done, 1 evaluation failed, 2 bad input (unknown model or alias, bad
dataset), 3 a service (MLflow, S3) unreachable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gltr_platform.cli import Parser, run_main
from gltr_platform.data.cache_root import DEFAULT_CACHE_ROOT, datasets_cache


def build_parser() -> Parser:
    p = Parser(prog="evaluate.py", description="Evaluate a GLTR model from MLflow on a re-ID test split.")
    p.add_argument("--model", default="models:/gltr@champion", help="MLflow model URI (default: %(default)s)")
    p.add_argument(
        "--data",
        required=True,
        help="dataset: s3://bucket/prefix (packed), a local packed or raw MARS/DukeV/iLIDS-VID/PRID-2011 directory, "
        "or 'synthetic'; iLIDS-VID and PRID-2011 are tested on the training run's identity split",
    )
    p.add_argument("--protocol", choices=["official", "torchreid"], help="default: the training run's")
    p.add_argument("--test-mode", choices=["whole", "chunks", "evenly"], help="default: the training run's")
    p.add_argument("--rerank", action="store_true", help="also rank by k-reciprocal re-ranking and print both results")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_ROOT, help="dataset cache (default: %(default)s)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON too")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def training_config(client, model_uri: str):
    """The TrainConfig of the run that produced `model_uri` (models:/name@alias, models:/name/N or runs:/)."""
    from mlflow.exceptions import MlflowException

    from gltr_platform.train.config import TrainConfig

    try:
        if model_uri.startswith("models:/"):
            ref = model_uri.removeprefix("models:/")
            name, sep, alias = ref.partition("@")
            if sep:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                version = client.get_model_version(name, number)
            run_id = version.run_id
        elif model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/")[0]
        else:
            raise ValueError(
                f"--model {model_uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
            )
        path = client.download_artifacts(run_id, "config.json")
    except MlflowException as e:
        raise ValueError(f"--model {model_uri}: {e.message.splitlines()[0]}") from None
    return TrainConfig.model_validate(json.loads(Path(path).read_text()))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from mlflow.tracking import MlflowClient

        from gltr_platform.train.tracking import check_tracking_store, resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking_store(uri)
        store = Path(uri.removeprefix("sqlite:///"))
        if uri.startswith("sqlite:///") and not store.is_file():  # MLflow would create an empty one
            raise ValueError(
                f"--model {args.model}: there is no MLflow store at {store}; pass --tracking-uri (or set "
                "MLFLOW_TRACKING_URI to) the store the model was registered in"
            )
        cfg = training_config(MlflowClient(uri), args.model)
        # The model exists: only now the evaluation's machinery is imported.
        import mlflow
        import torch

        from gltr_platform.data.resolve import open_dataset
        from gltr_platform.train.datasets import resolve_source
        from gltr_platform.train.retrieval import CMC_RANKS, retrieval_metrics

        protocol = args.protocol or cfg.data.protocol
        mode = args.test_mode or cfg.data.test_mode
        data = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"source": args.data, "cache_dir": args.cache_dir})}
        )
        cache = datasets_cache(args.cache_dir)
        # The training run's split: another split's test half holds identities the model was trained on.
        index, source, info = open_dataset(resolve_source(data), cache, protocol=protocol, split=cfg.data.split)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        mlflow.set_tracking_uri(uri)
        model = mlflow.pytorch.load_model(args.model, map_location=device).to(device).eval()
        metrics, cmc = retrieval_metrics(
            model, index.query, index.gallery, source, protocol=protocol, prefix="", rerank=args.rerank,
            height=cfg.data.height, width=cfg.data.width, mode=mode, seq_len=cfg.data.seq_len,
            chunk_len=cfg.data.test_chunk_len, device=device,
        )  # fmt: skip
        print(f"{args.model} on {info['uri']} (version {info['version'][:12]}), {protocol} protocol, {mode} test mode")
        print(f"{len(index.query)} queries, {len(index.gallery)} gallery tracklets")
        print(
            "  ".join(f"rank-{r}: {100 * metrics[f'rank{r}']:.2f}%" for r in CMC_RANKS)
            + f"  mAP: {100 * metrics['mAP']:.2f}%"
        )
        if args.rerank:
            print(
                f"re-ranked (k-reciprocal): rank-1: {100 * metrics['rank1_rerank']:.2f}%  "
                f"mAP: {100 * metrics['mAP_rerank']:.2f}%"
            )
        if args.json:
            print(json.dumps({**metrics, "cmc": [float(c) for c in cmc], "protocol": protocol}))
        return 0

    run_main(run, args.debug)


if __name__ == "__main__":
    main(sys.argv[1:])
