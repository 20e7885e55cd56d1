"""Curvature diagonals from the two flows: the Gauss-Newton matrix's and the Hessian's.

Index alphabet: `n` batch (`N`), `c` columns, `k` output units (`K = n_L`).

The Gauss-Newton matrix is `G = sum_n J_n^T H_n J_n`, `H_n` the curvature of the reduced
loss in the network output, per example (`jaxbp.gnvp`'s `H_out`). With a factor
`H_n = S_n S_n^T` (the loss record's `sqrt_curvature`, `S_n: (K, C)`), each column of
`S` is a cotangent of `z_L` that eq. 1.4 carries back like `delta_L`, and

    diag G = sum_n sum_c (J_n^T s_{n,c})^2:   W_l: (a_{l-1}^2)^T sum_c delta_{l,c}^2

(BackPACK's `DiagGGNExact`: `C = K` columns). With `mc_samples=m` the columns are `m`
draws `v` with `E[v v^T] = H_n` (the loss's `sample_curvature`), scaled by `1/sqrt(m)`:
an unbiased estimate (`DiagGGNMC`). The Hessian adds, at every activation, the term its
second derivative makes: in `z_l`, `diag(phi''(z_l) * dL/da_l)`, a diagonal whose
positive and negative parts have square roots too; their columns go back through the
layers below (BackPACK's `DiagHessian`). Each layer owns its squares
(`Layer.squared_terms`) and its second-order term (`Layer.input_curvature`); a layer
without per-example terms (batch norm) is refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxbp._core.activations import ACTIVATIONS
from jaxbp._core.backprop import backward_flow, cast_like
from jaxbp._core.config import Keywords
from jaxbp._core.flow import Flow, forward_flow, source
from jaxbp._core.network import Network, NetworkLike, Params, resolve
from jaxbp._core.validate import check_int, check_key
from jaxbp._per_example.terms import check_per_example

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
IDENTITY = ACTIVATIONS["identity"]

__all__ = ["diag_ggn", "diag_hessian", "per_example_diag_ggn"]


def diag_ggn(
    params: Params,
    x: Array,
    y: Array,
    config: NetworkLike = None,
    *,
    mc_samples: int | None = None,
    **kw: Unpack[Keywords],
) -> Params:
    """The diagonal of the Gauss-Newton matrix `G = J^T H_out J` of the reduced loss,
    shaped like `params` (BackPACK's `DiagGGNExact`; module docstring).

    Takes the arguments of `jaxbp.manual_grad`. With `mc_samples=m` it is the Monte Carlo
    estimate from `m` sampled columns per example (`DiagGGNMC`), drawn from `key` (folded
    with 1; a dropout network's masks come from `key` itself, as in `manual_grad`)."""
    _, flow, columns = ggn_columns(params, x, y, config, kw, mc_samples, "diag_ggn")
    return cast_like(_squares(flow, [(1.0, None, columns)], per_example=False), params)


def per_example_diag_ggn(
    params: Params,
    x: Array,
    y: Array,
    config: NetworkLike = None,
    *,
    mc_samples: int | None = None,
    **kw: Unpack[Keywords],
) -> Params:
    """`diag_ggn` example by example: every leaf gains a leading `(batch,)` axis, and
    summing over it gives `diag_ggn` (each example's `diag J_n^T H_n J_n`, on the scale of
    the reduced loss). Same arguments as `diag_ggn`."""
    _, flow, columns = ggn_columns(params, x, y, config, kw, mc_samples, "per_example_diag_ggn")
    squares = _squares(flow, [(1.0, None, columns)], per_example=True)
    return jax.tree.map(lambda t, p: t.astype(jnp.result_type(p)), squares, list(params))


def diag_hessian(
    params: Params, x: Array, y: Array, config: NetworkLike = None, **kw: Unpack[Keywords]
) -> Params:
    """The diagonal of the Hessian of the reduced loss, shaped like `params`: `diag_ggn`'s
    columns, and at every activation the columns of its second-order term
    `diag(phi''(z_l) * dL/da_l)`, split by sign, carried back through the layers below
    (module docstring). Needs every activation's `deriv2` (refused by name without one)
    and layers whose curvature in their input is known (dense, activation, dropout).
    Arguments of `jaxbp.manual_grad`."""
    net, key = resolve(config, kw, params)
    check_per_example(net, "diag_hessian")
    for layer in net.layers:
        if not layer.provides("input_curvature"):
            raise ValueError(
                f"diag_hessian needs each layer's second derivative in its input; the layer "
                f"{layer!r} ({layer.name!r}) does not give it (Layer.input_curvature). Use "
                "jaxbp.diag_ggn, which needs none."
            )
    flow = forward_flow(net, params, net.check_x(x), net.context(True, key))
    _, delta_L = source(net, flow, y)
    back = backward_flow(flow, delta_L)  # dL/d out at every layer
    groups = [(1.0, None, curvature_columns(net, flow, y, None, None))]
    if net.loss.any_output:  # the output activation's own second derivative, at z_L
        dl_dyhat = net.scale(flow.z.shape[0]) * net.loss.delta(
            flow.z, flow.a, net.loss.targets(y, *flow.z.shape, flow.z.dtype), IDENTITY
        )
        groups += _signed_columns(_output_curvature(net, flow, dl_dyhat), None)
    for i, layer in enumerate(flow.layers):
        r = layer.input_curvature(flow.params[i], flow.caches[i], back.out[i])
        if r is not None:
            groups += _signed_columns(r, i)
    return cast_like(_squares(flow, groups, per_example=False), params)


def ggn_columns(
    params: Params, x: Any, y: Any, config: Any, kw: dict[str, Any], mc: Any, what: str
) -> tuple[Network, Flow, Array]:
    """A Gauss-Newton call at the edge: its network (every layer with per-example terms),
    the forward flow, and the columns at `z_L` (`curvature_columns`)."""
    net, key = resolve(config, kw, params)
    check_per_example(net, what)
    if mc is not None:
        mc = check_int("mc_samples", mc, 1, "Monte Carlo columns per example")
        if key is None:
            raise ValueError(
                f"{what} with mc_samples draws its columns at random: pass key= (e.g. "
                "key=jax.random.key(0)); the same key gives the same estimate."
            )
        check_key(key)
    flow = forward_flow(net, params, net.check_x(x), net.context(True, key))
    return net, flow, curvature_columns(net, flow, y, mc, key)


def curvature_columns(net: Network, flow: Flow, y: Any, mc: int | None, key: Any) -> Array:
    """`(C, n, n_L)`: cotangents of `z_L` whose outer products sum to the reduced loss's
    curvature in the output, per example: every column of its factor (`mc=None`), or
    `mc` draws from `key` folded with 1, scaled by `1/sqrt(mc)`."""
    z, a, n = flow.z, flow.a, flow.z.shape[0]
    targets = net.loss.targets(y, n, net.n_out, z.dtype)
    if mc is None:
        factor = net.loss.sqrt_curvature(z, a, targets)  # (n, K, C): H_n = S_n S_n^T
        return _to_logits(net, flow, factor * jnp.sqrt(net.scale(n)))
    draws = net.loss.sample_curvature(z, a, targets, jax.random.fold_in(key, 1), mc)
    return _to_logits(net, flow, draws * jnp.sqrt(net.scale(n) / mc))


def _to_logits(net: Network, flow: Flow, s: Array) -> Array:
    """Columns `s: (n, K, C)` of a factor in the loss's own variable, as cotangents of
    `z_L`, `(C, n, K)`: through the output activation for a loss split at `y_hat`."""
    columns = jnp.moveaxis(s, 2, 0)
    if not net.loss.any_output:
        return columns
    return jax.vmap(lambda u: net.output.backward(flow.z, flow.a, u))(columns)


def _output_curvature(net: Network, flow: Flow, dl_dyhat: Array) -> Array:
    """`phi_out''(z_L) * dL/dy_hat`: the output activation's second-order term at `z_L`."""
    second = net.output.second_derivative(flow.z, flow.a)
    if second is None:
        raise ValueError(
            f"diag_hessian needs the second derivative of output_activation="
            f"{net.output.name!r} under loss={net.loss.name!r}, which is not elementwise "
            "(or has no deriv2); use its canonical link, or jaxbp.diag_ggn."
        )
    return second * dl_dyhat


def _signed_columns(r: Array, upto: int | None) -> list[tuple[float, int | None, Array]]:
    """`diag(r)` per example, `r: (n, j)`, as two signed groups of `j` columns each,
    `sqrt(max(+-r, 0)) e_j`, entering the backward flow at the input of layer `upto`."""
    eye = jnp.eye(r.shape[1], dtype=r.dtype)[:, None, :]  # (j, 1, j)
    return [(sign, upto, jnp.sqrt(jnp.maximum(sign * r, 0))[None] * eye) for sign in (1.0, -1.0)]


def _squares(flow: Flow, groups: list[tuple[float, Any, Array]], per_example: bool) -> list:
    """Sum over the signed column groups of each parametric layer's squared terms: each
    group's columns run back (eq. 1.4, vmapped over the columns) from where they enter."""
    total: list[Any] = [None] * len(flow.layers)
    for sign, upto, columns in groups:
        outs = jax.vmap(lambda d, upto=upto: backward_flow(flow, d, upto).out)(columns)
        for i, out in enumerate(outs):
            layer = flow.layers[i]
            if layer.has_params:
                sq = layer.squared_terms(flow.params[i], flow.caches[i], out, per_example)
                sq = jax.tree.map(lambda t, sign=sign: sign * t, sq)
                total[i] = sq if total[i] is None else jax.tree.map(jnp.add, total[i], sq)
    return [t for t, layer in zip(total, flow.layers, strict=True) if layer.has_params]
