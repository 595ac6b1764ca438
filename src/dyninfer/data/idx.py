"""Reader for the IDX format of (Fashion-)MNIST, with the checks a corrupt file fails."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, *, expect_ndim: int, expect_count: int | None = None,
             expect_shape: tuple[int, ...] | None = None, hint: str = "") -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array.

    Args:
        path: the ``.gz`` or raw IDX file.
        expect_ndim: 3 for images, 1 for labels; the magic number must say the same.
        expect_count: number of items the file must hold, if known.
        expect_shape: per-item shape the file must hold, if known.
        hint: what to do if the file is missing or corrupt, appended to the error.

    Raises:
        DataError: naming the file, if it is missing, truncated or has a wrong magic/shape.
    """
    if not path.exists():
        raise DataError(f"missing data file {path}. {hint}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}); the file is corrupt. {hint}") from e
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes). {hint}")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code not in _DTYPES or ndim != expect_ndim:
        raise DataError(
            f"{path} has a bad IDX magic number {data[:4].hex()} (expected 0000 08 {expect_ndim:02x}). {hint}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header. {hint}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[dtype_code])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != need:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its header {dims} needs {need}; "
            f"the file is truncated or corrupt. {hint}"
        )
    if expect_count is not None and dims[0] != expect_count:
        raise DataError(f"{path} holds {dims[0]} items, expected {expect_count}. {hint}")
    if expect_shape is not None and tuple(dims[1:]) != tuple(expect_shape):
        raise DataError(f"{path} holds items of shape {dims[1:]}, expected {expect_shape}. {hint}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip IDX file (used by tests and for exporting subsets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
