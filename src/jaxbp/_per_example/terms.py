"""Per-example gradients: the terms of eq. 1.3 before the sum over the batch.

Index alphabet: `n` batch, `i` a layer's inputs (`n_{l-1}`), `o` its outputs (`n_l`).

Eq. 1.3 sums one outer product per example, `dL/dW_l = sum_n a_{l-1}^(n) (delta_l^(n))^T`
and `dL/db_l = sum_n delta_l^(n)`. Keeping the terms apart gives each example's gradient,
and their norms need only the row norms of the two stored flows:

    ||dW_l^(n)||^2 + ||db_l^(n)||^2 = (||a_{l-1}^(n)||^2 + 1) ||delta_l^(n)||^2

so `per_example_grad_norms` costs two row reductions per layer on top of one backward
pass, and never builds a `(batch, n_{l-1}, n_l)` array. Each layer record owns its own
terms (`per_example_grads`, `per_example_sq_norms`); a layer whose gradient couples the
examples of a batch (`per_example = False`) is refused by name.

Scaling: the terms are those of the reduced loss. With `reduction="sum"` example `n`'s
term is the gradient of its own loss, `grad l^n`; with `reduction="mean"` it is
`grad l^n / batch`, its share of the mean's gradient. Either way the terms sum to
`manual_grad` with the same reduction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxbp._core.backprop import Backward, gradient
from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import Flow
from jaxbp._core.network import Network, Params, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array


def per_example_grads(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    **keywords: Unpack[Keywords],
) -> Params:
    """Each example's term of the gradient of eq. 1.3, by the recursion of eq. 1.4.

    Takes the arguments of `jaxbp.loss_fn` (a dropout network's `key` gives every example
    the masks it has in `manual_grad`). Returns a pytree shaped like `params` whose
    leaves gain a leading batch axis: for a dense layer
    `{"W": (batch, n_{l-1}, n_l), "b": (batch, n_l)}`, leaf `[n]` being
    `a_{l-1}^(n) (delta_l^(n))^T` (and `delta_l^(n)` for the bias), in the dtypes of
    `params`. Summing over the leading axis gives `manual_grad` with the same
    `reduction`; under "mean" each term is `grad l^n / batch` (see the module docstring).
    Memory grows with `batch` times the parameter count: for norms or clipping use
    `per_example_grad_norms`.
    """
    flow, back = flows(config, keywords, params, x, y, "per_example_grads")
    terms = [layer.per_example_grads(p, cache, g) for layer, p, cache, g in parametric(flow, back)]
    return jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), terms, list(params))


def per_example_grad_norms(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    **keywords: Unpack[Keywords],
) -> Array:
    """The L2 norm of each example's whole gradient, `(batch,)`, without building it.

    Same arguments and scaling as `per_example_grads`: under the default
    `reduction="mean"` entry `n` is `||grad l^n|| / batch`, and with `reduction="sum"` it
    is `||grad l^n||`, the norm DP-SGD clips against `l2_clip` (`dp_value_and_grad`
    returns exactly these). Entry `n` equals the global norm of its leaves `[n]`,
    computed from one backward pass as
    `sqrt(sum_l (||a_{l-1}^(n)||^2 + 1) ||delta_l^(n)||^2)` (eq. 1.3, term by term).
    """
    return norms(*flows(config, keywords, params, x, y, "per_example_grad_norms"))


def flows(
    config: Any, keywords: dict[str, Any], params: Params, x: Array, y: Array, what: str
) -> tuple[Flow, Backward]:
    """A per-example call at the edge: both flows of one back-propagation, on a network
    whose layers all have per-example terms (else refused, by name)."""
    net, key = resolve(config, keywords, params)
    check_per_example(net, what)
    _, flow, back = gradient(net, params, net.check_x(x), y, key)
    return flow, back


def check_per_example(net: Network, what: str) -> None:
    """Refuse, by name, a network with a layer whose gradient has no per-example terms."""
    for layer in net.layers:
        if layer.per_example is None:
            raise ValueError(
                f"{what} needs every layer to say whether its gradient is a sum of "
                f"per-example terms: the layer {layer!r} has no per_example attribute (see "
                "docs/extending.md: per_example = True with per_example_grads and "
                "per_example_sq_norms, or False)."
            )
        missing = [
            method
            for method in ("per_example_grads", "per_example_sq_norms")
            if layer.per_example and layer.has_params and not layer.provides(method)
        ]
        if missing:
            raise ValueError(
                f"{what}: the layer {layer!r} says per_example = True but has no "
                f"{' or '.join(missing)}; define them (see docs/extending.md) or set "
                "per_example = False."
            )
    coupled = [layer.name for layer in net.layers if not layer.per_example]
    if coupled:
        raise ValueError(
            f"{what} is undefined for a network with {coupled[0]!r} layers: there an "
            "example's gradient depends on the other examples of its batch, so it has no "
            "per-example terms (Opacus refuses batch norm for the same reason). Use layer "
            "normalisation, or no normalisation."
        )


def parametric(flow: Flow, back: Backward) -> list[tuple[Any, Any, Any, Array]]:
    """`(layer, params, cache, g)` for every layer with parameters, `g = dL/d out`."""
    return [
        (layer, p, cache, g)
        for layer, p, cache, g in zip(flow.layers, flow.params, flow.caches, back.out, strict=True)
        if layer.has_params
    ]


def norms(flow: Flow, back: Backward) -> Array:
    """`(batch,)` per-example gradient norms from the stored flows, layer by layer."""
    squares = [
        layer.per_example_sq_norms(p, cache, g) for layer, p, cache, g in parametric(flow, back)
    ]
    return jnp.sqrt(sum(squares))
