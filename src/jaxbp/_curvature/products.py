"""Second order through the handwritten gradient: Hessian- and Gauss-Newton-vector products.

Index alphabet: `n` batch, `k` output units (`n_L`), `theta` all parameters.

- `hvp`: `H v` with `H = d^2 L / dtheta^2`, as forward mode over the handwritten reverse
  mode, `jax.jvp` of the handwritten gradient (eqs. 1.3-1.4 differentiated once more).
- `gnvp`: `G v` with the Gauss-Newton matrix `G = J^T H_out J`, splitting the program at
  the network output `o` where the loss is convex: `J = do/dtheta` and `H_out` the
  Hessian of the reduced loss in `o`. `J v` is a `jax.jvp` of the forward pass; `J^T u`
  is the recursion of eq. 1.4 started from `delta_L = u` (no second derivative of any
  activation). `o` and `H_out` are the loss record's: `o = y_hat` for a loss that takes
  any output (`Loss.any_output`), `o = z_L` for one bound to its link, and `H_out` per
  example is `s` times its `Loss.curvature`, `s` the batch scale (`1/batch` for "mean",
  1 for "sum"):

      loss                  o                   H_out per example
      mse (any output)      y_hat               2 s I
      huber (any output)    y_hat               s diag(|y_hat - y| <= d)
      binary_cross_entropy  z_L (sigmoid link)  s diag(y_hat (1 - y_hat))
      cross_entropy         z_L (softmax link)  s (sum_k y_k) (diag(y_hat) - y_hat y_hat^T)

  (`sum_k y_k = 1` for labels and probability rows.) `G` is positive semi-definite for a
  convex loss, and `G = H` when the network is linear in `theta` (one layer) with the
  loss's canonical link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxbp._core.backprop import backward_flow, cast_like, gradient
from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import Flow, forward_flow
from jaxbp._core.network import Network, Params, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array


def hvp(
    params: Params,
    x: Array,
    y: Array,
    v: Params,
    config: Config | Network | None = None,
    **kw: Unpack[Keywords],
) -> Params:
    """The Hessian-vector product `H v`, `H = d^2 L/dtheta^2` of `jaxbp.loss_fn`.

    Takes the arguments of `jaxbp.loss_fn` (`key` for dropout masks) and `v`, a pytree
    shaped like `params` (cast to its dtypes). Computed as `jax.jvp` of the handwritten
    gradient along `v` (forward over the handwritten reverse mode); returns a pytree
    shaped like `params`. At a relu kink the activation's derivative is piecewise
    constant, so its own derivative counts as 0.
    """
    net, key, x, v = _edge(config, kw, params, x, v)

    def grad(p: Params) -> Params:
        return cast_like(gradient(net, p, x, y, key)[2].grads, p)  # eqs. 1.3-1.4

    return jax.jvp(grad, (params,), (v,))[1]


def gnvp(
    params: Params,
    x: Array,
    y: Array,
    v: Params,
    config: Config | Network | None = None,
    **kw: Unpack[Keywords],
) -> Params:
    """The Gauss-Newton-vector product `G v = J^T H_out J v` (see the module docstring).

    Takes the arguments of `jaxbp.loss_fn` (a loss with a `curvature`, as every built-in
    has) and `v`, a pytree shaped like `params` (cast to its dtypes); returns a pytree
    shaped like `params`. `J v` is a `jax.jvp` of the forward pass, `(batch, n_L)`;
    `J^T u` is eqs. 1.3-1.4 from `delta_L = u` (through the output activation's backward
    for a loss split at `y_hat`).
    """
    net, key, x, v = _edge(config, kw, params, x, v)
    loss = net.loss
    if loss.curvature is None:
        raise ValueError(
            f"gnvp needs the loss's curvature in the network output; loss {loss.name!r} has "
            "curvature=None. Give its jaxbp.Loss a curvature(z, a, y, u) -> H u, or use "
            "jaxbp.hvp, which needs none."
        )
    ctx = net.context(True, key)

    def outputs(p: Params) -> tuple[tuple[Any, ...], Array, Array]:
        flow = forward_flow(net, p, x, ctx)
        return flow.caches, flow.z, flow.a

    (caches, z, a), (_, dz, da) = jax.jvp(outputs, (params,), (v,))
    flow = Flow(net.layers, net.spread(params), caches, z, a, x)
    y = loss.targets(y, x.shape[0], net.n_out, flow.z.dtype)
    at_output = loss.any_output  # split at y_hat; a link-bound loss at z_L
    jv = da if at_output else dz  # J v: (batch, n_L)
    u = net.scale(x.shape[0]) * loss.curvature_times(flow.z, flow.a, y, jv)  # H_out J v
    if at_output:
        u = net.output.backward(flow.z, flow.a, u)  # through phi_out', to z_L
    return cast_like(backward_flow(flow, u).grads, params)  # J^T u, eq. 1.4


def _edge(
    config: Any, kw: dict[str, Any], params: Params, x: Any, v: Any
) -> tuple[Network, Array | None, Array, Params]:
    """A second-order call at the edge: its network, key, checked `x`, and `v` in the
    structure and dtypes of `params`."""
    net, key = resolve(config, kw, params)
    return net, key, net.check_x(x), _check_direction(v, params)


def _check_direction(v: Params, params: Params) -> Params:
    """`v` with `params`' pytree structure and dtypes, or a ValueError naming the mismatch."""
    v_leaves, p_leaves = jax.tree.leaves(v), jax.tree.leaves(params)
    v_shapes = [np.shape(t) for t in v_leaves]
    p_shapes = [np.shape(p) for p in p_leaves]
    if v_shapes != p_shapes:
        raise ValueError(
            "v must be a pytree shaped like params (one {'W', 'b'} dict per layer), e.g. "
            f"jax.tree.map(jnp.ones_like, params); got leaf shapes {v_shapes}, params has "
            f"{p_shapes}."
        )
    return cast_like(v, params)
