"""Loss values against numpy closed forms; output deltas against jax.grad; stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp._core.activations import SOFTMAX

RNG = np.random.default_rng(0)


def one_layer_identity(z):
    """Params for which z_L = x exactly: one layer, W = I, b = 0."""
    n = z.shape[1]
    return [{"W": jnp.eye(n, dtype=z.dtype), "b": jnp.zeros(n, z.dtype)}]


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_values_against_numpy(reduction):
    z = RNG.normal(size=(6, 3))
    params = one_layer_identity(jnp.asarray(z))
    reduce = np.mean if reduction == "mean" else np.sum
    kw = dict(activation="tanh", reduction=reduction)

    y = RNG.normal(size=(6, 3))
    want = reduce(np.sum((z - y) ** 2, axis=1))
    got = jaxbp.loss_fn(params, z, y, loss="mse", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-14)

    # The chapter's sigmoid-under-squared-error case.
    want = reduce(np.sum((np_sigmoid(z) - y) ** 2, axis=1))
    got = jaxbp.loss_fn(params, z, y, loss="mse", output_activation="sigmoid", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-14)

    t = RNG.uniform(size=(6, 3))
    p = np_sigmoid(z)
    want = reduce(-np.sum(t * np.log(p) + (1 - t) * np.log(1 - p), axis=1))
    got = jaxbp.loss_fn(params, z, t, loss="binary_cross_entropy", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-13)

    labels = RNG.integers(0, 3, size=6)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    want = reduce(-np.log(p[np.arange(6), labels]))
    got = jaxbp.loss_fn(params, z, labels, loss="cross_entropy", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-13)

    rows = RNG.dirichlet(np.ones(3), size=6)
    want = reduce(-np.sum(rows * np.log(p), axis=1))
    got = jaxbp.loss_fn(params, z, rows, loss="cross_entropy", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize(
    ("loss", "output"),
    [
        ("mse", jaxbp.ACTIVATIONS["identity"]),
        ("mse", jaxbp.ACTIVATIONS["sigmoid"]),
        ("mse", jaxbp.ACTIVATIONS["elu"]),
        ("mse", SOFTMAX),
        ("binary_cross_entropy", jaxbp.ACTIVATIONS["sigmoid"]),
        ("cross_entropy", SOFTMAX),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_output_delta_is_dl_dz(loss, output):
    """Each handwritten delta_L equals jax.grad of the per-sample loss w.r.t. z_L."""
    rec = jaxbp.LOSSES[loss]
    z = jnp.asarray(RNG.normal(size=(5, 4)) * 3)
    y = jnp.asarray(RNG.dirichlet(np.ones(4), size=5))  # valid for all three losses

    def per_sample_sum(z):
        return jnp.sum(rec.value(z, output.fn(z), y))

    want = jax.grad(per_sample_sum)(z)
    got = rec.delta(z, output.fn(z), y, output)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_canonical_deltas_are_y_hat_minus_y():
    z = jnp.asarray(RNG.normal(size=(4, 3)))
    y = jnp.asarray(RNG.dirichlet(np.ones(3), size=4))
    for loss, factor in [("mse", 2.0), ("binary_cross_entropy", 1.0), ("cross_entropy", 1.0)]:
        rec = jaxbp.LOSSES[loss]
        out = rec.link  # the canonical output activation record
        a = out.fn(z)
        np.testing.assert_allclose(
            rec.delta(z, a, y, out), factor * (a - y), rtol=1e-14, atol=1e-16
        )


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "cross_entropy"])
def test_float32_logits_of_1e4_give_finite_losses_and_gradients(loss):
    z = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], jnp.float32)
    params = one_layer_identity(z)
    y = (
        jnp.asarray([0, 2])
        if loss == "cross_entropy"
        else jnp.asarray([[1, 1, 0], [1, 0, 1]], jnp.float32)
    )
    kw = dict(activation="relu", loss=loss)
    value = jaxbp.loss_fn(params, z, y, **kw)
    assert np.isfinite(value)
    for g in (jaxbp.manual_grad(params, z, y, **kw), jax.grad(jaxbp.loss_fn)(params, z, y, **kw)):
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
    if loss == "cross_entropy":  # row 0 is right at a 1e4 margin; row 1 wrong by 1e4 - 5
        np.testing.assert_allclose(value, (0.0 + (1e4 - 5.0)) / 2, rtol=1e-6)


def test_targets_of_shape_batch_for_one_output(key):
    params = jaxbp.init_mlp(key, [3, 4, 1], dtype=jnp.float64)
    x = jax.random.normal(key, (5, 3))
    y = jnp.asarray([0.0, 1.0, 1.0, 0.0, 1.0])
    for loss in ("mse", "binary_cross_entropy"):
        kw = dict(activation="tanh", loss=loss)
        np.testing.assert_allclose(
            jaxbp.loss_fn(params, x, y, **kw), jaxbp.loss_fn(params, x, y[:, None], **kw)
        )
        np.testing.assert_allclose(
            jaxbp.manual_grad(params, x, y, **kw)[0]["W"],
            jax.grad(jaxbp.loss_fn)(params, x, y[:, None], **kw)[0]["W"],
            rtol=1e-12,
        )


def test_integer_labels_equal_one_hot_rows(key):
    params = jaxbp.init_mlp(key, [3, 4], dtype=jnp.float64)
    x = jax.random.normal(key, (6, 3))
    labels = jnp.asarray([0, 3, 1, 2, 3, 0])
    rows = jax.nn.one_hot(labels, 4, dtype=jnp.float64)
    kw = dict(activation="tanh", loss="cross_entropy")
    assert jaxbp.loss_fn(params, x, labels, **kw) == jaxbp.loss_fn(params, x, rows, **kw)
    for a, b in zip(
        jax.tree.leaves(jaxbp.manual_grad(params, x, labels, **kw)),
        jax.tree.leaves(jaxbp.manual_grad(params, x, rows, **kw)),
    ):
        np.testing.assert_array_equal(a, b)
