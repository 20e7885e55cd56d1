"""One builder each for a training step, an epoch and a sweep, from any gradient path and
any optax optimizer, with one signature and one state record:

    step  = jaxbp.step_fn(optimizer, network, path)            # one batch
    epoch = jaxbp.epoch_fn(optimizer, network, path, batch_size=32, epochs=1)
    sweep = jaxbp.sweep_fn(optimizer, network, path, batch_size=32)  # N models, vmapped
    params, state, metrics = step(params, state, key, x, y)    # and epoch, sweep alike

`state` is a `jaxbp.TrainState` (`TrainState.create(optimizer, params, network, path)`);
`key` draws an epoch's shuffle and every random thing of a step (dropout masks, DP noise;
`None` for a step that draws nothing). What a user passes is checked here, where it
enters, once per trace; the path's `step` and `epoch` take it as checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from jaxbp._core.config import Config
from jaxbp._core.network import Network, Params, as_network, resolve
from jaxbp._core.validate import check_int, check_key, epoch_data, stacked_models
from jaxbp._fused.path import Fused
from jaxbp._train.epochs import check_batch_size, repeat_epochs
from jaxbp._train.paths import Autodiff, Batch, GradientPath, Manual, Setting
from jaxbp._train.sharding import DataParallel, Mesh, data_parallel
from jaxbp._train.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]
Fn = Callable[[Params, Any, Any, Array, Any], tuple[Params, Any, Metrics]]

__all__ = ["PATHS", "as_path", "epoch_fn", "step_fn", "sweep_fn"]

PATHS: dict[str, GradientPath] = {"manual": Manual(), "autodiff": Autodiff(), "fused": Fused()}
"""The gradient paths `grad=` names in the older factories."""


def as_path(grad: Any, diagnostics: bool = False) -> GradientPath:
    """A gradient path: a `GradientPath` value, or one of `PATHS` by name; with
    `diagnostics`, that path with the backward flow's statistics."""
    if not isinstance(diagnostics, bool):
        raise TypeError(f"diagnostics must be True or False; got {diagnostics!r}.")
    if isinstance(grad, str) and grad in PATHS:
        path = PATHS[grad]
    elif isinstance(grad, GradientPath):
        path = grad
    else:
        raise ValueError(
            f"grad must be one of {list(PATHS)} or a jaxbp.GradientPath (jaxbp.Manual(), "
            f"jaxbp.Autodiff(), jaxbp.DPSGD(...), jaxbp.Fused()); got {grad!r}."
        )
    return path.with_diagnostics() if diagnostics else path


