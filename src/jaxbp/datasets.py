"""Datasets that ship with the install or are generated: nothing is downloaded.

`load(name)` returns a `Dataset` `(x_train, y_train, x_test, y_test)`, features
standardised with the training split's statistics only (regression targets too). Each
dataset knows its task and loss (`INFO[name]`), so `jaxbp train` picks them.

- "digits": 1797 8x8 images of digits, 10 classes (scikit-learn's bundled copy).
- "breast_cancer": 569 tumours, 30 features, 2 classes (scikit-learn).
- "diabetes": 442 patients, 10 features, disease progression (regression; scikit-learn).
- "xor", "moons", "spirals": 2-d, 2 classes, generated with `jax.random` in float32,
  so that a seed gives the same data with and without `jax_enable_x64`.

`load_file(path, target=...)` reads a user's own `.npz` (arrays `x` and `y`), `.csv`
(a header row; `target` names the label column) or IDX images (MNIST's format, gzipped or
not, with the labels file beside them or named by `labels`), with every problem reported
by file, line and column. `for_loss(data, info, loss)` turns class labels into the targets
a loss takes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.losses import LOSSES
from jaxbp._core.tasks import CLASSIFICATION
from jaxbp._files.data_files import read_table

__all__ = ["INFO", "Dataset", "DatasetInfo", "for_loss", "load", "load_file"]

MAX_CLASSES = 20
"""A user's target with integer values and at most this many distinct ones is a class label
(IDX labels are classes however many there are)."""

MAX_SEED = 2**32 - 1
"""Seeds are integers from 0 to this; `jax.random.key` folds larger ones together."""


class Dataset(NamedTuple):
    """Train and test splits: `x_*` is `(n, n_0)` float32; `y_*` is `(n,)`: int32 class
    labels for cross_entropy, float32 0/1 for binary_cross_entropy, float32 values for
    regression (after `for_loss`, whatever the loss takes)."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class DatasetInfo(NamedTuple):
    """What a dataset asks of the network: its task, loss and number of output units."""

    task: str
    loss: str
    n_outputs: int

    @property
    def n_classes(self) -> int:
        """Classes of a classification target (two for one sigmoid unit); 0 for regression."""
        return 0 if self.task == "regression" else max(2, self.n_outputs)


INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("classification", "cross_entropy", 10),
    "breast_cancer": DatasetInfo("classification", "binary_cross_entropy", 1),
    "diabetes": DatasetInfo("regression", "mse", 1),
    "xor": DatasetInfo("classification", "binary_cross_entropy", 1),
    "moons": DatasetInfo("classification", "binary_cross_entropy", 1),
    "spirals": DatasetInfo("classification", "binary_cross_entropy", 1),
}


