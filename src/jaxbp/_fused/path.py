"""The fused path: a whole SGD training step, or a whole epoch, as one Pallas kernel.

`jaxbp.Fused()` is a gradient path like the others (`step_fn(fused_sgd(...), network,
Fused())`, `make_train_step(..., grad="fused")`), except that its kernel applies the
update itself, so it trains with `jaxbp.fused_sgd` and returns no gradient; its epoch is
one kernel for all the epoch's steps. `fused_step_fn` and `fused_epoch_fn` are the
kernel's own calls, with the momentum buffer as an argument.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import optax

from jaxbp._core.config import Config
from jaxbp._core.network import Network, Params
from jaxbp._fused.kernel import Layers
from jaxbp._fused.support import (
    DEFAULT_WARPS,
    Explained,
    Kernel,
    _avals,
    _check_plain,
    _check_sgd,
    _epoch,
    _step,
    check_fused_supported,
    param_keys,
    run_epoch,
    run_step,
)
from jaxbp._train.epochs import batch_indices
from jaxbp._train.paths import Batch, GradientPath, Setting
from jaxbp._train.state import TrainState

Array = jax.Array

__all__ = ["Fused", "FusedSGD", "fused_epoch_fn", "fused_sgd", "fused_step_fn"]


def fused_step_fn(
    sizes: Sequence[int], config: Config | None = None, **options: Any
) -> Callable[[Layers, Any, Array, Array], tuple[Layers, Any, Array]]:
    """One SGD training step as one Pallas kernel:
    `step(params, trace, x, y) -> (params, trace, loss)`, jitted.

    **Arguments** (those of `check_fused_supported`):

    - `sizes`: the widths `[n_0, ..., n_L]`, each at most `MAX_WIDTH`.
    - `config`, or its keywords (`activation`, `loss`, `output_activation`, `reduction`):
      the network, as for `jaxbp.loss_fn`; `layers` must be None (the plain MLP).
    - `learning_rate`, `momentum`: optax.sgd's, as Python floats (`momentum=None`: plain
      SGD, `p - lr g`; else `t = g + momentum t`, `p - lr t`).
    - `interpret`: `None` compiles with Triton on a GPU and interprets elsewhere.
    - `pad`: pad widths and batch to powers of two >= 16, as Triton needs; default on a GPU.
    - `precision`: for every matrix product (`"highest"`: IEEE float32 on the GPU, not TF32).
    - `num_warps`: Triton's warps for the one program (default `DEFAULT_WARPS`, 8).

    **Call:** `params` as `jaxbp.init_mlp` returns (float32 or float64), `trace` the momentum
    buffer shaped like `params` (`None` without momentum), `x: (batch, n_0)` (cast to the
    parameters' dtype), `y` as for `jaxbp.loss_fn`, `batch <= MAX_BATCH` (on a GPU, also
    within its shared memory: refused at trace time, naming the largest batch that fits).
    `loss` is the loss on the batch before the update. Nothing is donated.
    """
    kernel = check_fused_supported(sizes, config, **options)
    return Explained(jax.jit(functools.partial(_step, kernel)), kernel)


def fused_epoch_fn(
    sizes: Sequence[int], config: Config | None = None, **options: Any
) -> Callable[[Layers, Any, Array, Array], tuple[Layers, Any, Array]]:
    """A whole epoch as one Pallas kernel: `epoch(params, trace, xs, ys) -> (params, trace,
    losses)`, jitted.

    Takes the arguments of `fused_step_fn`. `xs: (steps, batch, n_0)` are the epoch's
    batches, already shuffled; `ys: (steps, batch, ...)` their targets. The kernel loops
    over the steps with the weights and trace kept on chip, and equals `steps` calls of
    the fused step; `losses: (steps,)` holds each step's loss before its update.
    """
    kernel = check_fused_supported(sizes, config, **options)
    return Explained(jax.jit(functools.partial(_epoch, kernel)), kernel)


class FusedSGD(NamedTuple):
    """`optax.sgd(learning_rate, momentum)` whose constants the fused kernel can read.

    Use it as the optimizer of the fused path (`jaxbp.Fused()`, `grad="fused"`); its
    `init` and `update` are optax.sgd's, so the same optimizer state also serves the
    other paths.
    """

    learning_rate: float
    momentum: float | None = None

    def transformation(self) -> optax.GradientTransformation:
        return optax.sgd(self.learning_rate, momentum=self.momentum)

    def init(self, params: Any) -> Any:
        return self.transformation().init(params)

    def update(self, updates: Any, state: Any, params: Any = None) -> Any:
        return self.transformation().update(updates, state, params)


def fused_sgd(learning_rate: float, momentum: float | None = None) -> FusedSGD:
    """The optimizer of the fused gradient path: SGD, with `momentum` or without (`None`)."""
    return FusedSGD(*_check_sgd(learning_rate, momentum, "Pass e.g. learning_rate=0.01."))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Fused(GradientPath):
    """The whole SGD step as one Pallas kernel (`jaxbp._fused.support`): the forward flow,
    the loss's delta, the backward flow, the weight gradients and the update, with the
    weights on chip between the matrix products; the epoch is one kernel for all its
    steps. It trains the plain MLP of eq. 1.1 with a `jaxbp.fused_sgd` optimizer and
    gives no gradient out. The options are `fused_step_fn`'s."""

    interpret: bool | None = None
    pad: bool | None = None
    precision: Any = None
    num_warps: int | None = None

    name = "fused"

    @property
    def warps(self) -> int:
        """Triton's warps for the one program: `num_warps`, or the default (`DEFAULT_WARPS`)."""
        return DEFAULT_WARPS if self.num_warps is None else self.num_warps

    def check_options(self, *, grad_norm: bool, mesh: bool, sweep: bool) -> None:
        if grad_norm:
            raise ValueError(
                "grad_norm=True needs the gradient, which the fused kernel consumes on chip "
                "and never returns; use grad='manual'."
            )
        for asked, what in ((mesh, "a mesh"), (sweep, "a sweep of models")):
            if asked:
                raise ValueError(
                    f"grad='fused' runs one Pallas kernel on one device and does not take "
                    f"{what} yet; use grad='manual' there."
                )

    def check_config(self, config: Config) -> None:
        _check_plain(config)

    def check_params(self, params: Any) -> None:
        param_keys(params)

    def optimizer(self, optimizer: Any) -> Any:
        if not isinstance(optimizer, FusedSGD):
            raise ValueError(
                "grad='fused' runs the SGD update inside the kernel, so its optimizer must be "
                "jaxbp.fused_sgd(learning_rate, momentum); got "
                f"{type(optimizer).__name__}. Use grad='manual' for other optimizers."
            )
        _check_sgd(optimizer.learning_rate, optimizer.momentum, "Build it with jaxbp.fused_sgd.")
        return optimizer

    def wrap(self, fn: Any) -> Any:
        return Explained(fn)

    def check_state(self, net: Network, optimizer: Any, params: Params, state: Any) -> TrainState:
        """`state.opt_state` must be `optimizer.init(params)`: optax.sgd's state, with a
        momentum trace shaped like `params` when there is momentum."""
        opt_state = TrainState.check(state).opt_state
        want = jax.eval_shape(optimizer.init, params)
        got = _state_kind(opt_state)
        if got == _state_kind(want):
            if jax.tree.structure(opt_state) == jax.tree.structure(want) and (
                _avals(opt_state) == _avals(want)
            ):
                return state
            leaves = jax.tree.leaves(_avals(opt_state)), jax.tree.leaves(_avals(want))
            got = f"{got} with leaves {leaves[0]}, not {leaves[1]}"
        trace = "" if optimizer.momentum is None else " with a momentum trace shaped like params"
        raise ValueError(
            f"opt_state must be optimizer.init(params) of this jaxbp.fused_sgd("
            f"{optimizer.learning_rate}, momentum={optimizer.momentum}): optax.sgd's "
            f"{_state_kind(want)}{trace}; got {got}. Build it with optimizer.init(params)."
        )

    def kernel(self, net: Network, optimizer: FusedSGD) -> Kernel:
        """The kernel of `net` trained by `optimizer`, checked (`check_fused_supported`)."""
        dense = [w for layer, w in zip(net.layers, net.widths[1:], strict=True) if layer.has_params]
        sgd = optimizer._asdict()  # learning_rate, momentum
        return check_fused_supported([net.widths[0], *dense], net.config, **sgd, **vars(self))

    def step(
        self, setting: Setting, params: Params, state: TrainState, batch: Batch
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        """One kernel a step: the update applied on chip (no random layers: refused)."""
        kernel = self.kernel(setting.net, setting.optimizer)
        params, trace, loss = run_step(kernel, params, _buffer(kernel, state), batch.x, batch.y)
        return params, _with_buffer(kernel, state, trace), {"loss": loss}

    def epoch(
        self, setting: Setting, params: Params, state: TrainState, data: Batch, batch_size: int
    ) -> tuple[Params, TrainState, dict[str, Array]]:
        """One kernel for the whole epoch, over the batches of the other paths' epochs."""
        kernel = self.kernel(setting.net, setting.optimizer)
        idx = batch_indices(data.key, data.x.shape[0], batch_size)
        params, trace, losses = run_epoch(
            kernel, params, _buffer(kernel, state), data.x[idx], data.y[idx]
        )
        return params, _with_buffer(kernel, state, trace), {"loss": losses}


def _state_kind(state: Any) -> str:
    """An optimizer state by its parts' type names, e.g. `(TraceState, EmptyState)`."""
    plain = isinstance(state, tuple) and not hasattr(state, "_fields")
    names = ["None" if p is None else type(p).__name__ for p in (state if plain else (state,))]
    return f"({', '.join(names)})" if plain else names[0]


def _buffer(kernel: Kernel, state: TrainState) -> Any:
    """The momentum buffer in optax.sgd's state (`None` without momentum)."""
    return None if kernel.momentum is None else state.opt_state[0].trace


def _with_buffer(kernel: Kernel, state: TrainState, trace: Any) -> TrainState:
    if kernel.momentum is None:
        return state
    opt_state = state.opt_state
    return state._replace(opt_state=(opt_state[0]._replace(trace=trace), *opt_state[1:]))
