"""manual_grad (eqs. 1.3-1.4) against three independent references: jax.grad, central
finite differences in float64, and the delta_l = dL/dz_l of autodiff on a forward pass
written out again here."""

import ast
import inspect

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxbp
from conftest import ACTIVATION_NAMES, LOSS_OUTPUTS, RTOL, make_problem, rel_err
from jaxbp._core import (
    activations,
    backprop,
    config,
    dropout,
    flow,
    inits,
    layers,
    losses,
    network,
    norm,
    tasks,
    validate,
)

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
BOUNDED = ("sigmoid", "tanh", "softmax")
"""Outputs bounded by 1 in absolute value, whose backward cancels as they saturate."""
STATIC = ("activation", "loss", "output_activation", "reduction")
jit_manual_grad = jax.jit(jaxbp.manual_grad, static_argnames=STATIC)
jit_autodiff_grad = jax.jit(jax.grad(jaxbp.loss_fn), static_argnames=STATIC)


def sizes_for(depth, n_in=5, width=6, n_out=3):
    return [n_in] + [width] * (depth - 1) + [n_out]


def assert_parity(params, x, y, rtol, **kw):
    manual = jaxbp.manual_grad(params, x, y, **kw)
    auto = jax.grad(jaxbp.loss_fn)(params, x, y, **kw)
    assert jax.tree.structure(manual) == jax.tree.structure(params)
    for path, m, a, p in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(manual),
        jax.tree.leaves(auto),
        jax.tree.leaves(params),
    ):
        assert m.dtype == p.dtype and m.shape == p.shape, path[0]
        err = rel_err(m, a)
        assert err <= rtol, f"{jax.tree_util.keystr(path[0])}: rel err {err:.3e} > {rtol:.0e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("batch", [1, 7], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5], ids=lambda d: f"depth{d}")
@pytest.mark.parametrize(
    ("loss", "output"), LOSS_OUTPUTS, ids=[f"{l}-{o}" for l, o in LOSS_OUTPUTS]
)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_parity_grid(activation, loss, output, depth, batch, reduction, dtype):
    seed = depth * 100 + batch
    params, x, y = make_problem(seed, sizes_for(depth), batch, loss, DTYPES[dtype])
    kw = dict(activation=activation, loss=loss, output_activation=output, reduction=reduction)
    rtol = RTOL[DTYPES[dtype]]
    if dtype == "float32" and output in BOUNDED and jaxbp.LOSSES[loss].any_output:
        # A saturated bounded output is ill-conditioned for both paths alike: its backward
        # (softmax a * (g - <g, a>), tanh 1 - a^2, sigmoid a (1 - a)) cancels 1 - |a|max,
        # amplifying float32 rounding by up to about 1 / (1 - |a|max). Seen in the grid, a
        # 5-layer linear net: softmax at a_max = 0.9998, rel err 2.9e-5 in float32 and
        # 2.7e-13 in float64; tanh at |a|max = 0.999987, 9.9e-6 here against 1e-5 (1.08e-5
        # with XLA's -O0 code) and 1.6e-14 in float64. The issue allows widening such a
        # case alone: it is held to 10 eps / (1 - |a|max), and its float64 twin to 1e-12.
        # (A loss written for its link's logits, `any_output=False` like the cross-entropies,
        # has delta = a - y with no output backward in it: nothing to amplify.)
        a = jaxbp.forward(params, x, activation=activation, output_activation=output)
        headroom = float(jnp.min(1 - jnp.abs(a)))
        if headroom < 1e-3:
            rtol = max(rtol, 10 * float(jnp.finfo(jnp.float32).eps) / headroom)
            twin = jax.tree.map(lambda v: v.astype(jnp.float64), (params, x))
            assert_parity(*twin, y, RTOL[jnp.float64], **kw)
    assert_parity(params, x, y, rtol, **kw)


