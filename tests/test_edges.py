"""Edges an outside probe found, each fixed at its class: numbers in range for Python but
not for the dtype of the computation (silent NaN before), a list where a name belongs
(a bare "unhashable" error before), one step's metrics averaged as an epoch's (an
IndexError before)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxbp
from conftest import make_problem, x64_off

KW = dict(activation="tanh", loss="cross_entropy")


@pytest.fixture
def problem32():
    return make_problem(0, [4, 6, 3], 8, "cross_entropy", jnp.float32)


def test_dp_bounds_the_dtype_cannot_hold_are_refused(problem32):
    params, x, y = problem32
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"l2_clip=1e\+300 overflows float32"):
        jaxbp.dp_value_and_grad(params, key, x, y, l2_clip=1e300, noise_multiplier=1.0, **KW)
    with pytest.raises(ValueError, match=r"noise_multiplier \* l2_clip=1e\+200 overflows float32"):
        jaxbp.dp_value_and_grad(params, key, x, y, l2_clip=1e30, noise_multiplier=1e170, **KW)
    step = jaxbp.make_dp_train_step(optax.sgd(0.1), l2_clip=1e300, noise_multiplier=1.0, **KW)
    with pytest.raises(ValueError, match="overflows float32"):
        step(params, optax.sgd(0.1).init(params), key, x, y)
    grads = jaxbp.dp_value_and_grad(  # float64 holds it: no refusal, a finite result
        jax.tree.map(lambda p: p.astype(jnp.float64), params),
        key,
        x,
        y,
        l2_clip=1e300,
        noise_multiplier=0.0,
        **KW,
    )[1]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("norm", "eps", "match"),
    [
        ("layer", 1e-50, r"eps=1e-50 underflows to 0 in float32"),
        ("batch", 1e300, r"eps=1e\+300 overflows float32"),
    ],
)
def test_an_eps_the_dtype_cannot_hold_is_refused(norm, eps, match):
    layer = jaxbp.LayerNorm(eps) if norm == "layer" else jaxbp.BatchNorm(eps=eps)
    layers = [jaxbp.Dense(6), layer, jaxbp.Activate("tanh"), jaxbp.Dense(3)]
    params = jaxbp.init_layers(jax.random.key(0), layers, 4)
    _, x, y = make_problem(0, [4, 6, 3], 8, "cross_entropy", jnp.float32)
    with pytest.raises(ValueError, match=match):
        jaxbp.manual_grad(params, x, y, layers=layers, loss="cross_entropy")


def test_a_fused_rate_or_kfac_damping_the_dtype_cannot_hold_is_refused(problem32):
    params, x, y = problem32
    sgd = jaxbp.fused_sgd(1e300)
    step = jaxbp.make_train_step(sgd, grad="fused", donate=False, **KW)
    with pytest.raises(ValueError, match=r"learning_rate=1e\+300 overflows float32"):
        step(params, sgd.init(params), x, y)
    net = jaxbp.Network.of(params, **KW)
    path = jaxbp.KFAC(damping=1e300)
    state = jaxbp.TrainState.create(optax.sgd(0.1), params, net, path)
    with pytest.raises(ValueError, match=r"damping=1e\+300 overflows float32"):
        jaxbp.step_fn(optax.sgd(0.1), net, path)(params, state, jax.random.key(0), x, y)


def test_a_list_where_a_norm_name_belongs_is_refused_naming_norm():
    with pytest.raises(
        ValueError, match=r"norm must be None, 'layer' or 'batch' .*got \['layer'\]"
    ):
        jaxbp.Config(norm=["layer"], **KW)


def test_epoch_means_of_one_steps_metrics_says_what_it_averages():
    params, x, y = make_problem(0, [4, 6, 3], 8, "cross_entropy")
    _, _, metrics = jaxbp.make_train_step(optax.sgd(0.1), donate=False, **KW)(
        params, optax.sgd(0.1).init(params), x, y
    )
    with pytest.raises(ValueError, match=r"'loss' has shape \(\), no steps axis"):
        jaxbp.epoch_means(metrics)


def test_x64_off_keeps_float32_refusals():
    with x64_off():
        params, x, y = make_problem(0, [4, 6, 3], 8, "cross_entropy", jnp.float32)
        with pytest.raises(ValueError, match="overflows float32"):
            jaxbp.dp_value_and_grad(
                params, jax.random.key(0), x, y, l2_clip=1e39, noise_multiplier=0.0, **KW
            )
