"""hvp (jax.jvp of manual_grad) against jax.hessian, and gnvp (J^T H_out J, with J^T by
eq. 1.4) against an explicit Gauss-Newton matrix built with jax.jacobian, in float64."""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

import jaxbp
from conftest import make_problem, random_like, rel_err

STATIC = ("activation", "loss", "output_activation", "reduction")
CASES = [
    ("tanh", "cross_entropy", "softmax", "mean", [3, 4, 3]),
    ("softplus", "binary_cross_entropy", "sigmoid", "sum", [3, 4, 4, 2]),
    ("gelu", "mse", "identity", "mean", [3, 4, 2]),
    ("elu", "mse", "softmax", "mean", [3, 4, 3]),
]
IDS = [f"{a}-{l}-{o}-{r}-depth{len(s) - 1}" for a, l, o, r, s in CASES]
BATCH = 5


hvp = jax.jit(jaxbp.hvp, static_argnames=STATIC)
gnvp = jax.jit(jaxbp.gnvp, static_argnames=STATIC)


def flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    activation, loss, output, reduction, sizes = request.param
    params, x, y = make_problem(len(sizes), sizes, BATCH, loss)
    v = random_like(1, params)
    kw = dict(activation=activation, loss=loss, output_activation=output, reduction=reduction)
    return params, x, y, v, kw


@jax.jit(static_argnames=STATIC)
def hessian_times(params, x, y, v, **kw):
    """Reference: the full Hessian of loss_fn by autodiff, times v."""
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    hessian = jax.hessian(lambda t: jaxbp.loss_fn(unravel(t), x, y, **kw))(theta)
    return hessian @ flat(v)


def loss_in_output(o, y, loss, reduction):
    """The loss as a function of the network output it is convex in, written out again:
    y_hat for mse, the logits z_L for the cross-entropies (labels y for cross_entropy)."""
    if loss == "mse":
        per_sample = jnp.sum((o - y) ** 2, axis=1)
    elif loss == "binary_cross_entropy":
        per_sample = jnp.sum(jax.nn.softplus(o) - y * o, axis=1)
    else:
        per_sample = jax.nn.logsumexp(o, axis=1) - o[jnp.arange(o.shape[0]), y]
    return jnp.mean(per_sample) if reduction == "mean" else jnp.sum(per_sample)


@jax.jit(static_argnames=STATIC)
def gauss_newton_times(params, x, y, v, **kw):
    """Reference: G = J^T H J with J = d output / d theta by jax.jacobian, H by jax.hessian."""
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    output = kw["output_activation"] if kw["loss"] == "mse" else "identity"

    def out(t):
        return jaxbp.forward(unravel(t), x, activation=kw["activation"], output_activation=output)

    o = out(theta)
    jac = jax.jacobian(out)(theta).reshape(o.size, theta.size)
    h = jax.hessian(lambda o: loss_in_output(o, y, kw["loss"], kw["reduction"]))(o)
    return jac.T @ h.reshape(o.size, o.size) @ jac @ flat(v)


def test_hvp_matches_hessian(case):
    params, x, y, v, kw = case
    got = hvp(params, x, y, v, **kw)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    assert rel_err(flat(got), hessian_times(params, x, y, v, **kw)) < 1e-12


def test_gnvp_matches_explicit_gauss_newton(case):
    params, x, y, v, kw = case
    got = gnvp(params, x, y, v, **kw)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    assert rel_err(flat(got), gauss_newton_times(params, x, y, v, **kw)) < 1e-12
    assert float(jnp.vdot(flat(v), flat(got))) >= 0  # G is positive semi-definite


@pytest.mark.parametrize(
    ("loss", "output"),
    [("mse", "identity"), ("binary_cross_entropy", "sigmoid"), ("cross_entropy", "softmax")],
)
def test_gnvp_is_hvp_for_one_layer_with_canonical_link(loss, output):
    """z = x W + b is linear in theta, so H = J^T H_out J exactly."""
    params, x, y = make_problem(0, [3, 4], BATCH, loss)
    v = random_like(1, params)
    kw = dict(activation="tanh", loss=loss, output_activation=output)
    gn, h = gnvp(params, x, y, v, **kw), hvp(params, x, y, v, **kw)
    assert rel_err(flat(gn), flat(h)) < 1e-13


def test_gnvp_differs_from_hvp_for_deeper_networks():
    params, x, y = make_problem(0, [3, 4, 2], BATCH, "mse")
    v = jax.tree.map(jnp.ones_like, params)
    kw = dict(activation="tanh", loss="mse")
    assert rel_err(flat(gnvp(params, x, y, v, **kw)), flat(hvp(params, x, y, v, **kw))) > 1e-3


def test_dtypes_and_v_cast():
    params, x, y = make_problem(0, [3, 4, 2], BATCH, "mse", jnp.float32)
    v = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float64), params)  # cast to float32
    for fn in (jaxbp.hvp, jaxbp.gnvp):
        out = jax.eval_shape(lambda fn=fn: fn(params, x, y, v, activation="tanh", loss="mse"))
        assert [g.dtype for g in jax.tree.leaves(out)] == [jnp.float32] * 4


def test_errors():
    params, x, y = make_problem(0, [3, 4, 2], BATCH, "mse")
    wrong = [{"W": jnp.ones((3, 4)), "b": jnp.ones(4)}]
    for fn in (jaxbp.hvp, jaxbp.gnvp):
        with pytest.raises(ValueError, match="v must be a pytree shaped like params"):
            fn(params, x, y, wrong, activation="tanh", loss="mse")
    custom = dataclasses.replace(jaxbp.LOSSES["mse"], name="my_mse", curvature=None)
    with pytest.raises(ValueError, match=r"gnvp needs the loss's curvature.*'my_mse'"):
        jaxbp.gnvp(params, x, y, params, activation="tanh", loss=custom)
