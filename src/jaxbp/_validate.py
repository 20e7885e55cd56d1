"""Argument checks shared by the public functions.

Every check reads only names, shapes and dtypes, so it runs at trace time under
`jax.jit` as well as eagerly. Target values (label range, probabilities in [0, 1]) are
checked by the loss's task (`jaxbp.Task`), only when they are concrete.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def is_int(value: Any) -> bool:
    """An integer, Python's or numpy's, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A real number, Python's or numpy's (a 0-d array is not), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_array(value: Any, name: str, what: str) -> Array:
    """`jnp.asarray(value)`, or a `TypeError` naming `name` (None, strings, ragged lists)."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {what}; got {type(value).__name__} {value!r:.40}.")
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be {what}; got {type(value).__name__} that is no array ({err!s:.80})."
        ) from None


def check_x(x: Any, n_in: int | None) -> Array:
    """Check that x is a non-empty real `(batch, n_0)` batch for a first layer of `n_in` inputs."""
    x = as_array(x, "x", "an array (batch, n_0) of real numbers")
    if x.ndim != 2:
        fix = " For one sample use x[None, :]." if x.ndim == 1 else ""
        raise ValueError(
            f"x must be 2-d, (batch, n_0) with one sample a row; got shape {x.shape}.{fix}"
        )
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(
            f"x must hold real numbers (floating or integer); got dtype {x.dtype}. "
            "For complex data, split it into real and imaginary features."
        )
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample; got an empty batch, shape {x.shape}.")
    if n_in is not None and x.shape[1] != n_in:
        raise ValueError(
            f"x has {x.shape[1]} features (shape {x.shape}) but the first layer expects "
            f"n_0 = {n_in}."
        )
    return x


def check_output_units(output: Any, n_out: int | None) -> None:
    """Refuse an output layer too narrow for its activation (softmax over one unit is 1)."""
    if n_out is not None and n_out < output.min_units:
        raise ValueError(
            f"output_activation={output.name!r} needs at least {output.min_units} output "
            f"units; the last layer has {n_out} (a softmax over one unit is the constant 1, "
            "its loss 0). Use 'sigmoid' with binary_cross_entropy for two classes."
        )


def check_key(key: Any, name: str = "key", shape: tuple[int, ...] = ()) -> Array:
    """`key` if it is a `jax.random` key of the given batch `shape` (a typed key array, or
    raw `uint32` key data of the default implementation, `jax.random.PRNGKey`'s kind), else
    a `TypeError`/`ValueError` naming `name` and the fix. Shape-only: runs under a trace."""
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = not typed and isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32
    example = (
        "jax.random.key(0)" if not shape else f"jax.random.split(jax.random.key(0), {shape[0]})"
    )
    if not (typed or raw):
        kind = (
            f"an array of dtype {key.dtype} and shape {key.shape}"
            if hasattr(key, "dtype") and hasattr(key, "shape")
            else f"{type(key).__name__} {key!r:.60}"
        )
        raise TypeError(f"{name} must be a jax.random key such as {example}; got {kind}.")
    data = _key_data_shape()
    got = key.shape if typed else key.shape[: key.ndim - len(data)]
    if (not typed and key.shape[key.ndim - len(data) :] != data) or got != shape:
        want = "a single key" if not shape else f"{shape[0]} keys, shape {shape}"
        described = (
            f"typed keys of shape {key.shape}" if typed else f"uint32 data of shape {key.shape}"
        )
        raise ValueError(f"{name} must be {want}, such as {example}; got {described}.")
    return key


@functools.cache
def _key_data_shape() -> tuple[int, ...]:
    return tuple(jax.random.key_data(jax.random.key(0)).shape)


def check_epoch_data(x: Array, y: Array, batch_size: int) -> int:
    """`n`, the samples of an epoch's `(x, y)`, or a `ValueError`: as many targets as
    inputs, and at least one batch of them."""
    n = jnp.shape(x)[0]
    if jnp.ndim(y) == 0 or jnp.shape(y)[0] != n:
        raise ValueError(
            f"x and y must hold the same number of samples; x has {n}, y has shape {jnp.shape(y)}."
        )
    if n < batch_size:
        raise ValueError(
            f"x holds {n} samples, fewer than one batch (batch_size={batch_size}); "
            "use a smaller batch_size."
        )
    return n
