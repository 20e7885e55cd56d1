"""The training state: one record, always the same type, that every step, epoch and
sweep carries beside the parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxbp._core.config import Config
from jaxbp._core.network import Network, Params, resolve
from jaxbp._train.optimizers import check_optimizer

__all__ = ["TrainState", "init_train_state"]


class TrainState(NamedTuple):
    """What training carries besides the parameters.

    - `opt_state`: the optimizer's state (`optimizer.init(params)`).
    - `stats`: the layers' states, one per stateful layer (`jaxbp.init_stats`: batch
      normalisation's running averages); `[]` for a network without state.
    - `path_state`: the gradient path's own state (`GradientPath.init`), `None` for the
      paths that keep none (manual, autodiff, DP-SGD).

    `TrainState.create` builds it; the builders (`jaxbp.step_fn`, `epoch_fn`, `sweep_fn`)
    take and return it. The older factories (`make_train_step` and its kin) take, in
    their `opt_state` slot, the optimizer's state alone for a network without state and a
    `TrainState` for one with state (`TrainState.of_slot`, `slot`).
    """

    opt_state: Any
    stats: list[Any]
    path_state: Any = None

    @classmethod
    def create(
        cls,
        optimizer: Any,
        params: Params,
        config: Config | Network | None = None,
        path: Any = None,
        **keywords: Any,
    ) -> TrainState:
        """The initial state: `optimizer.init(params)`, the layers' initial states and
        `path.init(network, params)` (`path=None`: a path without state of its own)."""
        net, _ = resolve(config, keywords, params, need_loss=False)
        opt_state = check_optimizer(optimizer).init(params)
        path_state = None if path is None else path.init(net, params)
        return cls(opt_state, net.initial_states(params), path_state)

    @classmethod
    def of_slot(cls, slot: Any, state: str | None) -> TrainState:
        """The state in an older factory's `opt_state` slot: a `TrainState` where there is
        more to carry than the optimizer's state (`state` says what: "batch
        normalisation", "K-FAC's factors"), the optimizer's state alone otherwise; else a
        `ValueError` saying which is wanted."""
        if (state is not None) != isinstance(slot, TrainState):
            want = "a jaxbp.TrainState" if state else "the optimizer's state alone"
            raise ValueError(
                f"opt_state must be {want} for this network (it has "
                f"{state or 'no layer with state'}); got {type(slot).__name__}. Build it "
                "with jaxbp.init_train_state(optimizer, params, config)."
            )
        return slot if state else cls(slot, [])

    def slot(self) -> Any:
        """This state as an older factory's `opt_state` slot holds it (`of_slot`'s
        inverse): the optimizer's state alone when there is nothing else to carry."""
        return self.opt_state if not self.stats and self.path_state is None else self

    @classmethod
    def check(cls, state: Any) -> TrainState:
        """`state` if it is a `TrainState`, else a `TypeError` saying how to build one."""
        if not isinstance(state, TrainState):
            raise TypeError(
                f"state must be a jaxbp.TrainState, as jaxbp.TrainState.create(optimizer, "
                f"params, network) builds it; got {type(state).__name__}."
            )
        return state

    @classmethod
    def of(cls, slot: Any) -> TrainState:
        """Whatever a step's `opt_state` slot holds, as a `TrainState` (a bare optimizer
        state gets no layer states): for reading `state.stats` of a run."""
        return slot if isinstance(slot, TrainState) else cls(slot, [])


def init_train_state(
    optimizer: Any, params: Params, config: Config | Network | None = None, **keywords: Any
) -> Any:
    """What `make_train_step` and its kin take as `opt_state`: `optimizer.init(params)`,
    or for a network with batch normalisation, or a gradient path with state of its own
    (`path=jaxbp.KFAC()`), a `TrainState` that adds them (`TrainState.create(...).slot()`)."""
    path = keywords.pop("path", None)
    return TrainState.create(optimizer, params, config, path, **keywords).slot()
