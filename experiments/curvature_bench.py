"""The speed of jaxbp's per-example statistics, curvature diagonal and K-FAC path, as
ratios taken within one run on this CPU (float32).

On the "small" (64-128-128-10, batch 128) and "medium" (784-512-512-10, batch 256)
tanh / cross-entropy configurations of `jaxbp bench`, everything jitted and timed in one
process, round-robin (`jaxbp.app.bench.round_robin`: after warm-up, the smallest of the
per-round medians):

1. `sum_grad_squared`, `grad_variance`, `batch_dot_grad` and `diag_ggn` (exact) against
   the manual training step of `jaxbp bench` (`make_train_step`, SGD with momentum);
2. the same quantities from `jax.vmap(jax.grad(loss of one example))` (and, for the GGN
   diagonal, `jax.vmap` over examples of `jax.vjp` of the logits applied to every column
   of the loss Hessian's square root), checked equal first;
3. BackPACK (torch, float32, same sizes and batches, `torch.set_num_threads` = the cores
   jax uses): one backward pass with `SumGradSquared`, `Variance`, `BatchGrad` (1.7 has no
   `BatchDotGrad`: the Gram matrix is formed from it) or `DiagGGNExact`;
4. K-FAC: `jaxbp.step_fn(sgd(0.01, momentum=0.9), net, jaxbp.KFAC(every=10))` against the
   plain manual SGD step and against kfac-jax's optimizer on the same MLP (registered with
   `kfac_jax.register_dense` and `register_softmax_cross_entropy_loss`, same learning rate,
   momentum, damping, decay and inverse period, one sampled label per example): time per
   step over windows of 10 steps (so inverse refreshes are included), time to the first
   step (tracing and compilation), and the loss after 50 steps from the same
   initialisation on the same batches of a learnable task.

Writes curvature_bench.{json,md} under --out (default experiments/results).
Needs torch and backpack-for-pytorch (pip install -e ".[peers]"), kfac-jax for its
column; skips with a message without torch/backpack.
Usage: python experiments/curvature_bench.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, markdown_table, write_results
from jaxbp.app import bench

QUANTITIES = ("sum_grad_squared", "grad_variance", "batch_dot_grad", "diag_ggn")
BACKPACK_EXT = {
    "sum_grad_squared": "SumGradSquared",
    "grad_variance": "Variance",
    "batch_dot_grad": "BatchGrad",
    "diag_ggn": "DiagGGNExact",
}
N_BATCHES = 8


# --- the jaxbp calls and the vmap route ------------------------------------------------------


def logits_fn(params, x):
    """The tanh MLP's logits, plain JAX."""
    a = x
    for layer in params[:-1]:
        a = jnp.tanh(a @ layer["W"] + layer["b"][None, :])
    return a @ params[-1]["W"] + params[-1]["b"][None, :]


def per_example_terms(params, x, y):
    """`t_n = grad l_n / N` (the mean's per-example terms), each leaf `(N, ...)`:
    `jax.vmap(jax.grad)` of the plain loss of one example."""
    one = lambda p, xn, yn: bench.plain_loss(p, xn[None], yn[None])  # noqa: E731
    grads = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
    return jax.tree.map(lambda g: g / x.shape[0], grads)


def vmap_sum_grad_squared(params, x, y):
    return jax.tree.map(lambda t: jnp.sum(t**2, axis=0), per_example_terms(params, x, y))


def vmap_grad_variance(params, x, y):
    n = x.shape[0]
    terms = per_example_terms(params, x, y)
    return jax.tree.map(lambda t: jnp.sum(t**2, axis=0) / n - (jnp.sum(t, 0) / n) ** 2, terms)


def vmap_batch_dot_grad(params, x, y):
    flat = [t.reshape(x.shape[0], -1) for t in jax.tree.leaves(per_example_terms(params, x, y))]
    return sum(t @ t.T for t in flat)


def vmap_diag_ggn(params, x, y):
    """`(1/N) sum_n sum_c (J_n^T s_{n,c})^2`: per example, `jax.vjp` of the logits applied
    to each column of `S` with `S S^T = diag(p) - p p^T` (softmax cross-entropy)."""
    del y  # the GGN of softmax cross-entropy does not depend on the labels

    def one(xn):
        logits, vjp = jax.vjp(lambda p: logits_fn(p, xn[None])[0], params)
        prob = jax.nn.softmax(logits)
        root = jnp.sqrt(prob)
        s = jnp.diag(root) - jnp.outer(prob, root)
        columns = jax.vmap(lambda c: vjp(c)[0])(s.T)
        return jax.tree.map(lambda t: jnp.sum(t**2, axis=0), columns)

    return jax.tree.map(lambda t: jnp.mean(t, axis=0), jax.vmap(one)(x))


