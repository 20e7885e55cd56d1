"""Runs as data, polished (item 2): records print readably. A built-in record prints by
its kind and name, a user's record by its name and the fields it sets, each function by
its name; a `Config` and a `Network` print their records so. Never an address, never a
user's record passing for a built-in."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

import jaxbp

ADDRESS = " at 0x"

BUILT_IN = {
    **{f"activation-{k}": (v, f"Activation('{k}')") for k, v in jaxbp.ACTIVATIONS.items()},
    **{f"loss-{k}": (v, f"Loss('{k}')") for k, v in jaxbp.LOSSES.items()},
    **{f"task-{k}": (v, f"Task('{k}')") for k, v in jaxbp.TASKS.items()},
    "softmax": (jaxbp.SOFTMAX, "Softmax('softmax')"),
    "huber-1": (jaxbp.huber(), "Loss('huber')"),
    "dense": (jaxbp.Dense(), "Dense()"),
    "dense-8": (jaxbp.Dense(8, "he_normal"), "Dense(width=8, init_scheme='he_normal')"),
    "activate": (jaxbp.Activate("relu"), "Activate(activation='relu')"),
    "activate-softmax": (jaxbp.Activate(jaxbp.SOFTMAX), "Activate(activation='softmax')"),
    "layer-norm": (jaxbp.LayerNorm(), "LayerNorm()"),
    "batch-norm": (jaxbp.BatchNorm(momentum=0.5), "BatchNorm(momentum=0.5)"),
    "dropout": (jaxbp.Dropout(0.1), "Dropout(rate=0.1)"),
    "config": (
        jaxbp.Config(activation="tanh", loss="cross_entropy"),
        "Config(activation='tanh', loss='cross_entropy', norm=None, dropout=0.0)",
    ),
    "config-all": (
        jaxbp.Config("relu", "mse", "sigmoid", "sum", norm="layer", dropout=0.1),
        "Config(activation='relu', loss='mse', output_activation='sigmoid', reduction='sum', "
        "norm='layer', dropout=0.1)",
    ),
    "config-layers": (
        jaxbp.Config(layers=[jaxbp.Dense(4), jaxbp.Activate("gelu"), jaxbp.Dense(2)], loss="mse"),
        "Config(loss='mse', layers=(Dense(width=4), Activate(activation='gelu'), Dense(width=2)))",
    ),
    "network": (
        jaxbp.Network.mlp([4, 8, 3], activation="tanh", loss="cross_entropy", norm="batch"),
        "Network(activation 'tanh', layers dense-batch_norm-tanh-dense, widths=[4, 8, 8, 8, 3], "
        "loss='cross_entropy', output='softmax', reduction='mean')",
    ),
}


@pytest.mark.parametrize("case", list(BUILT_IN))
def test_a_built_in_record_prints_by_its_name(case):
    record, want = BUILT_IN[case]
    assert repr(record) == want
    assert len(want) <= 150 and ADDRESS not in want


def cube(z):
    return z**3


@dataclasses.dataclass(frozen=True, repr=False)
class Shift(jaxbp.Layer):
    """A user's layer with a function among its fields."""

    by: float = 1.0
    fn: object = None
    name = "shift"


USER_ACTIVATION = jaxbp.Activation("cube", cube, lambda z, a: 3 * z**2, kinks=(0.0,))
USER_LOSS = jaxbp.Loss(
    "logcosh",
    value=lambda z, a, y: jnp.sum(jnp.logaddexp(a - y, y - a), axis=-1),
    delta=lambda z, a, y, output: output.backward(z, a, jnp.tanh(a - y)),
    link=USER_ACTIVATION,
)
USER = {
    "activation": (
        USER_ACTIVATION,
        "Activation('cube', fn=cube, deriv=<lambda>, kinks=(0.0,))",
    ),
    "a-user-tanh-is-not-the-built-in": (
        jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - a * a),
        "Activation('tanh', fn=tanh, deriv=<lambda>)",
    ),
    "partial": (
        jaxbp.Activation("scaled", functools.partial(jnp.multiply, 2.0), lambda z, a: 2.0),
        "Activation('scaled', fn=partial(multiply), deriv=<lambda>)",
    ),
    "loss": (
        USER_LOSS,
        "Loss('logcosh', value=<lambda>, delta=<lambda>, link=Activation('cube', fn=cube, "
        "deriv=<lambda>, kinks=(0.0,)))",
    ),
    "huber-2": (jaxbp.huber(2.0), "Loss('huber(delta=2)', value=value, delta=dl,"),
    "task": (
        jaxbp.Task("ordinal", "accuracy", lambda *a: a[0], lambda a, y: a, lambda y, n: (y, n)),
        "Task('ordinal', metric='accuracy', prepare=<lambda>, score=<lambda>, encode=<lambda>)",
    ),
    "layer": (Shift(2.0, jnp.sin), "Shift(by=2.0, fn=sin)"),
    "config": (
        jaxbp.Config(activation=USER_ACTIVATION, loss="mse"),
        "Config(activation=Activation('cube', fn=cube, deriv=<lambda>, kinks=(0.0,)), loss='mse',",
    ),
    "network": (
        jaxbp.Network.of(
            jaxbp.init_mlp(jax.random.key(0), [3, 5, 2]), activation=USER_ACTIVATION, loss="mse"
        ),
        "Network(activation Activation('cube', fn=cube, deriv=<lambda>, kinks=(0.0,)), "
        "layers dense-cube-dense, widths=[3, 5, 5, 2], loss='mse'",
    ),
}


@pytest.mark.parametrize("case", list(USER))
def test_a_users_record_shows_its_name_and_its_functions_names(case):
    record, want = USER[case]
    text = repr(record)
    assert text.startswith(want) and ADDRESS not in text and "function" not in text
    assert len(text) <= 200


def test_records_in_messages_show_no_address():
    layer = Shift()
    with pytest.raises(NotImplementedError) as err:
        layer.outer_factors(None, None)
    assert str(err.value) == (
        "the layer Shift() has no weight gradient made of outer products (K-FAC)"
    )
    with pytest.raises(TypeError) as err:
        jaxbp.Config(activation=3)
    assert ADDRESS not in str(err.value)


def test_the_repr_is_stable_across_equal_records():
    """Two equal records print alike; records that differ print differently."""
    assert repr(jaxbp.Config(activation="tanh", loss="mse")) == repr(
        jaxbp.Config(activation=jaxbp.ACTIVATIONS["tanh"], loss=jaxbp.LOSSES["mse"])
    )
    assert repr(jaxbp.huber(1.0)) == repr(jaxbp.LOSSES["huber"]) != repr(jaxbp.huber(0.5))
    assert jaxbp.huber(1) is jaxbp.LOSSES["huber"]
    mine = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - a * a)  # not the built-in
    assert repr(jaxbp.Config(activation=mine)) != repr(jaxbp.Config(activation="tanh"))
