"""The epoch shuffle: a permutation, uniform, reproducible, and jax's own above its range."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxbp._train import shuffle as _shuffle
from jaxbp._train.shuffle import permutation, rounds_for

CHI2_999 = {23: 49.728, 99: 148.230}
"""Chi-square quantiles at 0.999 for these degrees of freedom (scipy.stats.chi2.ppf)."""

jit_permutation = jax.jit(permutation, static_argnums=1)
"""One compiled program per n, not one per operation and n (the same values: no floats)."""


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
def test_is_a_permutation(n, seed):
    perm = np.asarray(jit_permutation(jax.random.key(seed), n))
    assert perm.dtype == np.int32
    assert np.array_equal(np.sort(perm), np.arange(n))


@pytest.mark.parametrize("n", [1, 2, 3, 2**10, 2**10 + 1, 60_000, 2**21, 2**21 + 1])
def test_rounds_give_three_times_the_position_bits(n):
    """r rounds of 32 - k random bits reach 3k bits (collision chance < 1/2n), and no
    fewer rounds would."""
    k = (n - 1).bit_length() or 1  # bits to write n - 1, the largest position
    r = rounds_for(n)
    assert r * (32 - k) >= 3 * k > (r - 1) * (32 - k)


def test_all_orders_equally_likely():
    """All 24 orders of 4 items, 48 000 draws: chi-square below its 0.999 quantile."""
    draws = 48_000
    keys = jax.random.split(jax.random.key(7), draws)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: permutation(k, 4)))(keys))
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(p)] for p in perms], minlength=24)
    expected = draws / 24
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_999[23]


def test_every_position_equally_likely_for_a_large_n():
    """Where item 0 lands among n = 3000 (two rounds of 20 random bits), in 100 bins."""
    draws = 20_000
    keys = jax.random.split(jax.random.key(8), draws)
    where = jax.jit(jax.vmap(lambda k: jnp.argmin(permutation(k, 3000))))(keys)
    counts = np.bincount(np.asarray(where) * 100 // 3000, minlength=100)
    expected = draws / 100
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_999[99]


def test_same_key_same_order_other_key_other_order():
    a, b = (np.asarray(permutation(jax.random.key(s), 500)) for s in (1, 2))
    assert np.array_equal(a, np.asarray(permutation(jax.random.key(1), 500)))
    assert not np.array_equal(a, b)


def test_jax_permutation_beyond_the_packed_range(monkeypatch):
    monkeypatch.setattr(_shuffle, "_MAX_ROUNDS", 0)
    key = jax.random.key(3)
    assert np.array_equal(permutation(key, 100), jax.random.permutation(key, 100))