VMAP = {
    "sum_grad_squared": vmap_sum_grad_squared,
    "grad_variance": vmap_grad_variance,
    "batch_dot_grad": vmap_batch_dot_grad,
    "diag_ggn": vmap_diag_ggn,
}


def blocking(fn, params, data):
    """`call(i)`: `fn(params, *data[i % len(data)])`, blocking on the result."""

    def call(i):
        jax.block_until_ready(fn(params, *data[i % len(data)]))

    return call


def max_rel(a, b):
    """The largest ||a - b|| / ||b|| over the leaves."""
    return max(
        float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# --- BackPACK --------------------------------------------------------------------------------


def torch_copy(params):
    """A float32 torch `nn.Sequential` of `Linear`/`Tanh` with the same weights."""
    import torch
    from torch import nn

    layers = []
    for i, p in enumerate(params):
        w = np.asarray(p["W"])
        linear = nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
        layers.append(linear)
        if i < len(params) - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def backpack_calls(params, data):
    """`{quantity: call(i)}`: one forward and one backward pass with the BackPACK
    extension (the Gram matrix from `BatchGrad`), and `"torch backward"` without one."""
    import torch
    from backpack import backpack, extend
    from backpack import extensions as bx

    model = extend(torch_copy(params))
    loss_func = extend(torch.nn.CrossEntropyLoss())
    batches = [
        (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y).astype(np.int64)))
        for x, y in data
    ]

    def make(extension):
        def call(i):
            x, y = batches[i % len(batches)]
            model.zero_grad(set_to_none=True)
            loss = loss_func(model(x), y)
            if extension is None:
                loss.backward()
                return
            with backpack(getattr(bx, extension)()):
                loss.backward()
            if extension == "BatchGrad":
                flat = torch.cat([p.grad_batch.flatten(1) for p in model.parameters()], 1)
                flat @ flat.T

        return call

    calls = {q: make(e) for q, e in BACKPACK_EXT.items()}
    calls["torch backward"] = make(None)
    return calls


# --- K-FAC -----------------------------------------------------------------------------------


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
    """`count` batches of a learnable task: normal inputs, labels the argmax of a random
    linear teacher."""
    n_in, n_out = config.sizes[0], config.sizes[-1]
    key, teacher_key = jax.random.split(key)
    teacher = jax.random.normal(teacher_key, (n_in, n_out)) / jnp.sqrt(n_in)
    out = []
    for k in jax.random.split(key, count):
        x = jax.random.normal(k, (config.batch, n_in), jnp.float32)
        out.append((x, jnp.argmax(x @ teacher, axis=1)))
    return out


def kfac_runs(config, kfac_jax, window, windows, train_steps):
    """K-FAC timing (per step, over windows of `window` steps), time to the first step,
    and losses after `train_steps` steps for SGD, jaxbp's K-FAC and kfac-jax."""
    data = bench.batches(config, N_BATCHES, jax.random.key(1))
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
        {name: windowed(r) for name, r in runners.items()}, windows, rounds=3, warmup=1
    )
    train = teacher_batches(config, train_steps, jax.random.key(3))
    held_out = teacher_batches(config, 4, jax.random.key(4))
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


# --- the run ---------------------------------------------------------------------------------


def jitted(fn, net):
    """`jax.jit` of `fn(params, x, y, net)`."""
    return jax.jit(lambda p, x, y: fn(p, x, y, net))


