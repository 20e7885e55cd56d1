"""Sweeps over a grid: every combination of widths, learning rates, momenta, weight decays
and seeds, stacked and trained in one compiled program, read back as one table.

Different widths share the program by masking: every model is laid out at the widest
hidden widths, its own parameters (`jaxbp.init_mlp` of its own sizes, so the fans of its
initialisation are its own) in the top-left block of each matrix and zeros elsewhere, and
the `Masked` path multiplies every gradient by the model's 0/1 mask of that block. The
absent weights then stay exactly zero under any optax optimizer that keeps a zero
gradient's update zero (SGD, momentum, weight decay, Adam), the absent units contribute
nothing forward (their outgoing weights are zero) and pass nothing back (their incoming
`delta` is zero), and each model trains as it would alone.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp._core.config import Config
from jaxbp._core.network import Network, Params, as_config, init_mlp
from jaxbp._core.validate import check_float_dtype, check_int, check_real, stacked_models
from jaxbp._train.builders import Fn, sweep_fn
from jaxbp._train.paths import Batch, GradientPath, Manual, Setting
from jaxbp._train.state import TrainState

Array = jax.Array
AXES = ("width", "learning_rate", "momentum", "weight_decay", "seed")

__all__ = ["Grid", "Masked", "sgdw"]


def sgdw(
    learning_rate: float, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    """SGD with momentum and (decoupled) weight decay, the grid's optimizer:
    `optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate,
    momentum=momentum))`."""
    decay = optax.add_decayed_weights(weight_decay)
    return optax.chain(decay, optax.sgd(learning_rate, momentum=momentum))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Masked(GradientPath):
    """`path`'s gradient times a 0/1 mask shaped like the parameters, kept per model in
    `TrainState.path_state` (all ones from `init`; a `Grid` sets each model's)."""

    path: GradientPath = dataclasses.field(default_factory=Manual)

    name = "masked"
    keeps = "the mask of each model's parameters"

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.path.random

    def check_config(self, config: Config) -> None:
        self.path.check_config(config)

    def check(self, net: Network) -> None:
        self.path.check(net)

    def init(self, net: Network, params: Params) -> Params:
        del net
        return jax.tree.map(jnp.ones_like, params)

    def step(
        self, setting: Setting, params: Params, state: TrainState, batch: Batch
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        key, x, y = batch
        g = self.path.value_and_grad(setting.net, params, x, y, key, state.stats)
        masked = jax.tree.map(jnp.multiply, g.grads, state.path_state)
        return self.update(setting, params, state, g._replace(grads=masked))


@dataclasses.dataclass(frozen=True)
class Grid:
    """A grid of plain MLPs (eq. 1.1) to train in one program.

    **Arguments:**

    - `config`: the `jaxbp.Config` (or its keywords) every model shares: activation, loss.
    - `n_in`, `n_out`: the input and output widths.
    - `width`: hidden widths to try, each a tuple (one entry per hidden layer, the same
      depth for all), e.g. `[(32, 32), (64, 64)]`, or an int for one hidden layer:
      `[32, 64, 128]`.
    - `learning_rate`, `momentum`, `weight_decay`, `seed`: the values to try (one each by
      default: 0.1, 0.0, 0.0, 0).
    - `weight_init`: the weight initialisation, `jaxbp.init_mlp`'s `init`.

    `models` lists the combinations, in the order of `itertools.product` over `AXES`;
    `init(dtype)` gives their stacked `(params, state)`, `sweep(batch_size=...)` the
    compiled sweep (`jaxbp.sweep_fn` over the masked network), `table(**columns)` one
    record per model.
    """

    config: Any
    n_in: int
    n_out: int
    width: Sequence[tuple[int, ...]]
    learning_rate: Sequence[float] = (0.1,)
    momentum: Sequence[float] = (0.0,)
    weight_decay: Sequence[float] = (0.0,)
    seed: Sequence[int] = (0,)
    weight_init: str = "glorot_normal"

    def __post_init__(self) -> None:
        cfg = self.config if isinstance(self.config, Config) else as_config(None, self.config)
        if cfg.layers is not None or cfg.norm is not None or cfg.dropout:
            raise ValueError(
                "a Grid sweeps the plain MLP of eq. 1.1 (its widths are masked, which a "
                "normalisation over the units or dropout's masks would see); pass a Config "
                "without layers, norm or dropout."
            )
        object.__setattr__(self, "config", cfg)
        check_int("n_in", self.n_in, 1, "the input width")
        check_int("n_out", self.n_out, 1, "the output width")
        widths = [
            tuple(check_int("width", n, 1, "a hidden width") for n in _as_tuple(w))
            for w in self.width
        ]
        if not widths or len({len(w) for w in widths}) != 1:
            raise ValueError(
                "width must list hidden widths of one depth, e.g. [(32, 32), (64, 64)]; "
                f"got {self.width!r}."
            )
        object.__setattr__(self, "width", tuple(widths))
        for axis in AXES[1:]:
            values = _as_tuple(getattr(self, axis))
            if not values:
                raise ValueError(f"{axis} must list at least one value; got {values!r}.")
            for v in values:
                if axis == "seed":
                    check_int(axis, v, 0, "a seed of the grid")
                else:
                    check_real(axis, v, "a value of the grid", f"Pass e.g. {axis}=[0.1].", low=0)
            object.__setattr__(self, axis, values)

    @property
    def models(self) -> list[dict[str, Any]]:
        """One record per model: its width, learning rate, momentum, weight decay, seed."""
        values = [getattr(self, axis) for axis in AXES]
        return [dict(zip(AXES, combo, strict=True)) for combo in itertools.product(*values)]

    @property
    def widest(self) -> tuple[int, ...]:
        return tuple(max(w[i] for w in self.width) for i in range(len(self.width[0])))

    @property
    def network(self) -> Network:
        """The network every model is laid out in: the widest hidden widths."""
        return Network.mlp((self.n_in, *self.widest, self.n_out), self.config)

    @property
    def path(self) -> Masked:
        return Masked()

    @property
    def optimizer(self) -> optax.GradientTransformation:
        """`sgdw` with its hyperparameters injected: one value per model in the state,
        in the parameters' dtype."""
        return optax.inject_hyperparams(sgdw)(learning_rate=0.0, momentum=0.0, weight_decay=0.0)

    def init(self, dtype: Any = jnp.float32) -> tuple[Params, TrainState]:
        """`(params, state)` of every model, stacked along a leading model axis: each
        model's own `init_mlp` laid out at the widest widths (zeros elsewhere), its mask
        in `state.path_state`, its hyperparameters in `state.opt_state.hyperparams`."""
        dtype = check_float_dtype("dtype", dtype)
        wide = (self.n_in, *self.widest, self.n_out)
        own: dict[tuple[int, tuple[int, ...]], tuple[Params, Params]] = {}
        for model in self.models:  # one init_mlp per seed and width, laid out in numpy
            seed, width = model["seed"], model["width"]
            if (seed, width) not in own:
                sizes = (self.n_in, *width, self.n_out)
                params = init_mlp(jax.random.key(seed), sizes, init=self.weight_init, dtype=dtype)
                own[seed, width] = _laid_out(jax.device_get(params), wide)
        chosen = [own[model["seed"], model["width"]] for model in self.models]
        stack = lambda *leaves: jnp.asarray(np.stack(leaves))  # noqa: E731
        params, masks = (jax.tree.map(stack, *trees) for trees in zip(*chosen, strict=True))
        # The optimizer's state depends on the shapes alone (sgdw's momentum starts at 0):
        # made once and broadcast, with each model's hyperparameters and mask.
        first = jax.tree.map(lambda leaf: leaf[0], params)
        state = TrainState.create(self.optimizer, first, self.network)
        n = len(self.models)
        state = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *jnp.shape(leaf))), state)
        hyper = {axis: jnp.asarray([m[axis] for m in self.models], dtype) for axis in AXES[1:4]}
        opt_state = state.opt_state._replace(hyperparams=hyper)
        return params, state._replace(opt_state=opt_state, path_state=masks)

    def sweep(self, *, batch_size: int, epochs: int = 1, shared_order: bool = True) -> Fn:
        """`sweep(params, state, key, x, y)`: every model trained in one program
        (`jaxbp.sweep_fn` over the masked network; one shuffle for all by default, the
        controlled comparison; `shared_order=False` takes one key per model)."""
        return sweep_fn(
            self.optimizer,
            self.network,
            self.path,
            shared_order=shared_order,
            batch_size=batch_size,
            epochs=epochs,
        )

    def table(self, **columns: Array) -> list[dict[str, Any]]:
        """One record per model: its grid values and, for each `name=values` given (one
        value per model along the leading axis, e.g. `jaxbp.evaluate_sweep`'s metrics, or
        `jaxbp.epoch_means` of the sweep's), its own."""
        rows = self.models
        for name, values in columns.items():
            fix = "one value per model along the leading axis, as the sweep returns them"
            if stacked_models(values, name, fix) != len(rows):
                raise ValueError(
                    f"{name} must hold {fix}: {len(rows)} models; got shape {jnp.shape(values)}."
                )
            for row, value in zip(rows, jax.device_get(values), strict=True):
                row[name] = value.item() if getattr(value, "ndim", 1) == 0 else value.tolist()
        return rows


def _laid_out(params: Params, wide: Sequence[int]) -> tuple[Params, Params]:
    """`params` (numpy) of a narrower MLP zero-padded to the widths `wide`, and the 0/1
    mask of their own block."""
    laid, mask = [], []
    for layer, n_in, n_out in zip(params, wide[:-1], wide[1:], strict=True):
        w, b = layer["W"], layer["b"]
        pad_w = ((0, n_in - w.shape[0]), (0, n_out - w.shape[1]))
        pad_b = ((0, n_out - b.shape[0]),)
        laid.append({"W": np.pad(w, pad_w), "b": np.pad(b, pad_b)})
        mask.append({"W": np.pad(np.ones_like(w), pad_w), "b": np.pad(np.ones_like(b), pad_b)})
    return laid, mask


def _as_tuple(value: Any) -> tuple[Any, ...]:
    """A grid axis (or one width) as a tuple: a list or tuple as it is, one value as one."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