class Plan(NamedTuple):
    """A builder's arguments, resolved and checked once: the path, its optimizer, the
    network (or the configuration to build it from each call's `params`), the options,
    and whether the state travels in an older factory's `opt_state` slot
    (`TrainState.of_slot`)."""

    path: GradientPath
    optimizer: optax.GradientTransformation
    network: Config | Network
    grad_norm: bool
    shard: DataParallel | None
    slot: bool = False

    @classmethod
    def of(
        cls,
        optimizer: Any,
        network: Any,
        path: Any,
        *,
        grad_norm: bool,
        donate: bool,
        mesh: Mesh | None = None,
        sweep: bool = False,
        slot: bool = False,
        keywords: dict[str, Any] | None = None,
    ) -> Plan:
        path = as_path(path)
        network = as_network(network, keywords)
        for flag, value in (("grad_norm", grad_norm), ("donate", donate)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False; got {value!r}.")
        path.check_options(grad_norm=grad_norm, mesh=mesh is not None, sweep=sweep)
        tx = path.optimizer(optimizer)
        path.check_config(network.config if isinstance(network, Network) else network)
        if isinstance(network, Network):
            path.check(network)
        shard = None if mesh is None else data_parallel(mesh)
        return cls(path, tx, network, grad_norm, shard, slot)

    def network_of(self, params: Params) -> Network:
        """The network of a call's `params`: the one given, checked to fit them, or the
        one the configuration builds from them (checked by the path once, here)."""
        self.path.check_params(params)
        net, _ = resolve(self.network, {}, params)
        if not isinstance(self.network, Network):
            self.path.check(net)
        return net

    def state_in(self, state: Any, net: Network) -> TrainState:
        """A call's state as a `TrainState` (from an older factory's slot)."""
        if not self.slot:
            return state
        keeps = "batch normalisation" if net.stateful else self.path.keeps
        return TrainState.of_slot(state, keeps)

    def state_out(self, state: TrainState) -> Any:
        return state.slot() if self.slot else state

    def step(self, params: Params, state: Any, key: Any, x: Any, y: Any) -> Any:
        """One checked step: the network, the batch, the key and the state at the edge, then
        the path's step."""
        net = self.network_of(params)
        x = net.check_x(x)
        if self.path.random or key is not None:
            check_key(key)
        state = self.state_in(state, net)
        state = self.path.check_state(net, self.optimizer, params, state)
        if self.shard is not None:
            self.shard.check_batch(x.shape[0], "the batch")  # at trace time, before XLA's
            params, state = self.shard.replicate((params, state))
            x, y = self.shard.constrain_batch(x), self.shard.constrain_batch(y)
        setting = Setting(net, self.optimizer, self.grad_norm)
        params, state, metrics = self.path.step(setting, params, state, Batch(key, x, y))
        return params, self.state_out(state), metrics

    def epochs(self, batch_size: int, epochs: int) -> Callable[..., Any]:
        """`run(params, state, key, x, y)`: `epochs` checked epochs of the path's."""
        constrain = None if self.shard is None else self.shard.constrain_batch

        def run(params: Params, state: Any, key: Array, x: Any, y: Any) -> Any:
            check_key(key)
            net = self.network_of(params)
            x, y, _ = epoch_data(x, y, batch_size, net.widths[0])
            state = self.state_in(state, net)
            state = self.path.check_state(net, self.optimizer, params, state)
            setting = Setting(net, self.optimizer, self.grad_norm, constrain)

            def one(params: Params, state: Any, key: Array, x: Array, y: Any) -> Any:
                return self.path.epoch(setting, params, state, Batch(key, x, y), batch_size)

            params, state, metrics = repeat_epochs(one, epochs)(params, state, key, x, y)
            return params, self.state_out(state), metrics

        return run

    def jit(self, fn: Fn, donate: bool, *, epoch: bool = False) -> Fn:
        """`fn` jitted, donating `params` and `state` if asked; on a mesh with its
        outputs replicated (and an epoch's inputs too: the whole data on every device)."""
        donated = (0, 1) if donate else ()
        if self.shard is None:
            return self.path.wrap(jax.jit(fn, donate_argnums=donated))
        shardings = {"in_shardings": (self.shard.replicated,) * 5} if epoch else {}
        return self.path.wrap(
            jax.jit(fn, donate_argnums=donated, out_shardings=self.shard.replicated, **shardings)
        )


def step_fn(
    optimizer: Any,
    network: Config | Network,
    path: GradientPath | str = "manual",
    *,
    grad_norm: bool = False,
    donate: bool = False,
    mesh: Mesh | None = None,
) -> Fn:
    """A jitted training step: `step(params, state, key, x, y) -> (params, state, metrics)`.

    **Arguments:**

    - `optimizer`: any `optax.GradientTransformation` (or `optax.MultiSteps`; a
      `jaxbp.fused_sgd` for `Fused()`).
    - `network`: a `jaxbp.Network`, or a `jaxbp.Config` (the network is then built from
      each call's `params`).
    - `path`: a gradient path, `jaxbp.Manual()` (default), `jaxbp.Autodiff()`,
      `jaxbp.DPSGD(l2_clip=..., noise_multiplier=...)`, `jaxbp.Fused()`, or a name of
      `PATHS`.
    - `grad_norm`: add the gradient's global L2 norm to the metrics.
    - `donate`: donate `params` and `state` to the compiled step (do not reuse them).
    - `mesh`: a `jax.sharding.Mesh` whose first axis carries the batch (data parallel;
      see `jaxbp.data_mesh`).

    **Call:** `state` a `jaxbp.TrainState`; `key` for dropout masks and DP noise (`None`
    when nothing draws); `x: (batch, n_0)`, `y` as for `jaxbp.loss_fn`. `metrics`: `loss`
    (before the update), `grad_norm` if asked, then the path's own.
    """
    plan = Plan.of(optimizer, network, path, grad_norm=grad_norm, donate=donate, mesh=mesh)

    return plan.jit(plan.step, donate)


def epoch_fn(
    optimizer: Any,
    network: Config | Network,
    path: GradientPath | str = "manual",
    *,
    batch_size: int,
    epochs: int = 1,
    grad_norm: bool = False,
    donate: bool = False,
    mesh: Mesh | None = None,
) -> Fn:
    """`epochs` whole epochs in one compiled program:
    `epoch(params, state, key, x, y) -> (params, state, metrics)`.

    Each epoch shuffles `x: (n, n_0)` and `y` with its key (epoch `e` from 0 with
    `jax.random.fold_in(key, e)`), cuts them into `ceil(n / batch_size)` batches
    (`jaxbp.epoch_batches`) and runs the path's step on each in a `lax.scan` (the fused
    path: one kernel for the epoch). `metrics` stack each step's along a leading
    `(n_steps,)` axis, `(epochs, n_steps)` for several epochs (`jaxbp.epoch_means`
    averages them). The other arguments are those of `step_fn`; with a `mesh` the whole
    data is replicated and each batch split over the mesh's first axis.
    """
    plan = Plan.of(optimizer, network, path, grad_norm=grad_norm, donate=donate, mesh=mesh)
    return build_epoch(plan, batch_size, epochs, donate)


def build_epoch(plan: Plan, batch_size: Any, epochs: Any, donate: bool) -> Fn:
    """The jitted epochs of `plan` (`epoch_fn`, `make_train_epoch`)."""
    batch_size = check_batch_size(batch_size)
    epochs = check_int("epochs", epochs, 1)
    if plan.shard is not None:
        plan.shard.check_batch(batch_size, "batch_size")
    return plan.jit(plan.epochs(batch_size, epochs), donate, epoch=True)


def sweep_fn(
    optimizer: Any,
    network: Config | Network,
    path: GradientPath | str = "manual",
    *,
    shared_order: bool = False,
    batch_size: int,
    epochs: int = 1,
    grad_norm: bool = False,
    donate: bool = False,
) -> Fn:
    """N models trained in one compiled program (`jax.vmap` of `epoch_fn`'s epochs):
    `sweep(params, state, keys, x, y) -> (params, state, metrics)`.

    `params` and `state` stack N models along a leading axis of every leaf (e.g.
    `jax.vmap(lambda p: jaxbp.TrainState.create(optimizer, p, network))(params)`); `x, y`
    are shared. `keys` holds one key per model, `(N,)`, so each model shuffles on its
    own; with `shared_order=True` it is a single key and every model sees the same
    batches in the same order (the controlled comparison, and faster: the first layer's
    products of all N models share their input). To sweep a hyperparameter, inject it
    into the optimizer's state (`optax.inject_hyperparams`), one value per model. Metrics
    gain a leading `(N,)` axis. The other arguments are those of `epoch_fn`.
    """
    plan = Plan.of(optimizer, network, path, grad_norm=grad_norm, donate=donate, sweep=True)
    return build_sweep(plan, batch_size, epochs, shared_order, donate)


def build_sweep(plan: Plan, batch_size: Any, epochs: Any, shared_order: bool, donate: bool) -> Fn:
    """The jitted sweep of `plan` (`sweep_fn`, `make_train_sweep`): its epochs vmapped
    over stacked models, their stacking and keys checked first."""
    run = plan.epochs(check_batch_size(batch_size), check_int("epochs", epochs, 1))
    key_axis = None if shared_order else 0
    what, fix = (
        ("opt_state", "jax.vmap(optimizer.init)(params)")
        if plan.slot
        else ("state", "jax.vmap(lambda p: jaxbp.TrainState.create(optimizer, p, network))")
    )

    def sweep(params: Params, state: Any, keys: Array, x: Any, y: Any) -> Any:
        models = stacked_models(params, "params", "as make_train_sweep's docstring shows")
        if shared_order:
            check_key(keys, "keys", (), want="a single key with shared_order=True")
        else:
            want = "one key per model, shape (N,) with shared_order=False: params stack"
            check_key(keys, "keys", (models,), want=f"{want} {models} models")
        if jax.tree.leaves(state) and stacked_models(state, what, fix) != models:
            raise ValueError(
                f"{what} must stack one state per model like params ({models} models); "
                f"build it with {fix}."
            )
        _refuse_per_model_constants(plan.optimizer, params, TrainState.of(state), models)

        one = lambda p, s, k: run(p, s, k, x, y)  # noqa: E731
        return jax.vmap(one, in_axes=(0, 0, key_axis))(params, state, keys)

    return plan.jit(sweep, donate)


def _refuse_per_model_constants(
    optimizer: optax.GradientTransformation, params: Params, state: TrainState, models: int
) -> None:
    """Refuse an optimizer closing over an `(N,)` array, such as `optax.sgd(rates)`: vmap
    does not map a closure, so the array would broadcast against every parameter.

    The probe traces `optimizer.update` on scalar leaves, which any `(N,)` constant
    broadcasts against whatever the widths (on the real shapes the trace itself would
    fail unless every width were N)."""
    one = lambda v: jax.ShapeDtypeStruct((), jax.numpy.result_type(v))  # noqa: E731
    params_1, state_1 = jax.tree.map(one, (params, state.opt_state))
    try:  # rank promotion allowed: the broadcast it would refuse is the one looked for
        with jax.numpy_rank_promotion("allow"):
            traced = jax.make_jaxpr(optimizer.update)(params_1, state_1, params_1)
    except Exception:  # a probe: the step itself then says what is wrong
        return
    for const in traced.consts:
        if jax.numpy.shape(const) == (models,):
            raise ValueError(
                f"the optimizer closes over an array of shape ({models},), one value per "
                "model, which a sweep cannot map (it would broadcast against every "
                "parameter): inject it instead, e.g. opt = optax.inject_hyperparams("
                "optax.sgd)(learning_rate=0.1); state = jax.vmap(opt.init)(params); "
                "state.hyperparams['learning_rate'] = rates."
            )
