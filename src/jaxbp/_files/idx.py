"""IDX files, the format of MNIST and Fashion-MNIST: one array, gzipped or not.

Layout: two zero bytes, a type byte, the number of dimensions `d`, then `d` big-endian
uint32 sizes, then the values, big-endian, row-major. A gzipped file is recognised by its
content (the gzip magic), not by its name. Every problem raises `ValueError` naming the
file; nothing is read past what the header promises (plus one byte, to detect extra data).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jaxbp._files.guard import open_regular

__all__ = ["MAX_BYTES", "TYPES", "is_idx", "read_idx"]

TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""The IDX type byte and the numpy dtype it stands for."""

MAX_BYTES = 2**34
"""Largest payload (16 GiB) a header may promise; a larger one is refused before reading."""

GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed when it is gzipped (a regular file only)."""
    with open_regular(path) as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if not gzipped:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield f  # type: ignore[misc]


def _header(f: BinaryIO) -> tuple[str, tuple[int, ...]] | None:
    """`(dtype, shape)` from an IDX header, or `None` if the bytes are not one."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in TYPES or head[3] == 0:
        return None
    dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        return None
    return TYPES[head[2]], tuple(int(v) for v in np.frombuffer(dims, ">u4"))


def is_idx(path: str | Path) -> bool:
    """Whether `path` starts like an IDX file (gzipped or not); never raises for content."""
    try:
        with _open(Path(path)) as f:
            return _header(f) is not None
    except (OSError, EOFError, zlib.error):
        return False


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file `path`, shape as its header says, native byte order.

    Raises `ValueError` naming the file if it cannot be read, is not IDX, or holds fewer or
    more values than its header promises.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            header = _header(f)
            if header is None:
                raise ValueError(
                    f"{path}: not an IDX file (it must start with two zero bytes, a type byte "
                    f"among {[hex(t) for t in TYPES]} and the number of dimensions)."
                )
            dtype, shape = header
            itemsize = np.dtype(dtype).itemsize
            want = math.prod(shape) * itemsize
            # What numpy bounds a shape by, a zero dimension or not; `want` if there is none.
            span = math.prod(d for d in shape if d) * itemsize
            if span > MAX_BYTES:
                size = (
                    f"{want:,} bytes"
                    if span == want
                    else f"no values, yet {span:,} bytes over its nonzero dimensions"
                )
                raise ValueError(
                    f"{path}: the IDX header promises {shape} values ({size}), over "
                    f"the {MAX_BYTES:,}-byte limit; the header is damaged."
                )
            data = f.read(want + 1)
    except OSError as err:  # also gzip.BadGzipFile
        raise ValueError(f"{path}: cannot read the IDX file ({err.strerror or err}).") from None
    except (EOFError, zlib.error) as err:
        raise ValueError(f"{path}: the gzip stream is truncated or damaged ({err}).") from None
    if len(data) < want:
        raise ValueError(
            f"{path}: is truncated: its header promises {shape} values of "
            f"{np.dtype(dtype).name} ({want:,} bytes), the file holds {len(data):,}."
        )
    if len(data) > want:
        raise ValueError(
            f"{path}: has bytes after the {shape} values its header promises; "
            "the file is damaged or not IDX."
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))
