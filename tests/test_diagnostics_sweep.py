"""Backward-flow diagnostics in the training step, and vmapped sweeps of many models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err

KW = dict(activation="sigmoid", loss="cross_entropy")


def test_diagnostics_against_autodiff():
    """delta_l norms equal those of dL/dz_l by jax.grad w.r.t. offsets on each z_l."""
    params, x, y = make_problem(0, [5, 7, 7, 3], 9, "cross_entropy", jnp.float64)
    optimizer = optax.sgd(0.0)  # leave params unchanged
    step = jaxbp.make_train_step(optimizer, diagnostics=True, **KW)
    _, _, metrics = step(jax.tree.map(jnp.array, params), optimizer.init(params), x, y)

    def loss_with_offsets(offsets):
        a = x
        for l, layer in enumerate(params):
            z = a @ layer["W"] + layer["b"][None, :] + offsets[l]
            a = jax.nn.sigmoid(z) if l < len(params) - 1 else z
        return jnp.mean(jax.nn.logsumexp(a, axis=1) - a[jnp.arange(9), y])

    offsets = [jnp.zeros((9, p["W"].shape[1])) for p in params]
    dl_dz = jax.grad(loss_with_offsets)(offsets)
    grads = jax.grad(jaxbp.loss_fn)(params, x, y, **KW)
    np.testing.assert_allclose(
        metrics["delta_norm"], [jnp.linalg.norm(d) for d in dl_dz], rtol=1e-12
    )
    np.testing.assert_allclose(
        metrics["grad_W_norm"], [jnp.linalg.norm(g["W"]) for g in grads], rtol=1e-12
    )
    a = x
    want = []
    for layer in params[:-1]:
        s = jax.nn.sigmoid(a @ layer["W"] + layer["b"][None, :])
        want.append(np.mean(np.asarray(s * (1 - s)) < 0.01))
        a = s
    np.testing.assert_array_equal(metrics["saturated"], want)


def test_saturation_counts_dead_relus():
    params, x, y = make_problem(0, [4, 6, 2], 8, "cross_entropy", jnp.float64)
    params[0]["b"] = params[0]["b"].at[:3].set(-100.0)  # three units dead on every sample
    optimizer = optax.sgd(0.0)
    step = jaxbp.make_train_step(
        optimizer, diagnostics=True, activation="relu", loss="cross_entropy"
    )
    _, _, metrics = step(params, optimizer.init(params), x, y)
    assert float(metrics["saturated"][0]) >= 0.5


def test_epoch_means_keep_the_layer_axis_of_every_diagnostic():
    """`epoch_means` averages over steps only: a diagnostics epoch's per-layer metrics
    keep their layer axis, its scalars become scalars (numpy as the reference)."""
    params, x, y = make_problem(0, [4, 6, 5, 2], 12, "cross_entropy")
    optimizer = optax.sgd(0.1)
    epoch = jaxbp.make_train_epoch(
        optimizer, batch_size=4, diagnostics=True, grad_norm=True, donate=False, **KW
    )
    _, _, metrics = epoch(params, optimizer.init(params), jax.random.key(0), x, y)
    means = jaxbp.epoch_means(metrics)
    assert metrics.keys() == means.keys() >= {"loss", "grad_norm", "delta_norm", "saturated"}
    for name, value in metrics.items():
        per_layer = np.ndim(value) == 2  # (steps, layers)
        assert np.shape(means[name]) == (np.shape(value)[1:] if per_layer else ())
        np.testing.assert_allclose(means[name], np.mean(value, axis=0), rtol=1e-6)


def test_diagnostics_need_manual_gradients():
    with pytest.raises(ValueError, match="use grad='manual'"):
        jaxbp.make_train_step(optax.sgd(0.1), grad="autodiff", diagnostics=True, **KW)


def test_sweep_equals_separate_runs():
    """Three models with three learning rates in one program = three separate epochs."""
    lrs = jnp.asarray([0.01, 0.1, 0.5], jnp.float32)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    inits = [jaxbp.init_mlp(jax.random.key(s), [6, 8, 3]) for s in range(3)]
    _, x, y = make_problem(9, [6, 8, 3], 40, "cross_entropy", jnp.float32)
    stack = jax.tree.map(lambda *v: jnp.stack(v), *inits)
    states = jax.vmap(optimizer.init)(stack)
    states.hyperparams["learning_rate"] = jnp.array(lrs)  # a copy: the sweep donates states
    keys = jax.random.split(jax.random.key(1), 3)
    kw = dict(activation="tanh", loss="cross_entropy", batch_size=8)
    sweep = jaxbp.make_train_sweep(optimizer, **kw)
    swept, _, metrics = sweep(stack, states, keys, x, y)
    assert metrics["loss"].shape == (3, 5)
    epoch = jaxbp.make_train_epoch(optimizer, **kw)
    for i in range(3):
        state = optimizer.init(inits[i])
        state.hyperparams["learning_rate"] = lrs[i]
        alone, _, _ = epoch(inits[i], state, keys[i], x, y)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(swept)):
            assert rel_err(b[i], a) < 1e-5


def _three_models():
    optimizer = optax.sgd(0.1, momentum=0.9)
    inits = [jaxbp.init_mlp(jax.random.key(s), [6, 8, 3]) for s in range(3)]
    stack = jax.tree.map(lambda *v: jnp.stack(v), *inits)
    return optimizer, inits, stack, jax.vmap(optimizer.init)(stack)


def test_sweep_with_shared_order_equals_separate_runs_with_one_key():
    """shared_order: every model sees the batches of one key, the first layer's products
    run as one matmul, and each model ends where its own epoch with that key ends."""
    optimizer, inits, stack, states = _three_models()
    _, x, y = make_problem(10, [6, 8, 3], 40, "cross_entropy", jnp.float32)
    kw = dict(activation="tanh", loss="cross_entropy", batch_size=8)
    sweep = jaxbp.make_train_sweep(optimizer, shared_order=True, **kw)
    key = jax.random.key(4)
    swept, _, metrics = sweep(stack, states, key, x, y)
    assert metrics["loss"].shape == (3, 5)
    epoch = jaxbp.make_train_epoch(optimizer, **kw)
    for i in range(3):
        alone, _, _ = epoch(inits[i], optimizer.init(inits[i]), key, x, y)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(swept)):
            assert rel_err(b[i], a) < 1e-5


@pytest.mark.parametrize(
    ("shared_order", "keys", "match"),
    [
        (False, jax.random.key(0), r"one key per model, shape \(N,\)"),
        (False, jax.random.split(jax.random.key(0), 2), "params stack 3 models, keys hold 2"),
        (True, jax.random.split(jax.random.key(0), 3), "a single key with shared_order=True"),
        (True, jax.random.split(jax.random.PRNGKey(0), 3), r"got keys of shape \(3, 2\)"),
    ],
    ids=["one-key-per-model-missing", "key-count", "shared-given-many", "shared-raw-many"],
)
def test_sweep_refuses_keys_of_the_wrong_shape(shared_order, keys, match):
    optimizer, _, stack, states = _three_models()
    _, x, y = make_problem(11, [6, 8, 3], 16, "cross_entropy", jnp.float32)
    sweep = jaxbp.make_train_sweep(
        optimizer, activation="tanh", loss="cross_entropy", batch_size=8, shared_order=shared_order
    )
    with pytest.raises(ValueError, match=match):
        sweep(stack, states, keys, x, y)


def test_sweep_takes_raw_uint32_keys():
    optimizer, _, stack, states = _three_models()
    _, x, y = make_problem(12, [6, 8, 3], 16, "cross_entropy", jnp.float32)
    sweep = jaxbp.make_train_sweep(optimizer, activation="tanh", loss="cross_entropy", batch_size=8)
    _, _, metrics = sweep(stack, states, jax.random.split(jax.random.PRNGKey(0), 3), x, y)
    assert metrics["loss"].shape == (3, 2)


@pytest.mark.parametrize("threshold", [0.01, 0.5, 0.9])
def test_saturation_is_relative_to_the_activations_own_slope(threshold):
    """`|phi'(z)| < threshold * phi.slope`, counted by hand from the trace: a sigmoid at
    its steepest (1/4) is not saturated; a user's activation without `max_deriv` gets its
    slope from a grid (softsign: 1, at 0)."""
    softsign = jaxbp.Activation(
        "softsign", lambda z: z / (1 + jnp.abs(z)), lambda z, a: (1 - jnp.abs(a)) ** 2
    )
    assert softsign.slope == pytest.approx(1.0, abs=1e-9)
    assert jaxbp.ACTIVATIONS["sigmoid"].slope == 0.25
    for act in (jaxbp.ACTIVATIONS["sigmoid"], softsign):
        params, x, y = make_problem(1, [5, 8, 8, 3], 40, "cross_entropy", x_scale=3.0)
        _, grads, trace = jaxbp.backprop(params, x, y, activation=act, loss="cross_entropy")
        stats = jaxbp.backward_flow_stats(trace, grads, act, threshold)
        for l, (z, a) in enumerate(zip(trace.z[:-1], trace.a[1:-1])):
            slope = np.abs(np.asarray(act.deriv(z, a)))
            np.testing.assert_allclose(
                stats["saturated"][l], np.mean(slope < threshold * act.slope)
            )
