"""`make demo`: the whole workflow on one laptop, with real parts on 127.0.0.1.

1. Generate the synthetic MARS-format dataset once (cached under .cache/demo).
2. Start an S3-compatible endpoint (moto's server) on 127.0.0.1 and pack the dataset into it.
3. Run experiments/tune_dilations.py against s3://gltr-demo/synthetic with the cpu-demo preset
   (Ray Tune + Optuna + ASHA, each trial a Ray Train run, MLflow in ./mlflow.db).
4. Stop the endpoint. tune_dilations.py prints the best configuration and the MLflow UI command.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from gltr_platform.data.pack import pack
from gltr_platform.data.synthetic import ensure_synthetic_mars
from gltr_platform.train.config import build_config
from gltr_platform.train.datasets import synthetic_config

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "gltr-demo"


def start_s3_endpoint() -> ThreadedMotoServer:
    """moto's S3 server on 127.0.0.1 and a free port, started: nothing beyond this machine can reach it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request in the demo's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


def main() -> int:
    cache = ROOT / ".cache" / "demo"
    cfg = build_config("cpu-demo")
    print("1/3 synthetic MARS-format dataset ...", flush=True)
    raw = ensure_synthetic_mars(cache / "synthetic", synthetic_config(cfg))
    server = start_s3_endpoint()
    host, port = server.get_host_and_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "demo",  # moto accepts any credentials; real AWS keys are never needed here
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.pop("AWS_PROFILE", None)
    try:
        print(f"2/3 S3 endpoint on http://{host}:{port}: packing into s3://{BUCKET}/synthetic ...", flush=True)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
        pack(raw, f"s3://{BUCKET}/synthetic", progress=False)
        name = time.strftime("demo-%Y%m%d-%H%M%S")
        print(f"3/3 sweep {name}: tune_dilations.py --data s3://{BUCKET}/synthetic ...", flush=True)
        command = [
            sys.executable,
            str(ROOT / "experiments" / "tune_dilations.py"),
            "--data", f"s3://{BUCKET}/synthetic",
            "--name", name,
            "--trials", "6",
            "--max-concurrent", "2",
            "--tracking-uri", f"sqlite:///{ROOT / 'mlflow.db'}",
            "--set", f"data.cache_dir={cache}",
            *sys.argv[1:],
        ]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
