"""The training API's contracts: E epochs in one call, scoring a sweep, optimizers and
donation, and the silent failures it refuses (each against an independent reference or
a message naming the fix)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err

CFG = jaxbp.Config("tanh", "cross_entropy")


@pytest.fixture
def problem():
    return make_problem(0, [5, 8, 3], 40, "cross_entropy")


def test_epochs_in_one_call_equal_the_python_loop(problem):
    params, x, y = problem
    opt = optax.adam(1e-2)
    many = jaxbp.make_train_epoch(opt, CFG, batch_size=8, epochs=3, donate=False)
    one = jaxbp.make_train_epoch(opt, CFG, batch_size=8, donate=False)
    key = jax.random.key(4)
    p_many, _, m_many = many(params, opt.init(params), key, x, y)
    p, s, losses = params, opt.init(params), []
    for e in range(3):
        p, s, m = one(p, s, jax.random.fold_in(key, e), x, y)
        losses.append(m["loss"])
    assert m_many["loss"].shape == (3, 5)
    for a, b in zip(jax.tree.leaves(p_many), jax.tree.leaves(p)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m_many["loss"], jnp.stack(losses))
    np.testing.assert_allclose(
        jaxbp.epoch_means(m_many)["loss"], np.mean(np.stack(losses), axis=1), rtol=1e-15
    )


def test_sweep_of_epochs_and_evaluate_sweep(problem):
    params, x, y = problem
    opt = optax.sgd(0.1)
    stack = jax.tree.map(lambda v: jnp.stack([v, 0.5 * v, -v]), params)
    sweep = jaxbp.make_train_sweep(opt, CFG, batch_size=8, epochs=2, donate=False)
    keys = jax.random.split(jax.random.key(1), 3)
    trained, _, metrics = sweep(stack, jax.vmap(opt.init)(stack), keys, x, y)
    assert metrics["loss"].shape == (3, 2, 5)
    scores = jaxbp.evaluate_sweep(trained, x, y, CFG)
    for n in range(3):
        one = jax.tree.map(lambda v, n=n: v[n], trained)
        want = jaxbp.evaluate(one, x, y, CFG)
        for k in ("loss", "accuracy"):
            np.testing.assert_allclose(scores[k][n], want[k], rtol=1e-14)
    with pytest.raises(ValueError, match="stack N models along a leading axis"):
        jaxbp.evaluate_sweep(params, x, y, CFG)


def test_multisteps_donation_and_line_search(problem):
    params, x, y = problem
    multi = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2)
    inner = multi.gradient_transformation()
    step = jaxbp.make_train_step(multi, CFG, donate=False)
    state = inner.init(params)
    p1, state, _ = step(params, state, x[:8], y[:8])
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params)):  # accumulating: no move yet
        np.testing.assert_array_equal(a, b)
    p2, _, _ = step(p1, state, x[8:16], y[8:16])
    # Reference: optax's MultiSteps driven by hand (it accumulates in float32 itself).
    want, ref_state = params, inner.init(params)
    for i in (0, 8):
        g = jax.grad(jaxbp.loss_fn)(want, x[i : i + 8], y[i : i + 8], CFG)
        updates, ref_state = inner.update(g, ref_state, want)
        want = optax.apply_updates(want, updates)
    for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(want)):
        assert rel_err(a, b) < 1e-12
    np.testing.assert_array_equal(params[0]["W"], params[0]["W"])  # not donated: still usable
    lbfgs = optax.lbfgs()
    with pytest.raises(TypeError, match="value, grad and value_fn"):
        jaxbp.make_train_step(lbfgs, CFG)(params, lbfgs.init(params), x, y)


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (
            lambda p, x, y: jaxbp.make_train_step(optax.adam(1e-3), CFG)(
                p, optax.adam(1e-3).init(jaxbp.init_mlp(jax.random.key(0), [5, 9, 3])), x, y
            ),
            ValueError,
            "opt_state does not fit params",
        ),
        (
            lambda p, x, y: jaxbp.make_train_epoch(optax.sgd(0.1), CFG, batch_size=8)(
                p, optax.sgd(0.1).init(p), jax.random.key(0), x, y[:-1]
            ),
            ValueError,
            "x and y must hold the same number of samples",
        ),
        (lambda p, x, y: jaxbp.loss_fn(p, x.astype(complex), y, CFG), TypeError, "real numbers"),
        (
            lambda p, x, y: jaxbp.loss_fn(p, x, 2 * jax.nn.one_hot(y, 3), CFG),
            ValueError,
            "must each sum to 1",
        ),
        (
            lambda p, x, y: jaxbp.loss_fn(
                jaxbp.init_mlp(jax.random.key(0), [5, 1]),
                x,
                y * 0,
                activation="tanh",
                loss="cross_entropy",
            ),
            ValueError,
            "needs at least 2 output units",
        ),
        (
            lambda p, x, y: jaxbp.loss_fn(
                p, x, jnp.full((40, 3), jnp.nan), activation="tanh", loss="binary_cross_entropy"
            ),
            ValueError,
            "must be finite",
        ),
        (lambda p, x, y: jaxbp.loss_fn(p, x, y, activation="tanh"), TypeError, "a loss is needed"),
        (
            lambda p, x, y: jaxbp.init_mlp(jax.random.key(0), None),
            TypeError,
            "sizes must be a list",
        ),
    ],
    ids=[
        "opt-state-architecture",
        "x-y-lengths",
        "complex-x",
        "probability-rows",
        "one-unit-softmax",
        "nan-bce-targets",
        "no-loss",
        "sizes-none",
    ],
)
def test_silent_failures_are_refused(problem, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(*problem)


def test_out_of_range_labels_under_jit_give_nan_not_zero(problem):
    """Traced labels cannot raise; a label >= n_L makes the loss and every gradient NaN,
    where one_hot alone would make them 0 (a silent no-op step)."""
    params, x, y = problem
    y = y.at[3].set(7)
    loss = jax.jit(jaxbp.loss_fn)(params, x, y, CFG)
    grads = jax.jit(jaxbp.manual_grad)(params, x, y, CFG)
    assert np.isnan(loss) and all(np.all(np.isnan(g)) for g in jax.tree.leaves(grads))
    _, _, metrics = jaxbp.make_train_step(optax.sgd(0.1), CFG, donate=False)(
        params, optax.sgd(0.1).init(params), x, y
    )
    assert np.isnan(metrics["loss"])
