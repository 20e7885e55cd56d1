"""Normalisation layers (section 1.1.3: normalisation as a remedy for depth), each with
its backward pass derived by hand.

Index alphabet: `n` batch (`N` examples), `j` units. Both layers normalise, then scale
and shift with learnable `gain` and `bias` (`(j,)` each):

    xhat = (a - mu) / sqrt(var + eps),    out = gain * xhat + bias

Layer normalisation takes `mu` and `var` over the units of each example, batch
normalisation over the examples of each unit (in training; at evaluation over the
running averages of those batch statistics). With `dxhat = g * gain`, the chain rule
through `mu` and `var` (both functions of every entry they average) gives, over the
axis `k` of the average (`K` entries):

    da = (dxhat - mean_k(dxhat) - xhat * mean_k(dxhat * xhat)) / sqrt(var + eps)
    dgain = sum_n g * xhat,    dbias = sum_n g

For layer normalisation `k` runs over the units of one example, so every example's
gradient depends on that example alone; for batch normalisation it runs over the batch,
so it depends on the whole batch (no per-example gradients).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.layers import Context, Layer, check_floating, check_keys
from jaxbp._core.validate import check_in_dtype, is_real

Array = jax.Array
Params = dict[str, Array]

__all__ = ["BatchNorm", "LayerNorm"]


def _check_eps(owner: str, eps: Any) -> float:
    if not is_real(eps) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{owner} eps must be a number > 0, e.g. 1e-5; got {eps!r}.")
    return float(eps)


def _init_affine(n: int, dtype: Any) -> Params:
    return {"gain": jnp.ones((n,), dtype), "bias": jnp.zeros((n,), dtype)}


def _check_affine(params: Any, n_in: int | None, where: str, owner: str) -> int:
    rule = f"{owner} parameters must be {{'gain': (n,), 'bias': (n,)}}"
    check_keys(params, {"gain", "bias"}, where, rule)
    check_floating(params, where)
    shapes = {k: np.shape(v) for k, v in params.items()}
    n = shapes["gain"][0] if len(shapes["gain"]) == 1 else None
    if n is None or shapes["bias"] != (n,) or (n_in is not None and n != n_in):
        raise ValueError(
            f"{where} must hold gain and bias of shape ({n_in if n_in else 'n'},) for the "
            f"{n_in if n_in else 'n'} units it normalises; got {shapes}."
        )
    return n


def _normalise(a: Array, axis: int, eps: float) -> tuple[Array, Array, Array, Array]:
    """`(xhat, inv_std, mean, var)` with the statistics over `axis` (kept as an axis)."""
    check_in_dtype("eps", eps, a.dtype, "Pass an eps the inputs' dtype holds, e.g. 1e-5.")
    mean = jnp.mean(a, axis=axis, keepdims=True)
    var = jnp.mean(jnp.square(a - mean), axis=axis, keepdims=True)
    inv_std = jax.lax.rsqrt(var + eps)
    return (a - mean) * inv_std, inv_std, mean, var


def _normalise_backward(dxhat: Array, xhat: Array, inv_std: Array, axis: int) -> Array:
    """`da` from `dxhat` through a normalisation whose statistics average over `axis`."""
    mean_d = jnp.mean(dxhat, axis=axis, keepdims=True)
    mean_dx = jnp.mean(dxhat * xhat, axis=axis, keepdims=True)
    return (dxhat - mean_d - xhat * mean_dx) * inv_std


@dataclasses.dataclass(frozen=True, repr=False)
class LayerNorm(Layer):
    """Layer normalisation: each example's units to mean 0 and variance 1, then
    `gain * xhat + bias` (see the module docstring). `a: (n, j) -> (n, j)`."""

    eps: float = 1e-5

    name = "layer_norm"
    has_params = True
    per_example = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _check_eps("LayerNorm", self.eps))

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[Params, int]:
        del key
        return _init_affine(n_in, dtype), n_in

    def check(self, params: Any, n_in: int | None, where: str) -> int:
        return _check_affine(params, n_in, where, "LayerNorm")

    def forward(self, params: Params, a: Array, ctx: Context) -> tuple[Array, Any]:
        del ctx
        xhat, inv_std, _, _ = _normalise(a, 1, self.eps)
        return params["gain"][None, :] * xhat + params["bias"][None, :], (xhat, inv_std)

    def backward(self, params: Params, cache: Any, g: Array) -> tuple[Array, Params]:
        xhat, inv_std = cache
        da = _normalise_backward(g * params["gain"][None, :], xhat, inv_std, axis=1)
        return da, {"gain": jnp.sum(g * xhat, axis=0), "bias": jnp.sum(g, axis=0)}

    def per_example_grads(self, params: Params, cache: Any, g: Array) -> Params:
        del params
        return {"gain": g * cache[0], "bias": g}

    def per_example_sq_norms(self, params: Params, cache: Any, g: Array) -> Array:
        del params
        return jnp.sum(jnp.square(g * cache[0]), axis=1) + jnp.sum(g * g, axis=1)


@dataclasses.dataclass(frozen=True, repr=False)
class BatchNorm(Layer):
    """Batch normalisation: in training each unit to mean 0 and variance 1 over the batch,
    then `gain * xhat + bias`; at evaluation with the running averages instead.

    The running averages are state, `{"mean": (j,), "var": (j,)}` per layer, passed in
    and returned (never hidden): after a training batch with statistics `mu`, `var`
    (the biased variance, as Flax), `mean <- momentum mean + (1 - momentum) mu`, and the
    same for `var`. `a: (n, j) -> (n, j)`.
    """

    momentum: float = 0.9
    eps: float = 1e-5

    name = "batch_norm"
    has_params = True
    has_state = True
    per_example = False
    min_batch = 2  # in training: one sample normalises to 0, the output no longer depends on x
    zeroes_preceding_bias = True  # the batch mean removes it: its gradient is exactly 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _check_eps("BatchNorm", self.eps))
        m = self.momentum
        if not is_real(m) or not 0 <= m < 1:
            raise ValueError(
                f"BatchNorm momentum must lie in [0, 1) (the weight of the old running "
                f"average), e.g. 0.9; got {m!r}."
            )
        object.__setattr__(self, "momentum", float(m))

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[Params, int]:
        del key
        return _init_affine(n_in, dtype), n_in

    def init_state(self, params: Params) -> dict[str, Array]:
        """Running averages that start as the identity normalisation: mean 0, var 1."""
        return {"mean": jnp.zeros_like(params["gain"]), "var": jnp.ones_like(params["gain"])}

    def check(self, params: Any, n_in: int | None, where: str) -> int:
        return _check_affine(params, n_in, where, "BatchNorm")

    def forward(self, params: Params, a: Array, ctx: Context) -> tuple[Array, Any]:
        if ctx.train:
            if a.shape[0] < self.min_batch:
                raise ValueError(
                    f"BatchNorm in training normalises over the batch and needs at least "
                    f"{self.min_batch} samples; got a batch of {a.shape[0]} (its output would "
                    "be the bias alone, the loss independent of x). Use batches of "
                    f"{self.min_batch} or more, or norm='layer'."
                )
            xhat, inv_std, mean, var = _normalise(a, 0, self.eps)
            cache = (xhat, inv_std, mean[0], var[0])
        else:
            if ctx.stats is None:
                raise ValueError(
                    "BatchNorm at evaluation normalises with its running averages: pass "
                    "stats= (from jaxbp.init_stats and the training steps)."
                )
            mean, var = (jnp.asarray(ctx.stats[k], a.dtype)[None, :] for k in ("mean", "var"))
            check_in_dtype("eps", self.eps, a.dtype, "Pass an eps the inputs' dtype holds.")
            inv_std = jax.lax.rsqrt(var + self.eps)
            xhat = (a - mean) * inv_std
            cache = (xhat, inv_std, None, None)
        return params["gain"][None, :] * xhat + params["bias"][None, :], cache

    def next_state(self, state: dict[str, Array], cache: Any) -> dict[str, Array]:
        """The running averages after a training batch whose forward cache is `cache`."""
        _, _, mean, var = cache
        m = self.momentum
        return {
            "mean": m * state["mean"] + (1 - m) * mean.astype(state["mean"].dtype),
            "var": m * state["var"] + (1 - m) * var.astype(state["var"].dtype),
        }

    def backward(self, params: Params, cache: Any, g: Array) -> tuple[Array, Params]:
        """Through the batch mean and variance in training (module docstring); through a
        fixed affine map at evaluation."""
        xhat, inv_std, mean, _ = cache
        dxhat = g * params["gain"][None, :]
        # In training through the batch statistics; at evaluation they are constants.
        da = dxhat * inv_std if mean is None else _normalise_backward(dxhat, xhat, inv_std, 0)
        return da, {"gain": jnp.sum(g * xhat, axis=0), "bias": jnp.sum(g, axis=0)}
