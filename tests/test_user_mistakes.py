"""What a user can get wrong in the public API, found by an outside review: each mistake
is refused with one message naming the argument and the fix, or given a defined value
checked against an independent reference (numpy, scikit-learn, the equivalent network)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import r2_score

import jaxbp
from conftest import make_problem, rel_err

KW = dict(activation="tanh", loss="cross_entropy")
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def problem():
    return make_problem(0, [4, 5, 3], 8, "cross_entropy", jnp.float64)


# -- training: sweeps, keys, epochs ---------------------------------------------------


RATES = jnp.array([0.0, 0.1, 0.2, 0.3])
CLOSED_OVER = r"closes over an array of shape \(4,\).*inject"
PER_MODEL_RATES = [  # the recipe done wrong: N = 4 rates given to the optimizer itself
    ("sgd", lambda: optax.sgd(RATES), CLOSED_OVER),
    ("sgd-momentum", lambda: optax.sgd(RATES, momentum=0.9), CLOSED_OVER),
    ("adam", lambda: optax.adam(RATES), CLOSED_OVER),
    (
        "injected-whole",
        lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=RATES),
        r"'learning_rate' has shape \(4,\) per model",
    ),
]
WIDTHS = {"widths-equal-N": [4, 4, 4], "widths-differ": [5, 3, 2]}


@pytest.mark.parametrize("sizes", list(WIDTHS.values()), ids=list(WIDTHS))
@pytest.mark.parametrize(
    ("make", "match"), [c[1:] for c in PER_MODEL_RATES], ids=[c[0] for c in PER_MODEL_RATES]
)
def test_a_sweep_refuses_per_model_rates_given_to_the_optimizer(sizes, make, match):
    """N rates in the optimizer reach every model whole: broadcast silently against a
    width-N layer, or failing in JAX's own words against another; refused by name either
    way, whatever the widths."""
    params, x, y = make_problem(0, sizes, 16, "cross_entropy")
    stack = jax.tree.map(lambda v: jnp.stack([v] * 4), params)
    bad = make()
    for shared_order, keys in ((True, KEY), (False, jax.random.split(KEY, 4))):
        sweep = jaxbp.make_train_sweep(
            bad, batch_size=8, shared_order=shared_order, donate=False, **KW
        )
        with pytest.raises(ValueError, match=match):
            sweep(stack, jax.vmap(bad.init)(stack), keys, x, y)


@pytest.mark.parametrize("sizes", list(WIDTHS.values()), ids=list(WIDTHS))
def test_injected_per_model_rates_train_each_model_at_its_rate(sizes):
    """The docstring's recipe: inject_hyperparams with a scalar, one rate per model set in
    the vmapped state. Each model equals its own run, done two independent ways: an epoch
    without vmap (make_train_epoch) and a sweep of that model alone at optax.sgd(rate)."""
    params, x, y = make_problem(0, sizes, 16, "cross_entropy")
    stack = jax.tree.map(lambda v: jnp.stack([v] * 4), params)
    good = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    state = jax.vmap(good.init)(stack)
    state.hyperparams["learning_rate"] = RATES
    sweep = jaxbp.make_train_sweep(good, batch_size=8, shared_order=True, donate=False, **KW)
    trained, _, _ = sweep(stack, state, KEY, x, y)
    jax.tree.map(lambda t, p: np.testing.assert_array_equal(t[0], p[0]), trained, stack)
    for i in (1, 2, 3):
        sgd = optax.sgd(float(RATES[i]))
        epoch = jaxbp.make_train_epoch(sgd, batch_size=8, donate=False, **KW)
        alone, _, _ = epoch(params, sgd.init(params), KEY, x, y)
        one = jax.tree.map(lambda v: v[:1], stack)
        solo = jaxbp.make_train_sweep(sgd, batch_size=8, shared_order=True, donate=False, **KW)
        swept, _, _ = solo(one, jax.vmap(sgd.init)(one), KEY, x, y)
        for t, a, b in zip(
            jax.tree.leaves(trained), jax.tree.leaves(alone), jax.tree.leaves(swept)
        ):
            np.testing.assert_allclose(t[i], a, rtol=1e-5, atol=1e-7)
            assert rel_err(t[i], b[0]) < 1e-12


@pytest.mark.parametrize("shared_order", [True, False], ids=["shared-order", "own-order"])
def test_a_sweep_without_keys_is_refused_by_name(shared_order):
    params, x, y = make_problem(0, [4, 5, 3], 16, "cross_entropy")
    stack = jax.tree.map(lambda v: jnp.stack([v] * 2), params)
    opt = optax.sgd(0.1)
    sweep = jaxbp.make_train_sweep(opt, batch_size=8, shared_order=shared_order, **KW)
    example = "jax.random.key(0)" if shared_order else "jax.random.split(jax.random.key(0), 2)"
    with pytest.raises(TypeError) as err:
        sweep(stack, jax.vmap(opt.init)(stack), None, x, y)
    assert str(err.value) == f"keys must be a jax.random key such as {example}; got NoneType None."


def test_a_sweep_refuses_an_unstacked_optimizer_state():
    params, x, y = make_problem(0, [4, 5, 3], 16, "cross_entropy")
    stack = jax.tree.map(lambda v: jnp.stack([v] * 2), params)
    opt = optax.adam(0.1)
    sweep = jaxbp.make_train_sweep(opt, batch_size=8, shared_order=True, donate=False, **KW)
    with pytest.raises(ValueError, match=r"opt_state must stack N models.*jax\.vmap\(optimizer"):
        sweep(stack, opt.init(stack), KEY, x, y)


BAD_KEYS = [
    ("int", 0, TypeError, "must be a jax.random key such as jax.random.key(0); got "),
    ("float-array", np.zeros(2, np.float32), TypeError, "got an array of dtype float32 and shape"),
    ("three-uint32", jnp.zeros(3, jnp.uint32), ValueError, "got key of shape (3,) (raw uint32"),
    ("split", jax.random.split(KEY, 3), ValueError, "must be a single key"),
]
KEY_USERS = {
    "init_mlp": lambda k, p, x, y: jaxbp.init_mlp(k, [4, 5, 3]),
    "init_layers": lambda k, p, x, y: jaxbp.init_layers(k, [jaxbp.Dense(3)], 4),
    "loss_fn": lambda k, p, x, y: jaxbp.loss_fn(p, x, y, key=k, dropout=0.5, **KW),
    "epoch": lambda k, p, x, y: jaxbp.make_train_epoch(
        optax.sgd(0.1), batch_size=4, donate=False, **KW
    )(p, optax.sgd(0.1).init(p), k, x, y),
    "epochs": lambda k, p, x, y: jaxbp.make_train_epoch(
        optax.sgd(0.1), batch_size=4, epochs=2, donate=False, **KW
    )(p, optax.sgd(0.1).init(p), k, x, y),
    "dp": lambda k, p, x, y: jaxbp.dp_value_and_grad(
        p, k, x, y, l2_clip=1.0, noise_multiplier=1.0, **KW
    ),
    "epoch_batches": lambda k, p, x, y: jaxbp.epoch_batches(k, 8, 4),
}


@pytest.mark.parametrize("user", list(KEY_USERS))
@pytest.mark.parametrize(
    ("key", "exc", "fragment"),
    [case[1:] for case in BAD_KEYS],
    ids=[case[0] for case in BAD_KEYS],
)
def test_a_key_that_is_no_key_is_refused_by_name(problem, user, key, exc, fragment):
    params, x, y = problem
    with pytest.raises(exc, match="key") as err:
        KEY_USERS[user](key, params, x, y)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("n", "batch_size", "exc", "fragment"),
    [
        (8, 32, ValueError, "batch_size=32 is more than the 8 samples"),
        (8, 0, ValueError, "batch_size must be an integer >= 1; got 0"),
        (8.0, 4, TypeError, "n must be an integer >= 1 (the number of samples); got float 8.0"),
        (0, 4, ValueError, "n must be an integer >= 1 (the number of samples); got 0"),
        (8, 4.0, TypeError, "batch_size must be an integer >= 1; got float 4.0. Pass int(4.0)."),
    ],
    ids=["batch-past-n", "batch-zero", "float-n", "no-samples", "float-batch-size"],
)
def test_epoch_batches_refuses_what_cannot_be_cut(n, batch_size, exc, fragment):
    with pytest.raises(exc) as err:
        jaxbp.epoch_batches(KEY, n, batch_size)
    assert fragment in str(err.value)


def test_epoch_batches_takes_numpy_integers():
    got = jaxbp.epoch_batches(KEY, np.int64(10), np.int32(4))
    np.testing.assert_array_equal(got, jaxbp.epoch_batches(KEY, 10, 4))


def test_a_jitted_epoch_takes_python_lists_as_the_step_does(problem):
    params, x, y = problem
    opt = optax.sgd(0.1)
    epoch = jaxbp.make_train_epoch(opt, batch_size=4, donate=False, **KW)
    want = epoch(params, opt.init(params), KEY, x, y)
    got = epoch(params, opt.init(params), KEY, np.asarray(x).tolist(), np.asarray(y).tolist())
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_an_opt_state_of_none_says_what_to_pass(problem):
    params, x, y = problem
    step = jaxbp.make_train_step(optax.sgd(0.1), **KW)
    with pytest.raises(ValueError, match=r"it is NoneType.*optimizer\.init\(params\)"):
        step(params, None, x, y)


A_FLOAT_COUNT = [  # the same mistake, a float where a count goes: a TypeError everywhere
    (
        "random_problem-batch",
        "batch",
        lambda: jaxbp.random_problem(0, [3, 2], 2.0, "mse", "float64"),
    ),
    ("parity_grid-batch", "batch", lambda: jaxbp.parity_grid(batch=2.0)),
    ("epoch-batch_size", "batch_size", lambda: jaxbp.make_train_epoch(SGD, batch_size=2.0, **KW)),
    ("sweep-batch_size", "batch_size", lambda: jaxbp.make_train_sweep(SGD, batch_size=2.0, **KW)),
    ("epoch_batches", "batch_size", lambda: jaxbp.epoch_batches(KEY, 8, 2.0)),
    ("epochs", "epochs", lambda: jaxbp.make_train_epoch(SGD, batch_size=2, epochs=2.0, **KW)),
    ("init_layers-n_in", "n_in", lambda: jaxbp.init_layers(KEY, [jaxbp.Dense(3)], 2.0)),
]
SGD = optax.sgd(0.1)


@pytest.mark.parametrize(
    ("name", "call"), [c[1:] for c in A_FLOAT_COUNT], ids=[c[0] for c in A_FLOAT_COUNT]
)
def test_a_float_count_is_the_same_type_error_everywhere(name, call):
    with pytest.raises(TypeError) as err:
        call()
    message = str(err.value)
    assert message.startswith(f"{name} must be an integer >= 1")
    assert "got float 2.0. Pass int(2.0)." in message


@pytest.mark.parametrize(
    "make",
    [
        lambda dtype: jaxbp.init_mlp(KEY, [3, 4, 2], dtype=dtype, norm="layer"),
        lambda dtype: jaxbp.init_layers(KEY, [jaxbp.Dense(4), jaxbp.Dense(2)], 3, dtype=dtype),
    ],
    ids=["init_mlp", "init_layers"],
)
def test_float64_parameters_without_x64_are_refused_not_made_float32(make):
    """Without x64 JAX makes float32 arrays whatever dtype is asked for: refused by name,
    as random_problem refuses it; with x64 (global or scoped) they are float64."""
    dtypes = lambda params: {leaf.dtype for leaf in jax.tree.leaves(params)}  # noqa: E731
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(
            ValueError, match=r"^dtype is float64, but jax_enable_x64 is off"
        ) as err:
            make(jnp.float64)
        assert 'jax.config.update("jax_enable_x64", True)' in str(err.value)
        assert dtypes(make(jnp.float32)) == {np.dtype(np.float32)}
        with jax.enable_x64(True):
            assert dtypes(make(jnp.float64)) == {np.dtype(np.float64)}
    finally:
        jax.config.update("jax_enable_x64", True)
    assert dtypes(make("float64")) == {np.dtype(np.float64)}
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype .*; got None\."):
        make(None)


EPOCH_RUNNERS = {
    "epoch": lambda p, x, y: jaxbp.make_train_epoch(SGD, batch_size=4, donate=False, **KW)(
        p, SGD.init(p), KEY, x, y
    ),
    "epochs": lambda p, x, y: jaxbp.make_train_epoch(
        SGD, batch_size=4, epochs=2, donate=False, **KW
    )(p, SGD.init(p), KEY, x, y),
    "dp-epoch": lambda p, x, y: jaxbp.make_dp_train_epoch(
        SGD, batch_size=4, l2_clip=1.0, noise_multiplier=1.0, donate=False, **KW
    )(p, SGD.init(p), KEY, x, y),
}
BAD_EPOCH_DATA = [
    (
        "x-none",
        lambda x, y: (None, y),
        TypeError,
        "x must be an array (batch, n_0) of real numbers; got NoneType None.",
    ),
    (
        "x-1d",
        lambda x, y: (x[:, 0], y),
        ValueError,
        "x must be 2-d, (batch, n_0) with one sample a row; got shape (8,).",
    ),
    (
        "y-none",
        lambda x, y: (x, None),
        TypeError,
        "y must be an array of targets, one row per sample; got NoneType None.",
    ),
    (
        "y-short",
        lambda x, y: (x, y[:5]),
        ValueError,
        "x and y must hold the same number of samples; x has 8, y has shape (5,).",
    ),
]


@pytest.mark.parametrize("runner", list(EPOCH_RUNNERS))
@pytest.mark.parametrize(
    ("cut", "exc", "message"), [c[1:] for c in BAD_EPOCH_DATA], ids=[c[0] for c in BAD_EPOCH_DATA]
)
def test_an_epoch_checks_the_whole_dataset_as_passed(problem, runner, cut, exc, message):
    """Before any minibatch is cut: the error names the data the user passed (8 samples),
    never a minibatch of 4, and never JAX's unnamed conversion error."""
    params, x, y = problem
    with pytest.raises(exc) as err:
        EPOCH_RUNNERS[runner](params, *cut(x, y))
    assert message in str(err.value)


