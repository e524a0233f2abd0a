"""The node-local cache every entry point shares: one root, datasets in its datasets/ folder.

A light module (no boto3, no torch): the CLIs read their defaults from it before importing anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_ROOT = "~/.cache/gltr-platform"


def datasets_cache(root: str | Path = DEFAULT_CACHE_ROOT) -> Path:
    """Where synced and packed datasets live under a cache root (~ expanded)."""
    return Path(os.path.expanduser(str(root))) / "datasets"
