"""Datasets that ship with the install or are generated: nothing is downloaded.

`load(name)` returns a `Dataset` `(x_train, y_train, x_test, y_test)`, features
standardised with the training split's statistics only (regression targets too). Each
dataset knows its task and loss (`INFO[name]`), so `jaxbp train` picks them.

- "digits": 1797 8x8 images of digits, 10 classes (scikit-learn's bundled copy).
- "breast_cancer": 569 tumours, 30 features, 2 classes (scikit-learn).
- "diabetes": 442 patients, 10 features, disease progression (regression; scikit-learn).
- "xor", "moons", "spirals": 2-d, 2 classes, generated with `jax.random`.

`load_file(path, target=...)` reads a user's own `.npz` (arrays `x` and `y`) or `.csv`
(a header row; `target` names the label column), with every problem reported by file,
line and column.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["INFO", "Dataset", "DatasetInfo", "load", "load_file"]

MAX_CLASSES = 20
"""A user's target with integer values and at most this many distinct ones is a class label."""


class Dataset(NamedTuple):
    """Train and test splits: `x_*` is `(n, n_0)` float32; `y_*` is `(n,)`: int32 class
    labels for cross_entropy, float32 0/1 for binary_cross_entropy, float32 values for
    regression."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class DatasetInfo(NamedTuple):
    """What a dataset asks of the network: its task, loss and number of output units."""

    task: str
    loss: str
    n_outputs: int


INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", "cross_entropy", 10),
    "breast_cancer": DatasetInfo("classification", "binary_cross_entropy", 1),
    "diabetes": DatasetInfo("regression", "mse", 1),
    "xor": DatasetInfo("classification", "binary_cross_entropy", 1),
    "moons": DatasetInfo("classification", "binary_cross_entropy", 1),
    "spirals": DatasetInfo("classification", "binary_cross_entropy", 1),
}


def load(name: str, *, seed: int = 0, test_fraction: float = 0.2, n_samples: int = 1000) -> Dataset:
    """Load a built-in dataset, split at random (`seed`) and standardised.

    `n_samples` sizes the generated ones ("xor", "moons", "spirals") only.
    """
    if name not in INFO:
        raise ValueError(f"dataset must be one of {sorted(INFO)}; got {name!r}.")
    if name in _GENERATORS:
        x, y = _GENERATORS[name](jax.random.key(seed), n_samples)
        x, y = np.asarray(x), np.asarray(y)
    else:
        x, y = _sklearn(name)
    return _split(x, y, INFO[name], seed=seed, test_fraction=test_fraction)


def load_file(
    path: str | Path,
    *,
    target: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    task: str | None = None,
) -> tuple[Dataset, DatasetInfo]:
    """Load a user's `.npz` (arrays `x` and `y`) or `.csv` (header row, `target` column).

    The task is classification when every target is an integer and there are at most
    `MAX_CLASSES` distinct values (two classes: binary cross-entropy, one output; more:
    cross-entropy on labels remapped to 0..K-1), else regression; `task` overrides.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such data file.")
    if path.suffix == ".npz":
        x, y = _read_npz(path)
    elif path.suffix == ".csv":
        x, y = _read_csv(path, target)
    else:
        raise ValueError(
            f"{path}: data files must be .npz (arrays x, y) or .csv; got {path.suffix!r}."
        )
    y, info = _infer_task(path, y, task)
    return _split(x, y, info, seed=seed, test_fraction=test_fraction), info


def _split(
    x: np.ndarray, y: np.ndarray, info: DatasetInfo, *, seed: int, test_fraction: float
) -> Dataset:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction!r}.")
    n = x.shape[0]
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    if n < 2:
        raise ValueError(f"a dataset needs at least 2 samples to split; got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[n_test:], order[:n_test]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant features (digits' corner pixels) stay 0
    x = (x - mean) / std
    if info.task == "regression":
        y = (y - y[train].mean()) / (y[train].std() or 1.0)
        y_dtype = np.float32
    else:
        y_dtype = np.int32 if info.loss == "cross_entropy" else np.float32
    as_x, as_y = (lambda v: jnp.asarray(v, jnp.float32)), (lambda v: jnp.asarray(v, y_dtype))
    return Dataset(as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test]))


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn import datasets as sk
    except ImportError:
        raise ImportError(
            f"the {name!r} dataset is scikit-learn's bundled copy, and scikit-learn is not "
            "installed: pip install 'jaxbp[data]'."
        ) from None
    loader = {
        "digits": sk.load_digits,
        "breast_cancer": sk.load_breast_cancer,
        "diabetes": sk.load_diabetes,
    }
    x, y = loader[name](return_X_y=True)
    return x.astype(np.float64), y


