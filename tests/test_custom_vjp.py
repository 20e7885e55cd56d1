"""`jaxbp.mlp` with `backward="manual"`: `jax.grad` of programs built on it runs eqs. 1.3-1.4.

References: `jax.test_util.check_grads` (finite differences, reverse mode) and the same
programs differentiated by plain autodiff (`backward="autodiff"`), in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxbp
from conftest import make_problem, rel_err


def net(seed, sizes, batch=6):
    params, x, _ = make_problem(seed, sizes, batch, "mse")
    return params, x


def assert_trees_close(got, want, rtol=1e-12):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert rel_err(g, w) <= rtol


@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
def test_check_grads(activation):
    """The handwritten VJP for params and x, against finite differences (jax.test_util)."""
    params, x = net(0, [3, 5, 4, 2])

    @jax.jit
    def f(params, x):
        return jnp.sin(jaxbp.mlp(params, x, activation=activation))

    check_grads(f, (params, x), order=1, modes=("rev",))


def test_forward_matches_autodiff_and_forward():
    params, x = net(0, [3, 5, 4, 2])
    manual = jaxbp.mlp(params, x, activation="tanh")
    np.testing.assert_array_equal(
        manual, jaxbp.mlp(params, x, activation="tanh", backward="autodiff")
    )
    np.testing.assert_array_equal(manual, jaxbp.forward(params, x, activation="tanh"))
    assert manual.shape == (6, 2)


def huber(r, delta=0.5):
    return jnp.where(jnp.abs(r) < delta, 0.5 * r * r, delta * (jnp.abs(r) - 0.5 * delta))


def huber_program(params, x, target, backward):
    """A user's own loss on z_L."""
    return jnp.mean(huber(jaxbp.mlp(params, x, activation="gelu", backward=backward) - target))


def stacked_program(nets, x, backward):
    """One MLP feeding another, the second's input being the first's logits."""
    first, second = nets
    h = jaxbp.mlp(first, x, activation="tanh", backward=backward)
    return jnp.sum(jax.nn.logsumexp(jaxbp.mlp(second, h, activation="elu", backward=backward), 1))


def embedded_program(theta, tokens, backward):
    """An MLP among other parameters: an embedding table, a temperature and a readout."""
    x = theta["embed"][tokens]  # (batch, n_0)
    z = jaxbp.mlp(theta["mlp"], x, activation="softplus", backward=backward)
    return jnp.sum(jnp.cos(theta["scale"] * z) @ theta["readout"])


@pytest.fixture
def programs():
    k1, k2, k3 = 1, 2, 3
    params, x = net(k1, [3, 5, 4, 2])
    first, _ = net(k2, [3, 4, 3])
    second, _ = net(k3, [3, 5, 2])
    theta = {
        "embed": jnp.asarray(np.random.default_rng(4).normal(size=(10, 3))),
        "mlp": params,
        "scale": jnp.asarray(1.3),
        "readout": jnp.linspace(-1.0, 1.0, 2),
    }
    tokens = jnp.asarray([0, 3, 3, 9, 1, 7])
    return {
        "huber": (huber_program, (params, x, 0.3 * jnp.ones((6, 2)))),
        "stacked": (stacked_program, ([first, second], x)),
        "embedded": (embedded_program, (theta, tokens)),
    }


@pytest.mark.parametrize("name", ["huber", "stacked", "embedded"])
def test_composite_programs_match_autodiff(programs, name):
    program, args = programs[name]
    argnums = (0, 1) if name != "embedded" else (0,)  # tokens are integers
    grad = jax.jit(jax.grad(program, argnums=argnums), static_argnums=len(args))
    assert_trees_close(grad(*args, "manual"), grad(*args, "autodiff"))


def test_x_cotangent_is_delta_1_times_w1():
    """dF/dx = delta_1 @ W_1^T: for F = sum(u * z_L), that is u pushed back through eq. 1.4."""
    params, x = net(0, [3, 5, 4, 2])
    u = jnp.asarray(np.random.default_rng(3).normal(size=(6, 2)))

    @jax.jit
    def manual_and_reference(x):
        gx = jax.grad(lambda x: jnp.sum(u * jaxbp.mlp(params, x, activation="tanh")))(x)

        def z_of_sample(xi):  # (n_L,)
            return jaxbp.mlp(params, xi[None], activation="tanh", backward="autodiff")[0]

        jac = jax.vmap(jax.jacrev(z_of_sample))(x)  # (batch, n_L, n_0)
        return gx, jnp.einsum("nk,nki->ni", u, jac)

    gx, want = manual_and_reference(x)
    np.testing.assert_allclose(gx, want, rtol=1e-12)


