"""Epochs: the shuffled batches of one epoch, a `lax.scan` of steps over them, E epochs in
one program, and their metrics averaged per epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._core.validate import check_int, check_key
from jaxbp._train.diagnostics import PER_LAYER
from jaxbp._train.shuffle import permutation

Array = jax.Array
Metrics = dict[str, Array]
Epoch = Callable[[Any, Any, Array, Array, Any], tuple[Any, Any, Metrics]]

__all__ = ["check_batch_size", "epoch_batches", "epoch_means", "repeat_epochs", "scan_epoch"]


def epoch_batches(key: Array, n: int, batch_size: int) -> Array:
    """Shuffled sample indices for one epoch, `(ceil(n / batch_size), batch_size)`.

    The order is a uniformly random permutation (`jaxbp._train.shuffle`: the same guarantee
    as `jax.random.permutation`, with a sort that is faster on CPU). Every sample appears
    once; when `batch_size` does not divide `n`, the last batch is filled up with the
    first indices of the same permutation, so every step sees a full batch and
    `n_steps * batch_size - n` samples appear twice in that epoch. A `batch_size` above
    `n` is refused (a batch would repeat samples within itself).
    """
    check_key(key)
    n, batch_size = check_int("n", n, 1, "the number of samples"), check_batch_size(batch_size)
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is more than the {n} samples; use a batch_size of at most n."
        )
    return batch_indices(key, n, batch_size)


def batch_indices(key: Array, n: int, batch_size: int) -> Array:
    """`epoch_batches` on checked arguments."""
    steps = -(-n // batch_size)
    perm = permutation(key, n)
    return jnp.concatenate([perm, perm[: steps * batch_size - n]]).reshape(steps, batch_size)


def check_batch_size(batch_size: Any) -> int:
    """`batch_size` as an int >= 1, or a `TypeError` (not an integer) or `ValueError`."""
    return check_int("batch_size", batch_size, 1)


def scan_epoch(
    update: Callable[..., tuple[Any, Any, Metrics]],
    batch_size: int,
    constrain: Callable[[Array], Array] | None = None,
    keyed: bool = False,
) -> Epoch:
    """One epoch of `update(params, state, key_b, x_b, y_b)` steps in one `lax.scan`:
    `epoch(params, state, key, x, y)` on checked data. The epoch shuffles with `key`;
    with `keyed`, each step receives a key of its own (dropout masks, DP noise) from a
    split of `key` that leaves the shuffle's key as it is, else `key_b = None`. Each
    batch passes through `constrain` (a sharding constraint) first."""
    constrain = constrain or (lambda v: v)

    def epoch(params: Any, state: Any, key: Array, x: Array, y: Any) -> tuple[Any, Any, Metrics]:
        def body(carry: tuple[Any, Any], batch: tuple[Array, ...]) -> tuple[Any, Metrics]:
            *step_key, x_b, y_b = batch
            key_b = step_key[0] if step_key else None
            params, state, metrics = update(*carry, key_b, constrain(x_b), constrain(y_b))
            return (params, state), metrics

        # One gather of the whole shuffled epoch up front: the scan then reads contiguous
        # batches, which is cheaper than a gather inside every step.
        idx = batch_indices(key, x.shape[0], batch_size)
        xs = (x[idx], y[idx])
        if keyed:
            xs = (jax.random.split(jax.random.fold_in(key, 1), idx.shape[0]), *xs)
        (params, state), metrics = jax.lax.scan(body, (params, state), xs)
        return params, state, metrics

    return epoch


def repeat_epochs(epoch: Epoch, epochs: int) -> Epoch:
    """`epochs` epochs in one `lax.scan`: epoch `e` (from 0) shuffles with
    `jax.random.fold_in(key, e)`, exactly as the Python loop
    `for e in range(epochs): params, state, m = epoch(params, state, fold_in(key, e), x, y)`.
    Metrics gain a leading `(epochs,)` axis. One epoch is `epoch` itself."""
    if epochs == 1:
        return epoch

    def many(params: Any, state: Any, key: Array, x: Array, y: Any) -> tuple[Any, Any, Metrics]:
        def body(carry: tuple[Any, Any], e: Array) -> tuple[Any, Metrics]:
            params, state, metrics = epoch(*carry, jax.random.fold_in(key, e), x, y)
            return (params, state), metrics

        (params, state), metrics = jax.lax.scan(body, (params, state), jnp.arange(epochs))
        return params, state, metrics

    return many


def epoch_means(metrics: Metrics) -> Metrics:
    """Each per-step metric averaged over its epoch's steps (the last axis of a scalar
    metric; per-layer diagnostics keep their layer axis): `(steps,)` -> `()`,
    `(epochs, steps)` -> `(epochs,)`, `(N, epochs, steps)` -> `(N, epochs)`. A metric
    without a steps axis (one step's) is refused, naming it."""
    means = {}
    for name, value in metrics.items():
        axis = -2 if name in PER_LAYER else -1
        if jnp.ndim(value) < -axis:
            raise ValueError(
                f"epoch_means averages each metric over its epoch's steps, but {name!r} has "
                f"shape {jnp.shape(value)}, no steps axis: pass the metrics of an epoch "
                "(make_train_epoch, epoch_fn), not of one step."
            )
        means[name] = jnp.mean(value, axis=axis)
    return means