# -- numbers from numpy are numbers ----------------------------------------------------


def test_numpy_scalars_are_accepted_wherever_python_numbers_are():
    same = jaxbp.init_mlp(KEY, [np.int64(4), np.int32(5), 3])
    jax.tree.map(np.testing.assert_array_equal, same, jaxbp.init_mlp(KEY, [4, 5, 3]))
    assert jaxbp.Config(dropout=np.float32(0.25), **KW) == jaxbp.Config(dropout=0.25, **KW)
    assert jaxbp.Dense(np.int64(3)) == jaxbp.Dense(3)
    assert type(jaxbp.Dense(np.int64(3)).width) is int
    assert jaxbp.LayerNorm(eps=np.float64(1e-5)) == jaxbp.LayerNorm(eps=1e-5)
    assert jaxbp.BatchNorm(momentum=np.float64(0.8)) == jaxbp.BatchNorm(momentum=0.8)
    assert jaxbp.Dropout(np.float64(0.5)) == jaxbp.Dropout(0.5)
    assert jaxbp.huber(np.float32(2.0)).name == jaxbp.huber(2.0).name
    with pytest.raises(ValueError, match="sizes must be integers >= 1; sizes\\[0\\] is True"):
        jaxbp.init_mlp(KEY, [True, 5, 3])


