"""Dropout, layer and batch normalisation: each handwritten backward against jax.vjp and
finite differences (float64), whole networks against jax.grad, the batch-norm state and
the dropout keys through steps, epochs and sweeps, and the features that refuse them."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxbp
from conftest import ACTIVATION_NAMES, LOSS_OUTPUTS, RTOL, make_problem, rel_err

TRAIN, EVAL = jaxbp.Context(train=True), jaxbp.Context(train=False)
STATS = {"mean": jnp.asarray([0.3, -0.2, 0.1, 0.0, 0.5]), "var": jnp.asarray([1.5, 0.7, 1, 2, 0.9])}
LAYER_CASES = [
    ("layer_norm", jaxbp.LayerNorm(), TRAIN),
    ("batch_norm-train", jaxbp.BatchNorm(), TRAIN),
    ("batch_norm-eval", jaxbp.BatchNorm(), jaxbp.Context(train=False, stats=STATS)),
    ("dropout", jaxbp.Dropout(0.3), jaxbp.Context(train=True, key=jax.random.key(3))),
    ("dropout-eval", jaxbp.Dropout(0.3), EVAL),
    ("dense", jaxbp.Dense(4), TRAIN),
    ("tanh", jaxbp.Activate("tanh"), TRAIN),
]


def layer_inputs(layer, batch, width, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(1.0, 2.0, size=(batch, width)), dtype)
    params = layer.init(jax.random.key(seed), width, dtype)[0]
    if params is not None:  # away from the init's ones and zeros
        params = jax.tree.map(
            lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), dtype), params
        )
    g = jnp.asarray(rng.normal(size=(batch, layer.init(jax.random.key(0), width, dtype)[1])), dtype)
    return params, a, g


def uncancelled_scale(layer, params, a, g, ctx):
    """For a normalisation, the size of `da`'s terms before they cancel: `||g|| max|gain| /
    min std`. Its input gradient can cancel to almost nothing (batch norm over 2 examples
    maps any input to +-1), leaving only both paths' rounding, on this scale."""
    if params is None or "gain" not in params:
        return 0.0
    axis = 0 if ctx.train and not layer.per_example else 1
    var = jnp.var(a, axis=axis) if ctx.stats is None else ctx.stats["var"]
    std = float(jnp.sqrt(jnp.min(var) + layer.eps))
    return float(jnp.linalg.norm(g) * jnp.max(jnp.abs(params["gain"]))) / std


def check_layer_against_vjp(layer, ctx, params, a, g, rtol):
    _, cache = layer.forward(params, a, ctx)
    da, dparams = layer.backward(params, cache, g)
    forward = lambda p, a: layer.forward(p, a, ctx)[0]  # noqa: E731
    _, vjp = jax.vjp(forward, params, a)
    want_params, want_a = vjp(g)
    scale = max(float(jnp.linalg.norm(want_a)), uncancelled_scale(layer, params, a, g, ctx))
    assert float(jnp.linalg.norm(da - want_a)) <= rtol * scale
    for got, want in zip(jax.tree.leaves(dparams), jax.tree.leaves(want_params), strict=True):
        assert rel_err(got, want) <= rtol


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("name", "layer", "ctx"), LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_backward_matches_vjp(name, layer, ctx, dtype):
    del name
    params, a, g = layer_inputs(layer, 7, 5, dtype)
    check_layer_against_vjp(layer, ctx, params, a, g, RTOL[dtype])


@settings(max_examples=40, deadline=None)
@given(
    case=st.sampled_from(LAYER_CASES[:4]),
    batch=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
)
def test_layer_backward_hypothesis(case, batch, seed, scale):
    _, layer, ctx = case
    params, a, g = layer_inputs(layer, batch, 5, jnp.float64, seed)
    check_layer_against_vjp(layer, ctx, params, scale * a, g, RTOL[jnp.float64])


@pytest.mark.parametrize(
    ("name", "layer", "ctx"), LAYER_CASES[:4], ids=[c[0] for c in LAYER_CASES[:4]]
)
def test_layer_backward_finite_differences(name, layer, ctx):
    """A third reference: the directional derivative of <g, out> along a random direction."""
    del name
    params, a, g = layer_inputs(layer, 6, 5, jnp.float64, seed=1)
    _, cache = layer.forward(params, a, ctx)
    da, _ = layer.backward(params, cache, g)
    v = jnp.asarray(np.random.default_rng(2).normal(size=a.shape))
    f = lambda t: float(jnp.sum(g * layer.forward(params, a + t * v, ctx)[0]))  # noqa: E731
    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    assert abs(fd - float(jnp.vdot(da, v))) <= 1e-7 * float(jnp.linalg.norm(da))


NETWORKS = [("layer", 0.0), ("batch", 0.0), (None, 0.3), ("layer", 0.3), ("batch", 0.3)]


def network(norm, seed, sizes=(5, 7, 6, 3), batch=8, loss="cross_entropy", dtype=jnp.float64):
    """`(params, x, y)` of a network with `norm` (dropout has no parameters: its masks come
    from the call's key)."""
    return make_problem(seed, list(sizes), batch, loss, dtype, norm=norm)


def assert_network_parity(norm, dropout, activation, loss, output, dtype, seed=7):
    """manual_grad against jax.grad per leaf, same dropout masks; the bias before a batch
    norm has an exactly-zero gradient, so there error is judged on the gradient's scale."""
    params, x, y = network(norm, seed, loss=loss, dtype=dtype)
    cfg = jaxbp.Config(activation, loss, output, norm=norm, dropout=dropout)
    key = jax.random.key(seed)
    manual = jaxbp.manual_grad(params, x, y, cfg, key=key)
    auto = jax.grad(jaxbp.loss_fn)(params, x, y, cfg, key=key)
    scale = np.sqrt(sum(float(jnp.sum(jnp.square(a))) for a in jax.tree.leaves(auto)))
    for m, a in zip(jax.tree.leaves(manual), jax.tree.leaves(auto), strict=True):
        err, ref = float(jnp.linalg.norm(m - a)), float(jnp.linalg.norm(a))
        assert err <= RTOL[dtype] * max(ref, scale if norm == "batch" else 0.0), (err, ref)


# The grid in two slices that meet at tanh and cross-entropy: every activation under one
# loss, and every loss and output under one activation, for each network, in float64;
# float32 and the rest of the cross product by hypothesis.
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize(("norm", "dropout"), NETWORKS, ids=[f"{n}-{d}" for n, d in NETWORKS])
def test_network_parity_activations(norm, dropout, activation):
    assert_network_parity(norm, dropout, activation, "cross_entropy", None, jnp.float64)


@pytest.mark.parametrize(
    ("loss", "output"), LOSS_OUTPUTS, ids=[f"{l}-{o}" for l, o in LOSS_OUTPUTS]
)
@pytest.mark.parametrize(("norm", "dropout"), NETWORKS, ids=[f"{n}-{d}" for n, d in NETWORKS])
def test_network_parity_losses(norm, dropout, loss, output):
    assert_network_parity(norm, dropout, "tanh", loss, output, jnp.float64)


@settings(max_examples=40, deadline=None)
@given(
    network_kind=st.sampled_from(NETWORKS),
    activation=st.sampled_from(ACTIVATION_NAMES),
    loss_output=st.sampled_from(LOSS_OUTPUTS),
    dtype=st.sampled_from([jnp.float64, jnp.float32]),
    seed=st.integers(0, 2**16),
)
def test_network_parity_hypothesis(network_kind, activation, loss_output, dtype, seed):
    assert_network_parity(*network_kind, activation, *loss_output, dtype, seed)


@pytest.mark.parametrize(("norm", "dropout"), NETWORKS, ids=[f"{n}-{d}" for n, d in NETWORKS])
def test_network_finite_differences(norm, dropout):
    params, x, y = network(norm, 3, loss="mse")
    cfg = jaxbp.Config("tanh", "mse", norm=norm, dropout=dropout)
    report = jaxbp.check_parity(params, x, y, cfg, finite_differences=True, atol="auto")
    report.assert_passed()
    assert report.max_fd_err is not None and report.max_fd_err < 1e-6


def test_batch_norm_running_averages_closed_form():
    """One step: the running averages move toward the batch's mean and biased variance of
    the dense layer's output; evaluation then normalises with them (numpy references)."""
    params, x, y = network("batch", 5)
    cfg = jaxbp.Config("tanh", "cross_entropy", norm="batch")
    opt = optax.sgd(0.1)
    state = jaxbp.init_train_state(opt, params, cfg)
    assert isinstance(state, jaxbp.TrainState) and len(state.stats) == 2
    step = jaxbp.make_train_step(opt, cfg, donate=False)
    _, new, _ = step(params, state, x, y)
    z1 = np.asarray(x) @ np.asarray(params[0]["W"]) + np.asarray(params[0]["b"])
    np.testing.assert_allclose(new.stats[0]["mean"], 0.1 * z1.mean(0), rtol=1e-12)
    np.testing.assert_allclose(new.stats[0]["var"], 0.9 + 0.1 * z1.var(0), rtol=1e-12)
    stats = new.stats
    y_hat = jaxbp.forward(params, x, cfg, stats=stats)
    a = np.asarray(x)
    for i in range(2):  # hidden blocks: dense, batch norm (running averages), tanh
        z = a @ np.asarray(params[2 * i]["W"]) + np.asarray(params[2 * i]["b"])
        s, g = stats[i], params[2 * i + 1]
        xhat = (z - np.asarray(s["mean"])) / np.sqrt(np.asarray(s["var"]) + 1e-5)
        a = np.tanh(np.asarray(g["gain"]) * xhat + np.asarray(g["bias"]))
    logits = a @ np.asarray(params[4]["W"]) + np.asarray(params[4]["b"])
    want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(y_hat, want, rtol=1e-12)
    metrics = jaxbp.evaluate(params, x, y, cfg, stats=stats)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(want.argmax(1) == np.asarray(y)))


@pytest.mark.parametrize(
    ("norm", "dropout"),
    [("batch", 0.3), ("layer", 0.0)],  # state and keys together; layer norm's plain params
    ids=["batch-0.3", "layer-0.0"],
)
def test_step_epoch_sweep_manual_equals_autodiff_and_are_deterministic(norm, dropout):
    """The batch-norm state and the dropout keys flow through a step, an epoch and a
    sweep of two models: both gradient paths agree; the same key gives the same run."""
    params, x, y = network(norm, 9, batch=24)
    cfg = jaxbp.Config("tanh", "cross_entropy", norm=norm, dropout=dropout)
    opt = optax.sgd(0.05, momentum=0.9)
    programs = {
        grad: (
            jaxbp.make_train_step(opt, cfg, grad=grad),
            jaxbp.make_train_epoch(opt, cfg, batch_size=8, grad=grad),
            jaxbp.make_train_sweep(opt, cfg, batch_size=8, grad=grad),
        )
        for grad in ("manual", "autodiff")
    }

    def run(grad, key):
        step, epoch, sweep = programs[grad]
        p = jax.tree.map(jnp.array, params)
        p, state, _ = step(p, jaxbp.init_train_state(opt, p, cfg), x[:8], y[:8], key=key)
        p, state, _ = epoch(p, state, key, x, y)
        stack = jax.tree.map(lambda v: jnp.stack([v, 2 * v]), p)
        states = jax.tree.map(lambda v: jnp.stack([v, v]), state)
        return sweep(stack, states, jax.random.split(key, 2), x, y)[:2]

    manual, auto = run("manual", jax.random.key(1)), run("autodiff", jax.random.key(1))
    for a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    again = run("manual", jax.random.key(1))
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(again))
    )
    if dropout:  # another key, other masks
        other = run("manual", jax.random.key(2))
        assert not np.allclose(jax.tree.leaves(manual)[0], jax.tree.leaves(other)[0])


def test_dropout_per_example_grads_use_the_batch_masks():
    """Per-example gradients with a key are the Jacobian of the per-sample losses under
    the very masks the batch gradient uses (reference: jax.jacrev of jaxbp.mlp)."""
    params, x, y = network(None, 2, loss="mse")
    cfg = jaxbp.Config("tanh", "mse", dropout=0.4, reduction="sum")
    key = jax.random.key(4)

    def per_sample(p):
        z = jaxbp.mlp(p, x, cfg, key=key, backward="autodiff")
        return jnp.sum((z - y) ** 2, axis=1)

    want = jax.jacrev(per_sample)(params)
    got = jaxbp.per_example_grads(params, x, y, cfg, key=key)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert rel_err(a, b) <= 1e-12
    norms = jaxbp.per_example_grad_norms(params, x, y, cfg, key=key)
    flat = np.concatenate([np.reshape(v, (x.shape[0], -1)) for v in jax.tree.leaves(want)], 1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda p, x, y, c: jaxbp.per_example_grads(p, x, y, c),
        lambda p, x, y, c: jaxbp.per_example_grad_norms(p, x, y, c),
        lambda p, x, y, c: jaxbp.dp_value_and_grad(
            p, jax.random.key(0), x, y, c, l2_clip=1.0, noise_multiplier=1.0
        ),
        lambda p, x, y, c: jaxbp.make_dp_train_step(
            optax.sgd(0.1), c, l2_clip=1.0, noise_multiplier=1.0
        )(p, jaxbp.init_train_state(optax.sgd(0.1), p, c), jax.random.key(0), x, y),
    ],
    ids=["per_example_grads", "per_example_grad_norms", "dp_value_and_grad", "dp_step"],
)
def test_batch_norm_refused_where_an_example_has_no_gradient_of_its_own(call):
    params, x, y = network("batch", 1)
    cfg = jaxbp.Config("tanh", "cross_entropy", norm="batch")
    with pytest.raises(ValueError, match=r"'batch_norm'.*depends on the other examples"):
        call(params, x, y, cfg)


# (network's norm, call, exception, fragment of its message): the network is one whose
# parameters fit the call, so the error is about the problem named and nothing else.
ERRORS = {
    "dropout-no-key": (
        None,
        lambda p, x, y: jaxbp.loss_fn(p, x, y, activation="tanh", loss="mse", dropout=0.5),
        ValueError,
        "pass key=",
    ),
    "bad-key": (
        None,
        lambda p, x, y: jaxbp.manual_grad(
            p, x, y, activation="tanh", loss="mse", dropout=0.5, key=3
        ),
        TypeError,
        "jax.random key",
    ),
    "bn-no-stats": (
        "batch",
        lambda p, x, y: jaxbp.forward(p, x, activation="tanh", norm="batch"),
        ValueError,
        "pass stats=",
    ),
    "bn-stats-length": (
        "batch",
        lambda p, x, y: jaxbp.forward(p, x, activation="tanh", norm="batch", stats=[]),
        ValueError,
        "stats must be this network's running averages",
    ),
    "dropout-rate": (
        None,
        lambda p, x, y: jaxbp.Config("tanh", "mse", dropout=1.0),
        ValueError,
        "dropout must be a rate in [0, 1)",
    ),
    "norm-name": (
        None,
        lambda p, x, y: jaxbp.Config("tanh", "mse", norm="group"),
        ValueError,
        "norm must be None, 'layer' or 'batch'",
    ),
    "bn-momentum": (
        None,
        lambda p, x, y: jaxbp.BatchNorm(momentum=1.0),
        ValueError,
        "BatchNorm momentum must lie in [0, 1)",
    ),
    "ln-eps": (
        None,
        lambda p, x, y: jaxbp.LayerNorm(eps=0),
        ValueError,
        "LayerNorm eps must be a number > 0",
    ),
    "bn-plain-opt-state": (
        "batch",
        lambda p, x, y: jaxbp.make_train_step(
            optax.sgd(0.1), activation="tanh", loss="mse", norm="batch"
        )(p, optax.sgd(0.1).init(p), x, y),
        ValueError,
        "jaxbp.init_train_state",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_fix(case):
    norm, call, error, fragment = ERRORS[case]
    params, x, y = network(norm, 0, loss="mse")
    with pytest.raises(error, match=re.escape(fragment)):
        call(params, x, y)


def test_train_state_checkpoint_round_trip(tmp_path):
    params, _, _ = network("batch", 0)
    cfg = jaxbp.Config("tanh", "cross_entropy", norm="batch")
    state = jaxbp.init_train_state(optax.adam(1e-3), params, cfg)
    tree = {"params": params, "state": state}
    jaxbp.save_checkpoint(tmp_path / "c.jaxbp", tree, {"epoch": 1})
    like = jax.tree.map(jnp.zeros_like, tree)  # the values can only come from the file
    loaded, meta = jaxbp.load_checkpoint(tmp_path / "c.jaxbp", like)
    assert meta["epoch"] == 1 and isinstance(loaded["state"], jaxbp.TrainState)
    assert jax.tree.structure(loaded) == jax.tree.structure(tree)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(tree))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
