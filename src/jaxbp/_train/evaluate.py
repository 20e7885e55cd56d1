"""Evaluation: the loss and the task's score of a network in evaluation mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import forward_flow, source
from jaxbp._core.network import Network, Params, resolve
from jaxbp._core.tasks import TASKS, Task
from jaxbp._core.validate import stacked_models

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
Metrics = dict[str, Array]

__all__ = ["evaluate", "evaluate_sweep"]


def evaluate(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    *,
    task: str | Task | None = None,
    stats: Any = None,
    **keywords: Unpack[Keywords],
) -> Metrics:
    """Mean loss on `(x, y)` and the task's score: `{"loss", "accuracy"}` or `{"loss", "r2"}`.

    `task` defaults to the loss's (`jaxbp.Loss.task`: "classification" for
    cross_entropy, "binary" for binary_cross_entropy, "regression" for mse and huber);
    pass "classification" to score a regression loss trained on one-hot targets. The
    network runs in evaluation mode: dropout off, batch normalisation with its running
    averages `stats`. Accuracy takes the argmax of the output (several units, label or
    one-hot targets) or thresholds each unit at 1/2 (binary, or a single output unit);
    `r2` is `1 - sum (y - y_hat)^2 / sum (y - mean y)^2` over all outputs.
    """
    net, _ = resolve(config, keywords, params)
    scorer = _task(task, net.config)
    x = net.check_x(x)
    if stats is not None:
        net.check_stats(params, stats)
    flow = forward_flow(net, params, x, net.context(False, stats=stats))
    value = source(net, flow, y)[0]
    y = jnp.asarray(y)
    try:
        score = scorer.score(flow.a, y)
    except (TypeError, ValueError) as err:  # another task's score on targets it cannot read
        raise ValueError(
            f"y ({y.dtype} of shape {y.shape}) cannot be scored as task={scorer.name!r} on an "
            f"output layer of {net.n_out} units ({str(err).splitlines()[0]}); pass targets "
            "that task reads (e.g. one-hot rows for regression), or task=None for the loss's "
            "own."
        ) from None
    return {"loss": value, scorer.metric: score}


def evaluate_sweep(
    params: Params, x: Array, y: Array, config: Config | Network | None = None, **kwargs: Any
) -> Metrics:
    """`evaluate` for N models stacked along a leading axis (as `make_train_sweep` trains
    them): takes the arguments of `evaluate`, and every metric gains a leading `(N,)`
    axis. `x` and `y` are shared; `stats`, if any, are stacked like `params`."""
    stats = kwargs.pop("stats", None)
    stacked_models(params, "params", "as make_train_sweep returns them")
    one = lambda p, s: evaluate(p, x, y, config, stats=s, **kwargs)  # noqa: E731
    return jax.vmap(one, in_axes=(0, None if stats is None else 0))(params, stats)


def _task(task: str | Task | None, config: Config) -> Task:
    """The loss's own task, or the one named (the loss's, when its name is given)."""
    if task is None or isinstance(task, Task):
        return task or config.loss.task
    own = config.loss.task
    if task == own.name or (task == "classification" and own.metric == "accuracy"):
        return own  # e.g. binary cross-entropy keeps its per-unit accuracy
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} or a jaxbp.Task; got {task!r}.")
    return TASKS[task]