@settings(max_examples=30, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=6),
    batch=st.integers(1, 12),
    x_scale=st.sampled_from([0.01, 0.3, 1.0, 3.0]),
    activation=st.sampled_from(ACTIVATION_NAMES),
    loss_output=st.sampled_from(LOSS_OUTPUTS),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 2**16),
)
def test_parity_hypothesis(widths, batch, x_scale, activation, loss_output, reduction, seed):
    loss, output = loss_output
    if output == "softmax" and widths[-1] == 1:
        widths = [*widths[:-1], 2]  # a one-unit softmax is constant: its gradient is exactly 0
    params, x, y = make_problem(seed, widths, batch, loss, jnp.float64, x_scale=x_scale)
    kw = dict(activation=activation, loss=loss, output_activation=output, reduction=reduction)
    manual = jit_manual_grad(params, x, y, **kw)  # jitted: new shapes each example
    auto = jit_autodiff_grad(params, x, y, **kw)
    for m, a in zip(jax.tree.leaves(manual), jax.tree.leaves(auto)):
        assert rel_err(m, a) <= RTOL[jnp.float64]


@pytest.mark.parametrize(
    ("loss", "output"), LOSS_OUTPUTS, ids=[f"{l}-{o}" for l, o in LOSS_OUTPUTS]
)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_finite_differences(activation, loss, output):
    """A third reference: central differences in float64 along random unit directions."""
    params, x, y = make_problem(7, sizes_for(3), 6, loss, jnp.float64)
    kw = dict(activation=activation, loss=loss, output_activation=output)
    # Op by op: the 72 networks share their small programs (the compiled path has its own
    # finite-difference cases in test_kinks, test_extending and test_parity_report).
    report = jaxbp.check_parity(params, x, y, finite_differences=True, compiled=False, **kw)
    # relu-like kinks: a step of 1e-6 crosses a kink only if some |z| < ~1e-5; not here.
    assert report.passed, f"\n{report}"
    assert report.max_fd_err < 1e-6


def test_trace_holds_both_flows():
    """z_l, a_l match a forward pass written out here; delta_l = dL/dz_l by autodiff."""
    params, x, y = make_problem(0, sizes_for(4), 5, "cross_entropy", jnp.float64)
    kw = dict(activation="tanh", loss="cross_entropy")
    value, grads, trace = jaxbp.backprop(params, x, y, **kw)
    assert value == jaxbp.loss_fn(params, x, y, **kw)

    def loss_with_offsets(offsets):
        a, zs = x, []
        for l, layer in enumerate(params):
            z = a @ layer["W"] + layer["b"][None, :] + offsets[l]
            zs.append(z)
            a = jnp.tanh(z) if l < len(params) - 1 else z
        lse = jax.nn.logsumexp(a, axis=1)
        return jnp.mean(lse - a[jnp.arange(5), y]), zs

    offsets = [jnp.zeros((5, p["W"].shape[1])) for p in params]
    dl_dz, zs = jax.grad(loss_with_offsets, has_aux=True)(offsets)
    assert len(trace.z) == len(trace.delta) == len(params) and len(trace.a) == len(params) + 1
    np.testing.assert_array_equal(trace.a[0], x)
    for l in range(len(params)):
        np.testing.assert_allclose(trace.z[l], zs[l], rtol=1e-14)
        np.testing.assert_allclose(trace.delta[l], dl_dz[l], rtol=1e-12, atol=1e-17)
        # eq. 1.3: each gradient is a product of the two stored flows.
        np.testing.assert_allclose(grads[l]["W"], trace.a[l].T @ trace.delta[l], rtol=1e-15)