# -- losses and targets ----------------------------------------------------------------


def test_a_loss_whose_value_sums_over_the_batch_is_refused(problem):
    params, x, y = problem
    summed = jaxbp.Loss(
        "summed",
        value=lambda z, a, y: jnp.sum((a - y) ** 2),
        delta=lambda z, a, y, output: output.backward(z, a, 2 * (a - y)),
    )
    onehot = jax.nn.one_hot(y, 3)
    for fn in (jaxbp.loss_fn, jaxbp.manual_grad, jaxbp.backprop):
        with pytest.raises(ValueError, match=r"Loss 'summed'.*one loss per sample, shape \(8,\)"):
            fn(params, x, onehot, activation="tanh", loss=summed)


def test_a_loss_whose_delta_has_the_wrong_shape_is_refused(problem):
    params, x, y = problem
    flat = jaxbp.Loss(
        "flat",
        value=lambda z, a, y: jnp.sum((a - y) ** 2, axis=-1),
        delta=lambda z, a, y, output: jnp.sum(a - y, axis=-1),
    )
    with pytest.raises(ValueError, match=r"delta must return dl/dz_L per sample, shape \(8, 3\)"):
        jaxbp.manual_grad(params, x, jax.nn.one_hot(y, 3), activation="tanh", loss=flat)


