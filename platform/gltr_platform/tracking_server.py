"""Start the team's MLflow tracking server (on the cluster head, or anywhere a team shares runs).

    python -m gltr_platform.tracking_server --artifacts-destination s3://team-bucket/mlflow
    python -m gltr_platform.tracking_server --backend-store-uri postgresql://mlflow@db/mlflow --basic-auth

Runs and the Model Registry live in the backend store (a SQLAlchemy URL: sqlite by default, Postgres
for real teams). Artifacts are proxied: clients upload and download through the server, which alone
holds the S3 credentials. It listens on 127.0.0.1 unless told otherwise; reach it through SSH port
forwarding. With --basic-auth every request needs a user: the admin password and the server's secret
key come from the environment (never a default), and the auth configuration is written 0600.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gltr_platform.cli import BAD_INPUT, Parser

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
DEFAULT_HOME = Path("~/.gltr-platform/mlflow")


def build_parser() -> Parser:
    p = Parser(prog="python -m gltr_platform.tracking_server", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backend-store-uri",
        help="runs and registry: a SQLAlchemy URL (default: sqlite:///~/.gltr-platform/mlflow/mlflow.db)",
    )
    p.add_argument(
        "--artifacts-destination",
        help="where artifacts go, proxied by the server: s3://bucket/prefix or a directory "
        "(default: ~/.gltr-platform/mlflow/artifacts)",
    )
    p.add_argument(
        "--home",
        default=str(DEFAULT_HOME),
        help="server state: default sqlite store, artifacts, auth (default: %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    p.add_argument(
        "--basic-auth",
        action="store_true",
        help=f"require users (MLflow's basic-auth app); needs ${ADMIN_PASSWORD_ENV} and ${SECRET_KEY_ENV}",
    )
    p.add_argument("--print-command", action="store_true", help="print the mlflow server command and exit")
    return p


def server_command(args, home: Path) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for `args`."""
    backend = args.backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts = args.artifacts_destination or str(home / "artifacts")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip
    # Job execution spawns a second server process; on small heads it only slows start-up.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if args.basic_auth:
        command += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(home))
    return command, env


def write_auth_config(home: Path) -> Path:
    """MLflow's basic-auth configuration (user store beside the backend), readable by the owner only."""
    path = home / "basic_auth.ini"
    text = (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def check_auth_environment() -> str | None:
    """A message naming what is missing for basic auth, or None."""
    missing = [name for name in (ADMIN_PASSWORD_ENV, SECRET_KEY_ENV) if not os.environ.get(name)]
    if not missing:
        return None
    return (
        f"--basic-auth needs {' and '.join(missing)} in the environment (no default password is ever used); "
        f"e.g. export {SECRET_KEY_ENV}=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\""
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.basic_auth and (problem := check_auth_environment()):
        print(f"error: {problem}", file=sys.stderr)
        return BAD_INPUT
    home = Path(os.path.expanduser(args.home)).absolute()
    home.mkdir(parents=True, exist_ok=True)
    command, env = server_command(args, home)
    if args.print_command:
        print(" ".join(command))
        return 0
    artifacts = command[command.index("--artifacts-destination") + 1]
    print(f"MLflow tracking server on http://{args.host}:{args.port} (artifacts: {artifacts})", flush=True)
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
