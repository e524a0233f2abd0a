"""Integer matrices from MATLAB .mat files, the form the MARS and iLIDS-VID metadata ship in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from gltr_platform.data.index import DatasetError


def load_int_matrix(mat_file: Path, key: str, where_from: str) -> np.ndarray:
    """Integer array `key` of `mat_file` as int64; `where_from` says, when the file is missing, where it ships."""
    if not mat_file.is_file():
        raise DatasetError(f"{mat_file} is missing ({where_from})")
    try:
        data = scipy.io.loadmat(mat_file)
    # scipy signals a corrupt or unsupported file with many exception types; all mean the same here.
    except Exception as e:
        raise DatasetError(f"{mat_file} is not a readable MATLAB .mat file ({e}); re-download it") from e
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{mat_file} has no variable {key!r} (found {found})")
    value = np.asarray(data[key])
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise DatasetError(f"{mat_file}: {key} holds {value.dtype} values, expected integers")
    with np.errstate(invalid="ignore"):  # NaN or inf: caught by the comparison below
        as_int = value.astype(np.int64)
    if not np.array_equal(as_int, value):
        raise DatasetError(f"{mat_file}: {key} holds non-integer values, expected integer indices")
    return as_int
