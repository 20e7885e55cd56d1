"""The other routes to jaxbp's per-example statistics and GGN diagonal, for
`curvature_bench.py`: plain JAX (`jax.vmap` of `jax.grad` of one example's loss; for the
GGN diagonal `jax.vmap` of `jax.vjp` of one example's logits) and BackPACK on a torch copy
of the network. Index alphabet: `n` example, `c` column of the loss Hessian's square
root, `k` logit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.app import bench

BACKPACK_EXT = {
    "sum_grad_squared": "SumGradSquared",
    "grad_variance": "Variance",
    "batch_dot_grad": "BatchGrad",
    "diag_ggn": "DiagGGNExact",
}


# --- the vmap route --------------------------------------------------------------------------


def logits_fn(params, x):
    """The tanh MLP's logits, plain JAX."""
    a = x
    for layer in params[:-1]:
        a = jnp.tanh(a @ layer["W"] + layer["b"][None, :])
    return a @ params[-1]["W"] + params[-1]["b"][None, :]


def per_example_terms(params, x, y):
    """`t_n = grad l_n / N` (the mean's per-example terms), each leaf `(N, ...)`:
    `jax.vmap(jax.grad)` of the plain loss of one example."""
    one = lambda p, xn, yn: bench.plain_loss(p, xn[None], yn[None])  # noqa: E731
    grads = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
    return jax.tree.map(lambda g: g / x.shape[0], grads)


def vmap_sum_grad_squared(params, x, y):
    """`sum_n t_n^2`, each leaf the shape of its parameter; `x: (N, n_in)`, `y: (N,)`."""
    return jax.tree.map(lambda t: jnp.sum(t**2, axis=0), per_example_terms(params, x, y))


def vmap_grad_variance(params, x, y):
    """`(1/N) sum_n t_n^2 - ((1/N) sum_n t_n)^2` (BackPACK's `Variance`), each leaf the
    shape of its parameter."""
    n = x.shape[0]
    terms = per_example_terms(params, x, y)
    return jax.tree.map(lambda t: jnp.sum(t**2, axis=0) / n - (jnp.sum(t, 0) / n) ** 2, terms)


def vmap_batch_dot_grad(params, x, y):
    """The Gram matrix `(N, N)` of the per-example terms `t_n`, over all parameters."""
    flat = [t.reshape(x.shape[0], -1) for t in jax.tree.leaves(per_example_terms(params, x, y))]
    return sum(t @ t.T for t in flat)


def vmap_diag_ggn(params, x, y):
    """`(1/N) sum_n sum_c (J_n^T s_{n,c})^2`, `S_n S_n^T = diag(p_n) - p_n p_n^T` (softmax
    cross-entropy): for each column `c` in turn (`jax.lax.map`, so that one column's
    per-example terms are in memory at a time, not all K), `jax.vmap` over the examples of
    `jax.vjp` of that example's logits applied to `s_{n,c}`, squared and summed."""
    del y  # the GGN of softmax cross-entropy does not depend on the labels
    prob = jax.nn.softmax(logits_fn(params, x))
    root = jnp.sqrt(prob)
    factor = jax.vmap(jnp.diag)(root) - prob[:, :, None] * root[:, None, :]  # (n, k, c)

    def example(xn, s):
        return jax.vjp(lambda p: logits_fn(p, xn[None])[0], params)[1](s)[0]

    def column(c):
        terms = jax.vmap(example)(x, factor[:, :, c])
        return jax.tree.map(lambda t: jnp.sum(t**2, axis=0), terms)

    squares = jax.lax.map(column, jnp.arange(factor.shape[2]))
    return jax.tree.map(lambda t: jnp.sum(t, axis=0) / x.shape[0], squares)


VMAP = {
    "sum_grad_squared": vmap_sum_grad_squared,
    "grad_variance": vmap_grad_variance,
    "batch_dot_grad": vmap_batch_dot_grad,
    "diag_ggn": vmap_diag_ggn,
}


# --- BackPACK --------------------------------------------------------------------------------


def torch_copy(params):
    """A float32 torch `nn.Sequential` of `Linear`/`Tanh` with the same weights."""
    import torch
    from torch import nn

    layers = []
    for i, p in enumerate(params):
        w = np.asarray(p["W"])
        linear = nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
        layers.append(linear)
        if i < len(params) - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def backpack_calls(params, data):
    """`{quantity: call(i)}`: one forward and one backward pass with the BackPACK
    extension (the Gram matrix from `BatchGrad`), and `"torch backward"` without one."""
    import torch
    from backpack import backpack, extend
    from backpack import extensions as bx

    model = extend(torch_copy(params))
    loss_func = extend(torch.nn.CrossEntropyLoss())
    batches = [
        (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y).astype(np.int64)))
        for x, y in data
    ]

    def make(extension):
        def call(i):
            x, y = batches[i % len(batches)]
            model.zero_grad(set_to_none=True)
            loss = loss_func(model(x), y)
            if extension is None:
                loss.backward()
                return
            with backpack(getattr(bx, extension)()):
                loss.backward()
            if extension == "BatchGrad":
                flat = torch.cat([p.grad_batch.flatten(1) for p in model.parameters()], 1)
                flat @ flat.T

        return call

    calls = {q: make(e) for q, e in BACKPACK_EXT.items()}
    calls["torch backward"] = make(None)
    return calls
