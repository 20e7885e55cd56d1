"""The parity grid behind `jaxbp check`: activations x losses x depths, on random data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._activations import ACTIVATIONS
from jaxbp._mlp import init_mlp
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
    key: jax.Array, sizes: list[int], batch: int, loss: str, dtype: Any, *, x_scale: float = 1.0
) -> tuple[list[dict[str, jax.Array]], jax.Array, jax.Array]:
    """Random `(params, x, y)`: Glorot params, normal inputs of std `x_scale`, and
    targets that suit `loss` (labels for cross_entropy, uniform [0, 1] otherwise)."""
    k_params, k_x, k_y = jax.random.split(key, 3)
    params = init_mlp(k_params, sizes, dtype=dtype)
    x = x_scale * jax.random.normal(k_x, (batch, sizes[0]), dtype)
    if loss == "cross_entropy":
        y = jax.random.randint(k_y, (batch,), 0, sizes[-1])
    else:
        y = jax.random.uniform(k_y, (batch, sizes[-1]), dtype)
    return params, x, y


def parity_grid(
    dtypes: tuple[str, ...] = ("float32", "float64"),
    depths: tuple[int, ...] = (1, 2, 3, 4, 5),
    batch: int = 7,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield one record per (dtype, activation, loss/output, depth) with its parity result."""
    key = jax.random.key(seed)
    for dtype in dtypes:
        for activation in ACTIVATIONS:
            for loss, output in LOSS_OUTPUTS:
                for depth in depths:
                    key, sub = jax.random.split(key)
                    sizes = [6] + [9] * (depth - 1) + [4]
                    params, x, y = random_problem(sub, sizes, batch, loss, jnp.dtype(dtype))
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
