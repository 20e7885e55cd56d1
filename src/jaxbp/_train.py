"""Training: a jitted optax step whose gradient path is a switch, a whole epoch in one
`lax.scan`, N models in one vmapped program, data parallelism over a mesh, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbp._backprop import activates, cast_like, gradient_flows, source, trace_of
from jaxbp._config import Config, Keywords, as_config, check_params
from jaxbp._diagnostics import PER_LAYER, backward_flow_stats
from jaxbp._fused import Explained, FusedSGD, fused_epoch, fused_update
from jaxbp._mlp import (
    Flow,
    Params,
    check_stats,
    context,
    evaluation_context,
    forward_flow,
    has_state,
    init_stats,
    is_random,
    next_stats,
    per_layer,
    prepare,
)
from jaxbp._sharding import Mesh, data_parallel
from jaxbp._shuffle import permutation
from jaxbp._tasks import TASKS, Task
from jaxbp._validate import check_int, check_key, epoch_data, shape_mismatch

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
Metrics = dict[str, Array]
GRADS = ("manual", "autodiff", "fused")


class StepOptions(NamedTuple):
    """How a training step is built, resolved once by `make_train_step` and its kin.

    - `grad`: "manual" (`manual_grad`, eq. 1.4), "autodiff" (`jax.grad`), or "fused"
      (the whole step as one Pallas kernel, with `jaxbp.fused_sgd`).
    - `diagnostics`: add the backward flow's per-layer statistics (manual only).
    - `grad_norm`: add the gradient's global L2 norm to the metrics (it costs about 5%
      of a small network's step, so it is off unless asked for).
    - `donate`: donate `params` and `opt_state` to the compiled step.
    """

    grad: str = "manual"
    diagnostics: bool = False
    grad_norm: bool = False
    donate: bool = True

    def check(self) -> StepOptions:
        if self.grad not in GRADS:
            raise ValueError(f"grad must be one of {list(GRADS)}; got {self.grad!r}.")
        if self.diagnostics and self.grad != "manual":
            raise ValueError(
                "diagnostics=True reads the backward flow delta_l that manual_grad keeps and "
                "jax.grad does not expose; use grad='manual'."
            )
        if self.grad_norm and self.grad == "fused":
            raise ValueError(
                "grad_norm=True needs the gradient, which the fused kernel consumes on chip "
                "and never returns; use grad='manual'."
            )
        for flag in ("diagnostics", "grad_norm", "donate"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False; got {getattr(self, flag)!r}.")
        return self

    @property
    def donate_argnums(self) -> tuple[int, ...]:
        return (0, 1) if self.donate else ()


class TrainState(NamedTuple):
    """The training state of a network with state of its own (batch normalisation):
    the optimizer's state and the layers' states (`jaxbp.init_stats`), in the step's
    `opt_state` slot. `jaxbp.init_train_state` builds it."""

    opt_state: Any
    stats: list[Any]


def init_train_state(
    optimizer: Any, params: Params, config: Config | None = None, **keywords: Any
) -> Any:
    """What a training step takes as `opt_state`: `optimizer.init(params)`, or for a
    network with batch normalisation a `TrainState` that adds the running averages."""
    stats = init_stats(params, config, **keywords)
    opt_state = check_optimizer(optimizer).init(params)
    return TrainState(opt_state, stats) if stats else opt_state


Gradient = Callable[[Params, Array, Array, Any, Any], tuple[Array, Params, Metrics, Any]]


def value_and_grad_fn(config: Config, options: StepOptions) -> Gradient:
    """`(params, x, y, key, stats) -> (loss, grads, extra metrics, new stats)` by
    `manual_grad` (eq. 1.4) or by `jax.grad`; with `diagnostics`, the extra metrics
    describe the backward flow. `key` draws dropout masks; `stats` (or `None`) are the
    layers' states, moved by this batch."""
    if options.grad == "autodiff":

        def loss_and_flow(params: Params, x: Array, y: Array, key: Any) -> tuple[Array, Flow]:
            body, x, n_out = prepare(config, params, x)
            flow = forward_flow(config, body, params, x, context(body, True, key))
            return source(config, flow, y, n_out)[0], flow._replace(layers=(), params=())

        value_and_grad = jax.value_and_grad(loss_and_flow, has_aux=True)

        def autodiff(params: Params, x: Array, y: Array, key: Any, stats: Any) -> Any:
            (value, flow), grads = value_and_grad(params, x, y, key)
            body = config.body(len(params))
            flow = flow._replace(layers=body, params=per_layer(body, params))
            return value, grads, {}, None if stats is None else next_stats(flow, stats)

        return autodiff

    def manual(params: Params, x: Array, y: Array, key: Any, stats: Any) -> Any:
        value, flow, back = gradient_flows(config, key, params, x, y)
        grads = cast_like(back.grads, params)
        new_stats = None if stats is None else next_stats(flow, stats)
        if not options.diagnostics:
            return value, grads, {}, new_stats
        hidden = [flow.layers[i].activation for i in activates(flow.layers)]
        diagnostics = backward_flow_stats(trace_of(flow, back), grads, hidden)
        return value, grads, diagnostics, new_stats

    return manual


