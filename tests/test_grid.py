"""`jaxbp.Grid`: widths, learning rates, momenta, weight decays and seeds trained in one
program, each model (masked into the widest widths) to the numbers of the same model
trained alone, and read back as one table."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err

N_IN, N_OUT = 5, 3


def _alone(grid, key, x, y):
    """Each model of `grid` at its own widths, trained alone by a plain `epoch_fn` of
    `sgdw`: its hyperparameters injected for all (one compilation per width), and as
    constants for the last model."""
    injected = optax.inject_hyperparams(jaxbp.sgdw)(
        learning_rate=0.0, momentum=0.0, weight_decay=0.0
    )
    epochs = {}
    for model in grid.models:
        sizes = (N_IN, *model["width"], N_OUT)
        params = jaxbp.init_mlp(
            jax.random.key(model["seed"]), sizes, init=grid.weight_init, dtype=jnp.float64
        )
        net = jaxbp.Network.mlp(sizes, grid.config)
        if sizes not in epochs:
            epochs[sizes] = jaxbp.epoch_fn(injected, net, batch_size=8, epochs=2)
        state = jaxbp.TrainState.create(injected, params, net)
        for name in ("learning_rate", "momentum", "weight_decay"):
            state.opt_state.hyperparams[name] = jnp.asarray(model[name], jnp.float64)
        yield model, epochs[sizes](params, state, key, x, y)
    hyper = {k: model[k] for k in ("learning_rate", "momentum", "weight_decay")}
    plain = jaxbp.sgdw(**hyper)
    epoch = jaxbp.epoch_fn(plain, net, batch_size=8, epochs=2)
    yield model, epoch(params, jaxbp.TrainState.create(plain, params, net), key, x, y)


@pytest.mark.parametrize(
    "config",
    [
        dict(activation="tanh", loss="cross_entropy"),
        # sigmoid(0) = 1/2: an absent unit is active, and its outgoing weights must stay 0.
        dict(activation="sigmoid", loss="cross_entropy"),
    ],
    ids=["tanh", "sigmoid"],
)
def test_every_model_of_the_grid_trains_as_it_would_alone(config):
    grid = jaxbp.Grid(
        config,
        N_IN,
        N_OUT,
        width=[(4, 2), (7, 6)],
        learning_rate=[0.05, 0.3],
        momentum=[0.0, 0.9],
        weight_decay=[0.0, 0.01],
        seed=[0, 1],
    )
    assert len(grid.models) == 32 and grid.widest == (7, 6)
    _, x, y = make_problem(0, [N_IN, 4, N_OUT], 40, "cross_entropy")
    key = jax.random.key(7)
    params, state = grid.init(jnp.float64)
    swept, _, metrics = grid.sweep(batch_size=8, epochs=2)(params, state, key, x, y)
    assert metrics["loss"].shape == (32, 2, 5)
    index = {tuple(m.items()): i for i, m in enumerate(grid.models)}
    checked = 0
    for model, (alone, _, want) in _alone(grid, key, x, y):
        i = index[tuple(model.items())]
        assert rel_err(metrics["loss"][i], want["loss"]) < 1e-12, model
        for own, laid in zip(alone, swept, strict=True):
            for name in ("W", "b"):
                block = tuple(slice(0, n) for n in own[name].shape)
                assert rel_err(laid[name][i][block], own[name]) < 1e-12, (model, name)
                # Outside its own block a model's parameters stay exactly zero.
                outside = np.array(laid[name][i])
                outside[block] = 0
                assert not np.any(outside), (model, name)
        checked += 1
    assert checked == 33


def test_the_grid_keeps_each_models_own_initialisation_and_hyperparameters():
    grid = jaxbp.Grid(
        dict(activation="relu", loss="mse"), N_IN, N_OUT, width=[3, 9], learning_rate=[0.1, 0.2]
    )
    params, state = grid.init(jnp.float64)
    hyper = state.opt_state.hyperparams
    np.testing.assert_array_equal(hyper["learning_rate"], [0.1, 0.2, 0.1, 0.2])
    assert hyper["learning_rate"].dtype == jnp.float64
    for i, model in enumerate(grid.models):
        sizes = (N_IN, *model["width"], N_OUT)
        own = jaxbp.init_mlp(jax.random.key(model["seed"]), sizes, dtype=jnp.float64)
        for layer, laid, mask in zip(own, params, state.path_state, strict=True):
            block = tuple(slice(0, n) for n in layer["W"].shape)
            np.testing.assert_array_equal(laid["W"][i][block], layer["W"])
            assert float(jnp.sum(mask["W"][i])) == layer["W"].size


def test_the_table_has_one_row_per_model_with_its_values():
    grid = jaxbp.Grid(
        dict(activation="tanh", loss="cross_entropy"), N_IN, N_OUT, width=[4, 8], seed=[0, 1, 2]
    )
    losses = jnp.arange(6.0)
    rows = grid.table(loss=losses, curve=jnp.ones((6, 2)))
    assert [(r["width"], r["seed"]) for r in rows] == [
        ((4,), 0),
        ((4,), 1),
        ((4,), 2),
        ((8,), 0),
        ((8,), 1),
        ((8,), 2),
    ]
    assert [r["loss"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows[0]["curve"] == [1.0, 1.0] and rows[0]["learning_rate"] == 0.1
    with pytest.raises(ValueError, match="loss"):
        grid.table(loss=jnp.arange(5.0))


KW = dict(activation="tanh", loss="cross_entropy")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(width=[(4,), (4, 4)]), ValueError, "one depth"),
        (dict(width=[]), ValueError, "one depth"),
        (dict(width=[0]), ValueError, "width"),
        (dict(width=["wide"]), TypeError, "width"),
        (dict(width=[4], learning_rate=[-0.1]), ValueError, "learning_rate"),
        (dict(width=[4], momentum=[float("nan")]), ValueError, "momentum"),
        (dict(width=[4], weight_decay=[]), ValueError, "weight_decay"),
        (dict(width=[4], seed=[1.5]), TypeError, "seed"),
        (dict(width=[4], config=dict(KW, norm="batch")), ValueError, "norm"),
        (dict(width=[4], config=dict(KW, dropout=0.5)), ValueError, "dropout"),
        (dict(width=[4], config=dict(KW, activation="swish")), ValueError, "activation"),
    ],
    ids=[
        "mixed-depths",
        "no-widths",
        "zero-width",
        "text-width",
        "negative-rate",
        "nan-momentum",
        "no-decays",
        "float-seed",
        "norm",
        "dropout",
        "unknown-activation",
    ],
)
def test_a_grid_refuses_what_it_cannot_sweep_by_name(kwargs, error, match):
    config = kwargs.pop("config", KW)
    with pytest.raises(error, match=match):
        jaxbp.Grid(config, N_IN, N_OUT, **kwargs)


def test_masked_is_a_path_through_the_builders():
    """`Masked` outside a `Grid`: all-ones masks from `init` leave the step unchanged."""
    params, x, y = make_problem(1, [N_IN, 6, N_OUT], 16, "cross_entropy")
    net = jaxbp.Network.of(params, **KW)
    opt = jaxbp.sgdw(0.1, 0.9, 0.01)
    plain = jaxbp.step_fn(opt, net)
    masked = jaxbp.step_fn(opt, net, jaxbp.Masked())
    state = jaxbp.TrainState.create(opt, params, net, jaxbp.Masked())
    assert jax.tree.all(jax.tree.map(lambda m: bool(jnp.all(m == 1)), state.path_state))
    want, _, _ = plain(params, jaxbp.TrainState.create(opt, params, net), None, x, y)
    got, _, _ = masked(params, state, None, x, y)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
