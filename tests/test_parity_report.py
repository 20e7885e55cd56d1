"""check_parity: passes on the real gradient, fails on a wrong derivative, prints a table."""

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from conftest import make_problem


@pytest.fixture
def problem():
    return make_problem(0, [4, 6, 6, 3], 5, "cross_entropy", jnp.float64)


def test_passes_and_prints(problem):
    report = jaxbp.check_parity(*problem, activation="tanh", loss="cross_entropy")
    assert report.passed
    assert report.rtol == 1e-12 and report.dtype == "float64"
    assert [leaf.path for leaf in report.leaves] == [
        f"params[{l}]['{k}']" for l in range(3) for k in ("W", "b")
    ]
    text = str(report)
    assert "params[2]['b']" in text and "passed (float64" in text


def test_float32_default_tolerance():
    report = jaxbp.check_parity(
        *make_problem(0, [4, 6, 3], 5, "mse", jnp.float32), activation="elu", loss="mse"
    )
    assert report.dtype == "float32" and report.rtol == 1e-5 and report.passed


@pytest.mark.parametrize("finite_differences", [False, True], ids=["autodiff", "with-fd"])
def test_catches_a_wrong_derivative(problem, finite_differences):
    """A derivative off by 1% anywhere is caught: the check can fail."""
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1.01 * (1 - a * a))
    report = jaxbp.check_parity(
        *problem, activation=bad, loss="cross_entropy", finite_differences=finite_differences
    )
    assert not report.passed
    assert "FAILED" in str(report)
    # The last layer does not use the hidden derivative; the others do.
    assert report.leaves[-1].rel_err < 1e-12 < report.leaves[0].rel_err
    if finite_differences:
        assert report.leaves[0].fd_err > 1e-6 > report.leaves[-1].fd_err


def test_custom_rtol(problem):
    report = jaxbp.check_parity(*problem, activation="relu", loss="cross_entropy", rtol=0.0)
    assert report.rtol == 0.0
    assert report.passed == (report.max_rel_err == 0.0)


def test_finite_differences_need_x64(problem):
    jax.config.update("jax_enable_x64", False)
    try:
        params, x, y = problem
        params32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            jaxbp.check_parity(
                params32,
                x.astype(jnp.float32),
                y,
                activation="relu",
                loss="cross_entropy",
                finite_differences=True,
            )
    finally:
        jax.config.update("jax_enable_x64", True)
