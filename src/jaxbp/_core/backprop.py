"""Back-propagation written by hand from eqs. 1.3 and 1.4: no autodiff anywhere.

Index alphabet for the shapes below: `n` batch, `l` layer (1..L), `n_l` width of layer l.

    forward flow (stored):  z_l = a_{l-1} @ W_l + b_l,  a_l = phi(z_l),  a_0 = x   (1.1)
    source:                 delta_L = dL/dz_L          (the loss's handwritten delta)
    backward flow:          delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T)        (1.4)
    gradients:              dL/dW_l = a_{l-1}^T @ delta_l,  dL/db_l = sum_n delta_l  (1.3)

Each layer record owns its part of the recursion (`jaxbp._core.layers`): an activation's
backward is the factor `phi'(z_l) *`, a dense layer's is `delta_l @ W_l^T` with eq. 1.3
beside it. The backward flow is those records chained in reverse, from `delta_L`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import Flow, forward_flow, source
from jaxbp._core.network import Network, Params, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array


class Backward(NamedTuple):
    """The backward flow through every layer, in the layers' order.

    - `grads`: each layer's parameter gradient (eq. 1.3; `None` without parameters).
    - `out`: the cotangent `dL/d out` arriving at each layer's output: at a dense layer,
      the chapter's `delta_l = dL/dz_l`.
    - `into`: the cotangent `dL/d in` each layer's backward returns: at an activation,
      `delta_l` again, and `into[0] = dL/dx`.
    """

    grads: tuple[Any, ...]
    out: tuple[Array, ...]
    into: tuple[Array, ...]

    @property
    def dx(self) -> Array:
        return self.into[0]


def backward_flow(flow: Flow, delta_L: Array, upto: int | None = None) -> Backward:
    """Eq. 1.4 over the layers in reverse, from the source `delta_L = dL/dz_L: (n, n_L)`.

    Started from a loss's output delta this is the gradient; started from any cotangent
    of `z_L` it is the network's vector-Jacobian product (`jaxbp.mlp`, `jaxbp.gnvp`).
    With `upto = i` it starts at the output of layer `i - 1` and runs through the first
    `i` layers only (the curvature of a layer's input, `jaxbp.diag_hessian`).
    """
    layers = list(zip(flow.layers, flow.params, flow.caches, strict=True))[:upto]
    delta, grads, outs, ins = delta_L, [], [], []
    for layer, theta, cache in reversed(layers):
        outs.append(delta)  # dL/d out: delta_l at a dense layer's output z_l
        delta, g_theta = layer.backward(theta, cache, delta)  # phi'(z_l) *, or @ W_l^T (1.4)
        ins.append(delta)  # dL/d in: delta_l at an activation's input z_l
        grads.append(g_theta)  # dL/dW_l = a_{l-1}^T delta_l, dL/db_l = sum_n delta_l (1.3)
    return Backward(tuple(grads[::-1]), tuple(outs[::-1]), tuple(ins[::-1]))


class Trace(NamedTuple):
    """Both flows of back-propagation for one batch, in the chapter's notation.

    - `z`: pre-activations `(z_1, ..., z_L)`, each `(batch, n_l)`.
    - `a`: activations `(a_0, ..., a_L)` with `a_0 = x`, each `(batch, n_l)`.
    - `delta`: the backward flow `(delta_1, ..., delta_L)`, `delta_l = dL/dz_l` of the
      reduced loss, each `(batch, n_l)`.

    (With other layers in the network, `z_l` are the inputs of its activations and `z_L`
    the logits, `a_l` their outputs.)
    """

    z: tuple[Array, ...]
    a: tuple[Array, ...]
    delta: tuple[Array, ...]


def trace_of(flow: Flow, back: Backward) -> Trace:
    """The chapter's `(z, a, delta)`, read at the activations (`Layer.phi`) and the logits:
    an activation caches `(z_l, a_l)`, and its backward returns `delta_l = dL/dz_l`."""
    hidden = [i for i, layer in enumerate(flow.layers) if layer.phi is not None]
    z = [flow.caches[i][0] for i in hidden] + [flow.z]
    a = [flow.x] + [flow.caches[i][1] for i in hidden] + [flow.a]
    delta = [back.into[i] for i in hidden] + [back.out[-1]]
    return Trace(tuple(z), tuple(a), tuple(delta))


def gradient(
    net: Network, params: Params, x: Array, y: Any, key: Array | None
) -> tuple[Array, Flow, Backward]:
    """One back-propagation in training mode: the loss, the forward flow, the backward flow."""
    flow = forward_flow(net, params, x, net.context(True, key))
    value, delta_L = source(net, flow, y)
    return value, flow, backward_flow(flow, delta_L)


def backprop(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    **keywords: Unpack[Keywords],
) -> tuple[Array, Params, Trace]:
    """The loss, its gradient by eqs. 1.3-1.4, and both flows: `(value, grads, trace)`.

    Takes the arguments of `jaxbp.loss_fn` (`key` for dropout masks). `grads` has exactly
    the structure and dtypes of `params`; `trace` is a `jaxbp.Trace`.
    """
    net, key = resolve(config, keywords, params)
    value, flow, back = gradient(net, params, net.check_x(x), y, key)
    return value, cast_like(back.grads, params), trace_of(flow, back)


def manual_grad(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    **keywords: Unpack[Keywords],
) -> Params:
    """The gradient of `jaxbp.loss_fn` with respect to `params`, by eqs. 1.3 and 1.4.

    Same arguments as `jaxbp.loss_fn`; returns a pytree of `params`' structure and
    dtypes. Pure, and works under `jax.jit` (pass a `jaxbp.Config` or `jaxbp.Network`, or
    the string keywords as static), `jax.vmap` and `jax.jvp`.
    """
    net, key = resolve(config, keywords, params)
    return cast_like(gradient(net, params, net.check_x(x), y, key)[2].grads, params)


def cast_like(tree: Any, params: Params) -> Params:
    """`tree`'s leaves in the pytree structure and leaf dtypes of `params` (as `jax.grad`);
    `None` entries (the layers without parameters) hold none."""
    leaves = [
        jnp.asarray(g).astype(jnp.result_type(p))
        for g, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
