"""What the two flows give beyond the gradient, against independent references in float64:
first-order statistics against `vmap(grad)`, curvature diagonals against dense
`jax.jacobian` / `jax.hessian` matrices, Monte Carlo estimates against the exact value
(a Chebyshev bound), K-FAC and EKFAC against the dense Gauss-Newton block."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxbp
from conftest import make_problem

CASES = [  # (id, activation, loss, output_activation, norm, dropout)
    ("tanh-ce", "tanh", "cross_entropy", None, None, 0.0),
    ("sigmoid-mse-sigmoid", "sigmoid", "mse", "sigmoid", None, 0.0),
    ("softplus-bce", "softplus", "binary_cross_entropy", None, None, 0.0),
    ("gelu-huber-tanh", "gelu", "huber", "tanh", None, 0.0),
    ("elu-mse-dropout", "elu", "mse", None, None, 0.3),
    ("silu-ce-layernorm", "silu", "cross_entropy", None, "layer", 0.0),
]
IDS = [c[0] for c in CASES]
SIZES = [5, 7, 6, 3]
N = 9
KEY = jax.random.key(7)


def problem(case, reduction="mean"):
    _, act, loss, out, norm, rate = case
    params, x, y = make_problem(1, SIZES, N, loss, norm=norm)
    cfg = jaxbp.Config(act, loss, out, reduction, norm=norm, dropout=rate)
    return params, x, y, cfg


def flat(tree):
    return ravel_pytree(tree)[0]


def assert_close(got, want, rtol=1e-10):
    got, want = np.asarray(flat(got)), np.asarray(flat(want))
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < rtol, f"relative error {err:.2e}"


def per_example_terms(params, x, y, cfg):
    """vmap(grad) of each example's own loss, scaled as the reduction scales it."""
    summed = cfg.replace(reduction="sum")
    one = lambda xi, yi: jax.grad(jaxbp.loss_fn)(params, xi[None], yi[None], summed, key=KEY)  # noqa: E731
    terms = jax.vmap(one)(x, y)
    return terms if cfg.reduction == "sum" else jax.tree.map(lambda t: t / N, terms)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_first_order_statistics_equal_vmap_grad(case, reduction):
    params, x, y, cfg = problem(case, reduction)
    if cfg.dropout:
        pytest.skip("an example's masks differ between a batch and the example alone")
    terms = per_example_terms(params, x, y, cfg)
    assert_close(
        jaxbp.sum_grad_squared(params, x, y, cfg),
        jax.tree.map(lambda t: jnp.sum(t * t, 0), terms),
    )
    assert_close(
        jaxbp.grad_variance(params, x, y, cfg),
        jax.tree.map(lambda t: jnp.mean(t * t, 0) - jnp.mean(t, 0) ** 2, terms),
    )
    rows = jax.vmap(lambda *leaves: flat(list(leaves)))(*jax.tree.leaves(terms))
    np.testing.assert_allclose(jaxbp.batch_dot_grad(params, x, y, cfg), rows @ rows.T, rtol=1e-10)


