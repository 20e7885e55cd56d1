"""Tasks: what a loss's targets are, how they are checked and prepared, and how a
prediction is scored.

A loss of eq. 1.2 assumes a distribution of `y` given `x`; the task is that assumption
seen from the data side:

    task            targets y                                 score (jaxbp.evaluate)
    regression      real values, (batch, n_L) or (batch,)     r2 over all outputs
    binary          each unit a probability in [0, 1]          accuracy, each unit at 1/2
    classification  integer labels (batch,) or probability    accuracy of the argmax
                    rows (batch, K), K >= 2                    (one unit: at 1/2)

`prepare(y, batch, n_out, dtype, owner)` checks `y` against the output layer and returns
it as a float `(batch, n_L)` array of `dtype` (labels one-hot encoded); target values are
checked only when they are concrete, i.e. outside a trace. Inside a trace (`jax.jit`, a
training step) a bad target cannot raise: the row of an out-of-range label, of a binary
target outside [0, 1] or of a probability row that is no distribution becomes NaN, so
the loss and the gradient are NaN, never a silently wrong finite number.
`score(y_hat, y)` returns the metric of outputs on raw targets. `encode(labels,
n_classes)` turns integer class labels into the targets this task's losses take,
`(y, n_outputs)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.records import Record
from jaxbp._core.validate import as_array

Array = jax.Array

__all__ = ["TASKS", "Task"]


@dataclasses.dataclass(frozen=True, repr=False)
class Task(Record):
    """What targets mean for a loss: their check and preparation, the score, the encoding.

    - `name`: "regression", "binary", "classification", or a user's own.
    - `metric`: the name of the score `jaxbp.evaluate` reports ("r2", "accuracy").
    - `prepare(y, batch, n_out, dtype, owner) -> (batch, n_out)`: checked float targets;
      `owner` (e.g. "loss='mse'") names the caller in error messages.
    - `score(y_hat, y) -> ()`: the metric of outputs `y_hat: (batch, n_L)` on raw targets
      (those `prepare` accepts).
    - `encode(labels, n_classes) -> (y, n_outputs)`: integer class labels as this task's
      targets (for `jaxbp train` on a classification dataset).
    """

    name: str
    metric: str
    prepare: Callable[[Any, int, int, Any, str], Array]
    score: Callable[[Array, Array], Array]
    encode: Callable[[Any, int], tuple[Array, int]]

    @property
    def _builtin(self) -> bool:
        return TASKS.get(self.name) == self


def _is_concrete(y: Array) -> bool:
    return not isinstance(y, jax.core.Tracer)


def _check_batch(y: Array, batch: int) -> None:
    if y.ndim == 0 or y.shape[0] != batch:
        raise ValueError(
            f"y must have the same batch size as x ({batch}) on its first axis; "
            f"got shape {y.shape}."
        )


def _check_real(y: Array, owner: str) -> None:
    if not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)):
        raise TypeError(f"y for {owner} must hold real numbers; got dtype {y.dtype}.")
    if _is_concrete(y) and not np.all(np.isfinite(np.asarray(y))):
        row = int(np.argwhere(~np.isfinite(np.asarray(y)))[0][0])
        raise ValueError(f"y for {owner} must be finite; row {row} is {np.asarray(y)[row]}.")


def _real_targets(y: Any, batch: int, n_out: int, dtype: Any, owner: str) -> Array:
    """Real targets `(batch, n_out)`, or `(batch,)` for one output unit."""
    y = as_array(y, "y", "an array of targets, one row per sample")
    _check_batch(y, batch)
    if y.ndim == 1 and n_out == 1:
        y = y[:, None]
    if y.shape != (batch, n_out):
        raise ValueError(
            f"y for {owner} must have shape ({batch}, {n_out}) to match the output "
            f"layer ({n_out} units){' or (batch,)' if n_out == 1 else ''}; got shape {y.shape}."
        )
    _check_real(y, owner)
    return y.astype(dtype)


def _unit_interval_targets(y: Any, batch: int, n_out: int, dtype: Any, owner: str) -> Array:
    y = _real_targets(y, batch, n_out, dtype, owner)
    if not _is_concrete(y):  # as a traced label: a target outside [0, 1] makes its row NaN
        bad = jnp.any((y < 0) | (y > 1), axis=1, keepdims=True)
        return jnp.where(bad, jnp.nan, y)
    values = np.asarray(y)  # numpy: jnp ops on a closed-over constant would be traced
    bad = (values < 0) | (values > 1)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"y for {owner} must lie in [0, 1]; row {row} is {values[row].tolist()}.")
    return y


def _class_targets(y: Any, batch: int, n_out: int, dtype: Any, owner: str) -> Array:
    y = as_array(y, "y", "an array of targets, one row per sample")
    _check_batch(y, batch)
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise ValueError(
                f"integer y for {owner} must be labels of shape ({batch},); got "
                f"shape {y.shape}. Probability rows must be floating, shape ({batch}, {n_out})."
            )
        if _is_concrete(y):
            bad = np.flatnonzero((np.asarray(y) < 0) | (np.asarray(y) >= n_out))
            if bad.size:
                raise ValueError(
                    f"labels in y must lie in [0, {n_out}) for an output layer of {n_out} units; "
                    f"y[{bad[0]}] = {int(np.asarray(y)[bad[0]])}."
                )
            return jax.nn.one_hot(y, n_out, dtype=dtype)
        # Traced labels cannot be checked here. one_hot would make an out-of-range label a
        # row of zeros: loss 0 and gradient 0, a silent no-op. A NaN row instead makes the
        # loss and every gradient NaN, which a training loop sees (jaxbp train stops).
        out_of_range = (y < 0) | (y >= n_out)
        return jnp.where(out_of_range[:, None], jnp.nan, jax.nn.one_hot(y, n_out, dtype=dtype))
    if y.shape != (batch, n_out):
        fix = " Labels must have an integer dtype: y.astype(int)." if y.ndim == 1 else ""
        raise ValueError(
            f"y for {owner} must be integer labels ({batch},) or probability rows "
            f"({batch}, {n_out}); got {y.dtype} of shape {y.shape}.{fix}"
        )
    _check_real(y, owner)
    tol = min(1e-2, 1000 * float(jnp.finfo(y.dtype).eps))  # in y's own dtype, as below
    if not _is_concrete(y):  # as a traced label: a row that is no distribution becomes NaN
        bad = jnp.any(y < 0, axis=1) | (jnp.abs(jnp.sum(y, axis=1) - 1) > tol)
        return jnp.where(bad[:, None], jnp.nan, y).astype(dtype)
    rows = np.asarray(y, np.float64)
    if np.any(rows < 0):
        raise ValueError(f"probability rows in y for {owner} must be non-negative.")
    mass = rows.sum(axis=1)
    off = np.flatnonzero(np.abs(mass - 1) > tol)
    if off.size:
        raise ValueError(
            f"probability rows in y for {owner} must each sum to 1 (within {tol:.0e}); "
            f"row {off[0]} sums to {mass[off[0]]:.6g}. Normalise them: y / y.sum(1, "
            "keepdims=True)."
        )
    return y.astype(dtype)


def _r2(y_hat: Array, y: Array) -> Array:
    """`1 - sum (y - y_hat)^2 / sum (y - mean y)^2` over all outputs. A constant target
    (one sample, say) leaves it undefined; as scikit-learn's `r2_score` does, it is then
    1 for a perfect prediction and 0 otherwise, never -inf or NaN."""
    y = jnp.reshape(y, y_hat.shape).astype(y_hat.dtype)
    ss_res = jnp.sum((y - y_hat) ** 2)
    ss_tot = jnp.sum((y - jnp.mean(y, axis=0, keepdims=True)) ** 2)
    constant = ss_tot == 0
    r2 = 1 - ss_res / jnp.where(constant, 1, ss_tot)
    return jnp.where(constant, jnp.where(ss_res == 0, 1.0, 0.0).astype(r2.dtype), r2)


def _unit_accuracy(y_hat: Array, y: Array) -> Array:
    """Each unit a yes/no at 1/2."""
    return jnp.mean((y_hat > 0.5) == (jnp.reshape(y, y_hat.shape) > 0.5))


def _argmax_accuracy(y_hat: Array, y: Array) -> Array:
    """The argmax against labels (or the argmax of probability rows); one unit at 1/2."""
    if y_hat.shape[1] == 1:
        return _unit_accuracy(y_hat, y)
    labels = y if y.ndim == 1 else jnp.argmax(y, axis=1)
    return jnp.mean(jnp.argmax(y_hat, axis=1) == labels)


def _as_labels(labels: Any) -> Array:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) and not jnp.issubdtype(labels.dtype, bool):
        raise TypeError(f"labels must be integer class labels; got dtype {labels.dtype}.")
    return labels.astype(jnp.int32)


def _encode_one_hot(labels: Any, n_classes: int) -> tuple[Array, int]:
    return jax.nn.one_hot(_as_labels(labels), n_classes, dtype=jnp.float32), n_classes


def _encode_labels(labels: Any, n_classes: int) -> tuple[Array, int]:
    return _as_labels(labels), n_classes


def _encode_binary(labels: Any, n_classes: int) -> tuple[Array, int]:
    if n_classes != 2:
        raise ValueError(
            f"a binary loss needs two classes; this data has {n_classes}: use a "
            "classification loss such as cross_entropy."
        )
    return _as_labels(labels).astype(jnp.float32), 1


REGRESSION = Task("regression", "r2", _real_targets, _r2, _encode_one_hot)
BINARY = Task("binary", "accuracy", _unit_interval_targets, _unit_accuracy, _encode_binary)
CLASSIFICATION = Task(
    "classification", "accuracy", _class_targets, _argmax_accuracy, _encode_labels
)

TASKS: dict[str, Task] = {task.name: task for task in (REGRESSION, BINARY, CLASSIFICATION)}
"""The built-in tasks by name."""
