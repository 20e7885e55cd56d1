"""check_parity near relu kinks: finite differences whose step carries a pre-activation
across 0 are reported as "skipped (kink)", not as failures; real errors are still caught."""

import dataclasses

import jax
import numpy as np
import pytest

import jaxbp
from conftest import make_problem
from jaxbp._parity.report import FD_RTOL

SAMPLE, UNIT = 2, 1  # the pre-activation z_1[SAMPLE, UNIT] is put at the kink


def kinked_problem(seed, offset, sizes=(3, 4, 2), loss="mse"):
    """A problem whose first-layer pre-activation z_1[SAMPLE, UNIT] equals `offset`."""
    params, x, y = make_problem(seed, list(sizes), 5, loss)
    z1 = x @ params[0]["W"]
    params[0]["b"] = params[0]["b"].at[UNIT].set(-z1[SAMPLE, UNIT] + offset)
    return params, x, y


@pytest.mark.parametrize("offset", [0.0, 1e-9, -1e-9], ids=["at-0", "plus-1e-9", "minus-1e-9"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_kink_is_flagged_and_skipped(activation, offset):
    params, x, y = kinked_problem(0, offset)
    z = jaxbp.backprop(params, x, y, activation=activation, loss="mse")[2].z[0]
    assert abs(float(z[SAMPLE, UNIT])) <= 1.1e-9
    report = jaxbp.check_parity(
        params, x, y, activation=activation, loss="mse", finite_differences=True
    )
    assert report.passed, f"\n{report}"
    assert report.kinks == (1, 0)  # one entry of z_1 crossed; the output layer is linear
    w1, b1, w2, b2 = report.leaves
    # The first layer's steps move z_1 across 0: their differences are meaningless there...
    assert w1.fd_skipped and b1.fd_skipped and w1.fd_kinks == b1.fd_kinks == 1
    assert max(w1.fd_err, b1.fd_err) > 1e3 * FD_RTOL  # ...and would have failed the check.
    # The second layer's steps leave z_1 alone: checked as usual.
    assert not w2.fd_skipped and not b2.fd_skipped
    assert report.max_fd_err == max(w2.fd_err, b2.fd_err) < FD_RTOL
    text = str(report)
    assert "skipped (kink" in text and "per layer: [1, 0]" in text and "passed" in text


def test_near_but_not_across_is_checked():
    """A pre-activation close to 0 that the step does not carry across is no kink."""
    params, x, y = kinked_problem(0, 1e-3)
    report = jaxbp.check_parity(
        params, x, y, activation="relu", loss="mse", finite_differences=True
    )
    assert report.passed and report.kinks == (0, 0)
    assert not any(leaf.fd_skipped for leaf in report.leaves)
    assert "note" not in str(report)


def test_kinked_output_activation():
    """mse under a relu output: z_L at 0 is a kink of the last layer."""
    params, x, y = make_problem(0, [3, 2], 5, "mse")
    z = x @ params[0]["W"]
    params[0]["b"] = params[0]["b"].at[0].set(-z[SAMPLE, 0])
    kw = dict(activation="tanh", loss="mse", output_activation="relu")
    report = jaxbp.check_parity(params, x, y, finite_differences=True, **kw)
    assert report.passed and report.kinks == (1,)
    assert all(leaf.fd_skipped for leaf in report.leaves)
    assert report.max_fd_err is None


def test_smooth_activations_have_no_kinks():
    params, x, y = kinked_problem(0, 0.0)
    report = jaxbp.check_parity(params, x, y, activation="elu", loss="mse", finite_differences=True)
    assert report.passed and report.kinks == (0, 0)


def test_wrong_derivative_is_still_caught_at_a_kink():
    """A relu whose derivative is 1.01 for z > 0: autodiff parity fails every hidden leaf,
    and the finite differences that are not skipped fail too."""
    params, x, y = kinked_problem(0, 0.0, sizes=(3, 4, 4, 2))
    bad = jaxbp.Activation("relu", jax.nn.relu, lambda z, a: 1.01 * (z > 0), kinks=(0.0,))
    report = jaxbp.check_parity(params, x, y, activation=bad, loss="mse", finite_differences=True)
    assert not report.passed and "FAILED" in str(report)
    assert report.kinks[0] == 1
    assert report.leaves[0].fd_skipped and report.leaves[0].rel_err > 1e-3
    checked = [leaf for leaf in report.leaves[:4] if not leaf.fd_skipped]
    assert checked and all(leaf.fd_err > FD_RTOL for leaf in checked)
    np.testing.assert_array_less(1e-3, [leaf.rel_err for leaf in report.leaves[:4]])


def test_kinks_come_from_the_record_not_the_name():
    """A relu shifted to kink at 0.7, named freely: its own `kinks` say where to look."""
    shift = 0.7
    params, x, y = kinked_problem(0, shift)  # z_1[SAMPLE, UNIT] sits on the shifted kink
    shifted = jaxbp.Activation(
        "my_relu",
        lambda z: jax.nn.relu(z - shift),
        lambda z, a: (z > shift).astype(z.dtype),
        kinks=(shift,),
    )
    kw = dict(activation=shifted, loss="mse", finite_differences=True)
    report = jaxbp.check_parity(params, x, y, **kw)
    assert report.passed and report.kinks == (1, 0)
    unaware = dataclasses.replace(shifted, kinks=())
    report = jaxbp.check_parity(params, x, y, **{**kw, "activation": unaware})
    assert report.kinks == (0, 0)


def test_without_finite_differences_no_kink_report():
    params, x, y = kinked_problem(0, 0.0)
    report = jaxbp.check_parity(params, x, y, activation="relu", loss="mse")
    assert report.passed and report.kinks is None
    assert all(leaf.fd_err is None and not leaf.fd_skipped for leaf in report.leaves)
