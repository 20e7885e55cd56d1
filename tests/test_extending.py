"""Extending jaxbp from outside the package: an activation, a loss and a layer, each one
record written here, then used by every feature and checked against independent
references (jax.grad, jax.hessian, jax.jacobian, vmap(grad), numpy)."""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import make_problem, rel_err

# --- an activation: softsign, phi(z) = z / (1 + |z|), phi'(z) = 1 / (1 + |z|)^2 -------------
SOFTSIGN = jaxbp.Activation(
    "softsign", lambda z: z / (1 + jnp.abs(z)), lambda z, a: (1 - jnp.abs(a)) ** 2
)


# --- a loss: pseudo-Huber, l = sum_k d^2 (sqrt(1 + (r_k / d)^2) - 1), r = y_hat - y ----------
def pseudo_huber(d=1.0):
    def value(z, a, y):
        return jnp.sum(d * d * (jnp.sqrt(1 + ((a - y) / d) ** 2) - 1), axis=-1)

    def delta(z, a, y, output):
        r = a - y
        return output.backward(z, a, r / jnp.sqrt(1 + (r / d) ** 2))

    def curvature(z, a, y, u):
        return (1 + ((a - y) / d) ** 2) ** -1.5 * u

    return jaxbp.Loss(
        "pseudo_huber", value, delta, link="identity", task="regression", curvature=curvature
    )


PSEUDO_HUBER = pseudo_huber()


# --- a layer: a learnable per-unit gain, out = a * s ----------------------------------------
@dataclasses.dataclass(frozen=True)
class Gain:
    name = "gain"
    has_params = True
    per_example = True

    def init(self, key, n_in, dtype):
        del key
        return {"s": jnp.ones((n_in,), dtype)}, n_in

    def check(self, params, n_in, where):
        if not isinstance(params, dict) or set(params) != {"s"}:
            raise TypeError(f"{where} must be {{'s': (n,)}}")
        return np.shape(params["s"])[0]

    def forward(self, params, a, ctx):
        del ctx
        return a * params["s"][None, :], a

    def backward(self, params, a, g):
        return g * params["s"][None, :], {"s": jnp.sum(g * a, axis=0)}

    def per_example_grads(self, params, a, g):
        del params
        return {"s": g * a}

    def per_example_sq_norms(self, params, a, g):
        del params
        return jnp.sum((g * a) ** 2, axis=1)


LAYERS = (
    jaxbp.Dense(6),
    Gain(),
    jaxbp.Activate("tanh"),
    jaxbp.Dense(6),
    jaxbp.Activate(SOFTSIGN),
    jaxbp.Dense(3),
)


def problem(seed=0, batch=8):
    params, x, y = make_problem(seed, [4, 6, 3], batch, "mse")
    return params, x, 2 * y  # targets on [0, 2]: some residuals beyond the Huber knee


def layered_problem(seed=0, batch=8):
    params = jaxbp.init_layers(jax.random.key(seed), LAYERS, 4, dtype=jnp.float64)
    params[1]["s"] = params[1]["s"] + 0.3 * jnp.arange(6.0)  # a gain that is not all ones
    _, x, y = make_problem(seed, [4, 3], batch, "mse")
    return params, x, y


def leaves_close(a, b, rtol=1e-12):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert rel_err(u, v) <= rtol


# ------------------------------------------------------------------------------------------