def tree_norm(tree: Any) -> Array:
    """The global L2 norm of a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(tree)))


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """An optax transformation (`optax.MultiSteps` unwrapped), or a `TypeError` naming what
    was passed."""
    if isinstance(optimizer, optax.MultiSteps):
        return optimizer.gradient_transformation()
    if isinstance(optimizer, FusedSGD):
        return optimizer.transformation()
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation such as optax.adam(1e-3) (or "
            f"an optax.MultiSteps); got {type(optimizer).__name__}."
        )
    return optimizer


def apply_optimizer(
    optimizer: optax.GradientTransformation, grads: Params, opt_state: Any, params: Params
) -> tuple[Params, Any]:
    """`optimizer.update` then `optax.apply_updates`; refuses an optimizer whose update needs
    more than `(grads, state, params)` (a line search's `value`, `grad`, `value_fn`)."""
    try:
        updates, opt_state = optimizer.update(grads, opt_state, params)
    except TypeError as err:
        if "required keyword-only argument" not in str(err):
            raise
        raise TypeError(
            "optimizer needs extra arguments in its update (optax.lbfgs and other line "
            "searches want value, grad and value_fn), which a jaxbp step does not pass: use "
            f"a first-order optimizer such as optax.adam, or your own loop ({err})."
        ) from None
    return optax.apply_updates(params, updates), opt_state


def check_opt_state(optimizer: optax.GradientTransformation, opt_state: Any, params: Any) -> None:
    """At trace time: `opt_state` must be what `optimizer.init(params)` builds, shape for
    shape, and injected hyperparameters must be scalars (one per model in a sweep)."""
    mismatch = shape_mismatch(opt_state, jax.eval_shape(optimizer.init, params))
    if mismatch is not None:
        got, want = mismatch
        raise ValueError(
            "opt_state does not fit params (another architecture or optimizer?): it is "
            f"{type(opt_state).__name__} {got!s:.300}, optimizer.init(params) gives {want!s:.300}. "
            "Build it with optimizer.init(params) (jax.vmap(optimizer.init)(params) for a "
            "sweep)."
        )
    injected = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "hyperparams"))
        if hasattr(node, "hyperparams")
    ]
    for node in injected:
        for name, value in node.hyperparams.items():
            if jnp.ndim(value) != 0:
                raise ValueError(
                    f"the injected hyperparameter {name!r} has shape {jnp.shape(value)} per "
                    "model; it must be a scalar (in a sweep: shape (N,) across the N models). "
                    "Build the optimizer with a scalar, e.g. optax.inject_hyperparams("
                    "optax.sgd)(learning_rate=0.1), init it with jax.vmap(optimizer.init), "
                    "then set state.hyperparams[name] = values of shape (N,)."
                )


