"""The losses of eq. 1.2, each with its handwritten output delta.

Maximum likelihood (eq. 1.2) pairs each loss with a canonical output link:

    loss                  p(y given x)  link      per-sample l                        delta_L
    mse                   N(y_hat, I)   identity  sum_k (y_hat_k - y_k)^2             2 (y_hat - y)
    binary_cross_entropy  Bernoulli     sigmoid   -sum_k y ln y_hat + (1-y) ln(1-y_hat)   y_hat - y
    cross_entropy         multinomial   softmax   -sum_k y_k ln y_hat_k               y_hat - y

(For cross_entropy the delta is `y_hat * sum_k y_k - y`, which is `y_hat - y` when the
target row sums to 1, as labels and probability rows do.)

Every value is computed from the logits `z_L` in a numerically stable form. The
cross-entropies accept only their canonical link; "mse" accepts any output
activation, and its delta is then the general product `dl/dy_hat * phi'(z_L)`
(the chapter's sigmoid-under-squared-error case).

Shapes: `z`, `a = y_hat` and the prepared target `y` are `(batch, n_L)`; `value`
returns `(batch,)`, `delta` returns `(batch, n_L)`, both per sample, before the
reduction over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._activations import Activation, Softmax

Array = jax.Array
OutputActivation = Activation | Softmax

__all__ = ["LOSSES", "REDUCTIONS", "Loss"]

REDUCTIONS = ("mean", "sum")


class Loss(NamedTuple):
    """A per-sample loss of eq. 1.2 and its output delta, written by hand.

    - `value(z, a, y) -> (batch,)`: the loss of each sample.
    - `delta(z, a, y, output) -> (batch, n_L)`: `dl/dz_L` of each sample, the source of
      the backward flow of eq. 1.4; `output` is the output activation in use.
    - `link`: the canonical output activation; `any_output`: whether others are allowed.
    """

    name: str
    link: str
    any_output: bool
    value: Callable[[Array, Array, Array], Array]
    delta: Callable[[Array, Array, Array, OutputActivation], Array]


def _mse_value(z: Array, a: Array, y: Array) -> Array:
    del z
    return jnp.sum((a - y) ** 2, axis=-1)


def _mse_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # The general product: dl/dy_hat = 2 (y_hat - y), through the output's derivative.
    return output.backward(z, a, 2 * (a - y))


def _bce_value(z: Array, a: Array, y: Array) -> Array:
    # -(y ln sigma(z) + (1 - y) ln(1 - sigma(z))) = softplus(z) - y z, stable for any z.
    del a
    return jnp.sum(jax.nn.softplus(z) - y * z, axis=-1)


def _bce_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # sigma'(z) cancels the 1 / (y_hat (1 - y_hat)) of dl/dy_hat.
    del z, output
    return a - y


def _ce_value(z: Array, a: Array, y: Array) -> Array:
    # -sum_k y_k (z_k - logsumexp(z)), stable for any z.
    del a
    lse = jax.nn.logsumexp(z, axis=-1)
    return lse * jnp.sum(y, axis=-1) - jnp.sum(y * z, axis=-1)


def _ce_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # The softmax Jacobian cancels 1 / y_hat; equals y_hat - y when the row of y sums to 1.
    del z, output
    return a * jnp.sum(y, axis=-1, keepdims=True) - y


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("mse", "identity", True, _mse_value, _mse_delta),
        Loss("binary_cross_entropy", "sigmoid", False, _bce_value, _bce_delta),
        Loss("cross_entropy", "softmax", False, _ce_value, _ce_delta),
    )
}
"""The built-in losses by name."""