def test_activation_parity_grid_and_training():
    records = list(jaxbp.parity_grid(activations=[SOFTSIGN], dtypes=("float64",), depths=(1, 3)))
    assert len(records) == 2 * len(jaxbp.LOSS_OUTPUTS)
    assert all(r["passed"] and r["activation"] == "softsign" for r in records)
    params, x, y = problem()
    jaxbp.assert_parity(params, x, y, activation=SOFTSIGN, loss="mse", finite_differences=True)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"deriv": lambda z: 1 - z}, "deriv must take the positional arguments (z, a)"),
        ({"fn": lambda z, a: z}, "fn must take the positional arguments (z)"),
        ({"deriv": 3}, "deriv must be a function of (z, a)"),
        ({"kinks": "zero"}, "kinks must be a tuple of numbers"),
        ({"init": "xavier"}, "init must be one of"),
    ],
    ids=["deriv-arity", "fn-arity", "deriv-not-callable", "kinks", "init"],
)
def test_activation_record_is_checked_when_built(fields, fragment):
    with pytest.raises((TypeError, ValueError)) as info:
        dataclasses.replace(SOFTSIGN, **fields)
    assert fragment in str(info.value) and "'softsign'" in str(info.value)


def test_loss_gradient_parity_and_finite_differences():
    params, x, y = problem()
    for output in (None, "tanh"):
        kw = dict(activation="tanh", loss=PSEUDO_HUBER, output_activation=output)
        jaxbp.assert_parity(params, x, y, finite_differences=True, **kw)
        report = jaxbp.check_parity(params, x, y, reduction="sum", **kw)
        assert report.passed


def test_loss_value_against_numpy():
    params, x, y = problem()
    y_hat = np.asarray(jaxbp.forward(params, x, activation="tanh"))
    want = np.mean(np.sum(np.sqrt(1 + (y_hat - np.asarray(y)) ** 2) - 1, axis=1))
    got = jaxbp.loss_fn(params, x, y, activation="tanh", loss=PSEUDO_HUBER)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def per_example_reference(params, x, y, config):
    """vmap over examples of jax.grad of each example's own loss (reduction "sum")."""
    one = lambda p, xi, yi: jaxbp.loss_fn(p, xi[None], yi[None], config)  # noqa: E731
    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("network", ["loss", "layer"])
def test_per_example_and_dp(network):
    if network == "loss":
        params, x, y = problem()
        cfg = jaxbp.Config(activation="tanh", loss=PSEUDO_HUBER, reduction="sum")
    else:
        params, x, y = layered_problem()
        cfg = jaxbp.Config(layers=LAYERS, loss="mse", reduction="sum")
    want = per_example_reference(params, x, y, cfg)
    leaves_close(jaxbp.per_example_grads(params, x, y, cfg), want)
    flat = jnp.concatenate([v.reshape(x.shape[0], -1) for v in jax.tree.leaves(want)], axis=1)
    norms = np.linalg.norm(np.asarray(flat), axis=1)
    np.testing.assert_allclose(jaxbp.per_example_grad_norms(params, x, y, cfg), norms, rtol=1e-12)
    clip = float(np.median(norms))  # about half the examples clipped
    scale = np.minimum(1, clip / norms)
    clipped = jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1) / x.shape[0], want)
    _, grads, got_norms = jaxbp.dp_value_and_grad(
        params, jax.random.key(0), x, y, cfg, l2_clip=clip, noise_multiplier=0.0
    )
    leaves_close(grads, clipped)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-12)


def test_loss_second_order():
    params, x, y = make_problem(1, [3, 4, 2], 6, "mse")
    y = 3 * y
    cfg = jaxbp.Config(activation="tanh", loss=PSEUDO_HUBER)
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v_flat = jax.flatten_util.ravel_pytree(v)[0]
    hessian = jax.hessian(lambda f: jaxbp.loss_fn(unravel(f), x, y, cfg))(flat)
    leaves_close(jaxbp.hvp(params, x, y, v, cfg), unravel(hessian @ v_flat), rtol=1e-11)
    # Gauss-Newton: J = d y_hat / d theta, H_out = diag((1 + r^2)^-3/2) / batch.
    out = lambda f: jaxbp.forward(unravel(f), x, cfg).reshape(-1)  # noqa: E731
    jac = jax.jacobian(out)(flat)
    r = np.asarray(jaxbp.forward(params, x, cfg) - y).reshape(-1)
    h_out = np.diag((1 + r**2) ** -1.5) / x.shape[0]
    want = unravel(jac.T @ (h_out @ (jac @ v_flat)))
    leaves_close(jaxbp.gnvp(params, x, y, v, cfg), want, rtol=1e-11)


