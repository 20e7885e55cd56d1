"""Argument checks shared by the public functions.

Every check reads only names, shapes and dtypes, so it runs at trace time under
`jax.jit` as well as eagerly. Target values (label range, probabilities in [0, 1]) are
checked by the loss's task (`jaxbp.Task`), only when they are concrete.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def check_x(x: Any, n_in: int | None) -> Array:
    """Check that x is a non-empty real `(batch, n_0)` batch for a first layer of `n_in` inputs."""
    x = jnp.asarray(x)
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
