"""Per-example gradients and their norms from the stored flows (eq. 1.3 before the sum),
and the DP-SGD gradient built on them, against `jax.vmap(jax.grad(...))` of the
single-example loss in float64."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err

STATIC = ("activation", "loss", "output_activation", "reduction")
DP_STATIC = ("l2_clip", "noise_multiplier", "activation", "loss", "output_activation")
CASES = [
    ("tanh", "cross_entropy", "softmax", [4, 5, 5, 3]),
    ("relu", "mse", "identity", [4, 5, 2]),
    ("gelu", "binary_cross_entropy", "sigmoid", [4, 5, 5, 5, 1]),
    ("sigmoid", "mse", "softmax", [4, 3]),
]
IDS = [f"{a}-{l}-{o}-depth{len(s) - 1}" for a, l, o, s in CASES]
BATCH = 7


@functools.partial(jax.jit, static_argnames=STATIC)
def per_example(params, x, y, **kw):
    """The functions under test, in one compiled program per case."""
    return (
        jaxbp.per_example_grads(params, x, y, **kw),
        jaxbp.per_example_grad_norms(params, x, y, **kw),
        jaxbp.manual_grad(params, x, y, **kw),
    )


@functools.partial(jax.jit, static_argnames=STATIC[:3])
def reference_grads(params, x, y, **kw):
    """Independent reference: grad l^n for every example n, by vmap(grad) of the loss of a
    batch of one (eq. 1.2 for one sample)."""

    def single(params, xi, yi):
        return jaxbp.loss_fn(params, xi[None], yi[None], **kw, reduction="sum")

    return jax.vmap(jax.grad(single), in_axes=(None, 0, 0))(params, x, y)


# l2_clip traced (one program for every bound); noise_multiplier static, so that 0 compiles
# without the noise sampler.
dp_value_and_grad = jax.jit(jaxbp.dp_value_and_grad, static_argnames=DP_STATIC[1:])


@jax.jit
def global_norms(per_example):
    """(batch,) global L2 norms of pytree leaves with a leading batch axis."""
    leaves = jax.tree.leaves(per_example)
    return jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))


def tree_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(tree))))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("activation", "loss", "output", "sizes"), CASES, ids=IDS)
def test_match_vmap_grad(activation, loss, output, sizes, reduction):
    params, x, y = make_problem(len(sizes), sizes, BATCH, loss)
    kw = dict(activation=activation, loss=loss, output_activation=output)
    grads, norms, manual = per_example(params, x, y, **kw, reduction=reduction)
    scale = 1 / BATCH if reduction == "mean" else 1  # "mean": each term is grad l^n / batch
    want = jax.tree.map(lambda g: scale * g, reference_grads(params, x, y, **kw))
    assert jax.tree.structure(grads) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < 1e-13
    assert norms.shape == (BATCH,)
    assert rel_err(norms, global_norms(want)) < 1e-13
    # Summing over the batch gives manual_grad with the same reduction (eq. 1.3's sum).
    for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(manual)):
        assert rel_err(jnp.sum(g, axis=0), m) < 1e-14


def test_norms_never_build_per_example_grads():
    """The norms' program holds no (batch, n_in, n_out) array; per_example_grads' does."""
    params, x, y = make_problem(0, [4, 5, 3], BATCH, "cross_entropy")
    kw = dict(activation="tanh", loss="cross_entropy")

    def ranks(fn):
        jaxpr = jax.make_jaxpr(lambda p: fn(p, x, y, **kw))(params).jaxpr
        return {v.aval.ndim for eqn in jaxpr.eqns for v in eqn.outvars}

    assert max(ranks(jaxbp.per_example_grad_norms)) == 2
    assert max(ranks(jaxbp.per_example_grads)) == 3


def test_float32():
    params, x, y = make_problem(0, [4, 3], BATCH, "mse", jnp.float32)
    kw = dict(activation="elu", loss="mse", output_activation="identity", reduction="mean")
    grads, norms, _ = jax.eval_shape(lambda: per_example(params, x, y, **kw))
    assert [g.dtype for g in jax.tree.leaves(grads)] == [jnp.float32] * 2
    assert norms.dtype == jnp.float32
    del kw["reduction"]
    dp = jax.eval_shape(  # float64 hyperparameters do not promote the gradient
        lambda c, s: jaxbp.dp_value_and_grad(
            params, jax.random.key(0), x, y, l2_clip=c, noise_multiplier=s, **kw
        ),
        jnp.float64(1.0),
        jnp.float64(1.0),
    )
    assert [g.dtype for g in jax.tree.leaves(dp[1])] == [jnp.float32] * 2


# DP-SGD: clip each example's gradient to norm <= C, sum, add noise, divide by batch.

DP_KW = dict(activation="tanh", loss="cross_entropy", output_activation="softmax")


@jax.jit
def clipped_mean_reference(params, x, y, clip):
    """sum_n min(1, C / ||grad l^n||) grad l^n / batch, from vmap(grad) and explicit norms."""
    grads = reference_grads(params, x, y, **DP_KW)
    factor = jnp.minimum(1, clip / global_norms(grads))
    return jax.tree.map(lambda g: jnp.tensordot(factor, g, axes=1) / x.shape[0], grads)


@pytest.fixture
def dp_problem():
    return make_problem(4, [4, 5, 5, 3], BATCH, "cross_entropy")


def test_dp_gradient_clips_each_example(dp_problem):
    params, x, y = dp_problem
    norms = global_norms(reference_grads(params, x, y, **DP_KW))
    clip = float(jnp.median(norms))  # about half the examples get clipped
    value, grads, got_norms = dp_value_and_grad(
        params, jax.random.key(1), x, y, l2_clip=clip, noise_multiplier=0.0, **DP_KW
    )
    assert 0 < int(jnp.sum(norms > clip)) < x.shape[0]
    assert rel_err(got_norms, norms) < 1e-13
    assert value == pytest.approx(float(jaxbp.loss_fn(params, x, y, **DP_KW)), rel=1e-14)
    want = clipped_mean_reference(params, x, y, clip)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        assert rel_err(g, w) < 1e-13
    # With a bound no example reaches, the DP gradient is the plain mean gradient.
    big = dp_value_and_grad(
        params, jax.random.key(1), x, y, l2_clip=1e6, noise_multiplier=0.0, **DP_KW
    )[1]
    mean_grad = per_example(params, x, y, **DP_KW, reduction="mean")[2]
    for g, m in zip(jax.tree.leaves(big), jax.tree.leaves(mean_grad)):
        assert rel_err(g, m) < 1e-13


def test_one_huge_example_moves_the_gradient_by_at_most_clip_over_batch():
    kw = dict(activation="tanh", loss="mse", output_activation="identity", noise_multiplier=0.0)
    params, x, y = make_problem(3, [4, 5, 2], BATCH, "mse")
    clip, n = 0.5, BATCH + 1
    xs = jnp.concatenate([x, x[:1]])
    ys = jnp.concatenate([y, jnp.full((1, 2), 1e4)])  # a wild target: ||grad l^n|| ~ 1e4

    def dp_grad(x, y, clip):
        """The DP gradient flattened to numpy, and the per-example norms."""
        _, grads, norms = dp_value_and_grad(params, jax.random.key(0), x, y, l2_clip=clip, **kw)
        return np.asarray(jax.flatten_util.ravel_pytree(grads)[0]), np.asarray(norms)

    with_outlier, norms = dp_grad(xs, ys, clip)
    assert norms[-1] > 1e3
    # The other examples' clipped sum over the same divisor n; the difference is the outlier.
    rest = dp_grad(x, y, clip)[0] * BATCH / n
    moved = np.linalg.norm(with_outlier - rest)
    assert moved == pytest.approx(clip / n, rel=1e-12)  # clipped to exactly C, then / batch
    # Without clipping the same example moves the mean gradient by ||grad l^n|| / n.
    moved = np.linalg.norm(dp_grad(xs, ys, 1e9)[0] - dp_grad(x, y, 1e9)[0] * BATCH / n)
    assert moved == pytest.approx(norms[-1] / n, rel=1e-12)


def test_dp_noise_has_the_stated_scale(dp_problem):
    """(noisy - clean) * batch is N(0, (sigma C)^2) per coordinate, fresh for every key."""
    params, x, y = dp_problem
    kw = dict(l2_clip=0.3, **DP_KW)

    def dp_grad(key, noise_multiplier):
        grads = dp_value_and_grad(params, key, x, y, noise_multiplier=noise_multiplier, **kw)[1]
        return jax.flatten_util.ravel_pytree(grads)[0]

    clean = dp_grad(jax.random.key(0), 0.0)
    keys = jax.random.split(jax.random.key(0), 30)
    samples = np.stack([(dp_grad(k, 2.0) - clean) * BATCH for k in keys])  # (30 keys, 73)
    assert samples.shape == (30, 73)
    assert float(np.std(samples)) == pytest.approx(2.0 * 0.3, rel=0.06)  # sigma C
    assert abs(float(np.mean(samples))) < 0.05
    np.testing.assert_array_equal(samples[0], (dp_grad(keys[0], 2.0) - clean) * BATCH)
    assert not np.allclose(samples[0], samples[1])


def test_dp_train_step_applies_the_optimizer(dp_problem):
    params, x, y = dp_problem
    clip = 0.4
    step = jaxbp.make_dp_train_step(optax.sgd(1.0), l2_clip=clip, noise_multiplier=0.0, **DP_KW)
    opt_state = optax.sgd(1.0).init(params)
    want = clipped_mean_reference(params, x, y, clip)
    expected = jax.tree.map(jnp.subtract, params, want)  # sgd(1): theta - g
    norms = global_norms(reference_grads(params, x, y, **DP_KW))
    new, _, metrics = step(jax.tree.map(jnp.copy, params), opt_state, jax.random.key(0), x, y)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
        assert rel_err(a, b) < 1e-13
    assert float(metrics["clipped"]) == pytest.approx(float(jnp.mean(norms > clip)))
    assert float(metrics["grad_norm"]) == pytest.approx(tree_norm(want), rel=1e-12)
    assert float(metrics["loss"]) == pytest.approx(float(jaxbp.loss_fn(params, x, y, **DP_KW)))


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(l2_clip=0.0, noise_multiplier=1.0), ValueError, "l2_clip must be finite and > 0"),
        (dict(l2_clip=1.0, noise_multiplier=-1.0), ValueError, "noise_multiplier must be"),
        (dict(l2_clip=float("inf"), noise_multiplier=1.0), ValueError, "l2_clip"),
        (dict(l2_clip="1", noise_multiplier=1.0), TypeError, "l2_clip must be a real number"),
        (dict(l2_clip=jnp.ones(2), noise_multiplier=1.0), TypeError, "l2_clip must be a real"),
        (dict(l2_clip=True, noise_multiplier=1.0), TypeError, "l2_clip"),
    ],
    ids=["zero-clip", "negative-noise", "inf-clip", "str-clip", "array-clip", "bool-clip"],
)
def test_dp_errors(kw, error, match):
    with pytest.raises(error, match=match):
        jaxbp.make_dp_train_step(optax.sgd(0.1), **kw, **DP_KW)


def test_dp_step_needs_an_optax_optimizer():
    with pytest.raises(TypeError, match=r"optimizer must be an optax\.GradientTransformation"):
        jaxbp.make_dp_train_step("sgd", l2_clip=1.0, noise_multiplier=1.0, **DP_KW)
    with pytest.raises(ValueError, match="activation must be one of"):
        jaxbp.make_dp_train_step(
            optax.sgd(0.1), l2_clip=1.0, noise_multiplier=1.0, activation="tanhh", loss="mse"
        )