BAD_TRACED_TARGETS = [
    ("rows-not-summing-to-1", "cross_entropy", lambda y: jax.nn.one_hot(y, 3).at[0, 0].add(0.5)),
    ("negative-row", "cross_entropy", lambda y: jax.nn.one_hot(y, 3).at[1].set([1.5, -0.5, 0])),
    ("bce-target-2", "binary_cross_entropy", lambda y: jax.nn.one_hot(y, 3).at[2, 1].set(2.0)),
]


@pytest.mark.parametrize(
    ("loss", "make"),
    [case[1:] for case in BAD_TRACED_TARGETS],
    ids=[case[0] for case in BAD_TRACED_TARGETS],
)
def test_bad_targets_under_jit_give_nan_as_bad_labels_do(problem, loss, make):
    params, x, y = problem
    kw = dict(activation="tanh", loss=loss)
    good = jax.nn.one_hot(y, 3)
    fn = jax.jit(lambda p, x, t: (jaxbp.loss_fn(p, x, t, **kw), jaxbp.manual_grad(p, x, t, **kw)))
    value, grads = fn(params, x, good)
    assert np.isfinite(float(value))
    np.testing.assert_allclose(value, jaxbp.loss_fn(params, x, good, **kw), rtol=1e-12)
    value, grads = fn(params, x, make(y))
    assert np.isnan(float(value)) and all(np.isnan(g).any() for g in jax.tree.leaves(grads))


