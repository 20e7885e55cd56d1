"""Poisson-sampled DP-SGD under jit: the masked, padded step equals a step on the sampled
examples alone (float64, 1e-12); an epoch equals the same steps taken one by one through
`dp_value_and_grad`; the batch sizes follow the binomial."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem
from jaxbp._privacy.dp import dp_gradient
from jaxbp._privacy.poisson import poisson_batch, poisson_capacity

KW = dict(activation="tanh", loss="cross_entropy")
CLIP, NOISE = 0.7, 1.3


@pytest.fixture
def problem():
    return make_problem(5, [5, 8, 3], 60, "cross_entropy")


def test_the_masked_step_is_a_step_on_the_sampled_examples(problem):
    params, x, y = problem
    net = jaxbp.Network.of(params, **KW)
    key = jax.random.key(2)
    mask = (jnp.arange(60) % 3 == 0).astype(jnp.float64)  # 20 kept, 40 padding
    kept = np.flatnonzero(np.asarray(mask))
    size = 12.5  # an expected batch size, not the kept count
    got = dp_gradient(net, params, key, x, y, CLIP, NOISE, mask, size)
    want = dp_gradient(net, params, key, x[kept], y[kept], CLIP, NOISE, None, size)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_an_epoch_is_its_steps_taken_one_by_one(problem):
    params, x, y = problem
    sgd = optax.sgd(0.1)
    epoch = jaxbp.make_dp_train_epoch(
        sgd, batch_size=10, l2_clip=CLIP, noise_multiplier=NOISE, sampling="poisson", **KW
    )
    key = jax.random.key(4)
    got, _, metrics = epoch(params, sgd.init(params), key, x, y)
    q, capacity, steps = 10 / 60, poisson_capacity(60, 10 / 60), 6
    want, state = params, sgd.init(params)
    # jitted: one program for each batch size drawn, not one per operation and size
    dp_value_and_grad = jax.jit(jaxbp.dp_value_and_grad, static_argnames=tuple(KW))
    for i, step_key in enumerate(jax.random.split(jax.random.fold_in(key, 1), steps)):
        k_batch, k_step = jax.random.split(step_key)
        idx, mask = poisson_batch(k_batch, 60, q, capacity)
        kept = np.asarray(idx)[np.asarray(mask) > 0]
        assert int(metrics["batch"][i]) == kept.size
        _, grads, _ = dp_value_and_grad(
            want, k_step, x[kept], y[kept], l2_clip=CLIP, noise_multiplier=NOISE, **KW
        )
        grads = jax.tree.map(lambda g, k=kept.size: g * k / (q * 60), grads)  # / E[K], not / K
        updates, state = sgd.update(grads, state, want)
        want = optax.apply_updates(want, updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_batch_sizes_follow_the_binomial():
    """2000 batches of n = 500 at q = 0.1: the sample mean and variance of K against
    n q = 50 and n q (1 - q) = 45, each within 5 of its standard errors (a false alarm has
    probability below 1e-6), and no batch reaches the capacity."""
    n, q, draws = 500, 0.1, 2000
    capacity = poisson_capacity(n, q)
    sizes = jax.vmap(lambda k: jnp.sum(poisson_batch(k, n, q, capacity)[1]))(
        jax.random.split(jax.random.key(0), draws)
    )
    sizes = np.asarray(sizes)
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / draws)
    # Var of the sample variance ~ 2 var^2 / draws (nearly normal K)
    assert abs(sizes.var(ddof=1) - var) < 5 * var * math.sqrt(2 / draws)
    assert sizes.max() < capacity


def test_sampling_is_a_named_choice():
    with pytest.raises(ValueError, match=r"sampling must be one of \['shuffle', 'poisson'\]"):
        jaxbp.DPSGD(1.0, 1.0, sampling="uniform")
