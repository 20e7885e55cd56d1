"""The network as one value: `jaxbp.Network` built once (from params or from sizes), taken
by every function in place of a `Config` with the same numbers, and refused where it does
not fit; the base layer record `jaxbp.Layer` and what a record declares."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem

KW = dict(activation="tanh", loss="cross_entropy")
KEY = jax.random.key(0)


def assert_same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture
def problem():
    return make_problem(0, [5, 8, 6, 3], 12, "cross_entropy")


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_built_from_sizes_or_from_params_is_the_same_value(norm):
    cfg = jaxbp.Config(norm=norm, **KW)
    params = jaxbp.init_mlp(KEY, [5, 8, 6, 3], norm=norm)
    net = jaxbp.Network.of(params, cfg)
    assert net == jaxbp.Network.mlp([5, 8, 6, 3], cfg)
    assert hash(net) == hash(jaxbp.Network.of(params, norm=norm, **KW))
    assert jax.tree.leaves(net) == []
    dense = [layer for layer in net.layers if isinstance(layer, jaxbp.Dense)]
    assert len(dense) == 3 and net.widths[0] == 5 and net.n_out == 3
    assert net.stateful == (norm == "batch") and not net.random
    assert repr(net).startswith("Network(activation 'tanh'") and "widths=[5, 8, 8," in repr(net)


FUNCTIONS = {
    "loss_fn": lambda p, x, y, c: jaxbp.loss_fn(p, x, y, c),
    "manual_grad": lambda p, x, y, c: jaxbp.manual_grad(p, x, y, c),
    "backprop": lambda p, x, y, c: jaxbp.backprop(p, x, y, c),
    "forward": lambda p, x, y, c: jaxbp.forward(p, x, c),
    "mlp": lambda p, x, y, c: jaxbp.mlp(p, x, c),
    "evaluate": lambda p, x, y, c: jaxbp.evaluate(p, x, y, c),
    "per_example_grads": lambda p, x, y, c: jaxbp.per_example_grads(p, x, y, c),
    "per_example_grad_norms": lambda p, x, y, c: jaxbp.per_example_grad_norms(p, x, y, c),
    "dp_value_and_grad": lambda p, x, y, c: jaxbp.dp_value_and_grad(
        p, KEY, x, y, c, l2_clip=1.0, noise_multiplier=0.5
    ),
    "hvp": lambda p, x, y, c: jaxbp.hvp(p, x, y, p, c),
    "gnvp": lambda p, x, y, c: jaxbp.gnvp(p, x, y, p, c),
    "init_stats": lambda p, x, y, c: jaxbp.init_stats(p, c),
    "check_parity": lambda p, x, y, c: jaxbp.check_parity(p, x, y, c).leaves,
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_every_function_takes_the_network_with_the_numbers_of_its_config(problem, name):
    params, x, y = problem
    cfg = jaxbp.Config(**KW)
    net = jaxbp.Network.of(params, cfg)
    assert_same(FUNCTIONS[name](params, x, y, net), FUNCTIONS[name](params, x, y, cfg))


def test_a_network_passes_through_jit_as_an_ordinary_argument(problem):
    params, x, y = problem
    net = jaxbp.Network.of(params, **KW)
    got = jax.jit(jaxbp.manual_grad)(params, x, y, net)
    assert_same(got, jax.jit(jaxbp.manual_grad)(params, x, y, jaxbp.Config(**KW)))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda p: p[:2], ValueError, r"params do not fit this jaxbp\.Network"),
        (lambda p: [p[0], {"W": p[1]["W"][:, :4], "b": p[1]["b"][:4]}, p[2]], ValueError, "(8, 4)"),
        (lambda p: jax.tree.map(lambda v: v.astype(jnp.int32), p), TypeError, "floating point"),
    ],
    ids=["fewer-layers", "narrower", "integer"],
)
def test_params_that_are_not_the_networks_are_refused(problem, change, error, match):
    params, x, y = problem
    net = jaxbp.Network.of(params, **KW)
    with pytest.raises(error, match=match):
        jaxbp.manual_grad(change(params), x, y, net)


def test_keywords_beside_a_network_are_refused_as_beside_a_config(problem):
    params, x, y = problem
    net = jaxbp.Network.of(params, **KW)
    with pytest.raises(TypeError, match="pass either config or the keywords"):
        jaxbp.loss_fn(params, x, y, net, reduction="sum")
    with pytest.raises(ValueError, match=r"Network\.mlp builds the plain MLP"):
        jaxbp.Network.mlp([4, 3], layers=[jaxbp.Dense(3)], loss="mse")


def test_replace_changes_the_configuration_and_keeps_the_layers(problem):
    params, x, y = problem
    net = jaxbp.Network.of(params, **KW)
    summed = net.replace(reduction="sum")
    assert summed.layers == net.layers and summed.widths == net.widths and summed != net
    np.testing.assert_allclose(
        jaxbp.loss_fn(params, x, y, summed), 12 * jaxbp.loss_fn(params, x, y, net), rtol=1e-12
    )


@dataclasses.dataclass(frozen=True)
class Scale(jaxbp.Layer):
    """`out = a * s`: a learnable gain per unit, declaring only what differs from the base."""

    name = "scale"
    has_params = True
    per_example = True

    def init(self, key, n_in, dtype):
        return {"s": 1 + 0.1 * jax.random.normal(key, (n_in,), dtype)}, n_in

    def forward(self, params, a, ctx):
        return a * params["s"][None, :], a

    def backward(self, params, a, g):
        return g * params["s"][None, :], {"s": jnp.sum(g * a, axis=0)}

    def per_example_grads(self, params, a, g):
        return {"s": g * a}

    def per_example_sq_norms(self, params, a, g):
        return jnp.sum((g * a) ** 2, axis=1)


def test_a_layer_inheriting_the_base_record_states_only_what_differs():
    layers = [jaxbp.Dense(6), Scale(), jaxbp.Activate("tanh"), jaxbp.Dense(3)]
    params = jaxbp.init_layers(KEY, layers, 4, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (7, 4), jnp.float64)
    y = jnp.arange(7) % 3
    cfg = jaxbp.Config(layers=layers, loss="cross_entropy")
    jaxbp.assert_parity(params, x, y, cfg)
    scale = Scale()
    assert (scale.has_state, scale.random, scale.min_batch, scale.phi) == (False, False, 1, None)
    assert scale.provides("per_example_grads") and not scale.provides("init_state")
    g_n = jaxbp.per_example_grads(params, x, y, cfg.replace(reduction="sum"))
    one = lambda xi, yi: jax.grad(jaxbp.loss_fn)(params, xi[None], yi[None], cfg)  # noqa: E731
    want = jax.vmap(one)(x, y)
    for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_a_record_that_does_not_inherit_is_read_once_with_the_bases_defaults():
    @dataclasses.dataclass(frozen=True)
    class Shift:  # duck-typed: the facts it leaves out take the base's defaults
        name, has_params = "shift", False

        def init(self, key, n_in, dtype):
            return None, n_in

        def check(self, params, n_in, where):
            return n_in

        def forward(self, params, a, ctx):
            return a + 1.0, None

        def backward(self, params, cache, g):
            return g, None

    cfg = jaxbp.Config(layers=[jaxbp.Dense(4), Shift(), jaxbp.Dense(2)], loss="mse")
    layer = cfg.layers[1]
    assert isinstance(layer, jaxbp.Layer) and repr(layer) == repr(Shift())
    assert (layer.name, layer.per_example, layer.min_batch, layer.has_state) == (
        "shift",
        None,
        1,
        False,
    )
    params = jaxbp.init_layers(KEY, cfg.layers, 3, dtype=jnp.float64)
    x, y = jnp.ones((5, 3), jnp.float64), jnp.zeros((5, 2), jnp.float64)
    jaxbp.assert_parity(params, x, y, cfg)
    with pytest.raises(ValueError, match="has no per_example attribute"):
        jaxbp.per_example_grad_norms(params, x, y, cfg)


def test_the_trace_is_read_from_the_recursion_at_the_activations(problem):
    """`Trace.delta[l]` is `dL/dz_l` (jax.grad through a perturbation of z_l), with a
    layer between the dense layer and its activation (layer norm)."""
    params, x, y = make_problem(1, [5, 8, 6, 3], 12, "cross_entropy", norm="layer")
    cfg = jaxbp.Config(norm="layer", **KW)
    _, _, trace = jaxbp.backprop(params, x, y, cfg)
    net = jaxbp.Network.of(params, cfg)
    hidden = [i for i, layer in enumerate(net.layers) if layer.phi is not None]

    def loss_with(eps, at):
        def perturbed(layer, p, a, ctx, i):
            out, cache = layer.forward(p, a + eps if i == at else a, ctx)
            return out, cache

        a = x
        for i, (layer, p) in enumerate(zip(net.layers, net.spread(params), strict=True)):
            a, _ = perturbed(layer, p, a, jaxbp.Context(), i)
        return optax.softmax_cross_entropy_with_integer_labels(a, y).mean()

    for l, i in enumerate(hidden):
        want = jax.grad(loss_with)(jnp.zeros_like(trace.z[l]), i)
        np.testing.assert_allclose(trace.delta[l], want, rtol=1e-12, atol=1e-16)
