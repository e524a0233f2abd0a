"""Command line: pack, sync, generate and inspect datasets.

    python -m gltr_platform.data pack SRC DEST [--shard-size 256MB]
    python -m gltr_platform.data sync s3://bucket/prefix --cache DIR [--verify]
    python -m gltr_platform.data synth DIR [--ids N ...]
    python -m gltr_platform.data info SPEC [--cache DIR]

Errors print one line, `error: ...`, on stderr, with the exit codes of every entry point (see
gltr_platform/cli.py): 2 for bad input (command line, a dataset that cannot be read or written where it
was pointed), 3 for an S3 endpoint that cannot be reached, 1 for anything else that failed. `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from gltr_platform.data.cache_root import DEFAULT_CACHE_ROOT
from gltr_platform.data.index import DatasetError
from gltr_platform.data.manifest import PROTOCOLS

USAGE_ERROR = 2  # gltr_platform.cli.BAD_INPUT, without importing it for --help
DEFAULT_CACHE = str(Path(DEFAULT_CACHE_ROOT) / "datasets")  # where training reads them (data.cache_dir)
# synth's options: short names for SyntheticConfig fields; help comes from the fields' descriptions.
_SYNTH_FLAGS = {
    "num_ids": "--ids",
    "num_test_ids": "--test-ids",
    "num_cameras": "--cameras",
    "tracklets_per_id": "--tracklets-per-id",
    "num_distractor_tracklets": "--distractors",
    "num_junk_tracklets": "--junk",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with USAGE_ERROR."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m gltr_platform.data`."""
    parser = _Parser(
        prog="python -m gltr_platform.data",
        description="Pack, sync, generate and inspect video re-ID datasets (MARS, DukeV, iLIDS-VID, PRID-2011, "
        "synthetic).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "pack",
        help="pack a raw dataset into shards + manifest on S3 or in a directory",
        description="Index a raw MARS, DukeMTMC-VideoReID, iLIDS-VID or PRID-2011 directory and write it as a "
        "few large shards plus manifest.json to DEST (iLIDS-VID, PRID-2011: all 10 identity splits). The "
        "manifest is written last.",
    )
    p.add_argument("src", metavar="SRC", help="raw dataset directory (MARS, DukeV, iLIDS-VID or PRID-2011 layout)")
    p.add_argument(
        "dest",
        metavar="DEST",
        help="s3://bucket/prefix (must not hold a dataset yet) or a new local directory",
    )
    p.add_argument(
        "--shard-size",
        default="256MB",
        metavar="SIZE",
        help="target shard size, e.g. 256MB, 1GB or bytes; K/M/G are powers of 1024 (default: %(default)s)",
    )
    _add_progress(p)

    p = commands.add_parser(
        "sync",
        help="download a packed dataset from S3 into the local cache",
        description="Download the packed dataset at URI into CACHE/<version hash>/, resuming and "
        "verifying shards; a complete cache entry is reused without downloading.",
    )
    p.add_argument("uri", metavar="URI", help="s3://bucket/prefix of a packed dataset")
    _add_cache(p)
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-check the sha256 of every cached shard and re-download the bad ones",
    )
    _add_progress(p)

    p = commands.add_parser(
        "synth",
        help="generate a synthetic dataset in MARS's on-disk layout",
        description="Write a deterministic synthetic MARS (bbox_train/, bbox_test/, info/) to DIR.",
    )
    p.add_argument("dir", metavar="DIR", help="new or empty directory to write to")
    _add_synth_options(p)

    p = commands.add_parser(
        "info",
        help="print a dataset's index summary and version",
        description="Open a dataset (s3:// URI, packed directory, raw MARS/DukeV/iLIDS-VID/PRID-2011 directory; "
        "raw and S3 datasets are packed/synced into the cache first) and print its summary and version.",
    )
    p.add_argument("spec", metavar="SPEC", help="s3://bucket/prefix or a local directory")
    _add_cache(p)
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="torchreid",
        help="evaluation protocol of the query/gallery split (default: %(default)s)",
    )
    p.add_argument(
        "--split",
        type=int,
        default=0,
        metavar="K",
        help="identity split of iLIDS-VID or PRID-2011, 0-9 (default: %(default)s)",
    )
    _add_progress(p)
    return parser


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        default=DEFAULT_CACHE,
        metavar="DIR",
        help="node-local cache directory (default: %(default)s)",
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only on a terminal anyway)",
    )


def _add_synth_options(p: argparse.ArgumentParser) -> None:
    """One option per SyntheticConfig field, with the field's default and description."""
    from gltr_platform.data.synthetic import SyntheticConfig

    for name, field in SyntheticConfig.model_fields.items():
        flag = _SYNTH_FLAGS.get(name, "--" + name.replace("_", "-"))
        kind = field.annotation if field.annotation in (int, float) else str
        about = field.description or name.replace("_", " ")
        p.add_argument(
            flag,
            dest=name,
            type=kind,
            default=field.default,
            metavar="N" if kind is int else "X",
            help=f"{about} (default: %(default)s)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not args.debug:  # botocore/s3transfer chatter is not for users
        for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _run(args)
    except Exception as e:
        if args.debug:
            raise
        from gltr_platform.cli import exit_code_for

        code = USAGE_ERROR if isinstance(e, _UsageError) else exit_code_for(e)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


class _UsageError(Exception):
    """A command line that parses but makes no sense (e.g. an invalid synthetic config)."""


def _run(args: argparse.Namespace) -> int:
    """Dispatch to the command."""
    # A command imports its modules (boto3, the readers) only when it runs.
    progress = not getattr(args, "no_progress", False)
    if args.command == "pack":
        from gltr_platform.data.pack import pack, parse_size

        try:
            size = parse_size(args.shard_size)
        except DatasetError as e:
            raise _UsageError(f"--shard-size: {e}") from e
        manifest = pack(args.src, args.dest, shard_size_bytes=size, progress=progress)
        print(
            f"packed {manifest.dataset}: {len(manifest.shards)} shards, "
            f"{manifest.total_bytes / 2**20:.1f} MiB -> {args.dest}\nversion {manifest.version_hash}"
        )
    elif args.command == "sync":
        from gltr_platform.data.shard_cache import sync

        ds = sync(args.uri, _cache(args), verify=args.verify, progress=progress)
        print(f"{ds.root}\nversion {ds.version}")
    elif args.command == "synth":
        from pydantic import ValidationError

        from gltr_platform.data.synthetic import SyntheticConfig, generate_synthetic_mars

        fields = {name: getattr(args, name) for name in SyntheticConfig.model_fields}
        try:
            config = SyntheticConfig(**fields)
        except ValidationError as e:
            first = e.errors()[0]
            flag = _SYNTH_FLAGS.get(str(first["loc"][0]), "") if first["loc"] else ""
            raise _UsageError(f"{flag or 'synthetic config'}: {first['msg']}") from e
        root = generate_synthetic_mars(args.dir, config)
        print(root)
    elif args.command == "info":
        from gltr_platform.data.resolve import open_dataset

        index, _, info = open_dataset(args.spec, _cache(args), args.protocol, split=args.split, progress=progress)
        print(index.summary())
        print(f"version {info['version']}\nfrom {info['uri']} ({info['kind']})")
    return 0


def _cache(args: argparse.Namespace) -> Path:
    return Path(args.cache).expanduser()


def _one_line(e: BaseException) -> str:
    """The message of `e` on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, DatasetError | _UsageError) else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