def test_jit():
    params, x, y = make_problem(0, sizes_for(3), 8, "cross_entropy", jnp.float64)
    kw = dict(activation="gelu", loss="cross_entropy")
    eager = jaxbp.manual_grad(params, x, y, **kw)
    for a, b in zip(jax.tree.leaves(jit_manual_grad(params, x, y, **kw)), jax.tree.leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_vmap_over_networks_and_batches():
    kw = dict(activation="gelu", loss="cross_entropy")
    problems = [make_problem(s, sizes_for(3), 8, "cross_entropy", jnp.float64) for s in range(3)]
    x, y = problems[0][1], problems[0][2]
    stack = jax.tree.map(lambda *v: jnp.stack(v), *[p for p, _, _ in problems])
    per_net = jax.vmap(lambda p: jaxbp.manual_grad(p, x, y, **kw))(stack)
    for s, (params, _, _) in enumerate(problems):
        ref = jit_autodiff_grad(params, x, y, **kw)
        for a, b in zip(jax.tree.leaves(per_net), jax.tree.leaves(ref)):
            assert rel_err(a[s], b) < 1e-12

    params = problems[0][0]
    xs, ys = x.reshape(2, 4, -1), y.reshape(2, 4)
    per_batch = jax.vmap(lambda xb, yb: jaxbp.manual_grad(params, xb, yb, **kw))(xs, ys)
    for i in range(2):
        ref = jit_autodiff_grad(params, xs[i], ys[i], **kw)
        for a, b in zip(jax.tree.leaves(per_batch), jax.tree.leaves(ref)):
            assert rel_err(a[i], b) < 1e-12


def test_jvp_of_manual_grad_is_a_hessian_vector_product():
    params, x, y = make_problem(0, sizes_for(3), 8, "cross_entropy", jnp.float64)
    kw = dict(activation="softplus", loss="cross_entropy")
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
    hvp = jax.jit(lambda p, v: jax.jvp(lambda q: jaxbp.manual_grad(q, x, y, **kw), (p,), (v,))[1])
    # Reference: the Hessian of loss_fn by autodiff, contracted with v.
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: jaxbp.loss_fn(unravel(f), x, y, **kw)))(flat)
    want = unravel(hessian @ jax.flatten_util.ravel_pytree(v)[0])
    for a, b in zip(jax.tree.leaves(hvp(params, v)), jax.tree.leaves(want)):
        assert rel_err(a, b) < 1e-11


def test_dtypes_follow_params():
    params, x, y = make_problem(0, sizes_for(2), 4, "mse", jnp.float32)
    # float64 inputs with float32 params: gradients keep the params' dtype, like jax.grad.
    grads = jaxbp.manual_grad(params, x.astype(jnp.float64), y, activation="tanh", loss="mse")
    assert [g.dtype for g in jax.tree.leaves(grads)] == [jnp.float32] * 4


AUTODIFF_NAMES = {
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "linearize",
    "jacfwd",
    "jacrev",
    "hessian",
    "custom_vjp",
    "custom_jvp",
}


@pytest.mark.parametrize(
    "module",
    [
        backprop,
        flow,
        network,
        activations,
        losses,
        validate,
        layers,
        config,
        tasks,
        inits,
        norm,
        dropout,
    ],
    ids=lambda m: m.__name__,
)
def test_manual_grad_uses_no_autodiff(module):
    """Nothing on manual_grad's path names an autodiff transform."""
    tree = ast.parse(inspect.getsource(module))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not used & AUTODIFF_NAMES


def test_manual_grad_runs_with_autodiff_disabled(monkeypatch):
    params, x, y = make_problem(0, sizes_for(3), 4, "cross_entropy", jnp.float64)
    want = jax.grad(jaxbp.loss_fn)(params, x, y, activation="relu", loss="cross_entropy")
    for name in ("grad", "value_and_grad", "vjp", "jvp", "linearize"):
        monkeypatch.setattr(jax, name, lambda *a, _n=name, **k: pytest.fail(f"jax.{_n} called"))
    got = jaxbp.manual_grad(params, x, y, activation="relu", loss="cross_entropy")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "cross_entropy", "mse"])
def test_jit_with_targets_closed_over(loss):
    """Concrete targets captured by a jitted closure (not passed as arguments) work too."""
    params, x, y = make_problem(0, sizes_for(2), 5, loss, jnp.float64)
    if loss == "cross_entropy":
        y = jax.nn.one_hot(y, 3, dtype=jnp.float64)  # probability rows
    kw = dict(activation="tanh", loss=loss)
    got = jax.jit(lambda p: jaxbp.manual_grad(p, x, y, **kw))(params)
    want = jax.grad(jaxbp.loss_fn)(params, x, y, **kw)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) < 1e-12
