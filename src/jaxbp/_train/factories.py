"""The training factories of the keyword API: thin wrappers of the builders
(`jaxbp._train.builders`) that keep their older signatures.

They take the network as `config` or its keywords, the gradient path as a name or a
value (`grad=`), donate by default, and carry the state in the step's `opt_state` slot:
the optimizer's state alone for a network without state, a `jaxbp.TrainState` for one
with state (`TrainState.of_slot`). The numbers are the builders'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optax

from jaxbp._core.config import Config, Keywords
from jaxbp._core.network import Network, Params
from jaxbp._train.builders import Fn, Plan, as_path, build_epoch, build_sweep
from jaxbp._train.sharding import Mesh

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["make_train_epoch", "make_train_step", "make_train_sweep"]


def make_train_step(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    grad: Any = "manual",
    diagnostics: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Any:
    """A jitted training step `step(params, opt_state, x, y, key=None) -> (params,
    opt_state, metrics)` (`jaxbp.step_fn` with the older signature).

    - `optimizer`: an `optax.GradientTransformation` (or `optax.MultiSteps`).
    - `grad="manual"` takes the gradient from `manual_grad` (eq. 1.4), `grad="autodiff"`
      from `jax.grad`, `grad="fused"` runs the whole step as one Pallas kernel (with
      `jaxbp.fused_sgd`); any `jaxbp.GradientPath` value works too. Nothing else differs.
    - `metrics`: `loss` (before the update), a scalar; with `grad_norm=True` also the
      global L2 norm of the gradient; with `diagnostics=True` (manual only) also the
      backward flow of `backward_flow_stats`, per layer, read from the same single
      backward pass.
    - `donate`: `params` and `opt_state` are donated (default): do not reuse the arrays
      passed in. `donate=False` keeps them.
    - `mesh`: a `jax.sharding.Mesh` whose first axis carries the batch: `x` and `y` are
      split over it, parameters and optimizer state replicated, and XLA reduces the
      gradient across devices (see `jaxbp.data_mesh`). `None`: one device.

    The network is `config` (a `jaxbp.Config` or `jaxbp.Network`) or the keywords of
    `jaxbp.Config`; `key` draws a dropout network's masks.
    """
    plan = Plan.of(
        optimizer,
        config,
        as_path(grad, diagnostics),
        grad_norm=grad_norm,
        donate=donate,
        mesh=mesh,
        slot=True,
        keywords=keywords,
    )

    def step(params: Params, opt_state: Any, x: Any, y: Any, key: Any = None) -> Any:
        return plan.step(plan.network_of(params), params, opt_state, key, x, y)

    return plan.jit(step, donate)


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    batch_size: int,
    epochs: int = 1,
    grad: Any = "manual",
    diagnostics: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Fn:
    """One whole epoch (or `epochs` of them) compiled into one program:
    `epoch(params, opt_state, key, x, y) -> (params, opt_state, metrics)`
    (`jaxbp.epoch_fn` with the state in the `opt_state` slot).

    The epoch shuffles `x: (n, n_0)` and `y` with `key`, cuts them into
    `ceil(n / batch_size)` minibatches (see `epoch_batches` for the last one) and runs
    the step of `make_train_step` on each inside `jax.lax.scan`. `metrics` holds each
    step's metrics stacked along a leading `(n_steps,)` axis. With `mesh`, the whole
    dataset is replicated and each minibatch split over the mesh's first axis. The
    other keywords are those of `make_train_step`; `params` and `opt_state` are donated
    unless `donate=False`. With `epochs=E` the program runs E epochs (epoch `e` shuffles
    with `jax.random.fold_in(key, e)`) and metrics are `(E, n_steps)`;
    `jaxbp.epoch_means(metrics)` averages each epoch's steps.
    """
    plan = Plan.of(
        optimizer,
        config,
        as_path(grad, diagnostics),
        grad_norm=grad_norm,
        donate=donate,
        mesh=mesh,
        slot=True,
        keywords=keywords,
    )
    return build_epoch(plan, batch_size, epochs, donate)


def make_train_sweep(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    batch_size: int,
    epochs: int = 1,
    grad: Any = "manual",
    shared_order: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
    **keywords: Unpack[Keywords],
) -> Fn:
    """N models trained for one epoch each in one compiled program (`jax.vmap` of the
    epoch of `make_train_epoch`): `sweep(params, opt_state, keys, x, y)`
    (`jaxbp.sweep_fn` with the state in the `opt_state` slot).

    `params` and `opt_state` carry a leading model axis `(N, ...)` (stack N
    initialisations, and `jax.vmap(optimizer.init)` them); `x, y` are shared. `keys`
    holds one key per model, `(N,)`, so each model shuffles on its own; with
    `shared_order=True` it is a single key and every model sees the same minibatches in
    the same order. That is the controlled comparison for a hyperparameter sweep, and
    faster: the first layer's products of all N models then share their input and run
    as one matmul. To sweep a hyperparameter, make it part of the state, e.g.
    `optax.inject_hyperparams(optax.sgd)(learning_rate=lrs)`, vmapped init with one rate
    per model. Metrics gain a leading `(N,)` axis. `grad_norm` and `donate` are those
    of `make_train_step`; `epochs=E` runs E epochs per model in the one program (as
    `make_train_epoch`), metrics `(N, E, n_steps)`. Score the N models with
    `jaxbp.evaluate_sweep`.
    """
    plan = Plan.of(
        optimizer,
        config,
        as_path(grad),
        grad_norm=grad_norm,
        donate=donate,
        sweep=True,
        slot=True,
        keywords=keywords,
    )
    return build_sweep(plan, batch_size, epochs, shared_order, donate)
