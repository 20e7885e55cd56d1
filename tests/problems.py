"""Random problems drawn with numpy's generator, for the tests of per-example gradients,
`jaxbp.mlp`, second order and kinks.

Like `conftest.make_problem`, but numpy compiles nothing: `jax.random` compiles its
sampler once per new shape, which would dominate these small tests.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np


def random_problem(seed, sizes, batch, loss, dtype=jnp.float64, *, x_scale=1.0):
    """`(params, x, y)`: Glorot-normal weights, small random biases, standard normal inputs
    (times `x_scale`), and targets for `loss` (labels for cross_entropy, else U[0, 1])."""
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
        y = jnp.asarray(rng.integers(0, sizes[-1], batch))
    else:
        y = jnp.asarray(rng.uniform(size=(batch, sizes[-1])), dtype)
    return params, x, y


def random_like(seed, tree):
    """Standard normal arrays shaped like the leaves of `tree` (float64)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=np.shape(leaf))), tree)