def check_seed(seed: object, name: str = "seed") -> int:
    """`seed` as an int, or a `TypeError`/`ValueError` naming `name` and the range."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an integer from 0 to {MAX_SEED}; got {seed!r}.")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_SEED}; got {seed}.")
    return int(seed)


def _check_fraction(test_fraction: object) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction!r}.")
    return float(test_fraction)


def load(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    n_samples: int = 1000,
    standardise: bool = True,
) -> Dataset:
    """Load a built-in dataset, split at random (`seed`) and standardised.

    `n_samples` sizes the generated ones ("xor", "moons", "spirals") only.
    `standardise=False` keeps the features (and a regression target) as they are, in
    float32, on the same split: the raw inputs section 1.1.3's preprocessing starts from.
    """
    if name not in INFO:
        raise ValueError(f"dataset must be one of {sorted(INFO)}; got {name!r}.")
    seed, test_fraction = check_seed(seed), _check_fraction(test_fraction)
    if name in _GENERATORS:
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise TypeError(f"n_samples must be an integer of at least 2; got {n_samples!r}.")
        if n_samples < 2:
            raise ValueError(
                f"n_samples must be at least 2 (one train, one test); got {n_samples}."
            )
        x, y = _GENERATORS[name](jax.random.key(seed), int(n_samples))
        x, y = np.asarray(x), np.asarray(y)
    else:
        x, y = _sklearn(name)
    return _split(
        x,
        y,
        INFO[name],
        seed=seed,
        test_fraction=test_fraction,
        source=name,
        standardise=standardise,
    )


def load_file(
    path: str | Path,
    *,
    target: str | None = None,
    labels: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    task: str | None = None,
    standardise: bool = True,
) -> tuple[Dataset, DatasetInfo]:
    """Load a user's `.npz` (arrays `x` and `y`), `.csv` (header row, `target` column) or
    IDX images file (`labels`: its labels file, by default the one beside it by MNIST's
    naming, `train-images-idx3-ubyte[.gz]` -> `train-labels-idx1-ubyte[.gz]`).

    The task is classification when every target is an integer and there are at most
    `MAX_CLASSES` distinct values (two classes: binary cross-entropy, one output; more:
    cross-entropy on labels remapped to 0..K-1), else regression; IDX labels are always
    classes; `task` overrides. Images are flattened to `(n, rows * cols)`. The split is
    standardised as `load`'s (`standardise=False` keeps the values as they are).
    """
    seed, test_fraction = check_seed(seed), _check_fraction(test_fraction)
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}.")
    path = Path(path)
    x, y, hint = read_table(path, target=target, labels=labels)
    y, info = _infer_task(path, y, task or hint)
    split = _split(
        x,
        y,
        info,
        seed=seed,
        test_fraction=test_fraction,
        source=str(path),
        standardise=standardise,
    )
    return split, info


def for_loss(data: Dataset, info: DatasetInfo, loss: str) -> tuple[Dataset, int]:
    """`data` with its targets recast for `loss`, and the number of output units.

    Class labels become what the loss's task takes (`LOSSES[loss].task.encode`): one-hot
    rows for a regression loss, int32 labels for cross-entropy, float32 0/1 for binary
    cross-entropy. A regression target needs a regression loss.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}; got {loss!r}.")
    kind = LOSSES[loss].task
    if info.task == "regression":
        if kind.name != "regression":
            fits = [name for name, l in LOSSES.items() if l.task.name == "regression"]
            raise ValueError(
                f"a {kind.name} loss ({loss!r}) does not fit a regression target; "
                f"use one of {fits}."
            )
        return data, 1
    encoded = [kind.encode(np.asarray(y).astype(np.int32), info.n_classes) for y in data[1::2]]
    (y_train, n_out), (y_test, _) = encoded
    return data._replace(y_train=jnp.asarray(y_train), y_test=jnp.asarray(y_test)), n_out


