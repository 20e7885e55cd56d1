"""Argument checks shared by the public functions.

Every check reads only names, shapes and dtypes, so it runs at trace time under
`jax.jit` as well as eagerly. Target values (label range, probabilities in [0, 1])
are checked only when they are concrete, i.e. outside a trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import ACTIVATIONS, SOFTMAX, Activation, Softmax, get_activation
from jaxbp._losses import LOSSES, REDUCTIONS, Loss, OutputActivation

Array = jax.Array


class Setup(NamedTuple):
    """The resolved keywords of one call: hidden and output activations, loss, reduction."""

    hidden: Activation
    output: OutputActivation
    loss: Loss | None
    reduction: str


def get_output_activation(output_activation: Any) -> OutputActivation:
    """An output activation: any hidden activation, or "softmax"."""
    if output_activation == "softmax" or isinstance(output_activation, Softmax):
        return SOFTMAX
    try:
        return get_activation(output_activation, argument="output_activation")
    except ValueError:
        raise ValueError(
            f"output_activation must be 'softmax', one of the activations "
            f"{sorted(ACTIVATIONS)} or a jaxbp.Activation; got {output_activation!r}."
        ) from None


def get_loss(loss: Any) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name (str); got {type(loss).__name__} {loss!r}.")
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {loss!r}.") from None


def resolve(
    activation: Any,
    loss: Any = None,
    output_activation: Any = None,
    reduction: Any = "mean",
) -> Setup:
    """Resolve the keyword names of `loss_fn`/`manual_grad` into records, or raise."""
    hidden = get_activation(activation)
    loss_rec = None if loss is None else get_loss(loss)
    if output_activation is None:
        if loss_rec is None:
            raise ValueError("output_activation=None needs a loss to pick its canonical link.")
        output = get_output_activation(loss_rec.link)
    else:
        output = get_output_activation(output_activation)
        if loss_rec is not None and not loss_rec.any_output and output.name != loss_rec.link:
            raise ValueError(
                f"loss={loss_rec.name!r} takes only its canonical output activation "
                f"{loss_rec.link!r} (its value and delta are computed from the logits); got "
                f"output_activation={output.name!r}. Pass output_activation=None, or use "
                f"loss='mse' for other outputs."
            )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}; got {reduction!r}.")
    return Setup(hidden, output, loss_rec, reduction)


def check_params(params: Any) -> tuple[int, ...]:
    """Check that params is a list of chaining `{"W", "b"}` layers; return the sizes."""
    rule = (
        "params must be a non-empty list of {'W': (n_in, n_out), 'b': (n_out,)} dicts, "
        "one per layer, as jaxbp.init_mlp returns"
    )
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{rule}; got {type(params).__name__}.")
    if len(params) == 0:
        raise ValueError(f"{rule}; got an empty {type(params).__name__}.")
    sizes: list[int] = []
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            got = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise TypeError(f"{rule}; params[{i}] is {got!r}.")
        w_shape, b_shape = np.shape(layer["W"]), np.shape(layer["b"])
        for leaf in ("W", "b"):
            dtype = jnp.result_type(layer[leaf])
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"params[{i}][{leaf!r}] must be floating point; got dtype {dtype}.")
        if len(w_shape) != 2 or len(b_shape) != 1 or b_shape[0] != w_shape[1]:
            raise ValueError(
                f"params[{i}] must hold W of shape (n_in, n_out) and b of shape (n_out,); "
                f"got W {w_shape} and b {b_shape}."
            )
        if i == 0:
            sizes.append(w_shape[0])
        elif w_shape[0] != sizes[-1]:
            raise ValueError(
                f"layers must chain: params[{i}]['W'] has {w_shape[0]} rows but "
                f"params[{i - 1}] has {sizes[-1]} outputs (W shapes "
                f"{[tuple(np.shape(p['W'])) for p in params]})."
            )
        sizes.append(w_shape[1])
    return tuple(sizes)


def check_x(x: Any, sizes: Sequence[int]) -> Array:
    """Check that x is a non-empty `(batch, n_0)` batch for a network of these sizes."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        fix = " For one sample use x[None, :]." if x.ndim == 1 else ""
        raise ValueError(
            f"x must be 2-d, (batch, n_0) with one sample a row; got shape {x.shape}.{fix}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample; got an empty batch, shape {x.shape}.")
    if x.shape[1] != sizes[0]:
        raise ValueError(
            f"x has {x.shape[1]} features (shape {x.shape}) but the first layer expects "
            f"n_0 = {sizes[0]} (params[0]['W'] is {sizes[0]}x{sizes[1]})."
        )
    return x


def prepare_targets(y: Any, loss: Loss, batch: int, n_out: int, dtype: Any) -> Array:
    """Targets as a float `(batch, n_L)` array of `dtype` (integer labels one-hot encoded)."""
    y = jnp.asarray(y)
    if y.ndim == 0 or y.shape[0] != batch:
        raise ValueError(
            f"y must have the same batch size as x ({batch}) on its first axis; "
            f"got shape {y.shape}."
        )
    if loss.name == "cross_entropy":
        return _class_targets(y, batch, n_out, dtype)
    if y.ndim == 1 and n_out == 1:
        y = y[:, None]
    if y.shape != (batch, n_out):
        raise ValueError(
            f"y for loss={loss.name!r} must have shape ({batch}, {n_out}) to match the output "
            f"layer ({n_out} units){' or (batch,)' if n_out == 1 else ''}; got shape {y.shape}."
        )
    if loss.name == "binary_cross_entropy" and _is_concrete(y):
        values = np.asarray(y)  # numpy: jnp ops on a closed-over constant would be traced
        bad = (values < 0) | (values > 1)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"y for loss='binary_cross_entropy' must lie in [0, 1]; row {row} is "
                f"{values[row].tolist()}."
            )
    return y.astype(dtype)


def _class_targets(y: Array, batch: int, n_out: int, dtype: Any) -> Array:
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise ValueError(
                f"integer y for loss='cross_entropy' must be labels of shape ({batch},); got "
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
    if y.shape != (batch, n_out):
        fix = " Labels must have an integer dtype: y.astype(int)." if y.ndim == 1 else ""
        raise ValueError(
            f"y for loss='cross_entropy' must be integer labels ({batch},) or probability rows "
            f"({batch}, {n_out}); got {y.dtype} of shape {y.shape}.{fix}"
        )
    if _is_concrete(y) and np.any(np.asarray(y) < 0):
        raise ValueError("probability rows in y for loss='cross_entropy' must be non-negative.")
    return y.astype(dtype)


def _is_concrete(y: Array) -> bool:
    return not isinstance(y, jax.core.Tracer)
