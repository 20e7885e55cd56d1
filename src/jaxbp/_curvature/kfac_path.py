"""K-FAC as a training path: the gradient preconditioned by damped inverses of running
averages of the Kronecker factors (Martens and Grosse 2015), all from one backward pass.

Each step stacks the loss's output delta and the curvature columns (one sampled column,
or every exact one) and carries them back together (eq. 1.4, vmapped): the first gives
the gradient, the others the factors of `jaxbp.kfac`. The running averages
`A <- decay A + (1 - decay) A_batch` (and `G`) live in the `TrainState`'s `path_state`;
every `every` steps their damped inverses are refreshed, `(A + sqrt(damping) I)^-1` and
`(G + sqrt(damping) I)^-1` (of the factors' positive semi-definite parts), so that the
preconditioner approximates `(kron(A, G) + damping I)^-1` (the factored Tikhonov damping
of the paper, without its rescaling). The preconditioned gradient `A^-1 dW G^-1`
(`G^-1 db` for the bias) then goes to the optimizer, e.g. `optax.sgd(lr, momentum=0.9)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from jaxbp._core.backprop import backward_flow, cast_like
from jaxbp._core.flow import forward_flow, source
from jaxbp._core.network import Network, Params
from jaxbp._core.validate import check_in_dtype, check_int, check_real
from jaxbp._curvature.diagonals import curvature_columns
from jaxbp._curvature.kfac import KINDS, check_dense
from jaxbp._per_example.terms import check_per_example
from jaxbp._train.paths import Batch, Gradient, GradientPath, Setting
from jaxbp._train.state import TrainState

Array = jax.Array

__all__ = ["KFAC", "KFACState"]


class KFACState(NamedTuple):
    """K-FAC's part of the `TrainState`: per dense layer the running averages `A`, `G`
    and the damped inverses in use, and the steps taken."""

    A: list[Array]
    G: list[Array]
    inv_A: list[Array]
    inv_G: list[Array]
    count: Array


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class KFAC(GradientPath):
    """K-FAC as a gradient path (module docstring).

    - `damping`: `lambda > 0`, added as `sqrt(lambda) I` to each factor's positive
      semi-definite part (default 0.1: with small batches the factors are far from full
      rank, and less damping diverges unless the step is bounded). K-FAC here has no step
      control of its own (no KL clipping, no adaptive damping): bound the step with the
      optimizer, e.g. `optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr,
      momentum=0.9))`, which lets a small damping (1e-5) train the depth-10 sigmoid network
      of `experiments/kfac_depth.py` where plain SGD and unclipped K-FAC stay at chance.
    - `every`: `T`, the steps between refreshes of the inverses (default 10).
    - `decay`: the running averages' weight of the past, in `[0, 1)` (default 0.95).
    - `kind`: "mc" (default: one column sampled from the model's output distribution a
      step, K-FAC proper, drawn from the step's key) or "exact" (every column of the
      loss's curvature factor, KFLR).

    The network must be dense layers with activations (and dropout); the state is
    `jaxbp.TrainState.create(optimizer, params, network, KFAC())`.
    """

    damping: float = 0.1
    every: int = 10
    decay: float = 0.95
    kind: str = "mc"

    name = "K-FAC"
    keeps = "K-FAC's factors"

    def __post_init__(self) -> None:
        meaning = "> 0, added to each factor as sqrt(damping) I"
        check_real("damping", self.damping, meaning, "Pass e.g. damping=0.1.", low=0)
        meaning = "in [0, 1), the running averages' weight of the past"
        check_real("decay", self.decay, meaning, "Pass e.g. decay=0.95.", low=0)
        check_int("every", self.every, 1, "the steps between refreshes of the inverses")
        if not self.damping > 0 or not self.decay < 1:
            raise ValueError(
                f"K-FAC needs damping > 0 (the factors may be singular) and decay < 1; got "
                f"damping={self.damping!r}, decay={self.decay!r}. Pass e.g. "
                "jaxbp.KFAC(damping=0.1, decay=0.95)."
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}; got {self.kind!r}.")

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.kind == "mc"

    def check(self, net: Network) -> None:
        check_per_example(net, "K-FAC")
        check_dense(net)

    def init(self, net: Network, params: Params) -> KFACState:
        dense = [p for p in net.spread(params) if p is not None]  # the parametric layers
        zeros = lambda n, like: jnp.zeros((n, n), jnp.result_type(like))  # noqa: E731
        eye = lambda n, like: jnp.eye(n, dtype=jnp.result_type(like))  # noqa: E731
        a = [zeros(p["W"].shape[0], p["W"]) for p in dense]
        g = [zeros(p["W"].shape[1], p["W"]) for p in dense]
        inv_a = [eye(p["W"].shape[0], p["W"]) for p in dense]
        inv_g = [eye(p["W"].shape[1], p["W"]) for p in dense]
        return KFACState(a, g, inv_a, inv_g, jnp.zeros((), jnp.int32))

    def step(
        self, setting: Setting, params: Params, state: TrainState, batch: Batch
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        """One K-FAC update: the gradient (eq. 1.4 from the loss's delta) and the batch's
        factors (the curvature columns' deltas alone, vmapped: no weight gradients of
        theirs are formed), the running averages, the inverses (refreshed every `every`
        steps), the preconditioned gradient, the optimizer."""
        net, (key, x, y) = setting.net, batch
        dtype = jnp.result_type(*jax.tree.leaves(params))
        check_in_dtype("damping", self.damping, dtype, "Pass e.g. damping=0.1.")
        flow = forward_flow(net, params, x, net.context(True, key))  # masks from the key
        value, delta_L = source(net, flow, y)
        columns = curvature_columns(net, flow, y, None if self.kind == "exact" else 1, key)
        grads = cast_like(backward_flow(flow, delta_L).grads, params)
        outs = jax.vmap(lambda d: backward_flow(flow, d).out)(columns)  # (C, n, n_l) each
        kstate = self._averaged(state.path_state, flow, outs)
        kstate = jax.lax.cond(kstate.count % self.every == 0, self._refreshed, lambda s: s, kstate)
        kstate = kstate._replace(count=kstate.count + 1)
        g = Gradient(value, self._preconditioned(kstate, grads), {}, state.stats)
        return self.update(setting, params, state._replace(path_state=kstate), g)

    def _averaged(self, kstate: KFACState, flow: Any, outs: Any) -> KFACState:
        """The running averages moved toward this batch's factors (the batch's alone at the
        first step); `outs` are the curvature columns' deltas at each layer's output."""
        weight = jnp.where(kstate.count == 0, 0.0, self.decay)
        a_new, g_new = [], []
        dense = [
            (layer, cache, out)
            for layer, cache, out in zip(flow.layers, flow.caches, outs, strict=True)
            if layer.has_params
        ]
        for (layer, cache, out), a_old, g_old in zip(dense, kstate.A, kstate.G, strict=True):
            a, g = layer.outer_factors(cache, out)
            a_batch, g_batch = a.T @ a / a.shape[0], jnp.einsum("cno,cnp->op", g, g)
            a_new.append((weight * a_old + (1 - weight) * a_batch).astype(a_old.dtype))
            g_new.append((weight * g_old + (1 - weight) * g_batch).astype(g_old.dtype))
        return kstate._replace(A=a_new, G=g_new)

    def _refreshed(self, kstate: KFACState) -> KFACState:
        root = math.sqrt(self.damping)

        def inverse(m: Array) -> Array:
            # The factors are positive semi-definite; their running average in float32 is
            # not quite (eigenvalues down to -4e-6 were seen on a depth-10 sigmoid net),
            # which a damping below that would turn indefinite. Cholesky where the damped
            # factor is positive definite (3.7x faster than eigh at 785x785 on a CPU
            # core); else the inverse of its positive semi-definite part, by eigh.
            sym = (m + m.T) / 2
            eye = jnp.eye(m.shape[0], dtype=m.dtype)
            chol = jnp.linalg.cholesky(sym + root * eye)

            def psd_part(sym: Array) -> Array:
                w, q = jnp.linalg.eigh(sym)
                return (q / (jnp.maximum(w, 0) + root)[None, :]) @ q.T

            definite = jnp.all(jnp.isfinite(chol))
            return jax.lax.cond(definite, lambda _: cho_solve((chol, True), eye), psd_part, sym)

        return kstate._replace(
            inv_A=[inverse(a) for a in kstate.A], inv_G=[inverse(g) for g in kstate.G]
        )

    def _preconditioned(self, kstate: KFACState, grads: Params) -> Params:
        """`A^-1 dW G^-1` and `G^-1 db` for every dense layer (all the parametric ones)."""
        return [
            {"W": inv_a @ g["W"] @ inv_g, "b": inv_g @ g["b"]}
            for g, inv_a, inv_g in zip(grads, kstate.inv_A, kstate.inv_G, strict=True)
        ]