def quantity_rows(config, reps):
    """Parts 1-3 for one configuration: every call timed round-robin, and the ratios."""
    params = bench.init(config)[0]
    data = bench.batches(config, N_BATCHES, jax.random.key(1))
    net = jaxbp.Config(**bench.KW)
    jaxbp_fns = {q: jitted(getattr(jaxbp, q), net) for q in QUANTITIES}
    vmap_fns = {q: jax.jit(VMAP[q]) for q in QUANTITIES}
    agreement = {
        q: max_rel(jaxbp_fns[q](params, *data[0]), vmap_fns[q](params, *data[0]))
        for q in QUANTITIES
    }
    calls = {"manual step": bench.step_call(config, "manual")}
    calls["manual_grad"] = blocking(
        jax.jit(lambda p, x, y: jaxbp.manual_grad(p, x, y, net)), params, data
    )
    calls |= {f"jaxbp {q}": blocking(f, params, data) for q, f in jaxbp_fns.items()}
    calls |= {f"vmap {q}": blocking(f, params, data) for q, f in vmap_fns.items()}
    calls |= {f"BackPACK {q}": c for q, c in backpack_calls(params, data).items()}
    seconds = bench.round_robin(calls, reps, rounds=3)
    step = seconds["manual step"]
    rows = []
    for q in QUANTITIES:
        t = seconds[f"jaxbp {q}"]
        rows.append(
            {
                "config": config.name,
                "quantity": q,
                "jaxbp_ms": 1e3 * t,
                "manual_step_ms": 1e3 * step,
                "vmap_ms": 1e3 * seconds[f"vmap {q}"],
                "backpack_ms": 1e3 * seconds[f"BackPACK {q}"],
                "over_manual_step": t / step,
                "over_vmap": t / seconds[f"vmap {q}"],
                "over_backpack": t / seconds[f"BackPACK {q}"],
                "vmap_rel_diff": agreement[q],
            }
        )
    extra = {
        "config": config.name,
        "manual_grad_ms": 1e3 * seconds["manual_grad"],
        "manual_step_ms": 1e3 * step,
        "torch_backward_ms": 1e3 * seconds["BackPACK torch backward"],
    }
    return rows, extra


def yes(ok):
    return "yes" if ok else "**no**"


def markdown(result):
    header = [
        "config",
        "quantity",
        "jaxbp ms",
        "/ manual step (<= 2?)",
        "vmap route ms",
        "jaxbp / vmap (< 1?)",
        "BackPACK ms",
        "jaxbp / BackPACK (< 1?)",
    ]
    body = [
        [
            r["config"],
            r["quantity"],
            f"{r['jaxbp_ms']:.2f}",
            f"{r['over_manual_step']:.2f} {yes(r['over_manual_step'] <= 2)}",
            f"{r['vmap_ms']:.2f}",
            f"{r['over_vmap']:.2f} {yes(r['over_vmap'] < 1)}",
            f"{r['backpack_ms']:.2f}",
            f"{r['over_backpack']:.2f} {yes(r['over_backpack'] < 1)}",
        ]
        for r in result["quantities"]
    ]
    text = (
        "## jaxbp curvature bench (CPU, float32)\n\n"
        f"{result['device']}, {result['threads']} threads for jax and torch; median times "
        "(round-robin, the smallest of 3 per-round medians). tanh MLP, softmax cross-entropy "
        "(mean). The manual step is `jaxbp bench`'s (manual_grad + SGD with momentum, jitted);"
        " BackPACK's time is one forward and one backward pass with the extension "
        "(`BatchGrad` and its Gram matrix for batch_dot_grad).\n\n"
    )
    text += markdown_table(header, body)
    text += "\nBaselines: " + "; ".join(
        f"{e['config']}: manual step {e['manual_step_ms']:.2f} ms, jitted manual_grad "
        f"{e['manual_grad_ms']:.2f} ms, torch forward+backward {e['torch_backward_ms']:.2f} ms"
        for e in result["baselines"]
    )
    text += (
        ". The vmap route agrees with jaxbp to "
        f"{max(r['vmap_rel_diff'] for r in result['quantities']):.1e} (max relative difference, "
        "float32) before it is timed.\n"
    )
    k = result["kfac"]
    text += (
        f"\n## K-FAC training step ({k['config']}: {'-'.join(map(str, k['sizes']))}, batch "
        f"{k['batch']})\n\nSGD(0.01, momentum 0.9) for all; K-FAC damping 0.1, decay 0.95, "
        f"inverses every {k['window']} steps, one sampled label per example. Time per step is "
        f"the average over windows of {k['window']} steps (inverse refreshes included); "
        "first step = building the optimizer state and the first step (tracing, compilation). "
        f"Loss after {k['train_steps']} steps on a learnable task (teacher labels), same "
        "initialisation and batches. kfac-jax: "
        f"{k['kfac_jax_note']}.\n\n"
    )
    names = {"sgd": "SGD step (jaxbp manual)", "jaxbp_kfac": "jaxbp KFAC", "kfac_jax": "kfac-jax"}
    sgd = k["runs"]["sgd"]["ms_per_step"]
    kheader = [
        "optimizer",
        "ms / step",
        "/ SGD step",
        "first step s",
        "loss step 1",
        f"loss steps {k['train_steps'] - 4}-{k['train_steps']}",
        "held-out loss",
    ]
    kbody = [
        [
            names[name],
            f"{r['ms_per_step']:.2f}",
            f"{r['ms_per_step'] / sgd:.2f}",
            f"{r['first_step_s']:.2f}",
            f"{r['loss_first']:.3f}",
            f"{r['loss_last5_mean']:.3f}",
            f"{r['loss_held_out']:.3f}",
        ]
        for name, r in k["runs"].items()
    ]
    text += markdown_table(kheader, kbody)
    text += "\n" + "".join(f"- {line}\n" for line in result["notes"])
    return text


