"""Contracts for a user's records, checked when the network is traced: every output of an
activation, a loss and a layer against the shape its contract states, one `ValueError`
naming the record, the method, the shape wanted and the shape got (before, each of these
broadcast into a silently wrong gradient, update or product)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from conftest import make_problem

SIZES = [4, 5, 3]


def tanh_with(**changes):
    fields = dict(
        fn=jnp.tanh, deriv=lambda z, a: 1 - a * a, deriv2=lambda z, a: -2 * a * (1 - a * a)
    )
    return jaxbp.Activation("mine", **(fields | changes))


ACTIVATIONS = [
    (
        "deriv-column",
        dict(deriv=lambda z, a: (1 - a * a)[:, :1]),
        jaxbp.manual_grad,
        r"Activation 'mine': deriv\(z, a\), phi'\(z\), must return an array of shape \(7, 5\);"
        r" got shape \(7, 1\)",
    ),
    (
        "fn-sums-units",
        dict(fn=lambda z: jnp.sum(jnp.tanh(z), axis=1, keepdims=True)),
        jaxbp.loss_fn,
        r"Activation 'mine': fn\(z\), phi\(z\) elementwise, must return an array of shape \(7, 5\);"
        r" got shape \(7, 1\)",
    ),
    (
        "deriv2-row",
        dict(deriv2=lambda z, a: jnp.zeros(z.shape[1])),
        jaxbp.diag_hessian,
        r"deriv2\(z, a\), phi''\(z\), must return an array of shape \(7, 5\); got shape \(5,\)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "fn", "match"), [c[1:] for c in ACTIVATIONS], ids=[c[0] for c in ACTIVATIONS]
)
def test_an_activations_outputs_are_checked(changes, fn, match):
    params, x, y = make_problem(0, SIZES, 7, "cross_entropy")
    with pytest.raises(ValueError, match=match):
        fn(params, x, y, activation=tanh_with(**changes), loss="cross_entropy")


def test_a_constant_derivative_may_be_a_scalar():
    params, x, y = make_problem(0, SIZES, 7, "mse")
    linear = jaxbp.Activation("linear", lambda z: 2 * z, lambda z, a: 2.0)
    jaxbp.assert_parity(params, x, y, activation=linear, loss="mse")


def pseudo_huber(**changes):
    fields = dict(
        value=lambda z, a, y: jnp.sum(jnp.sqrt(1 + (a - y) ** 2) - 1, axis=-1),
        delta=lambda z, a, y, output: output.backward(z, a, (a - y) / jnp.sqrt(1 + (a - y) ** 2)),
        curvature=lambda z, a, y, u: (1 + (a - y) ** 2) ** -1.5 * u,
    )
    return jaxbp.Loss("ph", **(fields | changes))


LOSSES = [
    (
        "curvature-scalar",
        dict(curvature=lambda z, a, y, u: jnp.sum(u)),
        "gnvp",
        r"Loss 'ph': curvature\(z, a, y, u\), H u per sample, must return shape \(7, 3\);"
        r" it returned shape \(\)",
    ),
    (
        "sqrt-2d",
        dict(curvature_sqrt=lambda z, a, y: (1 + (a - y) ** 2) ** -0.75),
        "diag_ggn",
        r"curvature_sqrt\(z, a, y\), S per sample, must return shape \(7, 3, 0\);"
        r" it returned shape \(7, 3\)",
    ),
    (
        "sample-row",
        dict(curvature_sample=lambda z, a, y, key: jnp.ones(3)),
        "mc",
        r"curvature_sample\(z, a, y, key\), one column v per sample, must return shape \(7, 3\)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "call", "match"), [c[1:] for c in LOSSES], ids=[c[0] for c in LOSSES]
)
def test_a_losss_curvature_outputs_are_checked(changes, call, match):
    params, x, y = make_problem(0, SIZES, 7, "mse")
    cfg = jaxbp.Config("tanh", pseudo_huber(**changes))
    run = {
        "gnvp": lambda: jaxbp.gnvp(params, x, y, params, cfg),
        "diag_ggn": lambda: jaxbp.diag_ggn(params, x, y, cfg),
        "mc": lambda: jaxbp.diag_ggn(params, x, y, cfg, mc_samples=2, key=jax.random.key(0)),
    }[call]
    with pytest.raises(ValueError, match=match):
        run()


@dataclasses.dataclass(frozen=True)
class Gain(jaxbp.Layer):
    """`out = a * s`, with each of its outputs replaceable by a broken one."""

    broken: str = ""
    name, has_params, per_example = "gain", True, True

    def init(self, key, n_in, dtype):
        return {"s": jnp.ones((n_in,), dtype)}, n_in

    def check(self, params, n_in, where):
        return params["s"].shape[0]

    def forward(self, params, a, ctx):
        out = a * params["s"][None, :]
        return (out[:, :2] if self.broken == "forward" else out), a

    def backward(self, params, a, g):
        g_in = g * params["s"][None, :]
        grad = jnp.sum(g * a) if self.broken == "backward" else jnp.sum(g * a, 0)
        return (g_in[:, :1] if self.broken == "g_in" else g_in), {"s": grad}

    def per_example_grads(self, params, a, g):
        return {"s": (g * a)[0] if self.broken == "per_example" else g * a}

    def per_example_sq_norms(self, params, a, g):
        return jnp.sum((g * a) ** 2, axis=1)


LAYERS = [
    (
        "backward-scalar-grad",
        "backward",
        jaxbp.manual_grad,
        r"layer 'gain' \(Gain\(broken='backward'\)\): backward\(params, cache, g\)\[1\], "
        r"the gradient of its params, must return shape \{'s': \(5,\)\};"
        r" it returned \{'s': \(\)\}",
    ),
    (
        "forward-narrow",
        "forward",
        jaxbp.loss_fn,
        r"forward\(params, a, ctx\)\[0\] must return shape \(7, 5\); it returned \(7, 2\)",
    ),
    (
        "input-cotangent",
        "g_in",
        jaxbp.manual_grad,
        r"backward\(params, cache, g\)\[0\], dL/d input, must return shape \(7, 5\);"
        r" it returned \(7, 1\)",
    ),
    (
        "per-example",
        "per_example",
        jaxbp.per_example_grads,
        r"per_example_grads\(params, cache, g\) must return shape \{'s': \(7, 5\)\};"
        r" it returned \{'s': \(5,\)\}",
    ),
]


@pytest.mark.parametrize(
    ("broken", "fn", "match"), [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS]
)
def test_a_layers_outputs_are_checked(broken, fn, match):
    layers = [jaxbp.Dense(5), Gain(broken), jaxbp.Activate("tanh"), jaxbp.Dense(3)]
    params = jaxbp.init_layers(jax.random.key(0), layers, 4)
    _, x, y = make_problem(0, SIZES, 7, "cross_entropy", dtype=jnp.float32)
    with pytest.raises(ValueError, match=match):
        fn(params, x, y, layers=layers, loss="cross_entropy")
    with pytest.raises(ValueError, match=match):  # the same check under jit, at trace time
        jax.jit(fn)(params, x, y, jaxbp.Config(layers=layers, loss="cross_entropy"))
