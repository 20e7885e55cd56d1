"""init_mlp: structure, zero biases, one key per layer, and each scheme's scale."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp

# Expected weight std for fans (n_in, n_out); a uniform U[-r, r] has std r / sqrt(3).
EXPECTED_STD = {
    "glorot_normal": lambda i, o: math.sqrt(2 / (i + o)),
    "glorot_uniform": lambda i, o: math.sqrt(6 / (i + o)) / math.sqrt(3),
    "he_normal": lambda i, o: math.sqrt(2 / i),
    "he_uniform": lambda i, o: math.sqrt(6 / i) / math.sqrt(3),
    "lecun_normal": lambda i, o: math.sqrt(1 / i),
    "standard": lambda i, o: (1 / math.sqrt(i)) / math.sqrt(3),
}


def test_every_scheme_is_tested():
    assert set(EXPECTED_STD) == set(jaxbp.INITS)


@pytest.mark.parametrize("init", jaxbp.INITS)
def test_scale(init, key):
    sizes = [300, 200, 100]
    params = jaxbp.init_mlp(key, sizes, init=init, dtype=jnp.float64)
    for layer, n_in, n_out in zip(params, sizes[:-1], sizes[1:]):
        w = np.asarray(layer["W"])
        want = EXPECTED_STD[init](n_in, n_out)
        # std of 20k-60k samples: relative standard error well under 1%.
        assert abs(w.std() / want - 1) < 0.03, (init, w.std(), want)
        assert abs(w.mean()) < 4 * want / math.sqrt(w.size)
        np.testing.assert_array_equal(layer["b"], np.zeros(n_out))
        if init.endswith("uniform") or init == "standard":
            limit = want * math.sqrt(3)
            assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16], ids=str)
def test_structure_and_dtype(key, dtype):
    params = jaxbp.init_mlp(key, [3, 5, 1], dtype=dtype)
    assert [(p["W"].shape, p["b"].shape) for p in params] == [((3, 5), (5,)), ((5, 1), (1,))]
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))


def test_one_key_per_layer_and_deterministic(key):
    a = jaxbp.init_mlp(key, [8, 8, 8, 8])
    b = jaxbp.init_mlp(key, [8, 8, 8, 8])
    for la, lb in zip(a, b):
        np.testing.assert_array_equal(la["W"], lb["W"])
    assert not np.array_equal(a[0]["W"], a[1]["W"])  # same shape, different keys
    c = jaxbp.init_mlp(jax.random.key(1), [8, 8, 8, 8])
    assert not np.array_equal(a[0]["W"], c[0]["W"])


def test_raw_uint32_keys_work():
    params = jaxbp.init_mlp(jax.random.PRNGKey(0), [2, 3])
    assert params[0]["W"].shape == (2, 3)
