"""Strict settings for the whole suite.

- float64 is enabled, so float64 cases are real float64; float32 cases say so.
- Rank promotion raises: a bias added as `(n,)` to `(batch, n)` without an explicit
  axis is an error here, which catches broadcasting bugs in a handwritten backward pass.
- Warnings are errors (pyproject.toml), deprecated JAX APIs included.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxbp import ACTIVATIONS
from jaxbp._check import random_problem as make_problem  # noqa: F401  (re-exported for tests)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

LOSS_OUTPUTS = [
    ("mse", "identity"),
    ("mse", "sigmoid"),
    ("mse", "tanh"),
    ("mse", "softmax"),
    ("binary_cross_entropy", "sigmoid"),
    ("cross_entropy", "softmax"),
]
"""Every loss with the kinds of output it takes: its canonical link and, for mse, others."""

ACTIVATION_NAMES = list(ACTIVATIONS)

RTOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}
"""Per-leaf bound on ||manual - jax.grad|| / ||jax.grad||, by dtype (the project's promise)."""


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, ref = np.linalg.norm(a - b), np.linalg.norm(b)
    return 0.0 if diff == 0 else float(diff / ref)


@pytest.fixture
def key():
    return jax.random.key(0)