def test_grad_runs_the_handwritten_derivative():
    """A deliberately wrong derivative changes jax.grad of the manual mlp, not of autodiff's."""
    params, x = net(0, [3, 5, 2])
    wrong = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 2 * (1 - a * a))
    right = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - a * a)

    def grads(activation, backward):
        f = lambda p: jnp.sum(jaxbp.mlp(p, x, activation=activation, backward=backward) ** 2)  # noqa: E731
        return jax.grad(f)(params)

    auto = grads(wrong, "autodiff")
    assert_trees_close(grads(right, "manual"), auto)
    bad = grads(wrong, "manual")
    assert rel_err(bad[1]["W"], auto[1]["W"]) < 1e-14  # last layer: no hidden derivative
    np.testing.assert_allclose(bad[0]["W"], 2 * auto[0]["W"], rtol=1e-12)  # first: doubled


def test_jit_vmap_and_dtypes():
    params, x = net(0, [3, 5, 2])
    params32 = jax.tree.map(lambda v: v.astype(jnp.float32), params)
    f = jax.jit(lambda p, x: jnp.sum(jnp.tanh(jaxbp.mlp(p, x, activation="relu"))))
    gp, gx = jax.grad(f, argnums=(0, 1))(params32, x.astype(jnp.float32))
    assert {g.dtype for g in jax.tree.leaves(gp)} == {jnp.dtype(jnp.float32)}
    assert gx.dtype == jnp.float32
    # vmap over a stack of networks: per-network gradients.
    stack = jax.tree.map(lambda *v: jnp.stack(v), params, jax.tree.map(lambda v: -v, params))
    per_net = jax.vmap(jax.grad(f), in_axes=(0, None))(stack, x)

    def autodiff_loss(p):
        return jnp.sum(jnp.tanh(jaxbp.mlp(p, x, activation="relu", backward="autodiff")))

    for i, p in enumerate([params, jax.tree.map(lambda v: -v, params)]):
        got = jax.tree.map(lambda g, i=i: g[i], per_net)
        assert_trees_close(got, jax.grad(autodiff_loss)(p))


def test_integer_x_is_cast():
    params, _ = net(0, [3, 4, 2])
    x = jnp.asarray([[1, 0, 2], [0, 1, 1]])
    z = jaxbp.mlp(params, x, activation="tanh")
    np.testing.assert_allclose(z, jaxbp.mlp(params, x.astype(jnp.float64), activation="tanh"))
    grads = jax.grad(lambda p: jnp.sum(jaxbp.mlp(p, x, activation="tanh")))(params)
    assert grads[0]["W"].dtype == jnp.float64


@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_forward_mode_raises(transform):
    """custom_vjp defines reverse mode only; backward="autodiff" allows forward mode."""
    params, x = net(0, [3, 4, 2])

    def f(backward):
        return lambda p: jnp.sum(jaxbp.mlp(p, x, activation="tanh", backward=backward) ** 2)

    run = {
        "jvp": lambda g: jax.jvp(g, (params,), (params,)),
        "jacfwd": lambda g: jax.jacfwd(g)(params),
    }[transform]
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        run(f("manual"))
    run(f("autodiff"))


def test_forward_over_reverse_differentiates_the_handwritten_backward():
    """jax.hessian (jacfwd of jacrev) works: forward mode runs through the backward pass."""
    params, x = net(0, [2, 3, 2])

    def f(backward):
        return lambda x: jnp.sum(
            jnp.sin(jaxbp.mlp(params, x, activation="tanh", backward=backward))
        )

    hessian = jax.jit(lambda x: (jax.hessian(f("manual"))(x), jax.hessian(f("autodiff"))(x)))
    manual, auto = hessian(x)
    assert rel_err(manual, auto) < 1e-12


def test_errors():
    params, x = net(0, [3, 4, 2])
    with pytest.raises(ValueError, match="backward must be one of \\['manual', 'autodiff'\\]"):
        jaxbp.mlp(params, x, activation="tanh", backward="reverse")
    with pytest.raises(ValueError, match="activation must be one of"):
        jaxbp.mlp(params, x, activation="tanhh")
    with pytest.raises(ValueError, match="x has 4 features"):
        jaxbp.mlp(params, jnp.ones((2, 4)), activation="tanh")