def _random_body(config: Config) -> Callable[[Params], bool]:
    """Whether the network of `params` draws random masks (so each step needs a key)."""
    return lambda params: any(is_random(layer) for layer in config.body(len(params)))


def _refuse_fused(options: StepOptions, what: str) -> None:
    if options.grad == "fused":
        raise ValueError(
            f"grad='fused' runs one Pallas kernel on one device and does not take {what} yet; "
            "use grad='manual' there."
        )


def _make_update(
    optimizer: optax.GradientTransformation, config: Config, options: StepOptions
) -> Callable[[Params, Any, Array, Array], tuple[Params, Any, Metrics]]:
    if options.check().grad == "fused":
        return fused_update(optimizer, config)
    optimizer = check_optimizer(optimizer)
    value_and_grad = value_and_grad_fn(config, options)

    def update(
        params: Params, state: Any, key: Array | None, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        opt_state, stats = split_state(config, params, state)
        check_opt_state(optimizer, opt_state, params)
        value, grads, extra, stats = value_and_grad(params, x, y, key, stats)
        params, opt_state = apply_optimizer(optimizer, grads, opt_state, params)
        if options.grad_norm:
            extra = {"grad_norm": tree_norm(grads), **extra}
        state = opt_state if stats is None else TrainState(opt_state, stats)
        return params, state, {"loss": value, **extra}

    return update


def split_state(config: Config, params: Params, state: Any) -> tuple[Any, Any]:
    """`(opt_state, stats)` from a step's state slot: `stats` is `None` for a network
    without state of its own, whose slot holds the optimizer's state alone, and else
    checked against `params` (`check_stats`)."""
    body = config.body(len(params) if isinstance(params, (list, tuple)) else 0)
    stateful = any(has_state(layer) for layer in body)
    if stateful != isinstance(state, TrainState):
        want = "a jaxbp.TrainState" if stateful else "the optimizer's state alone"
        raise ValueError(
            f"opt_state must be {want} for this network (it has "
            f"{'batch normalisation' if stateful else 'no layer with state'}); build it "
            "with jaxbp.init_train_state(optimizer, params, config)."
        )
    if not stateful:
        return state, None
    check_params(params, body)  # before check_stats builds the states it wants from them
    check_stats(body, params, state.stats)
    return state.opt_state, state.stats


def make_train_step(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    grad: str = "manual",
    diagnostics: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Callable[[Params, Any, Array, Array], tuple[Params, Any, Metrics]]:
    """A jitted training step `step(params, opt_state, x, y) -> (params, opt_state, metrics)`.

    - `optimizer`: an `optax.GradientTransformation` (or `optax.MultiSteps`).
    - `grad="manual"` takes the gradient from `manual_grad` (eq. 1.4), `grad="autodiff"`
      from `jax.grad`; nothing else differs.
    - `metrics`: `loss` (before the update), a scalar; with `grad_norm=True` also the
      global L2 norm of the gradient; with `diagnostics=True` (manual only) also the
      backward flow of `backward_flow_stats`, per layer, read from the same single
      backward pass.
    - `donate`: `params` and `opt_state` are donated (default): do not reuse the arrays
      passed in. `donate=False` keeps them.
    - `mesh`: a `jax.sharding.Mesh` whose first axis carries the batch: `x` and `y` are
      split over it, parameters and optimizer state replicated, and XLA reduces the
      gradient across devices (see `jaxbp.data_mesh`). `None`: one device.

    The network is `config` or the keywords of `jaxbp.Config`.
    """
    options = StepOptions(grad, diagnostics, grad_norm, donate)
    update = _make_update(optimizer, as_config(config, keywords), options)
    if mesh is None:

        def step(
            params: Params, opt_state: Any, x: Array, y: Array, key: Array | None = None
        ) -> tuple[Params, Any, Metrics]:
            return update(params, opt_state, key, x, y)

        step = jax.jit(step, donate_argnums=options.donate_argnums)
        return Explained(step) if options.grad == "fused" else step
    _refuse_fused(options, "a mesh")
    shard = data_parallel(mesh)

    def sharded(
        params: Params, opt_state: Any, x: Array, y: Array, key: Array | None = None
    ) -> tuple[Params, Any, Metrics]:
        shard.check_batch(x.shape[0], "the batch")  # at trace time, before XLA's own check
        params, opt_state = shard.replicate((params, opt_state))
        return update(params, opt_state, key, shard.constrain_batch(x), shard.constrain_batch(y))

    # No in_shardings: they would forbid the keyword `key`; the constraints above say it.
    return jax.jit(sharded, donate_argnums=options.donate_argnums, out_shardings=shard.replicated)


def epoch_batches(key: Array, n: int, batch_size: int) -> Array:
    """Shuffled sample indices for one epoch, `(ceil(n / batch_size), batch_size)`.

    The order is a uniformly random permutation (`jaxbp._shuffle`: the same guarantee as
    `jax.random.permutation`, with a sort that is faster on CPU). Every sample appears
    once; when `batch_size` does not divide `n`, the last batch is filled up with the
    first indices of the same permutation, so every step sees a full batch and
    `n_steps * batch_size - n` samples appear twice in that epoch. A `batch_size` above
    `n` is refused (a batch would repeat samples within itself).
    """
    check_key(key)
    n, batch_size = check_int("n", n, 1, "the number of samples"), check_batch_size(batch_size)
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is more than the {n} samples; use a batch_size of at most n."
        )
    steps = -(-n // batch_size)
    perm = permutation(key, n)
    return jnp.concatenate([perm, perm[: steps * batch_size - n]]).reshape(steps, batch_size)


def check_batch_size(batch_size: Any) -> int:
    """`batch_size` as an int >= 1, or a `TypeError` (not an integer) or `ValueError`."""
    return check_int("batch_size", batch_size, 1)


def scan_epoch(
    update: Callable[..., tuple[Params, Any, Metrics]],
    batch_size: int,
    constrain: Callable[[Array], Array] = lambda v: v,
    keyed: Callable[[Params], bool] = lambda params: False,
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    """One epoch of `update(params, opt_state, key_b, x_b, y_b)` steps in one `lax.scan`:
    `epoch(params, opt_state, key, x, y)`. The epoch shuffles with `key`; where
    `keyed(params)`, each step receives a key of its own (dropout masks, DP noise) from a
    split of `key` that leaves the shuffle's key as it is, else `key_b = None`."""
    check_batch_size(batch_size)

    def epoch(
        params: Params, opt_state: Any, key: Array, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        check_key(key)
        x, y, n = epoch_data(x, y, batch_size)

        def body(carry: tuple[Params, Any], batch: tuple[Array, ...]) -> tuple[Any, Metrics]:
            *step_key, x_b, y_b = batch
            key_b = step_key[0] if step_key else None
            params, opt_state, metrics = update(*carry, key_b, constrain(x_b), constrain(y_b))
            return (params, opt_state), metrics

        # One gather of the whole shuffled epoch up front: the scan then reads contiguous
        # batches, which is cheaper than a gather inside every step.
        idx = epoch_batches(key, n, batch_size)
        xs = (x[idx], y[idx])
        if keyed(params):
            step_keys = jax.random.split(jax.random.fold_in(key, 1), idx.shape[0])
            xs = (step_keys, *xs)
        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), xs)
        return params, opt_state, metrics

    return epoch


def repeat_epochs(
    epoch: Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]], epochs: int
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    """`epochs` epochs in one `lax.scan`: epoch `e` (from 0) shuffles with
    `jax.random.fold_in(key, e)`, exactly as the Python loop
    `for e in range(epochs): params, state, m = epoch(params, state, fold_in(key, e), x, y)`.
    Metrics gain a leading `(epochs,)` axis. One epoch is `epoch` itself."""
    if check_int("epochs", epochs, 1) == 1:
        return epoch

    def many(
        params: Params, opt_state: Any, key: Array, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        check_key(key)

        def body(carry: tuple[Params, Any], e: Array) -> tuple[Any, Metrics]:
            params, opt_state, metrics = epoch(*carry, jax.random.fold_in(key, e), x, y)
            return (params, opt_state), metrics

        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), jnp.arange(epochs))
        return params, opt_state, metrics

    return many


