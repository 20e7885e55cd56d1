"""Gradient paths as values: how a training step gets the loss and the gradient.

A path is a small frozen record that carries its own behaviour, as an optax
`GradientTransformation` carries `init` and `update`: `value_and_grad(net, params, x, y,
key, stats)` gives a `Gradient`, and `step` and `epoch` (defaults here: the optimizer on
that gradient, and a shuffled `lax.scan` of steps) train with it. One builder each
(`jaxbp.step_fn`, `jaxbp.epoch_fn`, `jaxbp.sweep_fn`) makes a jitted step, epoch or sweep
from any path and any optax optimizer.

    path                 gradient                                       extra metrics
    Manual()             manual_grad: eqs. 1.3-1.4 by hand              (diagnostics)
    Autodiff()           jax.grad of the same loss
    DPSGD(C, sigma)      clipped per example, summed, noised, averaged  clipped
    Fused(...)           the whole SGD step as one Pallas kernel        (no gradient out)

Their arguments are trusted: the builders check what a user passes where it enters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import optax

from jaxbp._core.backprop import cast_like, gradient, trace_of
from jaxbp._core.config import Config
from jaxbp._core.flow import forward_flow, next_states, source
from jaxbp._core.network import Network, Params
from jaxbp._core.validate import check_real
from jaxbp._train.diagnostics import SATURATION_THRESHOLD, backward_flow_stats
from jaxbp._train.epochs import scan_epoch
from jaxbp._train.optimizers import apply_optimizer, check_opt_state, check_optimizer, tree_norm
from jaxbp._train.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]

__all__ = ["Autodiff", "Batch", "Gradient", "GradientPath", "Manual", "Setting"]


class Gradient(NamedTuple):
    """What a gradient path gives for one batch.

    - `value`: the reduced loss before the update, a scalar.
    - `grads`: the gradient the optimizer takes, shaped like `params`.
    - `metrics`: the path's own per-step metrics (diagnostics, clipping), scalars or
      per-layer vectors.
    - `stats`: the layers' states moved by this batch (`[]` without state).
    """

    value: Array
    grads: Params
    metrics: Metrics
    stats: list[Any]


class Setting(NamedTuple):
    """What a path trains with besides the data: the network, the optimizer (as the path
    checked it), whether the metrics add the gradient's norm, and a batch's sharding
    constraint on a mesh (`None`: one device)."""

    net: Network
    optimizer: Any
    grad_norm: bool = False
    constrain: Callable[[Array], Array] | None = None


class Batch(NamedTuple):
    """A step's data, `key` (dropout masks, DP noise; `None` when nothing draws), inputs
    `x: (batch, n_0)` and targets `y`; or an epoch's whole data and its shuffle key."""

    key: Any
    x: Array
    y: Any


