"""Argument checks shared by the public functions.

Every check reads only names, shapes and dtypes, so it runs at trace time under
`jax.jit` as well as eagerly. Target values (label range, probabilities in [0, 1]) are
checked by the loss's task (`jaxbp.Task`), only when they are concrete.
"""

from __future__ import annotations

import functools
import math
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


def check_int(name: str, value: Any, low: int, meaning: str = "") -> int:
    """`value` as a Python int `>= low`: a Python or numpy integer, not a bool or float.
    Otherwise a `TypeError` (another type) or `ValueError` (too small) naming `name`, what
    it means and the fix."""
    about = f" ({meaning})" if meaning else ""
    if not is_int(value):
        fix = f"int({value!r})" if isinstance(value, float) and value.is_integer() else "an int"
        raise TypeError(
            f"{name} must be an integer >= {low}{about}; got {type(value).__name__} {value!r}. "
            f"Pass {fix}."
        )
    if value < low:
        raise ValueError(
            f"{name} must be an integer >= {low}{about}; got {value!r}. Pass an integer >= {low}."
        )
    return int(value)


def check_real(name: str, value: Any, meaning: str, fix: str, *, low: float | None = None) -> float:
    """`value` as a finite float (`>= low` when given): a Python or numpy real, not a bool.
    Otherwise a `TypeError` (another type) or `ValueError` (nan, inf, too small) naming
    `name`, what it means, the value and `fix`."""
    rule = f"{name} must be a finite real number{'' if low is None else f' >= {low}'} ({meaning})"
    if not is_real(value):
        raise TypeError(f"{rule}; got {type(value).__name__} {value!r:.60}. {fix}")
    if not math.isfinite(value) or (low is not None and value < low):
        raise ValueError(f"{rule}; got {value!r}. {fix}")
    return float(value)


def check_float_dtype(name: str, value: Any) -> np.dtype:
    """`value` as a floating `np.dtype`, float64 only with x64 on: without it JAX would
    quietly make float32 arrays instead. `None` is refused (numpy would read it as
    float64)."""
    try:
        dtype = None if value is None else jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating dtype such as jnp.float32 or 'float32'; got {value!r}."
        )
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{name} is float64, but jax_enable_x64 is off: JAX would quietly make float32 "
            "arrays instead, and the result would not be what was asked for. Call "
            'jax.config.update("jax_enable_x64", True) first, or use float32.'
        )
    return dtype


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


def check_key(
    key: Any, name: str = "key", shape: tuple[int, ...] = (), *, want: str | None = None
) -> Array:
    """`key` if it is a `jax.random` key of the given batch `shape` (a typed key array, or
    raw `uint32` key data of the default implementation, `jax.random.PRNGKey`'s kind), else
    a `TypeError`/`ValueError` naming `name` and the fix. `want` says what the keys are
    for (default: "a single key", or "N keys, shape (N,)"). Shape-only: runs under a trace."""
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
        if want is None:
            want = "a single key" if not shape else f"{shape[0]} keys, shape {shape}"
        kind = "typed keys" if typed else "raw uint32 key data"
        described = (
            f"{name} hold {got[0]} ({kind} of shape {key.shape})"
            if len(shape) == len(got) == 1 and (typed or key.shape[-len(data) :] == data)
            else f"got {name} of shape {key.shape} ({kind})"
        )
        it = "them" if shape else "it"
        raise ValueError(f"{name} must be {want}, {described}; make {it} with {example}.")
    return key


def shape_mismatch(got: Any, want: Any) -> tuple[Any, Any] | None:
    """`None` when the pytree `got` has the structure and leaf shapes of `want` (say
    `jax.eval_shape` of what builds it); else what differs, `(got, want)`: their leaf
    shapes, or their tree structures when those shapes agree. Shape-only: runs under a
    trace."""
    got_leaves, got_tree = jax.tree.flatten(got)
    want_leaves, want_tree = jax.tree.flatten(want)
    shape = lambda v: tuple(v.shape) if hasattr(v, "shape") else jnp.shape(v)  # noqa: E731
    shapes = [shape(v) for v in got_leaves], [shape(v) for v in want_leaves]
    if shapes[0] != shapes[1]:
        return shapes
    return None if got_tree == want_tree else (got_tree, want_tree)


@functools.cache
def _key_data_shape() -> tuple[int, ...]:
    return tuple(jax.random.key_data(jax.random.key(0)).shape)


def epoch_data(
    x: Any, y: Any, batch_size: int, n_in: int | None = None
) -> tuple[Array, Array, int]:
    """A whole epoch's `(x, y, n)` as arrays, checked before any minibatch is cut (so
    that errors show the data the user passed): `x` a real `(n, n_0)` batch (`check_x`,
    `n_0 = n_in` where given), `y` an array with as many targets as `x` has samples, and
    at least one batch of them. A `TypeError`/`ValueError` otherwise."""
    x = check_x(x, n_in)
    y = as_array(y, "y", "an array of targets, one row per sample")
    n = x.shape[0]
    if jnp.ndim(y) == 0 or jnp.shape(y)[0] != n:
        raise ValueError(
            f"x and y must hold the same number of samples; x has {n}, y has shape {jnp.shape(y)}."
        )
    if n < batch_size:
        raise ValueError(
            f"x holds {n} samples, fewer than one batch (batch_size={batch_size}); "
            "use a smaller batch_size."
        )
    return x, y, n


def stacked_models(tree: Any, what: str, fix: str) -> int:
    """N, the models `tree` stacks along a leading axis of every leaf, or a `ValueError`."""
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)]
    models = {shape[0] if shape else None for shape in shapes}
    if len(models) != 1 or None in models:
        raise ValueError(
            f"{what} must stack N models along a leading axis of every leaf ({fix}); got "
            f"leaves of shapes {shapes}."
        )
    return models.pop()


def check_in_dtype(name: str, value: Any, dtype: Any, fix: str) -> None:
    """Refuse a concrete hyperparameter that the dtype of the computation cannot hold: one
    that overflows to inf (`1e300` in float32), or a nonzero one that underflows to 0 (an
    `eps` of `1e-50` in float32). Checked at trace time, where the dtype is known; a
    traced `value` passes (its own rule makes it NaN where it breaks)."""
    if isinstance(value, jax.core.Tracer):
        return
    with np.errstate(over="ignore", under="ignore"):
        cast = np.asarray(value, dtype=np.dtype(dtype))
    info = np.finfo(dtype)
    if not np.isfinite(cast):
        raise ValueError(
            f"{name}={value!r} overflows {np.dtype(dtype).name}, the dtype of the computation "
            f"(its largest value is {info.max:.3g}): it would become inf and the result "
            f"NaN. {fix}"
        )
    if value != 0 and cast == 0:
        raise ValueError(
            f"{name}={value!r} underflows to 0 in {np.dtype(dtype).name}, the dtype of the "
            f"computation (its smallest normal value is {info.tiny:.3g}). {fix}"
        )
