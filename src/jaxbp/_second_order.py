"""Second order through the handwritten gradient: Hessian- and Gauss-Newton-vector products.

Index alphabet: `n` batch, `k` output units (`n_L`), `theta` all parameters.

- `hvp`: `H v` with `H = d^2 L / dtheta^2`, as forward mode over the handwritten reverse
  mode, `jax.jvp` of `manual_grad` (eqs. 1.3-1.4 differentiated once more).
- `gnvp`: `G v` with the Gauss-Newton matrix `G = J^T H_out J`, splitting the program at
  the network output `o` where the loss is convex: `J = do/dtheta` and `H_out` the
  Hessian of the reduced loss in `o`. `J v` is a `jax.jvp` of the forward pass; `J^T u`
  is the recursion of eq. 1.4 started from `delta_L = u` (no second derivative of any
  activation). Per example, with `s` the batch scale (`1/batch` for "mean", 1 for "sum"):

      loss                  o                   H_out per example
      mse (any output)      y_hat               2 s I
      binary_cross_entropy  z_L (sigmoid link)  s diag(y_hat (1 - y_hat))
      cross_entropy         z_L (softmax link)  s (sum_k y_k) (diag(y_hat) - y_hat y_hat^T)

  (`sum_k y_k = 1` for labels and probability rows.) `G` is positive semi-definite, and
  `G = H` when the network is linear in `theta` (one layer) with the loss's canonical link.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import Activation
from jaxbp._backprop import backward_flow, cast_like, manual_grad
from jaxbp._losses import OutputActivation
from jaxbp._mlp import Params, forward_flow
from jaxbp._validate import check_params, check_x, prepare_targets, resolve

Array = jax.Array


def _mse_curvature(a: Array, y: Array, u: Array) -> Array:
    del a, y
    return 2 * u


def _bce_curvature(a: Array, y: Array, u: Array) -> Array:
    del y
    return a * (1 - a) * u


def _ce_curvature(a: Array, y: Array, u: Array) -> Array:
    mass = jnp.sum(y, axis=-1, keepdims=True)
    return mass * a * (u - jnp.sum(a * u, axis=-1, keepdims=True))


_CURVATURES: dict[str, Callable[[Array, Array, Array], Array]] = {
    "mse": _mse_curvature,
    "binary_cross_entropy": _bce_curvature,
    "cross_entropy": _ce_curvature,
}
"""Per loss, `(y_hat, y, u) -> H_out u` per example: `(batch, n_L)` each (module table)."""


def hvp(
    params: Params,
    x: Array,
    y: Array,
    v: Params,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Params:
    """The Hessian-vector product `H v`, `H = d^2 L/dtheta^2` of `jaxbp.loss_fn`.

    Takes the arguments of `jaxbp.loss_fn` and `v`, a pytree shaped like `params` (cast to
    its dtypes). Computed as `jax.jvp` of `manual_grad` along `v` (forward over the
    handwritten reverse mode); returns a pytree shaped like `params`. At a relu kink the
    activation's derivative is piecewise constant, so its own derivative counts as 0.
    """
    v = _check_direction(v, params)
    kw = dict(
        activation=activation, loss=loss, output_activation=output_activation, reduction=reduction
    )
    return jax.jvp(lambda p: manual_grad(p, x, y, **kw), (params,), (v,))[1]


def gnvp(
    params: Params,
    x: Array,
    y: Array,
    v: Params,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Params:
    """The Gauss-Newton-vector product `G v = J^T H_out J v` (see the module docstring).

    Takes the arguments of `jaxbp.loss_fn` (built-in losses only) and `v`, a pytree shaped
    like `params` (cast to its dtypes); returns a pytree shaped like `params`. `J v` is a
    `jax.jvp` of the forward pass, `(batch, n_L)`; `J^T u` is eqs. 1.3-1.4 from
    `delta_L = u` (through the output activation's backward for "mse").
    """
    setup = resolve(activation, loss, output_activation, reduction)
    if setup.loss is None or setup.loss.name not in _CURVATURES:
        raise ValueError(
            f"gnvp needs one of the built-in losses {sorted(_CURVATURES)}, whose curvature in "
            f"the network output it knows; got {loss!r}. For any loss use jaxbp.hvp."
        )
    sizes = check_params(params)
    x = check_x(x, sizes)
    v = _check_direction(v, params)

    def flows(p: Params) -> tuple[list[Array], list[Array]]:
        return forward_flow(p, x, setup.hidden, setup.output)

    (zs, acts), (dzs, dacts) = jax.jvp(flows, (params,), (v,))
    y = prepare_targets(y, setup.loss, x.shape[0], sizes[-1], zs[-1].dtype)
    scale = 1 / x.shape[0] if reduction == "mean" else 1
    at_output = setup.loss.name == "mse"  # split at y_hat; the cross-entropies at z_L
    jv = dacts[-1] if at_output else dzs[-1]  # J v: (batch, n_L)
    u = scale * _CURVATURES[setup.loss.name](acts[-1], y, jv)  # H_out J v
    if at_output:
        u = setup.output.backward(zs[-1], acts[-1], u)  # through phi_out', to z_L
    grads, _ = backward_flow(params, zs[:-1], acts[:-1], setup.hidden, u)  # J^T u, eq. 1.4
    return cast_like(grads, params)


def _check_direction(v: Params, params: Params) -> Params:
    """`v` with `params`' pytree structure and dtypes, or a ValueError naming the mismatch."""
    check_params(params)
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
