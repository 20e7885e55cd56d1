"""Back-propagation written by hand from eqs. 1.3 and 1.4: no autodiff anywhere.

Index alphabet for the shapes below: `n` batch, `l` layer (1..L), `n_l` width of layer l.

    forward flow (stored):  z_l = a_{l-1} @ W_l + b_l,  a_l = phi(z_l),  a_0 = x   (1.1)
    source:                 delta_L = dl/dz_L          (the loss's handwritten delta)
    backward flow:          delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T)        (1.4)
    gradients:              dL/dW_l = a_{l-1}^T @ delta_l,  dL/db_l = sum_n delta_l  (1.3)

Each layer record owns its part of the recursion (`jaxbp._layers`): a dense layer's
backward is `delta @ W^T` and eq. 1.3, an activation's is the factor `phi'(z_l)`. The
backward flow is those records chained in reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._config import Config, Keywords, as_call
from jaxbp._layers import Activate
from jaxbp._mlp import Flow, Params, batch_scale, context, forward_flow, prepare

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array


class Trace(NamedTuple):
    """Both flows of back-propagation for one batch, in the chapter's notation.

    - `z`: pre-activations `(z_1, ..., z_L)`, each `(batch, n_l)`.
    - `a`: activations `(a_0, ..., a_L)` with `a_0 = x`, each `(batch, n_l)`.
    - `delta`: the backward flow `(delta_1, ..., delta_L)`, `delta_l = dL/dz_l` of the
      reduced loss, each `(batch, n_l)`.

    (With other layers in the body, `z_l` are the inputs of its activations and `z_L`
    the logits, `a_l` their outputs.)
    """

    z: tuple[Array, ...]
    a: tuple[Array, ...]
    delta: tuple[Array, ...]


class Backward(NamedTuple):
    """The backward flow through every layer: `grads` per parametric layer, `g[i]` the
    cotangent `dL/d out` at layer i's output, `dx = dL/dx`."""

    grads: list[Any]
    g: tuple[Array, ...]
    dx: Array


def backward_flow(flow: Flow, delta_L: Array) -> Backward:
    """Eq. 1.4 over the layers in reverse, from the source `delta_L = dL/dz_L: (batch, n_L)`.

    Started from a loss's output delta this is the gradient; started from any cotangent
    of `z_L` it is the network's vector-Jacobian product (`jaxbp.mlp`, `jaxbp.gnvp`).
    """
    g, grads, at = delta_L, [], [delta_L] * len(flow.layers)
    for i in reversed(range(len(flow.layers))):
        at[i] = g  # dL/d(output of layer i)
        g, dtheta = flow.layers[i].backward(flow.params[i], flow.caches[i], g)  # eqs. 1.3-1.4
        if flow.layers[i].has_params:
            grads.insert(0, dtheta)
    return Backward(grads, tuple(at), g)


def activates(layers: Sequence[Any]) -> list[int]:
    """The positions of the hidden activation layers (`Activate`, the chapter's `phi_l`)
    in a body of layer records."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, Activate)]


def trace_of(flow: Flow, back: Backward) -> Trace:
    """The chapter's `(z, a, delta)`: the activations' inputs and outputs, the logits."""
    acts = activates(flow.layers)
    z = [flow.caches[i][0] for i in acts] + [flow.z]
    a = [flow.x] + [flow.caches[i][1] for i in acts] + [flow.a]
    # delta_l = dL/dz_l: the cotangent leaving activation l's backward, i.e. arriving at
    # the layer before it; delta_L arrives at the last layer's output.
    delta = [back.g[i - 1] if i > 0 else back.dx for i in acts] + [back.g[-1]]
    return Trace(tuple(z), tuple(a), tuple(delta))


def source(config: Config, flow: Flow, y: Any, n_out: int) -> tuple[Array, Array]:
    """The reduced loss and `delta_L = dL/dz_L` (the loss's handwritten delta, scaled)."""
    batch = flow.z.shape[0]
    y = config.loss.targets(y, batch, n_out, flow.z.dtype)
    scale = batch_scale(config, batch)
    value = scale * jnp.sum(config.loss.sample_losses(flow.z, flow.a, y))
    return value, scale * config.loss.output_delta(flow.z, flow.a, y, config.output)


def gradient_flows(
    config: Config, key: Array | None, params: Params, x: Array, y: Array
) -> tuple[Array, Flow, Backward]:
    """One back-propagation in training mode: the loss, the forward flow, the backward flow."""
    body, x, n_out = prepare(config, params, x)
    flow = forward_flow(config, body, params, x, context(body, True, key))
    value, delta_L = source(config, flow, y, n_out)
    return value, flow, backward_flow(flow, delta_L)


def backprop(
    params: Params, x: Array, y: Array, config: Config | None = None, **keywords: Unpack[Keywords]
) -> tuple[Array, Params, Trace]:
    """The loss, its gradient by eqs. 1.3-1.4, and both flows: `(value, grads, trace)`.

    Takes the arguments of `jaxbp.loss_fn` (`key` for dropout masks). `grads` has exactly
    the structure and dtypes of `params`; `trace` is a `jaxbp.Trace`.
    """
    value, flow, back = gradient_flows(*as_call(config, keywords), params, x, y)
    return value, cast_like(back.grads, params), trace_of(flow, back)


def manual_grad(
    params: Params, x: Array, y: Array, config: Config | None = None, **keywords: Unpack[Keywords]
) -> Params:
    """The gradient of `jaxbp.loss_fn` with respect to `params`, by eqs. 1.3 and 1.4.

    Same arguments as `jaxbp.loss_fn`; returns a pytree of `params`' structure and
    dtypes. Pure, and works under `jax.jit` (pass a `jaxbp.Config`, or the string
    keywords as static), `jax.vmap` and `jax.jvp`.
    """
    _, _, back = gradient_flows(*as_call(config, keywords), params, x, y)
    return cast_like(back.grads, params)


def cast_like(tree: Any, params: Params) -> Params:
    """`tree`'s leaves in the pytree structure and leaf dtypes of `params` (as `jax.grad`)."""
    leaves = [
        jnp.asarray(g).astype(jnp.result_type(p))
        for g, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
