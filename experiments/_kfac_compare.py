"""jaxbp's K-FAC training step against plain SGD and kfac-jax's optimizer, for
`curvature_bench.py`: the same tanh MLP, initialisation, batches and settings (learning
rate, momentum, damping, curvature decay, inverse period, one sampled label per
example); time per step over windows of steps (so that inverse refreshes count), time to
the first step, and the losses reached on a learnable task.

kfac-jax 0.0.8 fails on jax 0.10 as installed; `kfac_jax_status` says so and runs it with
a shim of the one function that fails (`install_kfac_jax_shim`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log
from jaxbp.app import bench


def kfac_jax_status():
    """`(module or None, note)`: kfac-jax if it runs here, else why not. kfac-jax 0.0.8
    unpacks `Primitive.get_bind_params` as a pair, which jax 0.10 no longer returns (it
    gives the parameters with `subfuns` inside); if that is the only failure, a shim of
    its one evaluating function (`tag_graph_matcher.eval_jaxpr_eqn`) is installed."""
    if importlib.util.find_spec("kfac_jax") is None:
        return None, "kfac-jax not installed"
    import kfac_jax

    version = importlib.metadata.version("kfac-jax")
    try:
        probe_kfac_jax(kfac_jax)
        return kfac_jax, f"kfac-jax {version} as installed"
    except Exception as error:  # reported, then the shim is tried
        native = f"{type(error).__name__}: {error}".splitlines()[0]
    log(f"kfac-jax {version} fails on jax {jax.__version__} ({native}); trying the shim")
    install_kfac_jax_shim()
    try:
        probe_kfac_jax(kfac_jax)
    except Exception as error:
        return None, f"kfac-jax {version} fails: {native}; with the shim: {error}"
    return kfac_jax, (
        f"kfac-jax {version} fails as installed on jax {jax.__version__} ({native}); run "
        "here with a shim of tag_graph_matcher.eval_jaxpr_eqn for the new get_bind_params"
    )


def install_kfac_jax_shim():
    import jax.extend as jex
    from kfac_jax._src import tag_graph_matcher

    def eval_jaxpr_eqn(eqn, in_values):
        bound = eqn.primitive.get_bind_params(eqn.params)
        if isinstance(bound, tuple):  # jax < 0.10: (subfuns, params)
            subfuns, params = bound
        else:
            params = dict(bound)
            subfuns = params.pop("subfuns", ())
        with jex.source_info_util.user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*subfuns, *in_values, **params)
        return out if isinstance(out, list) else [out]

    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn


def probe_kfac_jax(kfac_jax):
    params = jaxbp.init_mlp(jax.random.key(0), (3, 4, 2))
    batch = (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
    runner = KfacJax(kfac_jax, params, batch, every=1)
    runner.step(jax.random.key(1), batch)


class KfacJax:
    """kfac-jax's optimizer on the plain tanh MLP, its dense layers and loss registered,
    with jaxbp's K-FAC settings: fixed learning rate, momentum and damping, curvature
    EMA `decay`, inverses every `every` steps, one sampled label per example."""

    def __init__(self, kfac_jax, params, batch, every=10, lr=0.01, momentum=0.9,
                 damping=0.1, decay=0.95):  # fmt: skip
        def loss(params, batch):
            x, y = batch
            a = x
            for i, layer in enumerate(params):
                z = kfac_jax.register_dense(a @ layer["W"] + layer["b"], a, layer["W"], layer["b"])
                a = jnp.tanh(z) if i < len(params) - 1 else z
            kfac_jax.register_softmax_cross_entropy_loss(a, y)
            return optax.softmax_cross_entropy_with_integer_labels(a, y).mean()

        self.opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss),
            l2_reg=0.0,
            use_adaptive_learning_rate=False,
            use_adaptive_momentum=False,
            use_adaptive_damping=False,
            initial_damping=damping,
            curvature_ema=decay,
            inverse_update_period=every,
            estimation_mode="fisher_gradients",
            num_burnin_steps=0,
            multi_device=False,
        )
        hyper = dict(learning_rate=lr, momentum=momentum, damping=damping)
        self.hyper = {k: jnp.asarray(v) for k, v in hyper.items()}
        self.params = params
        self.state = self.opt.init(params, jax.random.key(0), batch)
        self.steps = 0

    def step(self, key, batch):
        self.params, self.state, stats = self.opt.step(
            self.params, self.state, key, batch=batch, global_step_int=self.steps, **self.hyper
        )
        self.steps += 1
        return stats["loss"]


class JaxbpStep:
    """A `jaxbp.step_fn` step with its own params and `TrainState`."""

    def __init__(self, params, path=None, lr=0.01):
        opt = optax.sgd(lr, momentum=0.9)
        net = jaxbp.Config(**bench.KW)
        self.fn = jaxbp.step_fn(opt, net) if path is None else jaxbp.step_fn(opt, net, path)
        self.params = params
        self.state = jaxbp.TrainState.create(opt, params, net, path)
        self.steps = 0

    def step(self, key, batch):
        self.params, self.state, metrics = self.fn(self.params, self.state, key, *batch)
        self.steps += 1
        return metrics["loss"]


def teacher_batches(config, count, key):
    """`count` batches of a learnable task: normal inputs, labels the argmax of one random
    linear teacher (drawn from `key`)."""
    n_in, n_out = config.sizes[0], config.sizes[-1]
    key, teacher_key = jax.random.split(key)
    teacher = jax.random.normal(teacher_key, (n_in, n_out)) / jnp.sqrt(n_in)
    out = []
    for k in jax.random.split(key, count):
        x = jax.random.normal(k, (config.batch, n_in), jnp.float32)
        out.append((x, jnp.argmax(x @ teacher, axis=1)))
    return out


def kfac_runs(config, kfac_jax, window, windows, train_steps, n_batches=8):
    """K-FAC timing (per step, over windows of `window` steps), time to the first step,
    and losses after `train_steps` steps for SGD, jaxbp's K-FAC and kfac-jax."""
    data = bench.batches(config, n_batches, jax.random.key(1))
    key = jax.random.key(2)
    make = {
        "sgd": lambda p: JaxbpStep(p),
        "jaxbp_kfac": lambda p: JaxbpStep(p, jaxbp.KFAC(every=window)),
    }
    if kfac_jax is not None:
        make["kfac_jax"] = lambda p: KfacJax(kfac_jax, p, data[0], every=window)
    first, runners = {}, {}
    for name, build in make.items():
        start = time.perf_counter()
        runner = build(bench.init(config)[0])
        jax.block_until_ready(runner.step(key, data[0]))
        first[name] = time.perf_counter() - start
        runners[name] = runner

    def windowed(runner):
        def call(i):
            for s in range(window):
                k = jax.random.fold_in(key, runner.steps)
                loss = runner.step(k, data[(i * window + s) % len(data)])
            jax.block_until_ready((loss, runner.params))

        return call

    per_window = bench.round_robin(
        {name: windowed(r) for name, r in runners.items()}, windows, rounds=windows, warmup=1
    )
    batches = teacher_batches(config, train_steps + 4, jax.random.key(3))
    train, held_out = batches[:train_steps], batches[train_steps:]  # the same teacher
    losses = {}
    for name, build in make.items():
        runner = build(bench.init(config)[0])
        curve = [
            float(runner.step(jax.random.fold_in(key, t), batch)) for t, batch in enumerate(train)
        ]
        test = np.mean([float(bench.plain_loss(runner.params, *b)) for b in held_out])
        losses[name] = {
            "first": curve[0],
            "last5_mean": float(np.mean(curve[-5:])),
            "held_out": float(test),
        }
    return {
        name: {
            "ms_per_step": 1e3 * per_window[name] / window,
            "first_step_s": first[name],
            **{f"loss_{k}": v for k, v in losses[name].items()},
        }
        for name in make
    }
