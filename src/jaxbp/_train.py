"""Training: a jitted optax step whose gradient path is a switch, a whole epoch in one
`lax.scan`, N models in one vmapped program, data parallelism over a mesh, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from jaxbp._backprop import backprop
from jaxbp._config import Config, Keywords, as_config
from jaxbp._diagnostics import backward_flow_stats
from jaxbp._mlp import Params, forward, loss_fn
from jaxbp._sharding import Mesh, data_parallel
from jaxbp._shuffle import permutation
from jaxbp._tasks import TASKS, Task

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
Metrics = dict[str, Array]
GRADS = ("manual", "autodiff")


def value_and_grad_fn(
    config: Config, grad: str, diagnostics: bool = False
) -> Callable[[Params, Array, Array], tuple[Array, Params, Metrics]]:
    """`(params, x, y) -> (loss, grads, extra metrics)` by `manual_grad` (eq. 1.4) or by
    `jax.grad`; with `diagnostics`, the extra metrics describe the backward flow."""
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {list(GRADS)}; got {grad!r}.")
    if diagnostics and grad != "manual":
        raise ValueError(
            "diagnostics=True reads the backward flow delta_l that manual_grad keeps and "
            "jax.grad does not expose; use grad='manual'."
        )
    if grad == "autodiff":
        value_and_grad = jax.value_and_grad(loss_fn)
        return lambda params, x, y: (*value_and_grad(params, x, y, config), {})

    def manual(params: Params, x: Array, y: Array) -> tuple[Array, Params, Metrics]:
        value, grads, trace = backprop(params, x, y, config)
        if not diagnostics:
            return value, grads, {}
        return value, grads, backward_flow_stats(trace, grads, config.activation)

    return manual


def tree_norm(tree: Any) -> Array:
    """The global L2 norm of a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(tree)))


