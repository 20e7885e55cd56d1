"""The multilayer perceptron of eq. 1.1: initialisation, forward flow, loss.

Parameters are a plain pytree, a list with one `{"W": (n_{l-1}, n_l), "b": (n_l,)}`
dict per layer; each column of `W_l` holds one neuron's incoming weights. A batch is
`(batch, n_0)`, one sample a row, and layer `l` computes

    z_l = a_{l-1} @ W_l + b_l,    a_l = phi(z_l),    a_0 = x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._activations import Activation, get_activation
from jaxbp._losses import OutputActivation
from jaxbp._validate import check_params, check_x, get_output_activation, prepare_targets, resolve

Array = jax.Array
Params = list[dict[str, Array]]

INITS = (
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "standard",
)


def _init_weight(key: Array, n_in: int, n_out: int, init: str, dtype: Any) -> Array:
    shape = (n_in, n_out)
    if init.endswith("_normal"):
        variance = {"glorot": 2 / (n_in + n_out), "he": 2 / n_in, "lecun": 1 / n_in}
        std = math.sqrt(variance[init.removesuffix("_normal")])
        return std * jax.random.normal(key, shape, dtype)
    limit = {
        "glorot_uniform": math.sqrt(6 / (n_in + n_out)),
        "he_uniform": math.sqrt(6 / n_in),
        "standard": 1 / math.sqrt(n_in),
    }[init]
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


def init_mlp(
    key: Array, sizes: Sequence[int], *, init: str = "glorot_normal", dtype: Any = jnp.float32
) -> Params:
    """Initial parameters for an MLP with layer widths `sizes = [n_0, ..., n_L]`.

    **Arguments:**

    - `key`: a `jax.random` key, split once per layer.
    - `sizes`: at least two widths, each >= 1.
    - `init`: the weight distribution, from the fans `n_in = n_{l-1}`, `n_out = n_l`:
      `"glorot_normal"` (std `sqrt(2 / (n_in + n_out))`), `"glorot_uniform"` (limit
      `sqrt(6 / (n_in + n_out))`), `"he_normal"` (std `sqrt(2 / n_in)`), `"he_uniform"`
      (limit `sqrt(6 / n_in)`), `"lecun_normal"` (std `sqrt(1 / n_in)`), or `"standard"`,
      `U[-1/sqrt(n_in), 1/sqrt(n_in)]`, the classic pre-2010 scheme. Normals are not
      truncated. Biases start at zero.
    - `dtype`: a floating dtype.

    **Returns:** a list of `L` dicts `{"W": (n_{l-1}, n_l), "b": (n_l,)}`.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}; got {init!r}.")
    sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else [sizes]
    if len(sizes) < 2:
        raise ValueError(
            "sizes must list at least two widths [n_0, ..., n_L] (input and output); "
            f"got {sizes!r}."
        )
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sizes must be integers >= 1; sizes[{i}] is {n!r} in {sizes!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype such as jnp.float32; got {dtype!r}.")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"W": _init_weight(k, n_in, n_out, init, dtype), "b": jnp.zeros((n_out,), dtype)}
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def forward_flow(
    params: Params, x: Array, hidden: Activation, output: OutputActivation
) -> tuple[list[Array], list[Array]]:
    """The forward flow of eq. 1.1, stored for eq. 1.3: `([z_1..z_L], [a_0..a_L])`.

    `x: (batch, n_0)`; `z_l, a_l: (batch, n_l)`; `a_0 = x`. Hidden layers use `hidden`,
    the last layer `output`. Arguments are assumed checked.
    """
    zs, acts = [], [x]
    for i, layer in enumerate(params):
        z = acts[-1] @ layer["W"] + layer["b"][None, :]
        phi = output if i == len(params) - 1 else hidden
        zs.append(z)
        acts.append(phi.fn(z))
    return zs, acts


def forward(
    params: Params,
    x: Array,
    *,
    activation: str | Activation,
    output_activation: str | OutputActivation = "identity",
) -> Array:
    """The network's output `y_hat = f(x)` of eq. 1.1.

    `x: (batch, n_0)` -> `(batch, n_L)`. `activation` is used on the hidden layers,
    `output_activation` (any activation, or "softmax") on the last.
    """
    hidden = get_activation(activation)
    output = get_output_activation(output_activation)
    x = check_x(x, check_params(params))
    return forward_flow(params, x, hidden, output)[1][-1]


def loss_fn(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
) -> Array:
    """The loss `L(theta)` of eq. 1.2 over a batch, a scalar.

    **Arguments:**

    - `x: (batch, n_0)`.
    - `y`: `(batch, n_L)` targets, or `(batch,)` when `n_L = 1`; for "cross_entropy",
      integer labels `(batch,)` or probability rows `(batch, K)`.
    - `activation`: the hidden layers' activation.
    - `loss`: "mse", "binary_cross_entropy" or "cross_entropy".
    - `output_activation`: `None` for the loss's canonical link; "mse" takes any.
    - `reduction`: "mean" over samples or "sum" (the chapter's `L = sum_n l^n`).
    """
    setup = resolve(activation, loss, output_activation, reduction)
    sizes = check_params(params)
    x = check_x(x, sizes)
    zs, acts = forward_flow(params, x, setup.hidden, setup.output)
    y = prepare_targets(y, setup.loss, x.shape[0], sizes[-1], zs[-1].dtype)
    per_sample = setup.loss.value(zs[-1], acts[-1], y)
    return jnp.mean(per_sample) if reduction == "mean" else jnp.sum(per_sample)
