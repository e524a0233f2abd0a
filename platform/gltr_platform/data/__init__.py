"""Datasets: readers (MARS, DukeMTMC-VideoReID, iLIDS-VID, PRID-2011), synthetic data, packed shards on S3,
sync, loaders."""

from gltr_platform.data.index import (
    DatasetError,
    DatasetIndex,
    DirectoryFrameSource,
    FrameSource,
    Tracklet,
    carve_validation,
    relabel,
)

__all__ = [
    "DatasetError",
    "DatasetIndex",
    "DirectoryFrameSource",
    "FrameSource",
    "Tracklet",
    "carve_validation",
    "relabel",
]