def epoch_means(metrics: Metrics) -> Metrics:
    """Each per-step metric averaged over its epoch's steps (the last axis of a scalar
    metric; per-layer diagnostics keep their layer axis): `(steps,)` -> `()`,
    `(epochs, steps)` -> `(epochs,)`, `(N, epochs, steps)` -> `(N, epochs)`."""
    return {
        name: jnp.mean(value, axis=-2 if name in PER_LAYER else -1)
        for name, value in metrics.items()
    }


def make_train_epoch(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    batch_size: int,
    epochs: int = 1,
    grad: str = "manual",
    diagnostics: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
    mesh: Mesh | None = None,
    **keywords: Unpack[Keywords],
) -> Callable[[Params, Any, Array, Array, Array], tuple[Params, Any, Metrics]]:
    """One whole epoch (or `epochs` of them) compiled into one program:
    `epoch(params, opt_state, key, x, y) -> (params, opt_state, metrics)`.

    The epoch shuffles `x: (n, n_0)` and `y` with `key`, cuts them into
    `ceil(n / batch_size)` minibatches (see `epoch_batches` for the last one) and runs
    the step of `make_train_step` on each inside `jax.lax.scan`. `metrics` holds each
    step's metrics stacked along a leading `(n_steps,)` axis. With `mesh`, the whole
    dataset is replicated and each minibatch split over the mesh's first axis. The
    other keywords are those of `make_train_step`; `params` and `opt_state` are donated
    unless `donate=False`. With `epochs=E` the program runs E epochs (see
    `repeat_epochs`: epoch `e` shuffles with `jax.random.fold_in(key, e)`) and metrics
    are `(E, n_steps)`; `jaxbp.epoch_means(metrics)` averages each epoch's steps.
    """
    cfg, options = as_config(config, keywords), StepOptions(grad, diagnostics, grad_norm, donate)
    if options.check().grad == "fused" and mesh is None:
        epoch = fused_epoch(optimizer, cfg, check_batch_size(batch_size), epoch_batches)
        epoch = repeat_epochs(epoch, epochs)
        return Explained(jax.jit(epoch, donate_argnums=options.donate_argnums))
    update = _make_update(optimizer, cfg, options)
    if mesh is None:
        epoch = scan_epoch(update, batch_size, keyed=_random_body(cfg))
        return jax.jit(repeat_epochs(epoch, epochs), donate_argnums=options.donate_argnums)
    _refuse_fused(options, "a mesh")
    shard = data_parallel(mesh)
    shard.check_batch(check_batch_size(batch_size), "batch_size")
    epoch = scan_epoch(update, batch_size, shard.constrain_batch, _random_body(cfg))
    return jax.jit(
        repeat_epochs(epoch, epochs),
        donate_argnums=options.donate_argnums,
        in_shardings=(shard.replicated,) * 5,
        out_shardings=shard.replicated,
    )