class GradientPath:
    """The base of the gradient paths: what a path may state, with its defaults.

    - `name`: how messages name it.
    - `random`: whether each step draws from its key (DP-SGD's noise); a network with
      dropout needs a key anyway.
    - `keeps`: what state of its own the path keeps in `TrainState.path_state` (K-FAC:
      "K-FAC's factors"), `None` for none.
    - `check_config(config)`, `check_params(params)`, `check(net)`: refuse, by name, a
      configuration, parameters or a network this path cannot train (default: none);
      the builders call them as soon as each is known.
    - `check_options(...)`: refuse builder options this path cannot honour.
    - `optimizer(optimizer)`: the optax transformation it trains with, checked.
    - `check_state(net, optimizer, params, state) -> state`: the state must be what
      `TrainState.create` builds for these parameters.
    - `init(net, params)`: the path's own state in the `TrainState` (default `None`).
    - `value_and_grad(net, params, x, y, key, stats) -> Gradient`.
    - `step(setting, params, state, batch)`, `epoch(setting, params, state, data,
      batch_size)`: one update, one epoch (defaults: the optimizer on `value_and_grad`'s
      gradient; a `lax.scan` of steps over shuffled batches).
    """

    name: ClassVar[str] = "path"
    random: ClassVar[bool] = False
    keeps: ClassVar[str | None] = None

    def check_config(self, config: Config) -> None:
        del config

    def check_params(self, params: Any) -> None:
        del params

    def check(self, net: Network) -> None:
        del net

    def check_options(self, *, grad_norm: bool, mesh: bool, sweep: bool) -> None:
        del grad_norm, mesh, sweep

    def with_diagnostics(self) -> GradientPath:
        """This path with the backward flow's statistics in its metrics (manual only)."""
        raise ValueError(
            "diagnostics=True reads the backward flow delta_l that manual_grad keeps and "
            "jax.grad does not expose; use grad='manual'."
        )

    def optimizer(self, optimizer: Any) -> optax.GradientTransformation:
        return check_optimizer(optimizer)

    def wrap(self, fn: Any) -> Any:
        """The jitted function a builder returns (the fused path explains its compile
        failures); the function itself by default."""
        return fn

    def init(self, net: Network, params: Params) -> Any:
        del net, params
        return None

    def check_state(self, net: Network, optimizer: Any, params: Params, state: Any) -> TrainState:
        check_opt_state(optimizer, TrainState.check(state).opt_state, params)
        if net.stateful:
            net.check_stats(params, state.stats)
        return state

    def value_and_grad(
        self, net: Network, params: Params, x: Array, y: Any, key: Any, stats: list[Any]
    ) -> Gradient:
        raise ValueError(
            f"the {self.name} path gives no gradient out (its step applies the update "
            "itself); use jaxbp.Manual() for the gradient."
        )

    def step(
        self, setting: Setting, params: Params, state: TrainState, batch: Batch
    ) -> tuple[Params, TrainState, Metrics]:
        """One update: the gradient (`value_and_grad`), then the optimizer (`update`)."""
        key, x, y = batch
        g = self.value_and_grad(setting.net, params, x, y, key, state.stats)
        return self.update(setting, params, state, g)

    def update(
        self, setting: Setting, params: Params, state: TrainState, g: Gradient
    ) -> tuple[Params, TrainState, Metrics]:
        """The optimizer on the gradient `g`. Metrics: `loss`, `grad_norm` (with
        `setting.grad_norm`: the norm of what the optimizer takes), then the path's own."""
        params, opt_state = apply_optimizer(setting.optimizer, g.grads, state.opt_state, params)
        metrics = {"loss": g.value}
        if setting.grad_norm:
            metrics["grad_norm"] = tree_norm(g.grads)
        return params, state._replace(opt_state=opt_state, stats=g.stats), metrics | g.metrics

    def epoch(
        self, setting: Setting, params: Params, state: TrainState, data: Batch, batch_size: int
    ) -> tuple[Params, TrainState, Metrics]:
        """One epoch of `step`s over the batches `data.key` shuffles (`jaxbp.epoch_batches`),
        in one `lax.scan`; each step gets a key of its own where the path or the network
        draws from one."""

        def one_step(params: Params, state: TrainState, key: Any, x: Array, y: Any) -> Any:
            return self.step(setting, params, state, Batch(key, x, y))

        keyed = self.random or setting.net.random
        return scan_epoch(one_step, batch_size, setting.constrain, keyed)(params, state, *data)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Manual(GradientPath):
    """The handwritten gradient, `manual_grad` (eqs. 1.3-1.4).

    With `diagnostics=True` the metrics add the backward flow's per-layer statistics of
    `jaxbp.backward_flow_stats` (`delta_norm`, `grad_W_norm`, `saturated` below
    `threshold`), read from the same single backward pass.
    """

    diagnostics: bool = False
    threshold: float = SATURATION_THRESHOLD

    name = "manual"

    def __post_init__(self) -> None:
        if not isinstance(self.diagnostics, bool):
            raise TypeError(f"diagnostics must be True or False; got {self.diagnostics!r}.")
        meaning = "phi'(z) below it counts a unit as saturated"
        threshold = check_real("threshold", self.threshold, meaning, "Pass e.g. 0.01.", low=0)
        object.__setattr__(self, "threshold", threshold)

    def with_diagnostics(self) -> Manual:
        return dataclasses.replace(self, diagnostics=True)

    def value_and_grad(
        self, net: Network, params: Params, x: Array, y: Any, key: Any, stats: list[Any]
    ) -> Gradient:
        value, flow, back = gradient(net, params, x, y, key)
        grads = cast_like(back.grads, params)
        metrics = {}
        if self.diagnostics:
            trace = trace_of(flow, back)
            hidden = [layer.phi for layer in flow.layers if layer.phi is not None]
            metrics = backward_flow_stats(trace, grads, hidden, self.threshold)
        return Gradient(value, grads, metrics, next_states(net, flow.caches, stats))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Autodiff(GradientPath):
    """`jax.grad` of the same loss (the reference path): nothing else differs."""

    name = "autodiff"

    def value_and_grad(
        self, net: Network, params: Params, x: Array, y: Any, key: Any, stats: list[Any]
    ) -> Gradient:
        def loss(params: Params) -> tuple[Array, Any]:
            flow = forward_flow(net, params, x, net.context(True, key))
            return source(net, flow, y)[0], flow.caches

        (value, caches), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return Gradient(value, grads, {}, next_states(net, caches, stats))
