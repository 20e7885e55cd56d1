"""Gradient paths as values and one builder each: `step_fn`, `epoch_fn` and `sweep_fn` train
any path with one signature and one `TrainState`, to the numbers of the keyword
factories they replace (bit for bit), and a path of one's own plugs into all three."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem

KW = dict(activation="tanh", loss="cross_entropy")
KEY = jax.random.key(3)
OPT = optax.sgd(0.05, momentum=0.9)


def assert_same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(params=[None, "batch"], ids=["plain", "batch-norm"])
def network(request):
    norm = request.param
    params, x, y = make_problem(0, [5, 8, 3], 24, "cross_entropy", norm=norm)
    return jaxbp.Network.of(params, norm=norm, **KW), params, x, y


@pytest.mark.parametrize("path", ["manual", "autodiff"])
def test_step_and_epoch_equal_the_keyword_factories(network, path):
    net, params, x, y = network
    value = jaxbp.Manual() if path == "manual" else jaxbp.Autodiff()
    state = jaxbp.TrainState.create(OPT, params, net, value)
    old = jaxbp.make_train_step(OPT, net.config, grad=path, grad_norm=True, donate=False)
    new = jaxbp.step_fn(OPT, net, value, grad_norm=True)
    want = old(params, state.slot(), x[:8], y[:8])
    got = new(params, state, None, x[:8], y[:8])
    assert_same(got[0], want[0])
    assert_same(got[2], want[2])
    assert_same(got[1].slot(), want[1])
    old_epoch = jaxbp.make_train_epoch(
        OPT, net.config, batch_size=8, epochs=2, grad=path, donate=False
    )
    new_epoch = jaxbp.epoch_fn(OPT, net.config, path, batch_size=8, epochs=2)
    want = old_epoch(params, state.slot(), KEY, x, y)
    got = new_epoch(params, state, KEY, x, y)
    assert_same((got[0], got[1].slot(), got[2]), want)


def test_sweep_equals_the_keyword_factory():
    params, x, y = make_problem(1, [5, 8, 3], 24, "cross_entropy")
    stack = jax.tree.map(lambda v: jnp.stack([v, -v]), params)
    net = jaxbp.Network.of(params, **KW)
    state = jax.vmap(lambda p: jaxbp.TrainState.create(OPT, p, net))(stack)
    keys = jax.random.split(KEY, 2)
    want = jaxbp.make_train_sweep(OPT, net, batch_size=8, donate=False)(
        stack, state.opt_state, keys, x, y
    )
    got = jaxbp.sweep_fn(OPT, net, batch_size=8)(stack, state, keys, x, y)
    assert_same((got[0], got[1].opt_state, got[2]), want)


def test_dp_sgd_path_equals_the_dp_factories():
    params, x, y = make_problem(2, [5, 8, 3], 24, "cross_entropy")
    net = jaxbp.Network.of(params, **KW)
    dp = jaxbp.DPSGD(l2_clip=0.5, noise_multiplier=1.1)
    state = jaxbp.TrainState.create(OPT, params, net, dp)
    kw = dict(l2_clip=0.5, noise_multiplier=1.1, donate=False)
    want = jaxbp.make_dp_train_step(OPT, net, **kw)(params, state.opt_state, KEY, x[:8], y[:8])
    got = jaxbp.step_fn(OPT, net, dp, grad_norm=True)(params, state, KEY, x[:8], y[:8])
    assert_same((got[0], got[1].opt_state, got[2]), want)
    want = jaxbp.make_dp_train_epoch(OPT, net, batch_size=8, **kw)(
        params, state.opt_state, KEY, x, y
    )
    got = jaxbp.epoch_fn(OPT, net, dp, batch_size=8, grad_norm=True)(params, state, KEY, x, y)
    assert_same((got[0], got[1].opt_state, got[2]), want)
    assert set(got[2]) == {"loss", "grad_norm", "clipped"}


def test_fused_path_equals_the_keyword_factory():
    params, x, y = make_problem(3, [5, 8, 3], 16, "cross_entropy")
    sgd = jaxbp.fused_sgd(0.1, momentum=0.9)
    net = jaxbp.Network.of(params, **KW)
    state = jaxbp.TrainState.create(sgd, params, net)
    want = jaxbp.make_train_epoch(sgd, net, batch_size=8, grad="fused", donate=False)(
        params, state.opt_state, KEY, x, y
    )
    got = jaxbp.epoch_fn(sgd, net, jaxbp.Fused(), batch_size=8)(params, state, KEY, x, y)
    assert_same((got[0], got[1].opt_state, got[2]), want)
    assert jaxbp.Fused().warps == 8 and jaxbp.Fused(num_warps=4).warps == 4


def test_train_state_is_one_record_and_the_slot_is_its_older_form(network):
    net, params, x, y = network
    state = jaxbp.TrainState.create(OPT, params, net)
    assert isinstance(state, jaxbp.TrainState) and state.path_state is None
    assert len(state.stats) == int(net.stateful)
    slot = jaxbp.init_train_state(OPT, params, net)
    assert_same(state.slot(), slot)
    keeps = "batch normalisation" if net.stateful else None
    assert_same(jaxbp.TrainState.of_slot(slot, keeps), state)
    with pytest.raises(ValueError, match=r"opt_state must be .* for this network .*; got"):
        jaxbp.TrainState.of_slot(state if not net.stateful else state.opt_state, keeps)
    with pytest.raises(TypeError, match=r"state must be a jaxbp\.TrainState"):
        jaxbp.step_fn(OPT, net)(params, state.opt_state, None, x, y)


def test_paths_are_named_values_and_refuse_what_they_cannot_do(network):
    net = network[0]
    with pytest.raises(ValueError, match=r"grad must be one of \['manual', 'autodiff', 'fused'\]"):
        jaxbp.step_fn(OPT, net, "jax")
    with pytest.raises(ValueError, match="grad_norm=True needs the gradient"):
        jaxbp.step_fn(jaxbp.fused_sgd(0.1), net.config, jaxbp.Fused(), grad_norm=True)
    with pytest.raises(ValueError, match="diagnostics=True reads the backward flow"):
        jaxbp.make_train_step(OPT, net, grad=jaxbp.Autodiff(), diagnostics=True)
    if net.stateful:
        with pytest.raises(ValueError, match="DP-SGD is undefined for a network with 'batch_norm'"):
            jaxbp.step_fn(OPT, net, jaxbp.DPSGD(1.0, 1.0))
    assert hash(jaxbp.Manual()) == hash(jaxbp.Manual()) and jax.tree.leaves(jaxbp.Manual()) == []


def test_diagnostics_threshold_is_the_manual_paths(network):
    net, params, x, y = network
    state = jaxbp.TrainState.create(OPT, params, net)
    key = None
    low = jaxbp.step_fn(OPT, net, jaxbp.Manual(diagnostics=True, threshold=0.0))
    high = jaxbp.step_fn(OPT, net, jaxbp.Manual(diagnostics=True, threshold=2.0))
    assert float(low(params, state, key, x, y)[2]["saturated"][0]) == 0.0
    assert float(high(params, state, key, x, y)[2]["saturated"][0]) == 1.0


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ClippedManual(jaxbp.GradientPath):
    """A path of one's own: the manual gradient, rescaled to a global norm of at most
    `bound`, with that norm as a metric."""

    bound: float = 1.0
    name = "clipped"

    def value_and_grad(self, net, params, x, y, key, stats):
        g = jaxbp.Manual().value_and_grad(net, params, x, y, key, stats)
        norm = jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(g.grads)))
        scale = jnp.minimum(1.0, self.bound / norm)
        grads = jax.tree.map(lambda v: v * scale, g.grads)
        return g._replace(grads=grads, metrics={"norm_before": norm})


def test_a_path_of_ones_own_trains_with_every_builder():
    params, x, y = make_problem(4, [5, 8, 3], 24, "cross_entropy")
    net = jaxbp.Network.of(params, **KW)
    path = ClippedManual(0.01)
    state = jaxbp.TrainState.create(OPT, params, net, path)
    new, _, metrics = jaxbp.step_fn(OPT, net, path)(params, state, None, x, y)
    grads = jaxbp.manual_grad(params, x, y, net)
    norm = float(jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(grads))))
    np.testing.assert_allclose(metrics["norm_before"], norm, rtol=1e-12)
    clipped = jax.tree.map(lambda g: g * min(1.0, 0.01 / norm), grads)
    updates, _ = OPT.update(clipped, OPT.init(params), params)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(optax.apply_updates(params, updates))):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    _, _, m = jaxbp.epoch_fn(OPT, net, path, batch_size=8, epochs=2)(params, state, KEY, x, y)
    assert m["norm_before"].shape == (2, 3)
    stack = jax.tree.map(lambda v: jnp.stack([v, v]), (params, state))
    _, _, m = jaxbp.sweep_fn(OPT, net, path, batch_size=8, shared_order=True)(*stack, KEY, x, y)
    np.testing.assert_array_equal(m["loss"][0], m["loss"][1])
