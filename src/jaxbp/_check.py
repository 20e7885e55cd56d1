"""The parity grid behind `jaxbp check`: activations x losses x depths, on random data."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import ACTIVATIONS
from jaxbp._parity import check_parity

LOSS_OUTPUTS = (
    ("mse", "identity"),
    ("mse", "sigmoid"),
    ("mse", "softmax"),
    ("binary_cross_entropy", "sigmoid"),
    ("cross_entropy", "softmax"),
)
"""Every loss with every kind of output it takes: canonical links and the general product."""


def random_problem(
    seed: int, sizes: list[int], batch: int, loss: str, dtype: Any, *, x_scale: float = 1.0
) -> tuple[list[dict[str, jax.Array]], jax.Array, jax.Array]:
    """Random `(params, x, y)` from numpy's generator seeded with `seed`: Glorot-normal
    weights, small random biases (so the bias path is exercised), normal inputs of std
    `x_scale`, and targets that suit `loss` (labels for cross_entropy, U[0, 1] otherwise).

    numpy rather than `jax.random`: the latter compiles its samplers once per new shape,
    which would dominate a grid of small problems.
    """
    rng = np.random.default_rng(seed)
    params = [
        {
            "W": jnp.asarray(rng.normal(0, np.sqrt(2 / (n_in + n_out)), (n_in, n_out)), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n_out), dtype),
        }
        for n_in, n_out in itertools.pairwise(sizes)
    ]
    x = jnp.asarray(x_scale * rng.normal(size=(batch, sizes[0])), dtype)
    if loss == "cross_entropy":
        y = jnp.asarray(rng.integers(0, sizes[-1], batch), jnp.int32)
    else:
        y = jnp.asarray(rng.uniform(size=(batch, sizes[-1])), dtype)
    return params, x, y


def parity_grid(
    dtypes: tuple[str, ...] = ("float32", "float64"),
    depths: tuple[int, ...] = (1, 2, 3, 4, 5),
    batch: int = 7,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield one record per (dtype, activation, loss/output, depth) with its parity result."""
    problem = itertools.count(seed * 10_000)
    for dtype in dtypes:
        for activation in ACTIVATIONS:
            for loss, output in LOSS_OUTPUTS:
                for depth in depths:
                    sizes = [6] + [9] * (depth - 1) + [4]
                    params, x, y = random_problem(
                        next(problem), sizes, batch, loss, jnp.dtype(dtype)
                    )
                    report = check_parity(
                        params, x, y, activation=activation, loss=loss, output_activation=output
                    )
                    yield {
                        "dtype": dtype,
                        "activation": activation,
                        "loss": loss,
                        "output_activation": output,
                        "depth": depth,
                        "max_rel_err": report.max_rel_err,
                        "rtol": report.rtol,
                        "passed": report.passed,
                    }
