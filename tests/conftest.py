"""Strict settings for the whole suite.

- float64 is enabled, so float64 cases are real float64; float32 cases say so.
- Rank promotion raises: a bias added as `(n,)` to `(batch, n)` without an explicit
  axis is an error here, which catches broadcasting bugs in a handwritten backward pass.
- Warnings are errors (pyproject.toml), deprecated JAX APIs included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import ACTIVATIONS, random_problem
from jaxbp import LOSS_OUTPUTS as _LOSS_OUTPUTS

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

LOSS_OUTPUTS = list(_LOSS_OUTPUTS)
"""Every loss with the kinds of output it takes: the one case table of `jaxbp check`."""

ACTIVATION_NAMES = list(ACTIVATIONS)

RTOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}
"""Per-leaf bound on ||manual - jax.grad|| / ||jax.grad||, by dtype (the project's promise)."""


def make_problem(seed, sizes, batch, loss, dtype=jnp.float64, *, x_scale=1.0, norm=None):
    """Random `(params, x, y)` for `sizes` with targets for `loss` (see `random_problem`)."""
    return random_problem(seed, sizes, batch, loss, dtype, x_scale=x_scale, norm=norm)


def random_like(seed, tree):
    """Standard normal float64 arrays shaped like the leaves of `tree`."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=np.shape(leaf))), tree)


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, ref = np.linalg.norm(a - b), np.linalg.norm(b)
    return 0.0 if diff == 0 else float(diff / ref)


def run_train(capsys, *args):
    """`jaxbp train ARGS` in this process: `(exit status, stdout, stderr)`."""
    from jaxbp.app.cli import main

    try:
        code = main(["train", *args])
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def key():
    return jax.random.key(0)
