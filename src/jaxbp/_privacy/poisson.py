"""Poisson sampling for DP-SGD, under `jit`: the sampling the accountant analyses.

Each step, every one of the `n` examples joins the batch independently with probability
`q = batch_size / n`. Drawn as its equivalent, the batch size `K ~ Binomial(n, q)` and then
`K` distinct examples uniformly at random, the first `K` of a random permutation; the
batch is padded to a fixed `capacity` (so that one program serves every step) and masked,
and the clipped, noised sum is divided by the expected batch size `q n`, as Opacus does.
The capacity is `q n + 8 sqrt(q n (1 - q)) + 1` (at most `n`): a batch larger than that
has probability below about `1e-15` (a normal tail at 8 deviations, the binomial's being
lighter than Chernoff allows), and would be cut to it. An epoch runs
`ceil(n / batch_size)` such steps, as the shuffled epoch does.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._train.paths import Batch, Setting
from jaxbp._train.shuffle import permutation

Array = jax.Array

__all__ = ["SAMPLINGS", "poisson_batch", "poisson_capacity", "poisson_epoch"]

SAMPLINGS = ("shuffle", "poisson")
"""How a DP-SGD epoch samples its batches."""


def poisson_capacity(n: int, q: float) -> int:
    """The padded batch size for Poisson sampling at rate `q` from `n` examples."""
    mean = q * n
    return min(n, math.ceil(mean + 8 * math.sqrt(mean * (1 - q))) + 1)


def poisson_batch(key: Array, n: int, q: float, capacity: int) -> tuple[Array, Array]:
    """`(idx, mask)`, `(capacity,)` each: a Poisson-sampled batch of `range(n)` at rate
    `q`, its `K ~ Binomial(n, q)` examples first and padding masked out."""
    k_size, k_order = jax.random.split(key)
    size = jax.random.binomial(k_size, n, q)
    idx = permutation(k_order, n)[:capacity]
    return idx, (jnp.arange(capacity) < size).astype(jnp.float32)


def poisson_epoch(
    path: Any, setting: Setting, params: Any, state: Any, data: Batch, batch_size: int
) -> tuple[Any, Any, dict[str, Array]]:
    """One epoch of `ceil(n / batch_size)` Poisson-sampled DP-SGD steps in one `lax.scan`
    (`path.masked` each); metrics gain `batch`, each step's `K`."""
    key, x, y = data
    n = x.shape[0]
    q = batch_size / n
    capacity = poisson_capacity(n, q)
    steps = -(-n // batch_size)

    def body(carry: tuple[Any, Any], step_key: Array) -> tuple[Any, dict[str, Array]]:
        k_batch, k_step = jax.random.split(step_key)
        idx, mask = poisson_batch(k_batch, n, q, capacity)
        batch = Batch(k_step, x[idx], y[idx])
        params, state, metrics = path.masked(setting, *carry, batch, mask.astype(x.dtype), q * n)
        return (params, state), metrics

    keys = jax.random.split(jax.random.fold_in(key, 1), steps)
    (params, state), metrics = jax.lax.scan(body, (params, state), keys)
    return params, state, metrics