def _standardise(v: np.ndarray, train: np.ndarray) -> np.ndarray:
    """`(v - mean) / std` per column with the training rows' statistics (std 0 -> 1).

    A column whose magnitude is past 2^500 is first divided by a power of two (exactly),
    so values near 1e308 do not overflow to inf and NaN; other columns are untouched.
    """
    peak = np.max(np.abs(v[train]), axis=0).astype(np.float64)
    if np.any(peak > 2.0**500):
        v = v / np.where(peak > 2.0**500, np.exp2(np.floor(np.log2(np.maximum(peak, 1.0)))), 1.0)
    mean, std = v[train].mean(axis=0), v[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant features (digits' corner pixels) stay 0
    with np.errstate(over="ignore"):  # a nearly constant column: inf, refused by `_split`
        return (v - mean) / std


def _split(
    x: np.ndarray,
    y: np.ndarray,
    info: DatasetInfo,
    *,
    seed: int,
    test_fraction: float,
    source: str,
    standardise: bool,
) -> Dataset:
    if not isinstance(standardise, bool):
        raise TypeError(f"standardise must be True or False; got {standardise!r}.")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{source}: a dataset needs at least 2 samples to split; got {n}.")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    train, test = order[n_test:], order[:n_test]
    x = _standardise(x, train) if standardise else x
    if info.task == "regression":
        y = _standardise(y, train) if standardise else y
        y_dtype = np.float32
    else:
        y_dtype = np.int32 if LOSSES[info.loss].task is CLASSIFICATION else np.float32
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = np.argwhere(~np.isfinite(x32))
    if bad.size:
        row, col = bad[0]
        where = f"{source}: feature column {col} of sample {row} (0-based)"
        raise ValueError(
            f"{where} lies {x[row, col]:.3g} training standard deviations from the training "
            "mean, beyond float32; rescale or drop that column."
            if standardise
            else f"{where} is {x[row, col]:.3g}, beyond float32; rescale it or standardise."
        )
    with np.errstate(over="ignore"):
        y32 = y.astype(y_dtype)
    if info.task == "regression" and not np.all(np.isfinite(y32)):
        row = int(np.argmin(np.isfinite(y32)))
        raise ValueError(
            f"{source}: the target of sample {row} (0-based) lies {y[row]:.3g} training "
            "standard deviations from the training mean, beyond float32; rescale the target "
            "or drop that sample."
            if standardise
            else f"{source}: the target of sample {row} (0-based) is {y[row]:.3g}, beyond "
            "float32; rescale it or standardise."
        )
    as_y = lambda v: jnp.asarray(v, y_dtype)  # noqa: E731
    return Dataset(
        jnp.asarray(x32[train]), as_y(y32[train]), jnp.asarray(x32[test]), as_y(y32[test])
    )


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """`(x, y)` of scikit-learn's bundled copy of `name`, x in float64. The digits are
    read straight from the file scikit-learn ships (`_digits`): importing
    `sklearn.datasets` takes about 3 s, longer than `jaxbp train` then trains."""
    if name == "digits" and (found := _digits()) is not None:
        return found
    try:
        from sklearn import datasets as sk
    except ImportError:
        raise ImportError(_NO_SKLEARN.format(name=name)) from None
    loader = {
        "digits": sk.load_digits,
        "breast_cancer": sk.load_breast_cancer,
        "diabetes": sk.load_diabetes,
    }
    x, y = loader[name](return_X_y=True)
    return x.astype(np.float64), y


_NO_SKLEARN = (
    "the {name!r} dataset is scikit-learn's bundled copy, and scikit-learn is not "
    "installed: pip install 'jaxbp[data]'."
)


def _digits() -> tuple[np.ndarray, np.ndarray] | None:
    """`sklearn.datasets.load_digits(return_X_y=True)` without importing scikit-learn:
    its `datasets/data/digits.csv.gz` (64 pixel columns, then the label), parsed as it
    parses it. `None` where the file is not found (then scikit-learn itself is asked)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package, runs none of it
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as text:
                data = np.loadtxt(text, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int)
    return None


F32 = jnp.float32
HALF = np.float32(0.5)
"""The generators draw in float32 whatever `jax_enable_x64` says (the default float dtype
would change every draw, and `bernoulli` draws in its `p`'s dtype): a seed gives one
dataset, the one it has always given without x64."""


def _xor(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Uniform on [-1, 1]^2; the label is 1 where x_1 x_2 > 0 (XOR of the two signs)."""
    x = jax.random.uniform(key, (n, 2), F32, minval=-1.0, maxval=1.0)
    return x, (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)


def _moons(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Two interleaving half circles with Gaussian noise (std 0.1)."""
    k_t, k_y, k_noise = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), F32, maxval=math.pi)
    y = jax.random.bernoulli(k_y, HALF, (n,)).astype(jnp.int32)
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    lower = jnp.stack([1 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=1)
    x = jnp.where(y[:, None] == 1, lower, upper)
    return x + 0.1 * jax.random.normal(k_noise, (n, 2), F32), y


def _spirals(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Two interleaved spirals of 1.5 turns, radius growing with the angle, noise std 0.05."""
    k_t, k_y, k_noise = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), F32, minval=0.1, maxval=1.0)
    y = jax.random.bernoulli(k_y, HALF, (n,)).astype(jnp.int32)
    angle = 3 * math.pi * t + math.pi * y.astype(F32)  # int32 * float would be float64 in x64
    x = t[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return x + 0.05 * jax.random.normal(k_noise, (n, 2), F32), y


_GENERATORS = {"xor": _xor, "moons": _moons, "spirals": _spirals}


def _infer_task(path: Path, y: np.ndarray, task: str | None) -> tuple[np.ndarray, DatasetInfo]:
    classes = np.unique(y)
    if task is None:
        integral = np.all(y == np.round(y))
        task = "classification" if integral and classes.size <= MAX_CLASSES else "regression"
    if task == "regression":
        if classes.size < 2:
            raise ValueError(
                f"{path}: the target is constant ({classes[0]:g}); regression needs at "
                "least two values (a constant has no variance to explain: R^2 is undefined)."
            )
        return y, DatasetInfo("regression", "mse", 1)
    if classes.size < 2:
        raise ValueError(
            f"{path}: the target has one class ({classes[0]:g}) only; "
            "classification needs two or more."
        )
    labels = np.searchsorted(classes, y)  # 0..K-1 in the order of the sorted class values
    if classes.size == 2:
        return labels, DatasetInfo("classification", "binary_cross_entropy", 1)
    return labels, DatasetInfo("classification", "cross_entropy", int(classes.size))