def dense_ggn_and_hessian(params, x, y, cfg):
    """`J^T H J` (split where the loss record says) and the Hessian, dense, by autodiff."""
    theta, unravel = ravel_pytree(params)
    net = jaxbp.Network.of(params, cfg)
    loss = net.loss
    targets = loss.targets(y, N, SIZES[-1], x.dtype)

    def split(t):  # z_L, or y_hat for a loss that takes any output
        z = jaxbp.mlp(unravel(t), x, cfg, backward="autodiff", key=KEY)
        return net.output.fn(z) if loss.any_output else z

    def per_example_loss(o, yn):
        z, a = (o, o) if loss.any_output else (o, net.output.fn(o[None])[0])
        return net.scale(N) * loss.value(z[None], a[None], yn[None])[0]

    @jax.jit  # one program rather than thousands of eager operations
    def matrices(theta):
        jac = jax.jacobian(split)(theta)  # (N, K, P)
        h_out = jax.vmap(jax.hessian(per_example_loss))(split(theta), targets)
        ggn = jnp.einsum("nkp,nkl,nlq->pq", jac, h_out, jac)
        hessian = jax.hessian(lambda t: jaxbp.loss_fn(unravel(t), x, y, cfg, key=KEY))(theta)
        return ggn, hessian

    return (*matrices(theta), unravel)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_diagonals_equal_dense_autodiff_matrices(case):
    params, x, y, cfg = problem(case)
    ggn, hessian, unravel = dense_ggn_and_hessian(params, x, y, cfg)
    assert_close(jaxbp.diag_ggn(params, x, y, cfg, key=KEY), unravel(jnp.diag(ggn)))
    per = jaxbp.per_example_diag_ggn(params, x, y, cfg, key=KEY)
    assert {t.shape[0] for t in jax.tree.leaves(per)} == {N}
    assert_close(jax.tree.map(lambda t: t.sum(0), per), unravel(jnp.diag(ggn)))
    if cfg.norm is None:
        assert_close(jaxbp.diag_hessian(params, x, y, cfg, key=KEY), unravel(jnp.diag(hessian)))
    else:
        with pytest.raises(ValueError, match=r"diag_hessian needs .*'layer_norm'"):
            jaxbp.diag_hessian(params, x, y, cfg)


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_monte_carlo_diagonal_converges_to_the_exact_one(case):
    """Unbiased, with the variance of one column: for the mean of m columns the squared
    error exceeds 100 times its expectation with probability at most 1/100 (Chebyshev)."""
    params, x, y, cfg = problem(case)
    exact = flat(jaxbp.diag_ggn(params, x, y, cfg))
    keys = jax.random.split(jax.random.key(3), 400)
    one = jax.jit(lambda k: flat(jaxbp.diag_ggn(params, x, y, cfg, mc_samples=1, key=k)))
    singles = jnp.stack([one(k) for k in keys[:200]])
    variance = jnp.sum(jnp.var(singles, axis=0))  # of one column's estimate
    m = 2000
    estimate = flat(jaxbp.diag_ggn(params, x, y, cfg, mc_samples=m, key=keys[-1]))
    assert float(jnp.sum((estimate - exact) ** 2)) < 100 * float(variance) / m
    assert float(jnp.linalg.norm(jnp.mean(singles, 0) - exact) / jnp.linalg.norm(exact)) < 0.5


@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_kfac_factors_are_the_closed_form_of_the_flows_and_ekfac_the_block_diagonal(kind):
    params, x, y, cfg = problem(CASES[0])
    factors = jaxbp.kfac(params, x, y, cfg, kind=kind, mc_samples=3, key=KEY)
    _, _, trace = jaxbp.backprop(params, x, y, cfg)
    ggn, _, _ = dense_ggn_and_hessian(params, x, y, cfg)
    offsets = np.cumsum([0] + [p["W"].size + p["b"].size for p in params])
    for l, (f, p) in enumerate(zip(factors, params)):
        a = trace.a[l]
        np.testing.assert_allclose(f.A, a.T @ a / N, rtol=1e-12)
        if kind == "exact":  # the bias block of the dense Gauss-Newton matrix is G itself
            bias = slice(offsets[l] + p["W"].size, offsets[l + 1])
            np.testing.assert_allclose(f.G, ggn[bias, bias], rtol=1e-10, atol=1e-16)
    eigen = jaxbp.ekfac(params, x, y, cfg)
    for l, (e, f) in enumerate(zip(eigen, jaxbp.kfac(params, x, y, cfg))):
        for q, m in ((e.QA, f.A), (e.QG, f.G)):  # orthonormal eigenbases of the factors
            np.testing.assert_allclose(q.T @ q, np.eye(q.shape[0]), atol=1e-12)
            rotated = q.T @ m @ q
            np.testing.assert_allclose(rotated, jnp.diag(jnp.diag(rotated)), atol=1e-12)
        weight = slice(offsets[l], offsets[l] + params[l]["W"].size)
        q = jnp.kron(e.QA, e.QG)  # W flattened row-major: (i, o) -> i * n_out + o
        want = jnp.diag(q.T @ ggn[weight, weight] @ q)  # the block's diagonal in that basis
        np.testing.assert_allclose(e.SW.ravel(), want, rtol=1e-10, atol=1e-10 * jnp.max(want))


