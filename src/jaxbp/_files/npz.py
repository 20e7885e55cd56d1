"""`.npz` archives (checkpoint payloads and data files), read member by member.

`np.load` trusts an archive more than a reader of damaged files may: a member without
the `.npy` suffix comes back as raw `bytes` (and the caller's next `.dtype` is an
`AttributeError`), a header that declares a huge shape is allocated before the data is
found missing, a big-endian array comes back big-endian. `read_npz` checks, in one
place, before anything is allocated:

- every member read is a `.npy` file (not a folder, not another kind of file) and
  appears once;
- its header parses, declares a dtype that holds no Python objects (never unpickled)
  and a shape of non-negative sizes, whose bytes are exactly what the member holds (and
  at most `MAX_BYTES`);
- the member's data is intact (the zip CRC is checked by reading it to the end).

Arrays come back in native byte order, writable. Every problem is an `ArchiveError`
(a `ValueError`) saying what is wrong, for the caller to prefix with the file.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Collection
from typing import BinaryIO

import numpy as np

__all__ = ["MAX_BYTES", "ArchiveError", "read_npz"]

MAX_BYTES = 2**34
"""Largest array (16 GiB) a member may declare; a larger one is refused before reading."""

CHUNK = 1 << 24


class ArchiveError(ValueError):
    """An archive, or one of its members, that is not what an `.npz` file holds."""


def read_npz(
    source: BinaryIO, names: Collection[str] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """`(arrays, members)`: the arrays of the `.npz` archive in `source` by name (without
    `.npy`), all of them or those of `names` it holds, and the names of all its members
    (as `np.load(...).files` lists them). A member to be read that is not an `.npy`
    array, or any damage, raises `ArchiveError`."""
    try:
        archive = zipfile.ZipFile(source)
    except Exception as err:  # BadZipFile, EOFError, OSError, ...: any damage
        raise ArchiveError(f"not a zip archive ({type(err).__name__}: {err})") from None
    with archive:
        infos = archive.infolist()
        members = [info.filename.removesuffix(".npy") for info in infos]
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info, stem in zip(infos, members, strict=True):
            if names is not None and stem not in names:
                continue
            if info.is_dir() or not info.filename.endswith(".npy"):
                raise ArchiveError(f"its member {info.filename!r} is not an .npy array")
            if stem in chosen:
                raise ArchiveError(f"it holds two members named {info.filename!r}")
            chosen[stem] = info
        return {stem: _member(archive, info) for stem, info in chosen.items()}, members


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    name = info.filename
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):  # 3.0 differs only in UTF-8 field names
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ArchiveError(f"its member {name!r} is .npy version {version}")
            if dtype.hasobject:
                raise ArchiveError(
                    f"its member {name!r} holds Python objects (dtype {dtype}), which are "
                    "never unpickled"
                )
            if any(size < 0 for size in shape):
                raise ArchiveError(f"its member {name!r} declares the shape {shape}")
            want = math.prod(shape) * dtype.itemsize
            held = info.file_size - f.tell()
            if want != held or want > MAX_BYTES:
                raise ArchiveError(
                    f"its member {name!r} declares {dtype}{list(shape)} ({want:,} bytes) but "
                    f"holds {held:,} bytes"
                    + (f", over the {MAX_BYTES:,}-byte limit" if want > MAX_BYTES else "")
                )
            data = bytearray()
            while len(data) < want and (chunk := f.read(min(CHUNK, want - len(data)))):
                data += chunk
            if len(data) != want or f.read(1):  # reading to the end checks the CRC
                raise ArchiveError(f"its member {name!r} is truncated or has extra bytes")
        if dtype.itemsize == 0:
            array = np.zeros(shape, dtype)
        else:
            array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
        return array if dtype.isnative else array.astype(dtype.newbyteorder("="))
    except ArchiveError:
        raise
    except Exception as err:  # a damaged header, stream or CRC, a shape numpy refuses, ...
        raise ArchiveError(
            f"its member {name!r} is damaged ({type(err).__name__}: {err})"
        ) from None
