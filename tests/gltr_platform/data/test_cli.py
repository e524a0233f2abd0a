"""`python -m gltr_platform.data`: commands, help, exit codes and one-line errors.

The real entry point runs in a subprocess where the process boundary matters (exit codes, stderr,
environment); the many variants of one behaviour call `main(argv)` in-process, which is the same code.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gltr_platform.data.__main__ import main


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the command line in a fresh interpreter (environment inherited, so S3 settings apply)."""
    return subprocess.run(
        [sys.executable, "-m", "gltr_platform.data", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_main(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    """main(argv) in-process: exit code, stdout, stderr."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, stderr: str, expected_code: int, text: str) -> None:
    assert code == expected_code
    assert stderr.startswith("error: ") and text in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_lists_every_command():
    top = cli("--help")

    assert top.returncode == 0
    for command in ("pack", "sync", "synth", "info"):
        assert command in top.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("pack", ["--shard-size SIZE", "s3://bucket/prefix", "--no-progress"]),
        ("sync", ["--cache DIR", "--verify", "--no-progress"]),
        ("synth", ["--ids N", "training identities", "--cameras N", "--seed N"]),
        ("info", ["--cache DIR", "--protocol", "torchreid", "official", "--split K", "PRID-2011"]),
    ],
)
def test_each_command_explains_its_options(capsys, command, options):
    code, out, _ = run_main(capsys, command, "--help")

    assert code == 0
    for option in options:
        assert option in out


def test_synth_pack_sync_and_info_work_end_to_end(capsys, s3_bucket, tmp_path):
    code, _, err = run_main(capsys, "synth", tmp_path / "mars", "--ids", "3", "--test-ids", "3",
                            "--cameras", "2", "--min-frames", "3", "--max-frames", "6")  # fmt: skip
    assert code == 0, err
    uri = f"s3://{s3_bucket}/mars/v1"

    packed = cli("pack", tmp_path / "mars", uri, "--shard-size", "16KB")
    assert packed.returncode == 0, packed.stderr
    version = packed.stdout.split("version ")[1].strip()
    synced = cli("sync", uri, "--cache", tmp_path / "cache", "--verify")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.split() == [str(tmp_path / "cache" / version), "version", version]
    code, out, _ = run_main(capsys, "info", uri, "--cache", tmp_path / "cache", "--protocol", "official")
    assert code == 0 and out.startswith("mars (official protocol)\n  train ")
    assert f"version {version}" in out


def test_info_reads_a_local_packed_directory(capsys, synthetic_mars_root, tmp_path):
    assert run_main(capsys, "pack", synthetic_mars_root, tmp_path / "packed")[0] == 0

    code, out, _ = run_main(capsys, "info", tmp_path / "packed")

    assert code == 0 and out.startswith("mars (torchreid protocol)\n  train ")


def test_info_prints_the_identity_split_of_a_raw_ilidsvid_directory(capsys, tmp_path, write_ilidsvid):
    ls_set = np.stack([np.random.default_rng(k).permutation(4) + 1 for k in range(10)])
    root = write_ilidsvid(tmp_path / "ilids-vid", (1, 2, 3, 5), ls_set, frames=2)

    code, out, err = run_main(capsys, "info", root, "--cache", tmp_path / "cache", "--split", "7", "--no-progress")

    assert code == 0, err
    assert out.startswith("ilidsvid (torchreid protocol), identity split 7 (train-test people splits/")
    assert "\n  query         2 ids       2 tracklets         4 frames\n" in out


def test_a_wrong_command_line_exits_2_with_one_line():
    result = cli("pack", "src")

    assert_one_line_error(result.returncode, result.stderr, 2, "required: DEST")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("pack", "a", "b", "--shard-size", "huge"), "--shard-size: invalid size 'huge'"),
        (("synth", "out", "--ids", "0"), "--ids: Input should be greater than or equal to 1"),
        (("info", "x", "--protocol", "mine"), "invalid choice: 'mine'"),
    ],
)
def test_every_usage_error_exits_2_with_one_line(capsys, args, text):
    code, _, err = run_main(capsys, *args)

    assert_one_line_error(code, err, 2, text)


def test_a_bad_dataset_spec_exits_2_with_one_line(tmp_path):
    result = cli("sync", "bucket/mars", "--cache", tmp_path)

    assert_one_line_error(result.returncode, result.stderr, 2, "is not an S3 URI")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("info", "{tmp}/nothing-here"), "is not a directory or an S3 URI"),
        (("sync", "s3://no-such-bucket/x", "--cache", "{tmp}"), "bucket 'no-such-bucket' does not exist"),
        (("pack", "{tmp}", "{tmp}/out"), "is not a raw dataset directory"),
    ],
)
def test_every_bad_dataset_exits_2_with_one_line(capsys, s3_env, tmp_path, args, text):
    code, _, err = run_main(capsys, *(a.format(tmp=tmp_path) for a in args))

    assert_one_line_error(code, err, 2, text)


def test_an_unreachable_endpoint_is_one_line_and_debug_shows_the_traceback(capsys, s3_env, monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)

    code, _, err = run_main(capsys, "sync", "s3://bucket/mars", "--cache", tmp_path)
    assert_one_line_error(code, err, 3, f"cannot reach the S3 endpoint {endpoint}")
    debug = cli("--debug", "sync", "s3://bucket/mars", "--cache", tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "EndpointUnreachable: cannot reach the S3 endpoint" in debug.stderr


def test_a_node_prewarmed_by_the_data_cli_is_the_cache_training_reads(capsys, s3_env, s3_bucket, tmp_path, monkeypatch):
    """`python -m gltr_platform.data sync` with no --cache fills the cache a training run opens."""
    from gltr_platform.train.config import build_config
    from gltr_platform.train.datasets import open_training_data

    code, _, err = run_main(capsys, "synth", tmp_path / "mars", "--ids", "3", "--test-ids", "3",
                            "--cameras", "2", "--min-frames", "3", "--max-frames", "6")  # fmt: skip
    assert code == 0, err
    uri = f"s3://{s3_bucket}/mars/prewarm"
    assert run_main(capsys, "pack", tmp_path / "mars", uri, "--shard-size", "16KB")[0] == 0
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run_main(capsys, "sync", uri, "--no-progress")[0] == 0
    assert len(list((tmp_path / "home").rglob(".complete"))) == 1

    s3_env.log.clear()
    _, _, info = open_training_data(build_config("cpu-demo", {"data.source": uri}))
    shard_gets = [p for m, p in s3_env.log.requests if m == "GET" and "/shards/" in p]
    assert not shard_gets, shard_gets  # a cache hit: only the manifest is read again
    assert str(info["version"]) in {p.parent.name for p in (tmp_path / "home").rglob(".complete")}
