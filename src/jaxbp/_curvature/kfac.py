"""Kronecker factors of the Gauss-Newton matrix (K-FAC), and their eigenvalue-corrected
variant (EKFAC), from the two stored flows.

Index alphabet: `n` batch (`N`), `c` columns, `i` a dense layer's inputs, `o` its outputs.

A dense layer's gradient terms are outer products `a^(n) (delta^(n))^T` (eq. 1.3), so its
block of `G = sum_n J_n^T H_n J_n` is `sum_n (a_n a_n^T) kron D_n` with
`D_n = sum_c delta_{n,c} delta_{n,c}^T`, the columns those of `jaxbp.diag_ggn` carried
back to the layer's output. K-FAC takes it as the product of two averages:

    A = (1/N) sum_n a_n a_n^T: (i, i)        G = sum_n D_n: (o, o)
    block of W_l (flattened row-major) = kron(A, G),   block of b_l = G

(exact columns: BackPACK's KFLR, curvlinops' type-2 K-FAC; `kind="mc"`: sampled columns,
K-FAC proper). EKFAC (George et al. 2018) keeps K-FAC's eigenbasis, `A = Q_A L_A Q_A^T`,
`G = Q_G L_G Q_G^T`, and replaces its eigenvalues by the block's own diagonal in that
basis, `S = sum_n (Q_A^T a_n)^2 (Q_G^T D_n Q_G)_diag` (and `S_b` for the bias).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._core.backprop import backward_flow
from jaxbp._core.config import Keywords
from jaxbp._core.flow import Flow
from jaxbp._core.network import Network, NetworkLike, Params
from jaxbp._curvature.diagonals import ggn_columns

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
KINDS = ("exact", "mc")

__all__ = ["EigenFactors", "KroneckerFactors", "ekfac", "ekfac_mvp", "kfac", "kfac_mvp"]


class KroneckerFactors(NamedTuple):
    """One dense layer's K-FAC factors: `A: (n_{l-1}, n_{l-1})`, `G: (n_l, n_l)`; its
    weight block is `kron(A, G)` (`W` flattened row-major), its bias block `G`."""

    A: Array
    G: Array


class EigenFactors(NamedTuple):
    """One dense layer's EKFAC: the eigenvectors `QA`, `QG` of its K-FAC factors and the
    corrected eigenvalues, `SW: (n_{l-1}, n_l)` of the weight block, `Sb: (n_l,)` of the
    bias block."""

    QA: Array
    QG: Array
    SW: Array
    Sb: Array


def kfac(
    params: Params,
    x: Array,
    y: Array,
    config: NetworkLike = None,
    *,
    kind: str = "exact",
    mc_samples: int = 1,
    **kw: Unpack[Keywords],
) -> list[KroneckerFactors]:
    """The K-FAC factors of every dense layer, one `KroneckerFactors(A, G)` per entry of
    `params` (module docstring). `kind="exact"` pushes back every column of the loss's
    curvature factor; `kind="mc"` `mc_samples` sampled columns, drawn from `key`. Takes
    the arguments of `jaxbp.manual_grad`; a layer with parameters whose terms are not
    outer products (a normalisation) is refused by name."""
    flow, outs = _flows(params, x, y, config, kw, kind, mc_samples)
    factors = []
    for layer, cache, out in _dense(flow, outs):
        a, g = layer.outer_factors(cache, out)  # (n, i), (C, n, o)
        a_cov = a.T @ a / a.shape[0]
        g_cov = jnp.einsum("cno,cnp->op", g, g)
        factors.append(KroneckerFactors(a_cov, g_cov))
    return factors


def ekfac(
    params: Params,
    x: Array,
    y: Array,
    config: NetworkLike = None,
    *,
    kind: str = "exact",
    mc_samples: int = 1,
    **kw: Unpack[Keywords],
) -> list[EigenFactors]:
    """The eigenvalue-corrected K-FAC (EKFAC) of every dense layer, one `EigenFactors`
    per entry of `params`: the eigenbases of `kfac`'s factors and the diagonal of each
    block in them, from the same flows. Same arguments as `kfac`."""
    flow, outs = _flows(params, x, y, config, kw, kind, mc_samples)
    eigen = []
    for layer, cache, out in _dense(flow, outs):
        a, g = layer.outer_factors(cache, out)
        qa = jnp.linalg.eigh(a.T @ a / a.shape[0])[1]
        qg = jnp.linalg.eigh(jnp.einsum("cno,cnp->op", g, g))[1]
        g2 = jnp.sum((g @ qg) ** 2, axis=0)  # (n, o): sum_c (Q_G^T delta_{n,c})^2
        eigen.append(EigenFactors(qa, qg, ((a @ qa) ** 2).T @ g2, jnp.sum(g2, axis=0)))
    return eigen


def kfac_mvp(factors: list[KroneckerFactors], v: Params) -> Params:
    """`(A kron G) vec(V_W)` and `G v_b` for every dense layer: `{"W": A V G, "b": G v}`,
    shaped like `v` (params-shaped, as `kfac`'s factors are per entry)."""
    return [
        {"W": f.A @ vl["W"] @ f.G, "b": f.G @ vl["b"]} for f, vl in zip(factors, v, strict=True)
    ]


def ekfac_mvp(eigen: list[EigenFactors], v: Params) -> Params:
    """The EKFAC approximation times `v`: `Q_A (S * (Q_A^T V Q_G)) Q_G^T` for each weight,
    `Q_G (S_b * (Q_G^T v_b))` for each bias; shaped like `v`."""
    return [
        {
            "W": e.QA @ (e.SW * (e.QA.T @ vl["W"] @ e.QG)) @ e.QG.T,
            "b": e.QG @ (e.Sb * (e.QG.T @ vl["b"])),
        }
        for e, vl in zip(eigen, v, strict=True)
    ]


def _flows(
    params: Params, x: Any, y: Any, config: Any, kw: dict[str, Any], kind: Any, mc: Any
) -> tuple[Flow, Any]:
    """The forward flow and, at every layer's output, the curvature columns carried back
    (`(C, n, o)` each); refuses an unknown kind and layers without Kronecker factors."""
    if kind not in KINDS:
        raise ValueError(
            f"kind must be one of {list(KINDS)} ('exact': every column of the loss's "
            f"curvature factor, 'mc': sampled ones); got {kind!r}."
        )
    net, flow, columns = ggn_columns(
        params, x, y, config, kw, None if kind == "exact" else mc, "kfac"
    )
    check_dense(net)
    outs = jax.vmap(lambda d: backward_flow(flow, d).out)(columns)
    return flow, outs


def check_dense(net: Network) -> None:
    for layer in net.layers:
        if layer.has_params and not layer.provides("outer_factors"):
            raise ValueError(
                f"K-FAC approximates layers whose gradient terms are outer products (dense "
                f"layers); the layer {layer!r} ({layer.name!r}) has parameters but no "
                "outer_factors. Use a network of dense layers, or jaxbp.diag_ggn."
            )


def _dense(flow: Flow, outs: Any) -> list[tuple[Any, Any, Array]]:
    return [
        (layer, cache, out)
        for layer, cache, out in zip(flow.layers, flow.caches, outs, strict=True)
        if layer.has_params
    ]
