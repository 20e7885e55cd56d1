"""Differentially private gradients (DP-SGD): clip each example, sum, add noise, average.

The recipe of Abadi et al. (2016), with `g_n = grad l^n` the gradient of example `n`'s
own loss, clip norm `C` and noise multiplier `sigma`:

    g = ( sum_n g_n min(1, C / ||g_n||)  +  N(0, (sigma C)^2 I) ) / batch

Clipping never builds a `g_n`. Its norm comes from the stored flows (see
`per_example_grad_norms`), and since example `n`'s term of eq. 1.3 is the outer product
of two rows, `a_{l-1}^(n)` and `delta_l^(n)`, scaling the rows of `delta_l` by
`f_n = min(1, C / ||g_n||)` scales its whole term:

    sum_n f_n a_{l-1}^(n) (delta_l^(n))^T = a_{l-1}^T @ (f[:, None] * delta_l)      (1.3)

one matmul per layer, like `manual_grad`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from numbers import Real
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp._core.backprop import cast_like, gradient
from jaxbp._core.config import Config, Keywords
from jaxbp._core.network import Network, Params, resolve
from jaxbp._core.validate import check_in_dtype, check_key
from jaxbp._per_example.terms import check_per_example, norms, parametric
from jaxbp._privacy.poisson import SAMPLINGS, poisson_epoch
from jaxbp._train.builders import Fn, Plan, build_epoch
from jaxbp._train.paths import Batch, Gradient, GradientPath, Setting
from jaxbp._train.state import TrainState

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array

__all__ = ["DPSGD", "dp_value_and_grad", "make_dp_train_epoch", "make_dp_train_step"]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class DPSGD(GradientPath):
    """The DP-SGD gradient as a training path (see the module docstring): each example's
    gradient clipped to norm `l2_clip`, summed, `N(0, (noise_multiplier l2_clip)^2)` added
    to every coordinate, divided by the batch. Each step draws its noise from the step's
    key (and a dropout network's masks from that key folded with 1). Its metric
    `clipped` is the fraction of examples whose gradient norm exceeded `l2_clip`."""

    l2_clip: float
    noise_multiplier: float
    sampling: str = "shuffle"

    name = "DP-SGD"
    random = True

    def __post_init__(self) -> None:
        _check_dp(self.l2_clip, self.noise_multiplier)
        object.__setattr__(self, "l2_clip", float(self.l2_clip))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"sampling must be one of {list(SAMPLINGS)} ('shuffle': a permutation cut "
                "into fixed-size batches; 'poisson': each example in a step's batch with "
                f"probability batch_size / n, as the accountant assumes); got {self.sampling!r}."
            )

    def epoch(
        self, setting: Setting, params: Params, state: TrainState, data: Batch, batch_size: int
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        """Shuffled fixed-size batches (the other paths' epoch), or Poisson-sampled ones
        (`jaxbp._privacy.poisson`)."""
        if self.sampling == "shuffle":
            return super().epoch(setting, params, state, data, batch_size)
        return poisson_epoch(self, setting, params, state, data, batch_size)

    def masked(
        self,
        setting: Setting,
        params: Params,
        state: TrainState,
        batch: Batch,
        mask: Array,
        size: float,
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        """One update on the rows of `batch` that `mask` keeps, normalised by `size` (the
        expected batch size of Poisson sampling, as Opacus does)."""
        key, x, y = batch
        value, grads, norms_n = dp_gradient(
            setting.net, params, key, x, y, self.l2_clip, self.noise_multiplier, mask, size
        )
        kept = jnp.maximum(jnp.sum(mask), 1)
        over = jnp.sum(mask * (norms_n > self.l2_clip)) / kept
        metrics = {"clipped": over.astype(value.dtype), "batch": jnp.sum(mask)}
        return self.update(setting, params, state, Gradient(value, grads, metrics, []))

    def check(self, net: Network) -> None:
        check_per_example(net, "DP-SGD")

    def value_and_grad(
        self, net: Network, params: Params, x: Array, y: Any, key: Any, stats: list[Any]
    ) -> Gradient:
        del stats  # no layer with state: check refuses them
        value, grads, norms_n = dp_gradient(
            net, params, key, x, y, self.l2_clip, self.noise_multiplier
        )
        clipped = jnp.mean((norms_n > self.l2_clip).astype(value.dtype))
        return Gradient(value, grads, {"clipped": clipped}, [])


def dp_gradient(
    net: Network,
    params: Params,
    key: Array,
    x: Array,
    y: Any,
    l2_clip: Any,
    noise: Any,
    mask: Array | None = None,
    size: Any = None,
) -> tuple[Array, Params, Array]:
    """`(mean loss, DP-SGD gradient, per-example norms)` on checked arguments (see
    `dp_value_and_grad`). With `mask: (batch,)` only its rows count (a padded Poisson
    batch: the loss is their mean), and the sum is divided by `size` instead of the batch."""
    dtype = jnp.result_type(*jax.tree.leaves(params))
    fix = "Pass values the parameters' dtype can hold (or train in float64)."
    check_in_dtype("l2_clip", l2_clip, dtype, fix)
    if not isinstance(noise, jax.core.Tracer) and not isinstance(l2_clip, jax.core.Tracer):
        check_in_dtype("noise_multiplier * l2_clip", noise * l2_clip, dtype, fix)
    net = net.replace(reduction="sum")  # each row of delta_l is example n's own dl^n/dz_l
    # the summed loss; a dropout network's masks come from a key of their own
    value, flow, back = gradient(net, params, x, y, jax.random.fold_in(key, 1))
    norms_n = norms(flow, back)
    scale = l2_clip / jnp.maximum(norms_n, l2_clip)  # min(1, C / ||g_n||), (batch,)
    if mask is not None:
        scale = scale * mask
        targets = net.loss.targets(y, *flow.z.shape, flow.z.dtype)
        value = jnp.sum(mask * net.loss.sample_losses(flow.z, flow.a, targets))
    scale = scale[:, None]
    clipped = [  # eq. 1.3 with each example's rows of delta_l scaled
        layer.backward(p, cache, scale * g)[1] for layer, p, cache, g in parametric(flow, back)
    ]
    leaves = jax.tree.leaves(clipped)  # the order of cast_like
    if isinstance(noise, jax.core.Tracer) or noise > 0:
        keys = jax.random.split(key, len(leaves))
        std = noise * l2_clip
        leaves = [
            g + std * jax.random.normal(k, g.shape, g.dtype)
            for g, k in zip(leaves, keys, strict=True)
        ]
    rows = flow.z.shape[0] if mask is None else jnp.maximum(jnp.sum(mask), 1)
    grads = cast_like([g / (rows if size is None else size) for g in leaves], params)
    return value / rows, grads, norms_n


def dp_value_and_grad(
    params: Params,
    key: Array,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    *,
    l2_clip: float,
    noise_multiplier: float,
    **keywords: Unpack[Keywords],
) -> tuple[Array, Params, Array]:
    """The DP-SGD gradient by eqs. 1.3-1.4: `(value, grads, norms)`.

    **Arguments:** those of `jaxbp.loss_fn` (the reduction is fixed by the recipe, and a
    `config`'s is ignored), and

    - `key`: a `jax.random` key for the noise, split once per leaf (and, folded with 1,
      for a dropout network's masks).
    - `l2_clip`: `C > 0`, the bound on each example's gradient norm `||grad l^n||`.
    - `noise_multiplier`: `sigma >= 0`; the noise on the summed gradient has standard
      deviation `sigma * C` per coordinate. `0` gives the clipped mean without noise.

    Both are Python numbers or scalar arrays, and may be traced (to `jax.vmap` a sweep
    over them); their values are checked when concrete.

    **Returns:**

    - `value`: the mean loss over the batch, before clipping (not private: for monitoring).
    - `grads`: `(sum_n clip(grad l^n) + noise) / batch`, of `params`' structure and dtypes.
    - `norms`: `(batch,)`, each `||grad l^n||` before clipping: the norms of
      `per_example_grad_norms(..., reduction="sum")`, on the scale of `l2_clip` (under
      `per_example_grad_norms`' default `reduction="mean"` they are divided by the batch).
    """
    _check_dp(l2_clip, noise_multiplier)
    check_key(key)
    # A traced bound cannot raise: out of range it makes the result NaN (as a traced
    # out-of-range label does), never a gradient of the wrong sign.
    l2_clip = _nan_unless(l2_clip, lambda c: c > 0)
    noise_multiplier = _nan_unless(noise_multiplier, lambda s: s >= 0)
    _refuse_reduction(keywords)
    net, _ = resolve(config, keywords, params)
    check_per_example(net, "DP-SGD")
    return dp_gradient(net, params, key, net.check_x(x), y, l2_clip, noise_multiplier)


def make_dp_train_step(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    l2_clip: float,
    noise_multiplier: float,
    donate: bool = False,
    **keywords: Unpack[Keywords],
) -> Fn:
    """A jitted DP-SGD step `step(params, opt_state, key, x, y) -> (params, opt_state, metrics)`
    (`jaxbp.step_fn` with `jaxbp.DPSGD(l2_clip, noise_multiplier)` and `grad_norm=True`).

    The gradient is `dp_value_and_grad`'s (same keywords), then `optimizer` (any optax
    transformation, e.g. `optax.sgd(0.1)`) turns it into the update. `metrics` holds
    scalars: `loss` (mean, before the update), `grad_norm` (of the noised mean gradient)
    and `clipped` (the fraction of examples whose norm exceeded `l2_clip`). Pass a fresh
    `key` every step. `params` and `opt_state` are donated if `donate=True`. The
    privacy spent is `jaxbp.dp_epsilon`'s.
    """
    plan = _dp_plan(optimizer, config, keywords, DPSGD(l2_clip, noise_multiplier), donate)
    return plan.jit(plan.step, donate)  # the builders' signature: (params, state, key, x, y)


def make_dp_train_epoch(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    batch_size: int,
    l2_clip: float,
    noise_multiplier: float,
    epochs: int = 1,
    donate: bool = False,
    sampling: str = "shuffle",
    **keywords: Unpack[Keywords],
) -> Fn:
    """A whole DP-SGD epoch in one `lax.scan`: `epoch(params, opt_state, key, x, y)`
    (`jaxbp.epoch_fn` with `jaxbp.DPSGD`, the state in the `opt_state` slot).

    It shuffles `x: (n, n_0)` and `y` with `key` exactly as `jaxbp.make_train_epoch` does
    (fixed-size batches of one permutation, `ceil(n / batch_size)` steps), then runs the
    step of `make_dp_train_step` on each, with a noise key per step drawn from `key`.
    `metrics` stack each step's along a leading `(n_steps,)` axis; `epochs=E` runs E
    epochs in the one program (as `make_train_epoch`). With `sampling="poisson"` each
    step's batch is Poisson-sampled instead (`jaxbp._privacy.poisson`: every example in
    with probability `batch_size / n`, padded and masked, the sum divided by the expected
    batch size), the sampling `jaxbp.dp_epsilon` analyses; metrics then add `batch`. For
    the privacy spent, `jaxbp.dp_epsilon` with `jaxbp.dp_epoch_sampling(n=...,
    batch_size=..., epochs=...)`.
    """
    path = DPSGD(l2_clip, noise_multiplier, sampling)
    plan = _dp_plan(optimizer, config, keywords, path, donate)
    return build_epoch(plan, batch_size, epochs, donate)


def _dp_plan(
    optimizer: Any, config: Any, keywords: dict[str, Any], path: DPSGD, donate: Any
) -> Plan:
    """The older DP factories' plan: the recipe fixes the reduction, the gradient's norm
    is always a metric, the state travels in the `opt_state` slot."""
    _refuse_reduction(keywords)
    return Plan.of(
        optimizer, config, path, grad_norm=True, donate=donate, slot=True, keywords=keywords
    )


def _refuse_reduction(keywords: dict[str, Any]) -> None:
    if "reduction" in keywords:
        raise TypeError(
            "DP-SGD fixes the reduction (clip each example's own gradient, sum, then "
            f"average): do not pass reduction= (got {keywords['reduction']!r})."
        )


def _nan_unless(value: Any, holds: Callable[[Array], Array]) -> Any:
    """`value`, or NaN where a traced `value` breaks its rule (concrete ones are checked)."""
    if not isinstance(value, jax.core.Tracer):
        return value
    return jnp.where(holds(value) & jnp.isfinite(value), value, jnp.nan)


def _check_dp(l2_clip: Any, noise_multiplier: Any) -> None:
    rules = (
        ("l2_clip", l2_clip, False, "the bound on each example's gradient norm, e.g. 1.0"),
        ("noise_multiplier", noise_multiplier, True, "noise std / l2_clip; 0 turns it off"),
    )
    for name, value, zero_ok, meaning in rules:
        dtype = getattr(value, "dtype", None)
        real = dtype is not None and (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        )
        scalar_array = real and np.shape(value) == ()
        if isinstance(value, bool) or not (isinstance(value, Real) or scalar_array):
            raise TypeError(
                f"{name} must be a real number, a Python float or a scalar array ({meaning}); "
                f"got {type(value).__name__} {value!r}."
            )
        if isinstance(value, jax.core.Tracer):
            continue  # checked where it is concrete
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            raise ValueError(f"{name} must be finite and {bound} ({meaning}); got {value!r}.")
