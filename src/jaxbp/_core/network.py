"""The network as one value: its configuration, its layer records and its widths, settled
and checked once, where it enters the public API.

A `jaxbp.Network` is built from parameters and a configuration (`Network.of`), or from
the widths of a plain MLP (`Network.mlp`, the shapes `jaxbp.init_mlp` makes). After that
nothing works the network out again: the forward flow (eq. 1.1), back-propagation (eqs.
1.3-1.4), per-example quantities, DP-SGD, second order, parity, evaluation and training
take it as it is. Every public function that takes `config=` takes a `Network` there
too; given a `Config` (or keywords) instead, it builds the network from `params` itself.
Like a `Config`, a `Network` is frozen, hashable and a pytree without leaves:

```python
net = jaxbp.Network.of(params, activation="tanh", loss="cross_entropy")
grads = jax.jit(jaxbp.manual_grad)(params, x, y, net)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.config import KEYWORDS, NORMS, Config, check_norm
from jaxbp._core.contracts import Checked
from jaxbp._core.dropout import Dropout
from jaxbp._core.inits import check_init
from jaxbp._core.layers import DENSE_RULE, Activate, Context, Dense, Layer
from jaxbp._core.losses import Loss, OutputActivation
from jaxbp._core.norm import BatchNorm, LayerNorm
from jaxbp._core.records import shown
from jaxbp._core.validate import (
    check_float_dtype,
    check_int,
    check_key,
    check_output_units,
    check_x,
    is_int,
    shape_mismatch,
)

Array = jax.Array
Params = list[Any]
TRUSTED = (Dense, Activate, LayerNorm, BatchNorm, Dropout)
"""The built-in layers, whose outputs are not checked again (a user's are: `Checked`)."""

__all__ = ["Network", "as_config", "as_network", "init_layers", "init_mlp", "init_stats", "resolve"]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Network:
    """One network, settled: the resolved `config`, the `layers` from the input to the
    logits `z_L`, and the `widths` along them.

    - `config`: the `jaxbp.Config` (activation, loss, output activation, reduction, and
      the norm, dropout or layers it was built with).
    - `layers`: the layer records (`jaxbp.Layer`), input to logits.
    - `widths`: `(n_0, ...)`, the width entering each layer and, last, `n_L`; `None`
      where no parameter fixes it (the input of a network whose first parametric layer
      does not say).
    - `shapes`: the leaf shapes of `params`, in `jax.tree.leaves` order, and `structure`
      their tree: what `fits` compares a call's parameters with.

    Settled with them, as plain attributes: `loss` and `output` (the config's records),
    `n_out` (`n_L`), `random` (a layer draws masks in training: a call needs a key) and
    `stateful` (a layer has state that training moves, batch norm's running averages).

    Build it with `Network.of(params, config)` or `Network.mlp(sizes, config)`.
    """

    config: Config
    layers: tuple[Layer, ...]
    widths: tuple[int | None, ...]
    structure: Any
    shapes: tuple[tuple[int, ...], ...]
    loss: Loss = dataclasses.field(init=False, compare=False, repr=False)
    output: OutputActivation = dataclasses.field(init=False, compare=False, repr=False)
    n_out: int | None = dataclasses.field(init=False, compare=False, repr=False)
    random: bool = dataclasses.field(init=False, compare=False, repr=False)
    stateful: bool = dataclasses.field(init=False, compare=False, repr=False)

    def __repr__(self) -> str:
        """`Network(activation 'tanh', layers dense-tanh-dense, widths=[4, 8, 8, 3],
        loss='mse', output='identity', reduction='mean')`: records as `jaxbp.Config`
        shows them, a layer by its name (an activation layer by its activation's)."""
        cfg = self.config
        head = f"activation {shown(cfg.activation)}, " if cfg.activation is not None else ""
        names = "-".join(
            layer.name if layer.phi is None else layer.phi.name for layer in self.layers
        )
        return (
            f"Network({head}layers {names}, widths={list(self.widths)}, loss="
            f"{shown(self.loss)}, output={shown(self.output)}, reduction={cfg.reduction!r})"
        )

    def __post_init__(self) -> None:
        facts = {
            "loss": self.config.loss,
            "output": self.config.output_activation,
            "n_out": self.widths[-1],
            "random": any(layer.random for layer in self.layers),
            "stateful": any(layer.has_state for layer in self.layers),
        }
        for name, value in facts.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, params: Params, config: Config | None = None, **keywords: Any) -> Network:
        """The network of `params` under `config` (or the keywords of `jaxbp.Config`):
        each layer checks its entry of `params` once, here."""
        return _build(params, as_config(config, keywords, need_loss=False))

    @classmethod
    def mlp(cls, sizes: Sequence[int], config: Config | None = None, **keywords: Any) -> Network:
        """The plain MLP of eq. 1.1 with widths `sizes = [n_0, ..., n_L]` under `config`
        (with its `norm`): the network of the parameters `jaxbp.init_mlp(key, sizes,
        norm=config.norm)` makes, built from their shapes alone."""
        cfg = as_config(config, keywords, need_loss=False)
        if cfg.layers is not None:
            raise ValueError(
                "Network.mlp builds the plain MLP of eq. 1.1 from its widths; a Config with "
                "layers= is built from its parameters: Network.of(params, config) (with "
                "params from jaxbp.init_layers)."
            )
        shapes = jax.eval_shape(lambda: init_mlp(jax.random.key(0), sizes, norm=cfg.norm))
        return _build(shapes, cfg)

    def replace(self, **changes: Any) -> Network:
        """This network under a changed configuration (`Config.replace`), e.g.
        `reduction="sum"`; the layers and widths stay."""
        return dataclasses.replace(self, config=self.config.replace(**changes))

    def spread(self, params: Sequence[Any]) -> tuple[Any, ...]:
        """`params` over the layers: its next entry for each layer with parameters, `None`
        for the others."""
        return _spread(self.layers, params, lambda layer: layer.has_params)

    def spread_states(self, stats: Sequence[Any] | None) -> tuple[Any, ...]:
        """`stats` over the layers: the next state for each stateful layer, `None` for the
        others (and for every layer when `stats` is `None`: training takes the batch's)."""
        if stats is None:
            return (None,) * len(self.layers)
        return _spread(self.layers, stats, lambda layer: layer.has_state)

    def fits(self, params: Any) -> None:
        """Refuse `params` that are not this network's: another structure, other shapes,
        or leaves that are not floating point (a `ValueError`/`TypeError`)."""
        leaves, structure = jax.tree.flatten(params)
        shapes = tuple(np.shape(leaf) for leaf in leaves)
        if structure != self.structure or shapes != self.shapes:
            raise ValueError(
                f"params do not fit this jaxbp.Network: it takes leaves of shapes "
                f"{list(self.shapes)} in {self.structure}; got {list(shapes)} in "
                f"{structure}. Pass the parameters it was built from, or build it from "
                "these: jaxbp.Network.of(params, config)."
            )
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(
                    f"params must be floating point; a leaf has dtype {jnp.result_type(leaf)}."
                )

    def check_x(self, x: Any) -> Array:
        """`x` as a checked `(batch, n_0)` array for this network."""
        return check_x(x, self.widths[0])

    def context(self, train: bool, key: Any = None, stats: Any = None) -> Context:
        """The call's `Context`, checked: a random layer in training needs a key, and an
        evaluation of a stateful network its states (`check_stats` checks their shapes)."""
        if key is not None:
            check_key(key)
        if train and key is None and self.random:
            names = sorted({layer.name for layer in self.layers if layer.random})
            raise ValueError(
                f"this network's {names} layers draw random masks in training: pass key= "
                "(e.g. key=jax.random.key(0)); the same key gives the same masks."
            )
        if not train and stats is None and self.stateful:
            raise ValueError(
                "this network has batch normalisation, which evaluates with its running "
                "averages: pass stats= (jaxbp.init_stats(params, config) at the start, then "
                "what the training steps return)."
            )
        if stats is not None:
            wanted = sum(layer.has_state for layer in self.layers)
            if not isinstance(stats, (list, tuple)) or len(stats) != wanted:
                raise ValueError(
                    f"stats must be a list with one entry per stateful layer ({wanted} here), "
                    "as jaxbp.init_stats returns; got "
                    f"{type(stats).__name__} of length "
                    f"{len(stats) if isinstance(stats, (list, tuple)) else '-'}."
                )
        return Context(train, key, stats)

    def initial_states(self, params: Params) -> list[Any]:
        """One initial state per stateful layer, built from its entry of `params`."""
        pairs = zip(self.layers, self.spread(params), strict=True)
        return [layer.init_state(p) for layer, p in pairs if layer.has_state]

    def check_stats(self, params: Params, stats: Any) -> None:
        """At trace time: `stats` must be what `init_stats(params, config)` builds (the
        same entries, keys and shapes), else a `ValueError` showing both."""
        want = jax.eval_shape(lambda: self.initial_states(params))
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

    def scale(self, batch: int) -> float:
        """`dL/dl^n`: `1 / batch` for the "mean" reduction, 1 for "sum"."""
        return 1 / batch if self.config.reduction == "mean" else 1

    def reduce(self, per_sample: Array) -> Array:
        """The batch reduction over `per_sample: (batch,)`."""
        return jnp.mean(per_sample) if self.config.reduction == "mean" else jnp.sum(per_sample)

    def describe(self) -> str:
        """ "activation 'tanh'" for the plain MLP, else "layers dense-activation-dense"."""
        if self.config.layers is None:
            return f"activation {self.config.activation.name!r}"
        return "layers " + "-".join(layer.name for layer in self.layers)