def test_kronecker_products_with_a_vector():
    params, x, y, cfg = problem(CASES[0])
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape) + 0.5), params)
    factors, eigen = jaxbp.kfac(params, x, y, cfg), jaxbp.ekfac(params, x, y, cfg)
    got_k, got_e = jaxbp.kfac_mvp(factors, v), jaxbp.ekfac_mvp(eigen, v)
    for f, e, vl, gk, ge in zip(factors, eigen, v, got_k, got_e):
        np.testing.assert_allclose(
            gk["W"].ravel(), jnp.kron(f.A, f.G) @ vl["W"].ravel(), rtol=1e-12
        )
        np.testing.assert_allclose(gk["b"], f.G @ vl["b"], rtol=1e-12)
        q = jnp.kron(e.QA, e.QG)
        want = q @ (e.SW.ravel() * (q.T @ vl["W"].ravel()))
        np.testing.assert_allclose(ge["W"].ravel(), want, rtol=1e-10)
        np.testing.assert_allclose(ge["b"], e.QG @ (e.Sb * (e.QG.T @ vl["b"])), rtol=1e-10)


def test_users_records_and_jit_in_both_dtypes():
    """A user's activation with its second derivative, and a user's loss with only its
    curvature (the factor then comes from eigh), under jit, float32 and float64."""
    cube = jaxbp.Activation(
        "softsign",
        lambda z: z / (1 + jnp.abs(z)),
        lambda z, a: (1 - jnp.abs(a)) ** 2,
        deriv2=lambda z, a: -2 * jnp.sign(z) * (1 - jnp.abs(a)) ** 3,
    )
    logcosh = jaxbp.Loss(
        "logcosh",
        value=lambda z, a, y: jnp.sum(jnp.logaddexp(a - y, y - a) - jnp.log(2.0), axis=-1),
        delta=lambda z, a, y, output: output.backward(z, a, jnp.tanh(a - y)),
        curvature=lambda z, a, y, u: (1 - jnp.tanh(a - y) ** 2) * u,
    )
    cfg = jaxbp.Config(cube, logcosh)
    params, x, y = make_problem(2, SIZES, N, "mse")
    ggn, hessian, unravel = dense_ggn_and_hessian(params, x, y, cfg)
    assert_close(jax.jit(jaxbp.diag_ggn)(params, x, y, cfg), unravel(jnp.diag(ggn)))
    assert_close(jax.jit(jaxbp.diag_hessian)(params, x, y, cfg), unravel(jnp.diag(hessian)))
    as32 = lambda t: jax.tree.map(lambda v: v.astype(jnp.float32), t)  # noqa: E731
    got = jax.jit(jaxbp.diag_ggn)(as32(params), as32(x), as32(y), cfg)
    assert {v.dtype for v in jax.tree.leaves(got)} == {jnp.dtype(jnp.float32)}
    assert_close(got, unravel(jnp.diag(ggn)), rtol=1e-4)