def notes(result):
    """Short sentences on the targets, from the numbers."""
    out = []
    for r in result["quantities"]:
        where = f"{r['config']} {r['quantity']}"
        if r["over_manual_step"] > 2:
            why = (
                "it carries K = 10 curvature columns back through the network, K backward "
                "passes' worth of work where the step has one"
                if r["quantity"] == "diag_ggn"
                else "the per-example squares and products add work of the backward pass's size"
            )
            out.append(f"{where}: {r['over_manual_step']:.2f}x the manual step (target 2x): {why}.")
        if r["over_vmap"] >= 1:
            out.append(f"{where}: not faster than the vmap route ({r['over_vmap']:.2f}x).")
        if r["over_backpack"] >= 1:
            out.append(f"{where}: not faster than BackPACK ({r['over_backpack']:.2f}x).")
    runs = result["kfac"]["runs"]
    ratio = runs["jaxbp_kfac"]["ms_per_step"] / runs["sgd"]["ms_per_step"]
    if ratio > 2:
        sizes = result["kfac"]["sizes"]
        out.append(
            f"jaxbp K-FAC is {ratio:.2f}x the SGD step (target 2x): the sampled column doubles "
            "the backward pass, the factors add (n_in^2 + n_out^2) x batch per layer, and every "
            f"{result['kfac']['window']} steps the refresh inverts {len(sizes) - 1} pairs of "
            f"factors up to {max(sizes)}x{max(sizes)}."
        )
    if not out:
        out.append("Every target is met.")
    return out


def main():
    args = make_parser(
        __doc__, "small configuration only, few repetitions, 6 K-FAC steps"
    ).parse_args()
    missing = [m for m in ("torch", "backpack") if importlib.util.find_spec(m) is None]
    if missing:
        log(
            f"curvature_bench: skipped, {', '.join(missing)} not installed "
            "(pip install -e '.[peers]')"
        )
        return
    import torch

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    start = time.perf_counter()
    names, reps, kfac_config = ("small", "medium"), 200, "medium"
    window, windows, train_steps = 10, 9, 50
    if args.smoke:
        names, reps, kfac_config = ("small",), 6, "small"
        window, windows, train_steps = 3, 2, 6
    kfac_jax, kfac_jax_note = kfac_jax_status()
    log(f"kfac-jax: {kfac_jax_note}")
    quantities, baselines = [], []
    for name in names:
        config = bench.CONFIGS[name]
        rows, extra = quantity_rows(
            config, bench.reps_for(config, reps) if not args.smoke else reps
        )
        quantities += rows
        baselines.append(extra)
        for r in rows:
            log(
                f"{name} {r['quantity']}: {r['jaxbp_ms']:.2f} ms, "
                f"{r['over_manual_step']:.2f}x step, {r['over_vmap']:.2f}x vmap, "
                f"{r['over_backpack']:.2f}x BackPACK ({time.perf_counter() - start:.0f} s)"
            )
    config = bench.CONFIGS[kfac_config]
    runs = kfac_runs(config, kfac_jax, window, windows, train_steps)
    for name, r in runs.items():
        log(
            f"{kfac_config} {name}: {r['ms_per_step']:.2f} ms/step, first step "
            f"{r['first_step_s']:.1f} s, loss {r['loss_first']:.3f} -> {r['loss_last5_mean']:.3f}"
        )
    result = {
        "experiment": "curvature_bench",
        "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)",
        "threads": threads,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backpack-for-pytorch": importlib.metadata.version("backpack-for-pytorch"),
            "kfac-jax": None if kfac_jax is None else importlib.metadata.version("kfac-jax"),
        },
        "smoke": args.smoke,
        "quantities": quantities,
        "baselines": baselines,
        "kfac": {
            "config": kfac_config,
            "sizes": list(config.sizes),
            "batch": config.batch,
            "window": window,
            "train_steps": train_steps,
            "kfac_jax_note": kfac_jax_note,
            "runs": runs,
        },
    }
    result["notes"] = notes(result)
    result["wall_s"] = time.perf_counter() - start
    text = markdown(result)
    write_results(args.out, "curvature_bench", result, text)
    log(text)
    log(f"wrote curvature_bench.{{json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