def check_optimizer(optimizer: Any) -> None:
    """Refuse anything but an optax transformation, naming what was passed."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation such as optax.adam(1e-3); "
            f"got {type(optimizer).__name__}."
        )


def _make_update(
    optimizer: optax.GradientTransformation, config: Config, grad: str, diagnostics: bool
) -> Callable[[Params, Any, Array, Array], tuple[Params, Any, Metrics]]:
    check_optimizer(optimizer)
    value_and_grad = value_and_grad_fn(config, grad, diagnostics)

    def update(params: Params, opt_state: Any, x: Array, y: Array) -> tuple[Params, Any, Metrics]:
        value, grads, extra = value_and_grad(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": value, "grad_norm": tree_norm(grads), **extra}

    return update


def make_train_step(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    grad: str = "manual",
    diagnostics: bool = False,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Callable[[Params, Any, Array, Array], tuple[Params, Any, Metrics]]:
    """A jitted training step `step(params, opt_state, x, y) -> (params, opt_state, metrics)`.

    - `grad="manual"` takes the gradient from `manual_grad` (eq. 1.4), `grad="autodiff"`
      from `jax.grad`; nothing else differs.
    - `metrics`: `loss` (before the update) and `grad_norm` (global L2 norm of the
      gradient), scalars; with `diagnostics=True` (manual only) also the backward flow of
      `backward_flow_stats`, per layer, read from the same single backward pass.
    - `mesh`: a `jax.sharding.Mesh` whose first axis carries the batch: `x` and `y` are
      split over it, parameters and optimizer state replicated, and XLA reduces the
      gradient across devices (see `data_parallel`). `None`: one device.

    `params` and `opt_state` are donated: do not reuse the arrays passed in. The network
    is `config` or the keywords of `jaxbp.Config`.
    """
    update = _make_update(optimizer, as_config(config, keywords), grad, diagnostics)
    if mesh is None:
        return jax.jit(update, donate_argnums=(0, 1))
    shard = data_parallel(mesh)

    def sharded(params: Params, opt_state: Any, x: Array, y: Array) -> tuple[Params, Any, Metrics]:
        shard.check_batch(x.shape[0], "the batch")  # at trace time, before XLA's own check
        return update(params, opt_state, shard.constrain_batch(x), shard.constrain_batch(y))

    return jax.jit(
        sharded,
        donate_argnums=(0, 1),
        in_shardings=(shard.replicated, shard.replicated, None, None),
        out_shardings=shard.replicated,
    )


def epoch_batches(key: Array, n: int, batch_size: int) -> Array:
    """Shuffled sample indices for one epoch, `(ceil(n / batch_size), batch_size)`.

    The order is a uniformly random permutation (`jaxbp._shuffle`: the same guarantee as
    `jax.random.permutation`, with a sort that is faster on CPU). Every sample appears
    once; when `batch_size` does not divide `n`, the last batch is filled up with the
    first indices of the same permutation, so every step sees a full batch and
    `n_steps * batch_size - n` samples appear twice in that epoch.
    """
    steps = -(-n // batch_size)
    perm = permutation(key, n)
    return jnp.concatenate([perm, perm[: steps * batch_size - n]]).reshape(steps, batch_size)


def _make_epoch(
    optimizer: optax.GradientTransformation,
    config: Config,
    batch_size: int,
    grad: str,
    diagnostics: bool,
    constrain: Callable[[Array], Array] = lambda v: v,
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    update = _make_update(optimizer, config, grad, diagnostics)

    def epoch(
        params: Params, opt_state: Any, key: Array, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        n = x.shape[0]
        if n < batch_size:
            raise ValueError(
                f"x holds {n} samples, fewer than one batch (batch_size={batch_size}); "
                "use a smaller batch_size."
            )

        def body(carry: tuple[Params, Any], batch: tuple[Array, Array]) -> tuple[Any, Metrics]:
            x_b, y_b = batch
            params, opt_state, metrics = update(*carry, constrain(x_b), constrain(y_b))
            return (params, opt_state), metrics

        # One gather of the whole shuffled epoch up front: the scan then reads contiguous
        # batches, which is cheaper than a gather inside every step.
        idx = epoch_batches(key, n, batch_size)
        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), (x[idx], y[idx]))
        return params, opt_state, metrics

    return epoch


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    batch_size: int,
    grad: str = "manual",
    diagnostics: bool = False,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    """One whole epoch compiled into one program:
    `epoch(params, opt_state, key, x, y) -> (params, opt_state, metrics)`.

    The epoch shuffles `x: (n, n_0)` and `y` with `key`, cuts them into
    `ceil(n / batch_size)` minibatches (see `epoch_batches` for the last one) and runs
    the step of `make_train_step` on each inside `jax.lax.scan`. `metrics` holds each
    step's metrics stacked along a leading `(n_steps,)` axis. With `mesh`, the whole
    dataset is replicated and each minibatch split over the mesh's first axis.
    `params` and `opt_state` are donated.
    """
    cfg = as_config(config, keywords)
    if mesh is None:
        return jax.jit(
            _make_epoch(optimizer, cfg, batch_size, grad, diagnostics), donate_argnums=(0, 1)
        )
    shard = data_parallel(mesh)
    shard.check_batch(batch_size, "batch_size")
    epoch = _make_epoch(optimizer, cfg, batch_size, grad, diagnostics, shard.constrain_batch)
    return jax.jit(
        epoch,
        donate_argnums=(0, 1),
        in_shardings=(shard.replicated,) * 5,
        out_shardings=shard.replicated,
    )


def make_train_sweep(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    batch_size: int,
    grad: str = "manual",
    shared_order: bool = False,
    **keywords: Unpack[Keywords],
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    """N models trained for one epoch each in one compiled program (`jax.vmap` of the
    epoch of `make_train_epoch`): `sweep(params, opt_state, keys, x, y)`.

    `params` and `opt_state` carry a leading model axis `(N, ...)` (stack N
    initialisations, and `jax.vmap(optimizer.init)` them); `x, y` are shared. `keys`
    holds one key per model, `(N,)`, so each model shuffles on its own; with
    `shared_order=True` it is a single key and every model sees the same minibatches in
    the same order. That is the controlled comparison for a hyperparameter sweep, and
    faster: the first layer's products of all N models then share their input and run
    as one matmul. To sweep a hyperparameter, make it part of the state, e.g.
    `optax.inject_hyperparams(optax.sgd)(learning_rate=lrs)`, vmapped init with one rate
    per model. Metrics gain a leading `(N,)` axis. `params` and `opt_state` are donated.
    """
    epoch = _make_epoch(optimizer, as_config(config, keywords), batch_size, grad, False)
    key_axis = None if shared_order else 0
    key_rank = 0 if shared_order else 1

    def sweep(
        params: Params, opt_state: Any, keys: Array, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        # A typed key array holds one key per entry; a raw uint32 one has a key-data axis.
        typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
        key_shape = jnp.shape(keys) if typed else jnp.shape(keys)[:-1]
        if len(key_shape) != key_rank:
            want = "a single key" if shared_order else "one key per model, shape (N,)"
            fix = "jax.random.key(seed)" if shared_order else "jax.random.split(key, N)"
            raise ValueError(
                f"keys must be {want} with shared_order={shared_order}; got keys of "
                f"shape {jnp.shape(keys)} ({keys.dtype}). Make them with {fix}."
            )
        models = jax.tree.leaves(params)[0].shape[0]
        if not shared_order and key_shape[0] != models:
            raise ValueError(
                f"keys must hold one key per model: params stack {models} models, "
                f"keys hold {key_shape[0]}."
            )
        return jax.vmap(epoch, in_axes=(0, 0, key_axis, None, None))(params, opt_state, keys, x, y)

    return jax.jit(sweep, donate_argnums=(0, 1))


def evaluate(
    params: Params,
    x: Array,
    y: Array,
    config: Config | None = None,
    *,
    task: str | Task | None = None,
    **keywords: Unpack[Keywords],
) -> Metrics:
    """Mean loss on `(x, y)` and the task's score: `{"loss", "accuracy"}` or `{"loss", "r2"}`.

    `task` defaults to the loss's (`jaxbp.Loss.task`: "classification" for
    cross_entropy, "binary" for binary_cross_entropy, "regression" for mse and huber);
    pass "classification" to score a regression loss trained on one-hot targets. The
    network runs in evaluation mode. Accuracy takes the argmax of the output (several
    units, label or one-hot targets) or thresholds each unit at 1/2 (binary, or a single
    output unit); `r2` is `1 - sum (y - y_hat)^2 / sum (y - mean y)^2` over all outputs.
    """
    cfg = as_config(config, keywords)
    scorer = _task(task, cfg)
    y = jnp.asarray(y)
    value = loss_fn(params, x, y, cfg)
    y_hat = forward(params, x, cfg)
    return {"loss": value, scorer.metric: scorer.score(y_hat, y)}


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
