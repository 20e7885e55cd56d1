"""make_train_step / make_train_epoch / evaluate against hand-rolled optax loops and numpy."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err
from jaxbp import epoch_batches

KW = dict(activation="tanh", loss="cross_entropy")


def reference_step(optimizer, params, opt_state, x, y):
    """An optax step written out with jax.grad, independent of jaxbp's training code."""
    value, grads = jax.value_and_grad(jaxbp.loss_fn)(params, x, y, **KW)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


@pytest.fixture
def problem():
    params, x, y = make_problem(3, [6, 16, 16, 4], 96, "cross_entropy", jnp.float32)
    return params, x, y


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_step_matches_a_hand_rolled_optax_step(problem, grad):
    params, x, y = problem
    optimizer = optax.adam(1e-2)
    step = jaxbp.make_train_step(optimizer, grad=grad, **KW)
    p, s = copy(params), optimizer.init(params)
    rp, rs = copy(params), optimizer.init(params)
    for i in range(5):
        xb, yb = x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]
        p, s, metrics = step(p, s, xb, yb)
        rp, rs, value = reference_step(optimizer, rp, rs, xb, yb)
        np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(rp)):
        assert rel_err(a, b) < 1e-5
    assert set(metrics) == {"loss"} and metrics["loss"].shape == ()  # grad_norm is opt-in


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_grad_norm_is_the_norm_of_the_gradient(grad):
    """float64, a 5-layer network (10 leaves): the metric against numpy's norm of the
    flattened jax.grad gradient."""
    params, x, y = make_problem(4, [6, 9, 9, 9, 9, 4], 12, "cross_entropy")
    step = jaxbp.make_train_step(optax.sgd(0.1), grad=grad, grad_norm=True, **KW)
    grads = jax.grad(jaxbp.loss_fn)(params, x, y, **KW)
    want = np.linalg.norm(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]))
    _, _, metrics = step(copy(params), optax.sgd(0.1).init(params), x, y)
    assert float(metrics["grad_norm"]) == pytest.approx(want, rel=1e-13)


def test_manual_and_autodiff_trajectories_agree_over_120_steps(problem):
    """Same seed and data: the two gradient paths train to the same parameters (float32)."""
    params, x, y = problem
    optimizer = optax.sgd(0.1, momentum=0.9)
    results = {}
    for grad in ("manual", "autodiff"):
        step = jaxbp.make_train_step(optimizer, grad=grad, **KW)
        p, s = copy(params), optimizer.init(params)
        for i in range(120):
            j = (i % 6) * 16
            p, s, _ = step(p, s, x[j : j + 16], y[j : j + 16])
        results[grad] = p
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results["manual"]))
    )
    for a, b in zip(jax.tree.leaves(results["manual"]), jax.tree.leaves(results["autodiff"])):
        assert rel_err(a, b) < 1e-4


def test_step_compiles_once_and_donates_when_asked(problem, caplog):
    params, x, y = problem
    optimizer = optax.adam(1e-3)
    kept = jaxbp.make_train_step(optimizer, **KW)  # the default, as JAX's: no donation
    kept(params, optimizer.init(params), x[:16], y[:16])
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))
    step = jaxbp.make_train_step(optimizer, donate=True, **KW)
    p, s = copy(params), optimizer.init(params)
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        p, s, _ = step(p, s, x[:16], y[:16])
        first = sum("Compiling" in r.getMessage() for r in caplog.records)
        old = p
        p, s, _ = step(p, s, x[16:32], y[16:32])
        second = sum("Compiling" in r.getMessage() for r in caplog.records)
    assert first >= 1
    assert second == first, "the second call recompiled"
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old)), "params were not donated"


def test_epoch_batches_cover_every_sample():
    idx = np.asarray(epoch_batches(jax.random.key(0), 10, 4))
    assert idx.shape == (3, 4)
    assert set(idx.ravel()) == set(range(10))
    np.testing.assert_array_equal(idx.ravel()[10:], idx.ravel()[:2])  # filled from the start
    assert np.asarray(epoch_batches(jax.random.key(0), 12, 4)).ravel().tolist() != list(range(12))


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_epoch_equals_a_loop_of_steps(problem, grad):
    params, x, y = problem
    x, y = x[:90], y[:90]  # 90 = 5 full batches of 16 and a partial one
    optimizer = optax.adam(1e-2)
    epoch = jaxbp.make_train_epoch(optimizer, batch_size=16, grad=grad, **KW)
    key = jax.random.key(5)
    p, _, metrics = epoch(copy(params), optimizer.init(params), key, x, y)
    assert metrics["loss"].shape == (6,)
    rp, rs = copy(params), optimizer.init(params)
    losses = []
    for idx in epoch_batches(key, 90, 16):
        rp, rs, value = reference_step(optimizer, rp, rs, x[idx], y[idx])
        losses.append(value)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(rp)):
        assert rel_err(a, b) < 1e-5


def test_epoch_rejects_fewer_samples_than_a_batch(problem):
    params, x, y = problem
    optimizer = optax.sgd(0.1)
    epoch = jaxbp.make_train_epoch(optimizer, batch_size=128, **KW)
    with pytest.raises(ValueError, match="holds 96 samples, fewer than one batch"):
        epoch(params, optimizer.init(params), jax.random.key(0), x, y)


def test_evaluate_against_numpy(problem):
    params, x, y = problem
    ev = jaxbp.evaluate(params, x, y, **KW)
    logits = np.asarray(jaxbp.forward(params, x, activation="tanh"))
    np.testing.assert_allclose(
        ev["accuracy"], np.mean(logits.argmax(1) == np.asarray(y)), rtol=1e-7
    )
    np.testing.assert_allclose(ev["loss"], jaxbp.loss_fn(params, x, y, **KW), rtol=1e-6)

    params, x, t = make_problem(4, [6, 8, 2], 50, "mse", jnp.float64)
    ev = jaxbp.evaluate(params, x, t, activation="relu", loss="mse")
    y_hat, t = np.asarray(jaxbp.forward(params, x, activation="relu")), np.asarray(t)
    r2 = 1 - ((t - y_hat) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()
    np.testing.assert_allclose(ev["r2"], r2, rtol=1e-12)

    params, x, t = make_problem(5, [6, 8, 1], 50, "binary_cross_entropy", jnp.float64)
    t = (t > 0.5).astype(jnp.float64)
    ev = jaxbp.evaluate(params, x, t[:, 0], activation="relu", loss="binary_cross_entropy")
    z = np.asarray(jaxbp.forward(params, x, activation="relu"))[:, 0]
    np.testing.assert_allclose(
        ev["accuracy"], np.mean((z > 0) == (np.asarray(t[:, 0]) > 0.5)), rtol=1e-7
    )


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        (dict(grad="numeric"), ValueError, "grad must be one of ['manual', 'autodiff', 'fused']"),
        (dict(activation="swish"), ValueError, "activation must be one of"),
        (dict(loss="cross_entropy", output_activation="identity"), ValueError, "canonical output"),
    ],
    ids=["grad", "activation", "output"],
)
def test_step_argument_errors(kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        jaxbp.make_train_step(optax.sgd(0.1), **{**KW, **kwargs})
    assert fragment in str(info.value)


def test_optimizer_type_error():
    with pytest.raises(TypeError, match=r"optax\.GradientTransformation"):
        jaxbp.make_train_step(lambda g: g, **KW)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        jaxbp.make_train_epoch(optax.sgd(0.1), batch_size=0, **KW)
