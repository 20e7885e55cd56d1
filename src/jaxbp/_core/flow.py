"""The forward flow of eq. 1.1, and the loss of eq. 1.2 with its delta, the source of eq. 1.4.

Parameters are a plain pytree, a list with one `{"W": (n_{l-1}, n_l), "b": (n_l,)}`
dict per layer; each column of `W_l` holds one neuron's incoming weights. A batch is
`(batch, n_0)`, one sample a row, and layer `l` computes

    z_l = a_{l-1} @ W_l + b_l,    a_l = phi(z_l),    a_0 = x.

More generally the network is the sequence of layer records of a `jaxbp.Network`
(dense layers and activations by default; see `jaxbp._core.layers`), and `params` holds
one entry per layer with parameters. `forward_flow` runs them and keeps every layer's
cache: the memory that back-propagation trades for time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._core.config import Config, Keywords
from jaxbp._core.layers import Context, Layer
from jaxbp._core.network import Network, Params, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array


class Flow(NamedTuple):
    """One forward pass, stored for the backward pass (memory for time).

    `layers`: the network's records; `params`: per layer its parameters (or `None`);
    `caches`: per layer what its backward needs; `z`: the logits `z_L: (batch, n_L)`;
    `a`: the output `y_hat = phi_out(z_L)`; `x`: the input `(batch, n_0)`.
    """

    layers: tuple[Layer, ...]
    params: tuple[Any, ...]
    caches: tuple[Any, ...]
    z: Array
    a: Array
    x: Array | None = None


def forward_flow(net: Network, params: Params, x: Array, ctx: Context) -> Flow:
    """The forward flow of eq. 1.1 through the layers of `net`, every cache kept for eq. 1.4.

    `x: (batch, n_0)`; the arguments are the network's, checked where they entered.
    `ctx` holds the mode, the call's key (split once per layer) and the list of layer
    states (one per layer with state), which are handed to each layer as its own.
    """
    layers = net.layers
    keys = [None] * len(layers) if ctx.key is None else list(jax.random.split(ctx.key, len(layers)))
    stats = net.spread_states(ctx.stats)
    caches, a = [], x
    for layer, p, key, state in zip(layers, net.spread(params), keys, stats, strict=True):
        a, cache = layer.forward(p, a, Context(ctx.train, key, state))  # eq. 1.1
        caches.append(cache)
    return Flow(layers, net.spread(params), tuple(caches), a, net.output.forward(a), x)


def next_states(net: Network, caches: tuple[Any, ...], stats: Any) -> list[Any]:
    """The layer states after a training forward pass that left `caches` (batch norm's
    running averages moved toward this batch's statistics)."""
    entries = net.spread_states(stats)
    return [
        layer.next_state(state, cache)
        for layer, state, cache in zip(net.layers, entries, caches, strict=True)
        if layer.has_state
    ]


def source(net: Network, flow: Flow, y: Any) -> tuple[Array, Array]:
    """The reduced loss and `delta_L = dL/dz_L` (the loss's handwritten delta, scaled);
    `y` is prepared here by the loss's task."""
    batch = flow.z.shape[0]
    y = net.loss.targets(y, batch, net.n_out, flow.z.dtype)
    scale = net.scale(batch)
    value = scale * jnp.sum(net.loss.sample_losses(flow.z, flow.a, y))
    return value, scale * net.loss.output_delta(flow.z, flow.a, y, net.output)


def loss_value(net: Network, params: Params, x: Array, y: Any, ctx: Context) -> Array:
    """The reduced loss of eq. 1.2 on `(x, y)` (trusted arguments)."""
    flow = forward_flow(net, params, x, ctx)
    y = net.loss.targets(y, x.shape[0], net.n_out, flow.z.dtype)
    return net.reduce(net.loss.sample_losses(flow.z, flow.a, y))


def forward(
    params: Params,
    x: Array,
    config: Config | Network | None = None,
    *,
    stats: Any = None,
    **keywords: Unpack[Keywords],
) -> Array:
    """The network's output `y_hat = f(x)` of eq. 1.1, `(batch, n_L)`, in evaluation mode.

    `x: (batch, n_0)`. Takes a `config` (a `jaxbp.Config` or `jaxbp.Network`) or the
    keywords of `jaxbp.Config`: `activation` on the hidden layers, `output_activation` on
    the last (default: the loss's canonical link, identity without a loss); `loss` and
    `reduction` are accepted and unused. Dropout is off; batch normalisation uses the
    running averages `stats`.
    """
    net, _ = resolve(config, keywords, params, need_loss=False)
    x = net.check_x(x)
    if stats is not None:
        net.check_stats(params, stats)
    return forward_flow(net, params, x, net.context(False, stats=stats)).a


def loss_fn(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    **keywords: Unpack[Keywords],
) -> Array:
    """The loss `L(theta)` of eq. 1.2 over a batch, a scalar.

    **Arguments:**

    - `x: (batch, n_0)`.
    - `y`: `(batch, n_L)` targets, or `(batch,)` when `n_L = 1`; for "cross_entropy",
      integer labels `(batch,)` or probability rows `(batch, K)`.
    - `config` (a `jaxbp.Config` or `jaxbp.Network`), or its keywords: `activation`
      (hidden layers), `loss` (a name or a `jaxbp.Loss`), `output_activation` (`None` for
      the loss's canonical link), `reduction` ("mean" over samples or "sum", the chapter's
      `L = sum_n l^n`).
    - `key`: the dropout masks' PRNG key, for a network with dropout (training mode;
      batch normalisation uses the batch's statistics).
    """
    net, key = resolve(config, keywords, params)
    return loss_value(net, params, net.check_x(x), y, net.context(True, key))