def _spread(
    layers: Sequence[Layer], entries: Sequence[Any], owns: Callable[[Layer], bool]
) -> tuple:
    it = iter(entries)
    return tuple(next(it) if owns(layer) else None for layer in layers)


NetworkLike = Config | Network | None
"""What a function on a batch takes as `config`: a `jaxbp.Config`, a `jaxbp.Network`, or
`None` (the keywords of `jaxbp.Config` then)."""


def as_config(config: Config | None, keywords: dict[str, Any], *, need_loss: bool = True) -> Config:
    """`config`, or a `Config` built from `keywords`; refuses both, neither, or a typo."""
    unknown = sorted(set(keywords) - set(KEYWORDS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; the configuration keywords are "
            f"{list(KEYWORDS)} (or pass config=jaxbp.Config(...))."
        )
    if config is None:
        config = Config(**keywords)
    elif not isinstance(config, Config):
        raise TypeError(
            f"config must be a jaxbp.Config, e.g. jaxbp.Config(activation='tanh', "
            f"loss='mse'); got {type(config).__name__}."
        )
    elif keywords:
        raise TypeError(
            f"pass either config or the keywords {sorted(keywords)}, not both: "
            f"config.replace({', '.join(f'{k}=...' for k in sorted(keywords))}) combines them."
        )
    if need_loss and config.loss is None:
        raise TypeError(
            "a loss is needed here: pass loss= one of the names in jaxbp.LOSSES or a "
            "jaxbp.Loss (config has loss=None)."
        )
    return config


def as_network(config: Any, keywords: dict[str, Any] | None = None) -> Config | Network:
    """A builder's network before it sees parameters: the `Network` given, or the `Config`
    of `config` or the keywords (`as_config`)."""
    keywords = keywords or {}
    if isinstance(config, Network) and not keywords:
        return config
    return as_config(config.config if isinstance(config, Network) else config, keywords)


def resolve(
    config: Any, keywords: dict[str, Any], params: Any, *, need_loss: bool = True
) -> tuple[Network, Array | None]:
    """A call on `params` at the edge of the public API: its `Network` (the one given,
    checked to fit `params`, or one built from `params` and the `Config` or keywords) and
    the call's `key` (popped from `keywords`)."""
    keywords = dict(keywords)
    key = keywords.pop("key", None)
    if not isinstance(config, Network):
        return _build(params, as_config(config, keywords, need_loss=need_loss)), key
    as_config(config.config, keywords, need_loss=need_loss)  # refuses keywords beside it
    config.fits(params)
    return config, key


def _build(params: Any, config: Config) -> Network:
    """The network of `params` under `config`: each layer checks its entry once. The one
    place where the plain MLP's depth is read off `params` (`Config.body`)."""
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{DENSE_RULE}; got {type(params).__name__}.")
    if len(params) == 0:
        raise ValueError(f"{DENSE_RULE}; got an empty {type(params).__name__}.")
    layers = config.body(len(params))
    wanted = sum(layer.has_params for layer in layers)
    if len(params) != wanted:
        raise ValueError(
            f"params has {len(params)} entries but the layers {[l.name for l in layers]} have "
            f"{wanted} with parameters; build params with jaxbp.init_mlp for these layers."
        )
    widths: list[int | None] = [None]
    entries = iter(enumerate(params))
    for layer in layers:
        if layer.has_params:
            i, p = next(entries)
            widths.append(layer.check(p, widths[-1], f"params[{i}]"))
        else:
            widths.append(layer.check(None, widths[-1], "a parameter-free layer"))
    widths[0] = _input_width(layers, params)  # once every entry is checked
    check_output_units(config.output, widths[-1])
    layers = tuple(  # a user's layers answer for their outputs (contracts.py)
        layer if type(layer) in TRUSTED else Checked(layer, widths[i], widths[i + 1])
        for i, layer in enumerate(layers)
    )
    leaves, structure = jax.tree.flatten(params)
    shapes = tuple(tuple(np.shape(leaf)) for leaf in leaves)
    return Network(config, layers, tuple(widths), structure, shapes)


def _input_width(layers: tuple[Layer, ...], params: Params) -> int | None:
    first = next(layer for layer in layers if layer.has_params)
    return first.n_in(params[0])


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


def init_stats(params: Any, config: Config | Network | None = None, **keywords: Any) -> list[Any]:
    """The initial state of a network's stateful layers (batch normalisation's running
    averages, `{"mean": (j,), "var": (j,)}` each), one entry per such layer, in order.
    An empty list for a network without state."""
    net, _ = resolve(config, keywords, params, need_loss=False)
    return net.initial_states(params)