def make_train_sweep(
    optimizer: optax.GradientTransformation,
    config: Config | None = None,
    *,
    batch_size: int,
    epochs: int = 1,
    grad: str = "manual",
    shared_order: bool = False,
    grad_norm: bool = False,
    donate: bool = True,
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
    per model. Metrics gain a leading `(N,)` axis. `grad_norm` and `donate` are those
    of `make_train_step`; `epochs=E` runs E epochs per model in the one program (as
    `make_train_epoch`), metrics `(N, E, n_steps)`. Score the N models with
    `jaxbp.evaluate_sweep`.
    """
    options = StepOptions(grad, False, grad_norm, donate).check()
    _refuse_fused(options, "a sweep of models")
    cfg = as_config(config, keywords)
    epoch = scan_epoch(_make_update(optimizer, cfg, options), batch_size, keyed=_random_body(cfg))
    epoch = repeat_epochs(epoch, epochs)
    key_axis = None if shared_order else 0

    def sweep(
        params: Params, opt_state: Any, keys: Array, x: Array, y: Array
    ) -> tuple[Params, Any, Metrics]:
        models = stacked_models(params, "params", "as make_train_sweep's docstring shows")
        if shared_order:
            check_key(keys, "keys", (), want="a single key with shared_order=True")
        else:
            want = "one key per model, shape (N,) with shared_order=False: params stack"
            check_key(keys, "keys", (models,), want=f"{want} {models} models")
        fix = "jax.vmap(optimizer.init)(params)"
        if jax.tree.leaves(opt_state) and stacked_models(opt_state, "opt_state", fix) != models:
            raise ValueError(
                f"opt_state must stack one state per model like params ({models} models); "
                "build it with jax.vmap(optimizer.init)(params)."
            )
        _refuse_per_model_constants(optimizer, params, opt_state, models)
        return jax.vmap(epoch, in_axes=(0, 0, key_axis, None, None))(params, opt_state, keys, x, y)

    return jax.jit(sweep, donate_argnums=options.donate_argnums)


def stacked_models(tree: Any, what: str, fix: str) -> int:
    """N, the models `tree` stacks along a leading axis of every leaf, or a `ValueError`."""
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)]
    models = {shape[0] if shape else None for shape in shapes}
    if len(models) != 1 or None in models:
        raise ValueError(
            f"{what} must stack N models along a leading axis of every leaf ({fix}); got "
            f"leaves of shapes {shapes}."
        )
    return models.pop()


def _refuse_per_model_constants(
    optimizer: optax.GradientTransformation, params: Params, opt_state: Any, models: int
) -> None:
    """Refuse an optimizer closing over an `(N,)` array, such as `optax.sgd(rates)`: vmap
    does not map a closure, so the array would broadcast against every parameter.

    The probe traces `optimizer.update` on scalar leaves, which any `(N,)` constant
    broadcasts against whatever the widths (on the real shapes the trace itself would
    fail unless every width were N)."""
    if isinstance(opt_state, TrainState):
        opt_state = opt_state.opt_state
    one = lambda v: jax.ShapeDtypeStruct((), jnp.result_type(v))  # noqa: E731
    params_1, state_1 = jax.tree.map(one, (params, opt_state))
    try:  # rank promotion allowed: the broadcast it would refuse is the one looked for
        with jax.numpy_rank_promotion("allow"):
            traced = jax.make_jaxpr(optimizer.update)(params_1, state_1, params_1)
    except Exception:  # a probe: the step itself then says what is wrong
        return
    for const in traced.consts:
        if jnp.shape(const) == (models,):
            raise ValueError(
                f"the optimizer closes over an array of shape ({models},), one value per "
                "model, which a sweep cannot map (it would broadcast against every "
                "parameter): inject it instead, e.g. opt = optax.inject_hyperparams("
                "optax.sgd)(learning_rate=0.1); state = jax.vmap(opt.init)(params); "
                "state.hyperparams['learning_rate'] = rates."
            )


def evaluate(
    params: Params,
    x: Array,
    y: Array,
    config: Config | None = None,
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
    cfg = as_config(config, keywords)
    scorer = _task(task, cfg)
    body, x, n_out = prepare(cfg, params, x)
    flow = forward_flow(cfg, body, params, x, evaluation_context(body, params, stats))
    value = source(cfg, flow, y, n_out)[0]
    y = jnp.asarray(y)
    try:
        score = scorer.score(flow.a, y)
    except (TypeError, ValueError) as err:  # another task's score on targets it cannot read
        raise ValueError(
            f"y ({y.dtype} of shape {y.shape}) cannot be scored as task={scorer.name!r} on an "
            f"output layer of {n_out} units ({str(err).splitlines()[0]}); pass targets that "
            f"task reads (e.g. one-hot rows for regression), or task=None for the loss's own."
        ) from None
    return {"loss": value, scorer.metric: score}


def evaluate_sweep(
    params: Params, x: Array, y: Array, config: Config | None = None, **kwargs: Any
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
