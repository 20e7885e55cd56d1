"""The two guards every reader of a file goes through.

- `open_regular`: a file is read only if it is a regular file (never a FIFO, a device or
  a folder, which would block or never end), and, where asked, without following a
  symbolic link.
- `load_json`: JSON text, refused (a `ValueError` saying why, for the caller to prefix
  with the file) when it is not UTF-8, not JSON, or nested deeper than `MAX_DEPTH`
  levels (which would otherwise exhaust Python's stack: `RecursionError`, here or in
  whatever walks the value next).

Checkpoints, metrics logs, summaries, set-aside records and data files all read through
these, so each rule holds for every file at once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["MAX_DEPTH", "NotRegularFile", "kind_of", "load_json", "open_regular"]

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON record may have (jaxbp writes 3)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class NotRegularFile(OSError):
    """A path that is a symbolic link (not followed), a folder, a FIFO, a device, ..."""


def kind_of(mode: int) -> str:
    """What a file of `os.stat` mode `mode` is, in words ("a symbolic link", ...)."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def open_regular(path: str | Path, *, follow: bool = True) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file; else
    `NotRegularFile` (an `OSError` whose `strerror` says what it is). With
    `follow=False` a symbolic link is not followed but refused. Opening never blocks (a
    FIFO is refused, not waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if not follow and err.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"is {kind_of(mode)}, not a regular file", str(path))
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON `text` (strings skipped)."""
    bare = _STRING.sub('""', text).encode("utf-8", "surrogatepass")
    chars = np.frombuffer(bare, np.uint8)
    steps = np.isin(chars, _OPEN).astype(np.int64) - np.isin(chars, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def load_json(blob: bytes | str) -> Any:
    """The JSON value of `blob` (UTF-8 bytes or text); `ValueError` saying what is wrong
    (not UTF-8, not JSON, nested deeper than `MAX_DEPTH`), for the caller to name the
    file. NaN and Infinity are read as Python writes them (a record's schema says
    where they are allowed)."""
    try:
        text = blob.decode() if isinstance(blob, bytes) else blob
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    deepest = depth(text)
    if deepest > MAX_DEPTH:
        raise ValueError(f"nested {deepest} levels deep, more than the {MAX_DEPTH} allowed")
    try:
        return json.loads(text)
    except ValueError as err:  # also int strings past Python's digit limit
        raise ValueError(str(err)) from None
