"""Back-propagation written by hand from eqs. 1.3 and 1.4: no autodiff anywhere.

Index alphabet for the shapes below: `n` batch, `l` layer (1..L), `n_l` width of layer l.

    forward flow (stored):  z_l = a_{l-1} @ W_l + b_l,  a_l = phi(z_l),  a_0 = x   (1.1)
    source:                 delta_L = dl/dz_L          (the loss's handwritten delta)
    backward flow:          delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T)        (1.4)
    gradients:              dL/dW_l = a_{l-1}^T @ delta_l,  dL/db_l = sum_n delta_l  (1.3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._activations import Activation
from jaxbp._losses import OutputActivation
from jaxbp._mlp import Params, forward_flow
from jaxbp._validate import check_params, check_x, prepare_targets, resolve

Array = jax.Array


class Trace(NamedTuple):
    """Both flows of back-propagation for one batch, in the chapter's notation.

    - `z`: pre-activations `(z_1, ..., z_L)`, each `(batch, n_l)`.
    - `a`: activations `(a_0, ..., a_L)` with `a_0 = x`, each `(batch, n_l)`.
    - `delta`: the backward flow `(delta_1, ..., delta_L)`, `delta_l = dL/dz_l` of the
      reduced loss, each `(batch, n_l)`.
    """

    z: tuple[Array, ...]
    a: tuple[Array, ...]
    delta: tuple[Array, ...]


def backward_flow(
    params: Params, z: Sequence[Array], a: Sequence[Array], hidden: Activation, delta_L: Array
) -> tuple[list[dict[str, Array]], list[Array]]:
    """Eqs. 1.4 then 1.3 from the source `delta_L: (batch, n_L)`: `(grads, [delta_1..delta_L])`.

    `z` holds at least `(z_1, ..., z_{L-1})` and `a` at least `(a_0, ..., a_{L-1})`, the
    stored forward flow. Started from a loss's output delta this is the gradient; started
    from any cotangent of `z_L` it is the MLP's vector-Jacobian product (`jaxbp.mlp`,
    `jaxbp.gnvp`). `grads` are in the dtype of the flows.
    """
    delta = [delta_L]
    for l in reversed(range(len(params) - 1)):  # eq. 1.4, from layer L-1 down to 1
        delta.insert(0, hidden.backward(z[l], a[l + 1], delta[0] @ params[l + 1]["W"].T))
    grads = [
        {"W": a[l].T @ delta[l], "b": jnp.sum(delta[l], axis=0)}  # eq. 1.3
        for l in range(len(params))
    ]
    return grads, delta


def backprop(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> tuple[Array, Params, Trace]:
    """The loss, its gradient by eqs. 1.3-1.4, and both flows: `(value, grads, trace)`.

    Takes the arguments of `jaxbp.loss_fn`. `grads` has exactly the structure and
    dtypes of `params`; `trace` is a `jaxbp.Trace`.
    """
    setup = resolve(activation, loss, output_activation, reduction)
    sizes = check_params(params)
    x = check_x(x, sizes)
    z, a = forward_flow(params, x, setup.hidden, setup.output)
    y = prepare_targets(y, setup.loss, x.shape[0], sizes[-1], z[-1].dtype)
    scale = 1 / x.shape[0] if reduction == "mean" else 1

    value = scale * jnp.sum(setup.loss.value(z[-1], a[-1], y))
    delta_L = scale * setup.loss.delta(z[-1], a[-1], y, setup.output)
    grads, delta = backward_flow(params, z, a, setup.hidden, delta_L)
    return value, cast_like(grads, params), Trace(tuple(z), tuple(a), tuple(delta))


def manual_grad(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Params:
    """The gradient of `jaxbp.loss_fn` with respect to `params`, by eqs. 1.3 and 1.4.

    Same arguments as `jaxbp.loss_fn`; returns a pytree of `params`' structure and
    dtypes. Pure, and works under `jax.jit` (string keywords static), `jax.vmap` and
    `jax.jvp`.
    """
    return backprop(
        params,
        x,
        y,
        activation=activation,
        loss=loss,
        output_activation=output_activation,
        reduction=reduction,
    )[1]


def cast_like(tree: Any, params: Params) -> Params:
    """`tree`'s leaves in the pytree structure and leaf dtypes of `params` (as `jax.grad`)."""
    leaves = [
        jnp.asarray(g).astype(jnp.result_type(p))
        for g, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