def test_a_traced_negative_clip_gives_nan_not_a_flipped_gradient(problem):
    params, x, y = problem

    def dp(clip):
        return jaxbp.dp_value_and_grad(params, KEY, x, y, l2_clip=clip, noise_multiplier=0.0, **KW)[
            1
        ]

    grads = jax.vmap(dp)(jnp.array([1.0, -1.0]))
    want = dp(1.0)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g[0], w, rtol=1e-12), grads, want)
    assert all(np.isnan(g[1]).all() for g in jax.tree.leaves(grads))


# -- evaluation ------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5], ids=["one-sample", "constant-target"])
def test_r2_of_a_constant_target_is_scikit_learns(rows):
    """Undefined as a ratio (0/0 or x/0): scikit-learn's r2_score gives 0 for an imperfect
    prediction of a constant target and 1 for a perfect one; so does evaluate, never -inf
    or NaN. One sample is a constant target (scikit-learn's reference: it twice)."""
    params, x, _ = make_problem(1, [3, 4, 1], rows, "mse", jnp.float64)
    kw = dict(activation="tanh", loss="mse")
    y = jnp.full((rows,), 0.25)
    y_hat = np.asarray(jaxbp.forward(params, x, **kw))[:, 0]
    constant = [*params[:-1], {"W": 0 * params[-1]["W"], "b": jnp.full((1,), 0.25)}]
    reps = 2 if rows == 1 else 1
    y_ref = np.tile(np.asarray(y), reps)
    assert float(jaxbp.evaluate(params, x, y, **kw)["r2"]) == 0.0
    assert r2_score(y_ref, np.tile(y_hat, reps)) == 0.0
    assert float(jaxbp.evaluate(constant, x, y, **kw)["r2"]) == 1.0
    assert r2_score(y_ref, np.full(len(y_ref), 0.25)) == 1.0


@pytest.mark.parametrize(
    ("task", "fragment"),
    [
        ("regression", "of shape (8,)) cannot be scored as task='regression' on an output"),
        ("binary", "of shape (8,)) cannot be scored as task='binary' on an output layer of 3"),
    ],
)
def test_scoring_labels_on_a_task_that_takes_no_labels_names_the_task(problem, task, fragment):
    """Labels scored as another task's targets: refused naming that task, not a reshape
    error from inside its score; one-hot rows (what that task takes) are scored."""
    params, x, y = problem
    with pytest.raises(ValueError, match=re.escape(fragment)):
        jaxbp.evaluate(params, x, y, task=task, **KW)
    onehot = np.eye(3)[np.asarray(y)]
    got = jaxbp.evaluate(params, x, onehot, task=task, **KW)
    y_hat = np.asarray(jaxbp.forward(params, x, **KW))
    if task == "regression":
        pooled = 1 - ((onehot - y_hat) ** 2).sum() / ((onehot - onehot.mean(0)) ** 2).sum()
        np.testing.assert_allclose(got["r2"], pooled, rtol=1e-12)
    else:
        np.testing.assert_allclose(got["accuracy"], np.mean((y_hat > 0.5) == (onehot > 0.5)))


BAD_STATS = [
    ("train-state", lambda st, good: st, "a TrainState holds them in .stats"),
    ("wrong-keys", lambda st, good: [{"mu": g["mean"], "var": g["var"]} for g in good], "mu"),
    ("wrong-width", lambda st, good: [{k: jnp.zeros(7) for k in g} for g in good], "(7,)"),
    ("scalars", lambda st, good: [{"mean": 0.0, "var": 1.0}], "'mean': ()"),
]


