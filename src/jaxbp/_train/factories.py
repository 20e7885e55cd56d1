"""The training factories of the keyword API: thin wrappers of the builders
(`jaxbp._train.builders`) that keep their older signatures.

They take the network as `config` or its keywords, and the training options as keywords
too (`TrainKeywords`): the gradient path as a name or a value (`grad=`), donation by
default, and the state in the step's `opt_state` slot: the optimizer's state alone for a
network without state, a `jaxbp.TrainState` for one with state (`TrainState.of_slot`).
The numbers are the builders'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optax

from jaxbp._core.config import Config, Keywords
from jaxbp._core.network import Network, Params
from jaxbp._train.builders import Fn, Plan, as_path, build_epoch, build_sweep
from jaxbp._train.paths import GradientPath
from jaxbp._train.sharding import Mesh

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "SweepKeywords",
    "TrainKeywords",
    "make_train_epoch",
    "make_train_step",
    "make_train_sweep",
]


class TrainKeywords(Keywords, total=False):
    """The keyword API's training options, beside the network's keywords (`Keywords`):

    - `grad`: a path's name, "manual" (default: eq. 1.4), "autodiff" (`jax.grad`) or
      "fused" (one Pallas kernel, with `jaxbp.fused_sgd`), or a `jaxbp.GradientPath`.
    - `diagnostics`: the manual path's backward-flow statistics in the metrics (False).
    - `grad_norm`: the gradient's global L2 norm in the metrics (False).
    - `donate`: donate `params` and `opt_state` to the compiled program (False, as JAX's
      own functions; with True, do not reuse the arrays passed in).
    - `mesh`: a `jax.sharding.Mesh` whose first axis carries the batch (`None`: one
      device; steps and epochs).
    """

    grad: str | GradientPath
    diagnostics: bool
    grad_norm: bool
    donate: bool
    mesh: Mesh | None


class SweepKeywords(TrainKeywords, total=False):
    """`TrainKeywords` (but `mesh`), and a sweep's `epochs` (1) and `shared_order` (False)."""

    epochs: int
    shared_order: bool


def make_train_step(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    **keywords: Unpack[TrainKeywords],
) -> Any:
    """`jaxbp.step_fn` in the keyword API: `step(params, opt_state, x, y, key=None) ->
    (params, opt_state, metrics)`.

    The network is `config` (a `jaxbp.Config` or `jaxbp.Network`) or the keywords of
    `jaxbp.Config`; the options are `TrainKeywords` (`grad="manual"`, no donation).
    `metrics`: `loss` before the update, `grad_norm` if asked, then the path's own
    (diagnostics: `jaxbp.backward_flow_stats` per layer). `key` draws a dropout
    network's masks.
    """
    plan, donate = _plan(optimizer, config, keywords)

    def step(params: Params, opt_state: Any, x: Any, y: Any, key: Any = None) -> Any:
        return plan.step(params, opt_state, key, x, y)

    return plan.jit(step, donate)


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    batch_size: int,
    epochs: int = 1,
    **keywords: Unpack[TrainKeywords],
) -> Fn:
    """`jaxbp.epoch_fn` in the keyword API: `epoch(params, opt_state, key, x, y) ->
    (params, opt_state, metrics)`, `epochs` epochs in one program.

    Each epoch shuffles with its key (`jax.random.fold_in(key, e)` for epoch `e`), runs
    the step of `make_train_step` on each of its `ceil(n / batch_size)` batches
    (`jaxbp.epoch_batches`) in one `lax.scan`, and stacks each step's metrics, `(n_steps,)`,
    or `(epochs, n_steps)` (`jaxbp.epoch_means` averages them). The other arguments are
    `make_train_step`'s.
    """
    plan, donate = _plan(optimizer, config, keywords)
    return build_epoch(plan, batch_size, epochs, donate)


def make_train_sweep(
    optimizer: optax.GradientTransformation,
    config: Config | Network | None = None,
    *,
    batch_size: int,
    **keywords: Unpack[SweepKeywords],
) -> Fn:
    """`jaxbp.sweep_fn` in the keyword API: `sweep(params, opt_state, keys, x, y)`, N models
    trained in one compiled program, each for `epochs=1` epochs.

    `params` and `opt_state` stack N models along a leading axis (N initialisations,
    `jax.vmap(optimizer.init)`); `keys` holds one key per model, or with
    `shared_order=True` (default False) one key for the same batches in the same order.
    Sweep a hyperparameter by injecting it (`optax.inject_hyperparams`, one value per
    model). Metrics gain a leading `(N,)` axis; `jaxbp.evaluate_sweep` scores the models.
    The other arguments are `make_train_epoch`'s (no mesh, no diagnostics).
    """
    keywords = dict(keywords)
    epochs, shared_order = keywords.pop("epochs", 1), keywords.pop("shared_order", False)
    plan, donate = _plan(optimizer, config, keywords, sweep=True)
    return build_sweep(plan, batch_size, epochs, shared_order, donate)


def _plan(
    optimizer: Any, config: Any, keywords: dict[str, Any], *, sweep: bool = False
) -> tuple[Plan, bool]:
    """A factory's `Plan` and whether it donates: the options popped from `keywords`
    (`TrainKeywords`), the network from `config` or the rest, the state in the slot."""
    keywords = dict(keywords)
    path = as_path(keywords.pop("grad", "manual"), keywords.pop("diagnostics", False))
    donate = keywords.pop("donate", False)
    options = dict(grad_norm=keywords.pop("grad_norm", False), donate=donate)
    if not sweep:
        options["mesh"] = keywords.pop("mesh", None)
    plan = Plan.of(optimizer, config, path, sweep=sweep, slot=True, keywords=keywords, **options)
    return plan, donate
