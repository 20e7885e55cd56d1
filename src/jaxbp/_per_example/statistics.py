"""First-order statistics of the per-example gradients, from the two stored flows, without
building the per-example gradients (BackPACK's `SumGradSquared`, `Variance`,
`BatchDotGrad`).

Index alphabet: `n`, `m` batch (`N` examples), `i` a layer's inputs, `o` its outputs.
Example `n`'s term of a dense layer's gradient is the outer product `a^(n) (delta^(n))^T`
(eq. 1.3), so its statistics are products of the flows, layer by layer:

    sum_grad_squared   sum_n t_n * t_n        W: (a^2)^T (delta^2),  b: sum_n delta^2
    grad_variance      sum_grad_squared / N - (grad / N)^2           (BackPACK's Variance)
    batch_dot_grad     <t_n, t_m>, (N, N)     sum_l (a a^T + 1) * (delta delta^T)

The terms `t_n` are those of `jaxbp.per_example_grads`: under the default
`reduction="mean"` each is `grad l^n / N`, under "sum" `grad l^n`; the statistics follow.
A layer owns its own statistics (`Layer.squared_terms`, `Layer.batch_dot`: closed forms
for a dense layer, derived from its `per_example_grads` otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxbp._core.backprop import cast_like
from jaxbp._core.config import Keywords
from jaxbp._core.network import NetworkLike, Params
from jaxbp._per_example.terms import flows, parametric

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array

__all__ = ["batch_dot_grad", "grad_variance", "sum_grad_squared"]


def sum_grad_squared(
    params: Params, x: Array, y: Array, config: NetworkLike = None, **kw: Unpack[Keywords]
) -> Params:
    """`sum_n t_n * t_n`, the per-example gradient terms squared and summed, shaped like
    `params` (BackPACK's `SumGradSquared`). Takes the arguments of `jaxbp.manual_grad`;
    `t_n` scales with the reduction (module docstring)."""
    flow, back = flows(config, kw, params, x, y, "sum_grad_squared")
    squares = [
        layer.squared_terms(p, cache, g[None], per_example=False)
        for layer, p, cache, g in parametric(flow, back)
    ]
    return cast_like(squares, params)


def grad_variance(
    params: Params, x: Array, y: Array, config: NetworkLike = None, **kw: Unpack[Keywords]
) -> Params:
    """The variance of the per-example gradient terms over the batch, shaped like `params`:
    `sum_grad_squared / N - (grad / N)^2` with `grad = sum_n t_n` (BackPACK's `Variance`,
    the biased estimate over the `N` examples). Arguments of `jaxbp.manual_grad`."""
    flow, back = flows(config, kw, params, x, y, "grad_variance")
    n = flow.z.shape[0]
    variances = []
    for layer, p, cache, g in parametric(flow, back):
        squares = layer.squared_terms(p, cache, g[None], per_example=False)
        grads = layer.backward(p, cache, g)[1]  # eq. 1.3: sum_n t_n
        variances.append(jax.tree.map(lambda s, t: s / n - (t / n) ** 2, squares, grads))
    return cast_like(variances, params)


def batch_dot_grad(
    params: Params, x: Array, y: Array, config: NetworkLike = None, **kw: Unpack[Keywords]
) -> Array:
    """`(batch, batch)`: the Gram matrix `<t_n, t_m>` of the per-example gradient terms
    over all parameters (BackPACK's `BatchDotGrad`, summed over the parameters), without
    building them. Arguments of `jaxbp.manual_grad`."""
    flow, back = flows(config, kw, params, x, y, "batch_dot_grad")
    grams = [layer.batch_dot(p, cache, g) for layer, p, cache, g in parametric(flow, back)]
    return sum(grams).astype(jnp.result_type(*jax.tree.leaves(params)))