def test_loss_evaluate_reports_its_task():
    params, x, y = problem()
    cfg = jaxbp.Config(activation="tanh", loss=PSEUDO_HUBER)
    metrics = jaxbp.evaluate(params, x, y, cfg)
    y_hat, t = np.asarray(jaxbp.forward(params, x, cfg)), np.asarray(y)
    r2 = 1 - np.sum((t - y_hat) ** 2) / np.sum((t - t.mean(0)) ** 2)
    assert set(metrics) == {"loss", "r2"}
    np.testing.assert_allclose(metrics["r2"], r2, rtol=1e-12)


@pytest.mark.parametrize("network", ["loss", "layer"])
def test_step_epoch_sweep_match_autodiff(network):
    if network == "loss":
        params, x, y = problem(batch=16)
        cfg = jaxbp.Config(activation="tanh", loss=PSEUDO_HUBER)
    else:
        params, x, y = layered_problem(batch=16)
        cfg = jaxbp.Config(layers=LAYERS, loss="mse")
    opt = optax.sgd(0.1, momentum=0.9)
    copy = lambda: jax.tree.map(jnp.array, params)  # noqa: E731  (steps donate)
    out = {}
    for grad in ("manual", "autodiff"):
        step = jaxbp.make_train_step(opt, cfg, grad=grad)
        p, s, _ = step(copy(), opt.init(params), x, y)
        epoch = jaxbp.make_train_epoch(opt, cfg, batch_size=4, grad=grad)
        p, s, _ = epoch(p, s, jax.random.key(1), x, y)
        stack = jax.tree.map(lambda v: jnp.stack([v, v]), copy())
        sweep = jaxbp.make_train_sweep(opt, cfg, batch_size=4, grad=grad, shared_order=True)
        ps, _, _ = sweep(stack, jax.vmap(opt.init)(stack), jax.random.key(2), x, y)
        out[grad] = (p, ps)
    leaves_close(out["manual"], out["autodiff"], rtol=1e-11)


def test_layer_gradient_parity_and_custom_vjp():
    params, x, y = layered_problem()
    cfg = jaxbp.Config(layers=LAYERS, loss="mse")
    report = jaxbp.assert_parity(params, x, y, cfg, finite_differences=True)
    assert [leaf.path for leaf in report.leaves][2] == "params[1]['s']"
    f = lambda p, x: jnp.sum(jnp.sin(jaxbp.mlp(p, x, cfg)))  # noqa: E731
    g = lambda p, x: jnp.sum(jnp.sin(jaxbp.mlp(p, x, cfg, backward="autodiff")))  # noqa: E731
    leaves_close(jax.grad(f, argnums=(0, 1))(params, x), jax.grad(g, argnums=(0, 1))(params, x))


def test_config_is_a_static_pytree_for_jit():
    params, x, y = problem()
    cfg = jaxbp.Config(activation="tanh", loss=PSEUDO_HUBER)
    assert jax.tree.leaves(cfg) == [] and hash(cfg) == hash(jaxbp.Config(**vars(cfg)))
    jitted = jax.jit(jaxbp.manual_grad)
    leaves_close(jitted(params, x, y, cfg), jaxbp.manual_grad(params, x, y, cfg))
    leaves_close(jitted(params, x, y, config=cfg), jax.grad(jaxbp.loss_fn)(params, x, y, cfg))
    with pytest.raises(TypeError, match="either config or the keywords"):
        jaxbp.loss_fn(params, x, y, cfg, reduction="sum")
    with pytest.raises(TypeError, match="unexpected keyword argument 'activaton'"):
        jaxbp.loss_fn(params, x, y, activaton="tanh", loss="mse")
