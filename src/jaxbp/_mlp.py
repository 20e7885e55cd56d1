"""The multilayer perceptron of eq. 1.1: initialisation, forward flow, loss.

Parameters are a plain pytree, a list with one `{"W": (n_{l-1}, n_l), "b": (n_l,)}`
dict per layer; each column of `W_l` holds one neuron's incoming weights. A batch is
`(batch, n_0)`, one sample a row, and layer `l` computes

    z_l = a_{l-1} @ W_l + b_l,    a_l = phi(z_l),    a_0 = x.

More generally the network is the sequence of layer records of `Config.body` (dense
layers and activations by default; see `jaxbp._layers`), and `params` holds one entry
per layer with parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp._config import NORMS, Config, Keywords, as_call, as_config, check_norm, check_params
from jaxbp._init import check_init
from jaxbp._layers import Context, Dense
from jaxbp._validate import (
    check_float_dtype,
    check_int,
    check_key,
    check_output_units,
    check_x,
    is_int,
    shape_mismatch,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
Params = list[dict[str, Array]]

TRAIN = Context(train=True)


class Flow(NamedTuple):
    """One forward pass, stored for the backward pass (memory for time).

    `layers`: the body's records; `params`: per layer its parameters (or `None`);
    `caches`: per layer what its backward needs; `z`: the logits `z_L: (batch, n_L)`;
    `a`: the output `y_hat = phi_out(z_L)`; `x`: the input `(batch, n_0)`.
    """

    layers: tuple[Any, ...]
    params: tuple[Any, ...]
    caches: tuple[Any, ...]
    z: Array
    a: Array
    x: Array | None = None


def per_layer(
    body: Sequence[Any], entries: Sequence[Any], owns: Any = lambda layer: layer.has_params
) -> tuple[Any, ...]:
    """`entries` spread over `body`: the next entry for each layer that `owns` one (by
    default: has parameters), `None` for the others."""
    it = iter(entries)
    return tuple(next(it) if owns(layer) else None for layer in body)


def prepare(config: Config, params: Any, x: Any) -> tuple[tuple[Any, ...], Array, int]:
    """Check `params` and `x` against `config`: `(body, x, n_out)`."""
    body = config.body(len(params) if isinstance(params, (list, tuple)) else 0)
    widths = check_params(params, body)
    x = check_x(x, widths[0])
    check_output_units(config.output, widths[-1])
    return body, x, widths[-1]


def forward_flow(
    config: Config, body: tuple[Any, ...], params: Any, x: Array, ctx: Context = TRAIN
) -> Flow:
    """The forward flow of eq. 1.1 through `body`, every layer's cache kept for eq. 1.4.

    `x: (batch, n_0)`; arguments are assumed checked (`prepare`). `ctx` holds the mode,
    the call's key (split once per layer) and the list of layer states (one per layer
    with state), which are handed to each layer as its own.
    """
    caches, a = [], x
    keys = [None] * len(body) if ctx.key is None else list(jax.random.split(ctx.key, len(body)))
    stats = per_layer(body, ctx.stats, has_state) if ctx.stats is not None else [None] * len(body)
    for layer, p, key, state in zip(body, per_layer(body, params), keys, stats, strict=True):
        a, cache = layer.forward(p, a, Context(ctx.train, key, state))
        caches.append(cache)
    return Flow(body, per_layer(body, params), tuple(caches), a, config.output.fn(a), x)


def has_state(layer: Any) -> bool:
    return getattr(layer, "has_state", False)


def is_random(layer: Any) -> bool:
    return getattr(layer, "random", False)


def init_stats(params: Any, config: Config | None = None, **keywords: Any) -> list[Any]:
    """The initial state of a network's stateful layers (batch normalisation's running
    averages, `{"mean": (j,), "var": (j,)}` each), one entry per such layer, in order.
    An empty list for a network without state."""
    cfg = as_config(config, keywords, need_loss=False)
    body = cfg.body(len(params) if isinstance(params, (list, tuple)) else 0)
    check_params(params, body)
    return initial_states(body, params)


def initial_states(body: tuple[Any, ...], params: Params) -> list[Any]:
    """One initial state per stateful layer of `body`, built from its `params` (checked)."""
    return [
        layer.init_state(p)
        for layer, p in zip(body, per_layer(body, params), strict=True)
        if has_state(layer)
    ]


def check_stats(body: tuple[Any, ...], params: Params, stats: Any) -> None:
    """At trace time: `stats` must be what `init_stats(params, config)` builds (the same
    entries, keys and shapes; `params` already checked against `body`), else a
    `ValueError` showing both."""
    want = jax.eval_shape(lambda: initial_states(body, params))
    got = list(stats) if isinstance(stats, (list, tuple)) else stats
    if shape_mismatch(got, want) is not None:
        shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
        hint = " (a TrainState holds them in .stats)" if hasattr(stats, "stats") else ""
        raise ValueError(
            f"stats must be this network's running averages, as jaxbp.init_stats(params, "
            f"config) builds them and the training steps return them{hint}: shapes "
            f"{shapes(want)}; got {type(stats).__name__} {shapes(got)!s:.200}. Build them "
            "with jaxbp.init_stats(params, config) (a TrainState with "
            "jaxbp.init_train_state(optimizer, params, config))."
        )


def next_stats(flow: Flow, stats: Any) -> list[Any]:
    """The layer states after the training forward pass `flow` (batch norm's running
    averages moved toward this batch's statistics)."""
    entries = per_layer(flow.layers, stats, has_state)
    return [
        layer.next_state(state, cache)
        for layer, state, cache in zip(flow.layers, entries, flow.caches, strict=True)
        if has_state(layer)
    ]


def evaluation_context(body: tuple[Any, ...], params: Params, stats: Any) -> Context:
    """The `Context` of an evaluation, its `stats` checked (`check_stats`)."""
    if stats is not None:
        check_stats(body, params, stats)
    return context(body, False, stats=stats)


def context(body: tuple[Any, ...], train: bool, key: Any = None, stats: Any = None) -> Context:
    """The call's `Context`, checked: a random layer in training needs a key, and an
    evaluation of a stateful network its states."""
    if key is not None:
        check_key(key)
    if train and key is None and any(is_random(layer) for layer in body):
        names = sorted({layer.name for layer in body if is_random(layer)})
        raise ValueError(
            f"this network's {names} layers draw random masks in training: pass key= "
            "(e.g. key=jax.random.key(0)); the same key gives the same masks."
        )
    if not train and stats is None and any(has_state(layer) for layer in body):
        raise ValueError(
            "this network has batch normalisation, which evaluates with its running "
            "averages: pass stats= (jaxbp.init_stats(params, config) at the start, then "
            "what the training steps return)."
        )
    if stats is not None:
        wanted = sum(has_state(layer) for layer in body)
        if not isinstance(stats, (list, tuple)) or len(stats) != wanted:
            raise ValueError(
                f"stats must be a list with one entry per stateful layer ({wanted} here), as "
                f"jaxbp.init_stats returns; got {type(stats).__name__} of length "
                f"{len(stats) if isinstance(stats, (list, tuple)) else '-'}."
            )
    return Context(train, key, stats)


def init_mlp(
    key: Array,
    sizes: Sequence[int],
    *,
    init: str = "glorot_normal",
    dtype: Any = jnp.float32,
    norm: str | None = None,
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
    - `norm`: `None`, "layer" or "batch": a normalisation after each hidden dense layer
      (as `jaxbp.Config(norm=...)` builds the network), with gain 1 and bias 0.

    **Returns:** a list of `L` dicts `{"W": (n_{l-1}, n_l), "b": (n_l,)}`; with `norm`,
    a `{"gain": (n_l,), "bias": (n_l,)}` after each hidden one.
    """
    check_init(init)
    if sizes is None or isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(
            f"sizes must be a list of layer widths [n_0, ..., n_L] such as [64, 128, 10]; "
            f"got {type(sizes).__name__} {sizes!r}."
        )
    sizes = list(sizes)
    check_key(key)
    if len(sizes) < 2:
        raise ValueError(
            "sizes must list at least two widths [n_0, ..., n_L] (input and output); "
            f"got {sizes!r}."
        )
    for i, n in enumerate(sizes):
        if not is_int(n) or n < 1:
            raise ValueError(f"sizes must be integers >= 1; sizes[{i}] is {n!r} in {sizes!r}.")
    dtype = check_float_dtype("dtype", dtype)
    norm_layer = NORMS[check_norm(norm)]
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        params.append(Dense(n_out, init).init(k, n_in, dtype)[0])
        if norm_layer is not None and i < len(sizes) - 2:
            params.append(norm_layer.init(k, n_out, dtype)[0])
    return params


def init_layers(
    key: Array, layers: Sequence[Any], n_in: int, *, dtype: Any = jnp.float32
) -> list[Any]:
    """Initial parameters for a network given as layer records (`Config(layers=...)`).

    `n_in` is the input width `n_0`; `key` is split once per layer. Returns one entry per
    layer with parameters, in order: what `params` must be for those layers.
    """
    check_key(key)
    check_int("n_in", n_in, 1, "the input width n_0")
    dtype = check_float_dtype("dtype", dtype)
    body = Config(layers=layers).layers
    params, width = [], n_in
    for layer, k in zip(body, jax.random.split(key, len(body)), strict=True):
        p, width = layer.init(k, width, dtype)
        if layer.has_params:
            params.append(p)
    return params


def forward(
    params: Params,
    x: Array,
    config: Config | None = None,
    *,
    stats: Any = None,
    **keywords: Unpack[Keywords],
) -> Array:
    """The network's output `y_hat = f(x)` of eq. 1.1, `(batch, n_L)`, in evaluation mode.

    `x: (batch, n_0)`. Takes a `config` or the keywords of `jaxbp.Config`: `activation`
    on the hidden layers, `output_activation` on the last (default: the loss's canonical
    link, identity without a loss); `loss` and `reduction` are accepted and unused.
    Dropout is off; batch normalisation uses the running averages `stats`.
    """
    cfg = as_config(config, keywords, need_loss=False)
    body, x, _ = prepare(cfg, params, x)
    return forward_flow(cfg, body, params, x, evaluation_context(body, params, stats)).a


def loss_fn(
    params: Params, x: Array, y: Array, config: Config | None = None, **keywords: Unpack[Keywords]
) -> Array:
    """The loss `L(theta)` of eq. 1.2 over a batch, a scalar.

    **Arguments:**

    - `x: (batch, n_0)`.
    - `y`: `(batch, n_L)` targets, or `(batch,)` when `n_L = 1`; for "cross_entropy",
      integer labels `(batch,)` or probability rows `(batch, K)`.
    - `config`, or its keywords: `activation` (hidden layers), `loss` (a name or a
      `jaxbp.Loss`), `output_activation` (`None` for the loss's canonical link),
      `reduction` ("mean" over samples or "sum", the chapter's `L = sum_n l^n`).
    - `key`: the dropout masks' PRNG key, for a network with dropout (training mode;
      batch normalisation uses the batch's statistics).
    """
    cfg, key = as_call(config, keywords)
    body, x, n_out = prepare(cfg, params, x)
    flow = forward_flow(cfg, body, params, x, context(body, True, key))
    y = cfg.loss.targets(y, x.shape[0], n_out, flow.z.dtype)
    return reduce(cfg, cfg.loss.sample_losses(flow.z, flow.a, y))


def reduce(config: Config, per_sample: Array) -> Array:
    """The batch reduction of `config` over `per_sample: (batch,)`."""
    return jnp.mean(per_sample) if config.reduction == "mean" else jnp.sum(per_sample)


def batch_scale(config: Config, batch: int) -> float:
    """`dL/dl^n`: `1 / batch` for "mean", 1 for "sum"."""
    return 1 / batch if config.reduction == "mean" else 1