REFUSALS = [
    (
        "batch-norm",
        jaxbp.diag_ggn,
        dict(norm="batch"),
        "diag_ggn is undefined for a network with 'batch_norm'",
    ),
    (
        "batch-norm-kfac",
        jaxbp.kfac,
        dict(norm="batch"),
        "kfac is undefined for a network with 'batch_norm'",
    ),
    ("layer-norm-kfac", jaxbp.kfac, dict(norm="layer"), "K-FAC approximates layers whose gradient"),
    (
        "no-deriv2",
        jaxbp.diag_hessian,
        dict(activation=jaxbp.Activation("plain", jnp.tanh, lambda z, a: 1 - a * a)),
        "'plain' has no second derivative",
    ),
    (
        "no-curvature",
        jaxbp.diag_ggn,
        dict(
            loss=jaxbp.Loss(
                "flat", lambda z, a, y: jnp.sum(a, -1), lambda z, a, y, o: jnp.ones_like(z)
            )
        ),
        "Loss 'flat' has no curvature",
    ),
    ("mc-no-key", lambda *a, **k: jaxbp.diag_ggn(*a, mc_samples=4, **k), {}, "pass key="),
    (
        "kind",
        lambda *a, **k: jaxbp.kfac(*a, kind="kflr", **k),
        {},
        r"kind must be one of \['exact', 'mc'\]",
    ),
    (
        "softmax-under-mse",
        jaxbp.diag_hessian,
        dict(loss="mse", output_activation="softmax"),
        "output_activation='softmax'",
    ),
]


@pytest.mark.parametrize(
    ("fn", "changes", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_by_name(fn, changes, match):
    norm = changes.get("norm")
    kw = dict(activation="tanh", loss="cross_entropy") | changes
    params, x, y = make_problem(
        3, SIZES, N, kw["loss"] if isinstance(kw["loss"], str) else "mse", norm=norm
    )
    with pytest.raises(ValueError, match=match):
        fn(params, x, y, **kw)


def test_kfac_inverts_the_psd_part_of_a_factor_rounding_made_indefinite():
    """A running average that float32 rounding left with a negative eigenvalue (seen at
    -4e-6) still gives a positive-definite preconditioner for a damping below it."""
    q = jnp.linalg.qr(jax.random.normal(KEY, (4, 4)))[0]
    w = jnp.asarray([-4e-6, 0.0, 0.5, 2.0])
    factor = (q * w[None, :]) @ q.T
    path = jaxbp.KFAC(damping=1e-14)
    state = jaxbp.KFACState([factor], [factor], [], [], jnp.zeros((), jnp.int32))
    inv = path._refreshed(state).inv_A[0]
    want = (q / (jnp.maximum(w, 0) + 1e-7)[None, :]) @ q.T
    np.testing.assert_allclose(inv, want, rtol=1e-9)
    assert float(jnp.min(jnp.linalg.eigvalsh(inv))) > 0


def test_kfac_path_step_is_the_preconditioned_gradient_and_trains():
    params, x, y, cfg = problem(CASES[0])
    net = jaxbp.Network.of(params, cfg)
    path = jaxbp.KFAC(kind="exact", every=1, decay=0.0, damping=1e-2)
    sgd = optax.sgd(0.5)
    state = jaxbp.TrainState.create(sgd, params, net, path)
    new, state, _ = jaxbp.step_fn(sgd, net, path)(params, state, None, x, y)
    grads = jaxbp.manual_grad(params, x, y, cfg)
    root = 1e-2**0.5
    for p, g, f, q in zip(params, grads, jaxbp.kfac(params, x, y, cfg), new):
        inv_a = jnp.linalg.inv(f.A + root * jnp.eye(f.A.shape[0]))
        inv_g = jnp.linalg.inv(f.G + root * jnp.eye(f.G.shape[0]))
        np.testing.assert_allclose(q["W"], p["W"] - 0.5 * inv_a @ g["W"] @ inv_g, rtol=1e-10)
        np.testing.assert_allclose(q["b"], p["b"] - 0.5 * inv_g @ g["b"], rtol=1e-10)
    assert int(state.path_state.count) == 1
    sgd = optax.sgd(0.05, momentum=0.9)
    epoch = jaxbp.epoch_fn(sgd, net, jaxbp.KFAC(), batch_size=3, epochs=4)
    start = jaxbp.TrainState.create(sgd, params, net, jaxbp.KFAC())
    _, _, m = epoch(params, start, KEY, x, y)
    assert float(jnp.mean(m["loss"][-1])) < float(jnp.mean(m["loss"][0]))
