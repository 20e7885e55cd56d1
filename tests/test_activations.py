"""Each handwritten derivative against jax.grad of its function and against finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from conftest import ACTIVATION_NAMES
from jaxbp._core.activations import SOFTMAX

Z_GRID = np.concatenate([np.linspace(-8, 8, 161), [-60.0, -30.0, -1e-9, 1e-9, 30.0, 60.0]])


def autodiff_deriv(fn, z):
    return jax.vmap(jax.grad(fn))(z)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
def test_deriv_matches_autodiff(name, dtype):
    act = jaxbp.ACTIVATIONS[name]
    z = jnp.asarray(Z_GRID, dtype)
    a = act.fn(z)
    got = act.deriv(z, a)
    want = autodiff_deriv(act.fn, z)
    assert got.dtype == z.dtype
    eps = jnp.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=4 * eps)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_deriv_matches_finite_differences(name):
    act = jaxbp.ACTIVATIONS[name]
    z = jnp.asarray(Z_GRID[np.abs(Z_GRID) > 1e-3])  # away from the relu kinks
    h = 1e-6
    fd = (act.fn(z + h) - act.fn(z - h)) / (2 * h)
    np.testing.assert_allclose(act.deriv(z, act.fn(z)), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "at_zero"),
    [("relu", 0.0), ("leaky_relu", 0.01), ("elu", 1.0), ("identity", 1.0)],
)
def test_value_at_kink_is_documented_and_matches_autodiff(name, at_zero):
    act = jaxbp.ACTIVATIONS[name]
    z = jnp.zeros(3)
    assert np.all(act.deriv(z, act.fn(z)) == at_zero)
    assert np.all(autodiff_deriv(act.fn, z) == at_zero)


def test_closed_forms():
    z = jnp.asarray(Z_GRID)
    sig = 1 / (1 + np.exp(-Z_GRID))
    np.testing.assert_allclose(jaxbp.ACTIVATIONS["sigmoid"].fn(z), sig, rtol=1e-14)
    # Figure 1.11: sigma' peaks at 1/4 at z = 0.
    dsig = jaxbp.ACTIVATIONS["sigmoid"].deriv(z, jaxbp.ACTIVATIONS["sigmoid"].fn(z))
    assert float(jnp.max(dsig)) == 0.25
    assert float(dsig[np.argmin(np.abs(Z_GRID))]) == 0.25
    np.testing.assert_allclose(
        jaxbp.ACTIVATIONS["gelu"].fn(z),
        [0.5 * v * math.erfc(-v / math.sqrt(2)) for v in Z_GRID],  # erfc: no cancellation
        rtol=1e-12,  # XLA's erfc in the far left tail
        atol=1e-300,
    )
    np.testing.assert_allclose(
        jaxbp.ACTIVATIONS["leaky_relu"].fn(z), np.where(Z_GRID > 0, Z_GRID, 0.01 * Z_GRID)
    )


def test_large_inputs_stay_finite():
    for act in jaxbp.ACTIVATIONS.values():
        for dtype in (jnp.float32, jnp.float64):
            z = jnp.asarray([-1e4, -100.0, 100.0, 1e4], dtype)
            a = act.fn(z)
            d = act.deriv(z, a)
            assert np.all(np.isfinite(a)), act.name
            assert np.all(np.isfinite(d)), act.name
            assert np.all(np.isfinite(autodiff_deriv(act.fn, z))), act.name


def test_softmax_vjp_matches_autodiff(key):
    z = jax.random.normal(key, (5, 4))
    g = jax.random.normal(jax.random.key(1), (5, 4))
    _, vjp = jax.vjp(SOFTMAX.fn, z)
    np.testing.assert_allclose(
        SOFTMAX.backward(z, SOFTMAX.fn(z), g), vjp(g)[0], rtol=1e-13, atol=1e-15
    )


def test_user_activation_record(key):
    cube = jaxbp.Activation("cube", lambda z: z**3, lambda z, a: 3 * z**2)
    params = jaxbp.init_mlp(key, [3, 4, 2], dtype=jnp.float64)
    x = jax.random.normal(key, (5, 3))
    y = jax.random.normal(jax.random.key(2), (5, 2))
    report = jaxbp.check_parity(params, x, y, activation=cube, loss="mse")
    assert report.passed, report
