"""A user's data files: `.npz` (arrays `x`, `y`), `.csv` (a header row) and IDX (MNIST).

Each reader returns `(x, y)` as float64, `x: (n, features)`, `y: (n,)`, and checks the
table whole: at least 2 rows, at least one feature column, every value a finite number.
Every problem raises `ValueError` naming the file (and the line and column where there is
one); nothing a file holds ends in a traceback.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from jaxbp._files.guard import kind_of, open_regular
from jaxbp._files.idx import is_idx, read_idx
from jaxbp._files.npz import ArchiveError, read_npz

__all__ = ["read_table"]

FORMATS = ".npz (arrays x, y), .csv (a header row) or IDX (MNIST images)"


def read_table(
    path: Path, *, target: str | None, labels: str | Path | None
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """`(x, y, task)` from the data file `path`, its format told by suffix or (IDX) content;
    `task` is "classification" for IDX (labels are classes, however many), else `None`."""
    if not path.exists():
        raise ValueError(f"{path}: no such data file.")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; a data file must be {FORMATS}.")
    if not path.is_file():  # never opened: a FIFO or a device would block or never end
        what = kind_of(path.stat().st_mode)
        raise ValueError(f"{path}: is {what}, not a regular file; a data file must be {FORMATS}.")
    kind = path.suffix.lower() if path.suffix.lower() in (".npz", ".csv") else "idx"
    if kind == "idx" and not is_idx(path):
        raise ValueError(
            f"{path}: data files must be {FORMATS}; this one has neither suffix and does not "
            "start like an IDX file."
        )
    if target is not None and kind != ".csv":
        raise ValueError(
            f"target names the label column of a .csv file; {path} is not one: "
            "drop target (an .npz holds y, an IDX images file has a labels file)."
        )
    if labels is not None and kind != "idx":
        raise ValueError(
            f"labels names the labels file of IDX images; {path} is a {kind} file: drop labels."
        )
    try:
        if kind == ".npz":
            x, y = _read_npz(path)
        elif kind == ".csv":
            x, y = _read_csv(path, target)
        else:
            x, y = _read_idx_pair(path, None if labels is None else Path(labels))
    except OSError as err:
        raise ValueError(f"{path}: cannot read the data file ({err.strerror or err}).") from None
    _check_table(path, x, y)
    return x, y, "classification" if kind == "idx" else None


def _check_table(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path}: x must be (n, features) and y (n,); got x {x.shape} and y {y.shape}."
        )
    if x.shape[0] < 2:
        raise ValueError(
            f"{path}: {x.shape[0]} data rows; a data file needs at least 2 "
            "(to split off a test set)."
        )
    if x.shape[1] == 0:
        raise ValueError(f"{path}: no feature columns (x is {x.shape}); add at least one.")
    for name, arr in (("x", x), ("y", y)):
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            where = ", ".join(map(str, bad[0]))
            raise ValueError(
                f"{path}: {name}[{where}] is {arr[tuple(bad[0])]}, not a finite number."
            )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open_regular(path) as f:
        try:  # a truncated or foreign file, a member that is no array: one ArchiveError
            arrays, files = read_npz(f, names={"x", "y"})
        except ArchiveError as err:
            raise ValueError(f"{path}: not a readable .npz file ({err}).") from None
    if set(arrays) != {"x", "y"}:
        raise ValueError(
            f"{path}: an .npz data file needs arrays 'x' and 'y'; found {sorted(files)}."
        )
    x, y = arrays["x"], arrays["y"]
    for name, arr in (("x", x), ("y", y)):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{path}: {name} must be real numbers; got dtype {arr.dtype}.")
    with np.errstate(over="ignore", invalid="ignore"):  # inf or NaN: refused as not finite
        return x.astype(np.float64), y.astype(np.float64)


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    rows: list[tuple[int, list[str]]] = []  # (line number, cells)
    try:
        with io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)  # utf-8-sig: a byte-order mark is dropped
            for row in reader:
                if row:  # a blank line is no row
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text ({err.reason}, byte {err.object[err.start]:#04x}); "
            "save the .csv as UTF-8 or convert it to .npz."
        ) from None
    except csv.Error as err:  # a NUL byte, a field over csv.field_size_limit(), ...
        raise ValueError(f"{path}: line {reader.line_num}: not readable as CSV ({err}).") from None
    if not rows or not any(cell.strip() for cell in rows[0][1]):
        raise ValueError(f"{path}: empty CSV file; it needs a header row and data rows.")
    header = [cell.strip() for cell in rows[0][1]]
    if target is None:
        raise ValueError(
            f"{path}: name the target column of a CSV file (--target); columns are {header}."
        )
    if target not in header:
        raise ValueError(f"{path}: no target column {target!r}; columns are {header}.")
    where = [j + 1 for j, name in enumerate(header) if name == target]
    if len(where) > 1:
        raise ValueError(
            f"{path}: {len(where)} columns are named {target!r} (columns {where}); "
            "rename all but the target."
        )
    values = np.empty((len(rows) - 1, len(header)))
    for i, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {line} has {len(row)} cells; the header has {len(header)}."
            )
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: line {line}, column {header[j]!r}: {cell!r} is not a number."
                ) from None
            if not math.isfinite(values[i, j]):
                raise ValueError(
                    f"{path}: line {line}, column {header[j]!r}: {cell!r} is not a finite number."
                )
    t = header.index(target)
    return np.delete(values, t, axis=1), values[:, t]


def labels_beside(images: Path) -> list[Path]:
    """Where the labels of an IDX images file usually are (MNIST naming), best first:
    `train-images-idx3-ubyte[.gz]` -> `train-labels-idx1-ubyte[.gz]`."""
    name = re.sub(r"images([-._]idx)\d", r"labels\g<1>1", images.name)
    if name == images.name:
        return []
    plain = name.removesuffix(".gz")
    order = [name, plain + ".gz" if name == plain else plain]
    return [images.with_name(n) for n in order]


def _read_idx_pair(path: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(path)
    if images.ndim < 2:
        raise ValueError(
            f"{path}: holds a {images.ndim}-d IDX array {images.shape}, which looks like a "
            "labels file; pass the images file (its labels are found beside it or named "
            "with labels= / --labels)."
        )
    if images.size == 0:
        raise ValueError(
            f"{path}: its IDX header says {images.shape}: no images, or images of no pixels; "
            "pass a file that holds some."
        )
    if labels is None:
        candidates = labels_beside(path)
        found = [p for p in candidates if p.is_file()]
        if not found:
            looked = f" (looked for {', '.join(p.name for p in candidates)})" if candidates else ""
            raise ValueError(
                f"{path}: no labels file found beside it{looked}; name it with labels= "
                "(--labels FILE)."
            )
        labels = found[0]
    y = read_idx(labels)
    if y.ndim != 1 or y.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels}: the labels must be one value per image, ({images.shape[0]},) for "
            f"{path}; got {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{labels}: labels must be integers; got IDX type {y.dtype}.")
    return images.reshape(images.shape[0], -1).astype(np.float64), y.astype(np.float64)
