"""Append a dated, machine-labelled section to BENCHMARKS.md (every bench script reports through this)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def append_section(title: str, body: str) -> None:
    """Print `body` and append it under a dated heading to BENCHMARKS.md, never touching other sections."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title}\n\n_{stamp}; {machine()}_\n\n{body.strip()}\n"
    print(section)
    if not BENCHMARKS.exists():
        BENCHMARKS.write_text("# Benchmarks\n\nAppended by `make bench`; newest sections last.\n")
    with BENCHMARKS.open("a") as f:
        f.write(section)
