"""Per-example gradients: the terms of eq. 1.3 before the sum over the batch.

Index alphabet: `n` batch, `i` a layer's inputs (`n_{l-1}`), `o` its outputs (`n_l`).

Eq. 1.3 sums one outer product per example, `dL/dW_l = sum_n a_{l-1}^(n) (delta_l^(n))^T`
and `dL/db_l = sum_n delta_l^(n)`. Keeping the terms apart gives each example's gradient,
and their norms need only the row norms of the two stored flows:

    ||dW_l^(n)||^2 + ||db_l^(n)||^2 = (||a_{l-1}^(n)||^2 + 1) ||delta_l^(n)||^2

so `per_example_grad_norms` costs two row reductions per layer on top of one backward
pass, and never builds a `(batch, n_{l-1}, n_l)` array.

Scaling: the terms are those of the reduced loss. With `reduction="sum"` example `n`'s
term is the gradient of its own loss, `grad l^n`; with `reduction="mean"` it is
`grad l^n / batch`, its share of the mean's gradient. Either way the terms sum to
`manual_grad` with the same reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp._activations import Activation
from jaxbp._backprop import Trace, backprop
from jaxbp._losses import OutputActivation
from jaxbp._mlp import Params

Array = jax.Array


def per_example_grads(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Params:
    """Each example's term of the gradient of eq. 1.3, by the recursion of eq. 1.4.

    Takes the arguments of `jaxbp.loss_fn`. Returns a list of
    `{"W": (batch, n_{l-1}, n_l), "b": (batch, n_l)}`, the dtypes of `params`: leaf `[n]`
    is `a_{l-1}^(n) (delta_l^(n))^T` (and `delta_l^(n)` for the bias). Summing over the
    leading axis gives `manual_grad` with the same `reduction`; under "mean" each term is
    `grad l^n / batch` (see the module docstring). Memory grows with `batch` times the
    parameter count: for norms or clipping use `per_example_grad_norms`.
    """
    trace = _trace(params, x, y, activation, loss, output_activation, reduction)
    return [
        {
            "W": jnp.einsum("ni,no->nio", a, d).astype(jnp.result_type(p["W"])),
            "b": d.astype(jnp.result_type(p["b"])),
        }
        for p, a, d in zip(params, trace.a, trace.delta, strict=False)
    ]


def per_example_grad_norms(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Array:
    """The L2 norm of each example's whole gradient, `(batch,)`, without building it.

    Same arguments and scaling as `per_example_grads`; entry `n` equals the global norm of
    its leaves `[n]`, computed from one backward pass as
    `sqrt(sum_l (||a_{l-1}^(n)||^2 + 1) ||delta_l^(n)||^2)` (eq. 1.3, term by term).
    """
    return norms_from_trace(_trace(params, x, y, activation, loss, output_activation, reduction))


def norms_from_trace(trace: Trace) -> Array:
    """`(batch,)` per-example gradient norms from the flows `trace.a` and `trace.delta`."""
    squares = [
        (jnp.sum(a * a, axis=1) + 1) * jnp.sum(d * d, axis=1)
        for a, d in zip(trace.a, trace.delta, strict=False)  # a_L has no delta: zip stops
    ]
    return jnp.sqrt(sum(squares))


def _trace(
    params: Params,
    x: Array,
    y: Array,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None,
    reduction: str,
) -> Trace:
    kw = dict(
        activation=activation, loss=loss, output_activation=output_activation, reduction=reduction
    )
    return backprop(params, x, y, **kw)[2]