@pytest.mark.parametrize(
    ("make", "fragment"), [c[1:] for c in BAD_STATS], ids=[c[0] for c in BAD_STATS]
)
def test_evaluation_and_training_refuse_stats_of_another_shape(make, fragment):
    """One check for both: evaluation's `stats=` and the running averages a TrainState
    carries into a training step or epoch (not JAX's shape error or a KeyError)."""
    cfg = jaxbp.Config(norm="batch", **KW)
    params = jaxbp.init_mlp(KEY, [4, 5, 3], norm="batch")
    x, y = jnp.ones((6, 4)), jnp.array([0, 1, 2, 0, 1, 2])
    good = jaxbp.init_stats(params, cfg)
    state = jaxbp.init_train_state(SGD, params, cfg)
    bad = make(state, good)
    step = jaxbp.make_train_step(SGD, cfg, donate=False)
    epoch = jaxbp.make_train_epoch(SGD, cfg, batch_size=3, donate=False)
    for fn in (
        lambda s: jaxbp.evaluate(params, x, y, cfg, stats=s),
        lambda s: jaxbp.forward(params, x, cfg, stats=s),
        lambda s: step(params, jaxbp.TrainState(state.opt_state, s), x, y),
        lambda s: epoch(params, jaxbp.TrainState(state.opt_state, s), KEY, x, y),
    ):
        with pytest.raises(ValueError, match="stats must be this network") as err:
            fn(bad)
        assert fragment in str(err.value) and "'mean': (5,)" in str(err.value)
    _, new, _ = step(params, state, x, y)  # the right stats train (values: test_norm_dropout)
    assert jax.tree.map(jnp.shape, new.stats) == jax.tree.map(jnp.shape, good)


# -- layers ----------------------------------------------------------------------------


def test_batch_norm_refuses_to_train_on_one_sample():
    cfg = jaxbp.Config(norm="batch", **KW)
    params = jaxbp.init_mlp(KEY, [4, 5, 3], norm="batch")
    x, y = jnp.ones((1, 4)), jnp.array([2])
    with pytest.raises(ValueError, match=r"BatchNorm in training .* at least 2 samples"):
        jaxbp.loss_fn(params, x, y, cfg)
    opt = optax.sgd(0.1)
    step = jaxbp.make_train_step(opt, cfg)
    with pytest.raises(ValueError, match="got a batch of 1"):
        step(params, jaxbp.init_train_state(opt, params, cfg), x, y)
    stats = jaxbp.init_stats(params, cfg)  # evaluation of one sample is fine
    assert jaxbp.forward(params, x, cfg, stats=stats).shape == (1, 3)


def test_diagnostics_of_a_layer_list_equal_those_of_its_keyword_network(problem):
    params, x, y = problem
    layers = [jaxbp.Dense(5), jaxbp.Activate("tanh"), jaxbp.Dense(3)]
    opt = optax.sgd(0.0)
    by_layers = jaxbp.make_train_step(
        opt, jaxbp.Config(layers=layers, loss="cross_entropy"), diagnostics=True, donate=False
    )
    by_keywords = jaxbp.make_train_step(opt, diagnostics=True, donate=False, **KW)
    got = by_layers(params, opt.init(params), x, y)[2]
    want = by_keywords(params, opt.init(params), x, y)[2]
    assert got.keys() == want.keys() >= {"saturated", "delta_norm"}
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_custom_layer_that_says_nothing_of_per_example_terms_is_told_what_to_define(problem):
    params, x, y = problem

    @dataclasses.dataclass(frozen=True)
    class Silent:
        name = "silent"
        has_params = False
        random = False

        def init(self, key, n_in, dtype):
            return None, n_in

        def check(self, params, n_in, where):
            return n_in

        def forward(self, params, a, ctx):
            return a, None

        def backward(self, params, cache, g):
            return g, None

    cfg = jaxbp.Config(layers=[jaxbp.Dense(5), Silent(), jaxbp.Dense(3)], loss="cross_entropy")
    with pytest.raises(ValueError, match="has no per_example attribute"):
        jaxbp.per_example_grads(params, x, y, cfg)


def test_float64_probability_rows_train_a_float32_network_under_jit():
    """Soft targets are checked in their own dtype, traced or not: float64 rows that sum to
    1 are no NaN after the cast to a float32 network's dtype."""
    params, x, _ = make_problem(0, [4, 5, 3], 64, "cross_entropy", jnp.float32)
    rows = jax.nn.softmax(jax.random.normal(KEY, (64, 3), jnp.float64) * 3, axis=1)
    eager = jaxbp.loss_fn(params, x, rows, **KW)
    traced = jax.jit(lambda p, x, t: jaxbp.loss_fn(p, x, t, **KW))(params, x, rows)
    assert np.isfinite(float(traced))
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