def _xor(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Uniform on [-1, 1]^2; the label is 1 where x_1 x_2 > 0 (XOR of the two signs)."""
    x = jax.random.uniform(key, (n, 2), minval=-1.0, maxval=1.0)
    return x, (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)


def _moons(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Two interleaving half circles with Gaussian noise (std 0.1)."""
    k_t, k_y, k_noise = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), maxval=math.pi)
    y = jax.random.bernoulli(k_y, 0.5, (n,)).astype(jnp.int32)
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    lower = jnp.stack([1 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=1)
    x = jnp.where(y[:, None] == 1, lower, upper)
    return x + 0.1 * jax.random.normal(k_noise, (n, 2)), y


def _spirals(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Two interleaved spirals of 1.5 turns, radius growing with the angle, noise std 0.05."""
    k_t, k_y, k_noise = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), minval=0.1, maxval=1.0)
    y = jax.random.bernoulli(k_y, 0.5, (n,)).astype(jnp.int32)
    angle = 3 * math.pi * t + math.pi * y
    x = t[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return x + 0.05 * jax.random.normal(k_noise, (n, 2)), y


_GENERATORS = {"xor": _xor, "moons": _moons, "spirals": _spirals}


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:  # a truncated or foreign file fails in many ways (BadZipFile, EOFError, ValueError)
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            files = sorted(data.files)
            x, y = (data["x"], data["y"]) if {"x", "y"} <= set(files) else (None, None)
    except Exception as err:
        raise ValueError(
            f"{path}: not a readable .npz file ({type(err).__name__}: {err})."
        ) from None
    if x is None:
        raise ValueError(f"{path}: an .npz data file needs arrays 'x' and 'y'; found {files}.")
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path}: x must be (n, features) and y (n,); got x {x.shape} and y {y.shape}."
        )
    for name, arr in (("x", x), ("y", y)):
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{path}: {name} must be real numbers; got dtype {arr.dtype}.")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            where = ", ".join(map(str, bad[0]))
            raise ValueError(
                f"{path}: {name}[{where}] is {arr[tuple(bad[0])]}, not a finite number."
            )
    return x.astype(np.float64), y.astype(np.float64)


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ValueError(f"{path}: empty CSV file; it needs a header row and data rows.")
    header = [cell.strip() for cell in rows[0]]
    if target is None:
        raise ValueError(
            f"{path}: name the target column of a CSV file (--target); columns are {header}."
        )
    if target not in header:
        raise ValueError(f"{path}: no target column {target!r}; columns are {header}.")
    values = np.empty((len(rows) - 1, len(header)))
    for i, row in enumerate(rows[1:]):
        line = i + 2  # the header is line 1
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


def _infer_task(path: Path, y: np.ndarray, task: str | None) -> tuple[np.ndarray, DatasetInfo]:
    classes = np.unique(y)
    if task is None:
        integral = np.all(y == np.round(y))
        task = "classification" if integral and classes.size <= MAX_CLASSES else "regression"
    if task == "regression":
        return y, DatasetInfo("regression", "mse", 1)
    if task != "classification":
        raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}.")
    if classes.size < 2:
        raise ValueError(
            f"{path}: the target has one class ({classes[0]:g}) only; "
            "classification needs two or more."
        )
    labels = np.searchsorted(classes, y)  # 0..K-1 in the order of the sorted class values
    if classes.size == 2:
        return labels, DatasetInfo("classification", "binary_cross_entropy", 1)
    return labels, DatasetInfo("classification", "cross_entropy", int(classes.size))
