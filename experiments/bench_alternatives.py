"""The benchmark's training step written in the frameworks a user would otherwise pick.

Each alternative trains the MLP of `jaxbp.app.bench` (tanh hidden layers, identity output,
softmax cross-entropy on integer labels, `optax.sgd(1e-2, momentum=0.9)`), written the way
its framework's documentation recommends, from the same initial weights as
`jaxbp.init_mlp(jax.random.key(0), sizes)` and on the same 8 rotating batches as
`jaxbp.app.bench.step_call`, in float32 on the CPU:

- "jax.grad, pure functions": `jax.jit` of a pure `(params, opt_state, x, y)` step,
  `jax.value_and_grad` of a logsumexp cross-entropy and an optax update, params and
  optimizer state donated (the JAX examples' style; written here, not taken from jaxbp).
- "Flax NNX, split/merge + jax.jit": the performance guide's "functional training loop":
  `nnx.split` the model and `nnx.Optimizer` once, `jax.jit` a pure function of the state
  that `nnx.merge`s inside, state donated.
- "Flax NNX, nnx.cached_partial": the guide's other remedy for `nnx.jit`'s Python graph
  traversal, `nnx.cached_partial` of the `nnx.jit` step over the model and optimizer.
- "Flax NNX, tree mode nnx.jit_partial": the flax 0.12 tree mode (`graph=False`, modules
  treated as plain pytrees) with `nnx.jit_partial`, which pre-flattens model and optimizer.
- "Flax NNX, @nnx.jit": the plain decorated step, donating model and optimizer as the
  `nnx.jit` docstring suggests.
- "Equinox": `eqx.nn.MLP(..., activation=jnp.tanh)` applied per sample with `jax.vmap`,
  `eqx.filter_jit` + `eqx.filter_value_and_grad`, optax; donation by `filter_jit`'s
  `donate="all-except-first"` with the batch as the first argument, so that only the model
  and optimizer state are donated (with `donate="all"` XLA may alias a batch buffer to an
  output of the same shape, a 1024 x 1024 weight in "large", and delete a reused batch).
- "PyTorch eager": `nn.Sequential` of `nn.Linear` and `nn.Tanh`, `F.cross_entropy`,
  `torch.optim.SGD(lr=1e-2, momentum=0.9)`, `zero_grad(set_to_none=True)`, default threads.
- "PyTorch torch.compile": the same step function under `torch.compile` (default mode), as
  PyTorch's "Where to apply torch.compile?" advises: the train step with the optimizer,
  without the loop. Compilation happens in the warm-up calls, outside the timing.

Every framework but plain JAX is optional: when its import fails, its entry in
`ALTERNATIVES` returns None and `main` marks it skipped. Install them with
`pip install "flax>=0.12.8" "equinox>=0.13.8" "torch>=2.13,<2.14"`.

API: `ALTERNATIVES[name](config, reps)` -> median seconds per step (or None);
`check(config)` asserts that every framework's first 3 losses match plain JAX's;
`run(names, reps)` checks, then times everything interleaved (all frameworks in turn, a
few rounds, to spread the drift of a shared machine's load), with jaxbp's own steps
(`make_train_step`, manual and jax.grad) as reference rows.

    python experiments/bench_alternatives.py [--configs small ...] [--reps N]
        [--torch-threads N]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import init_mlp
from jaxbp.app.bench import CONFIGS, Config, batches, median_seconds, optimizer, round_robin

LR, MOMENTUM = 1e-2, 0.9  # what jaxbp.app.bench.optimizer() is, for the frameworks without optax
N_BATCHES = 8
CHECK_STEPS = 3
CHECK_RTOL = 1e-4
DEFAULT_REPS = {"small": 300, "deep-narrow": 300, "medium": 100, "large": 30}

# A step maker builds one framework's model, optimizer and data for `config` and returns
# `step(i)`, which runs one training step on batch `i % 8` and returns its loss (computed
# before the update) once it is ready; or None when the framework is not installed.
Step = Callable[[int], Any]
Maker = Callable[[Config], Step | None]


def _init(config: Config) -> tuple[list[dict[str, jax.Array]], list[tuple[jax.Array, jax.Array]]]:
    """jaxbp's initial weights and the benchmark's batches: every framework starts here."""
    return init_mlp(jax.random.key(0), config.sizes), batches(config, N_BATCHES, jax.random.key(1))


# ----------------------------------------------------------------------------------------
# 1. Plain JAX: pure functions, jax.jit, jax.value_and_grad, optax.


def _plain_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    logits = h @ params[-1]["W"] + params[-1]["b"]
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def make_jax(config: Config) -> Step:
    params, data = _init(config)
    tx = optimizer()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(_plain_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt_state": tx.init(params)}

    def step(i: int) -> jax.Array:
        state["params"], state["opt_state"], loss = train_step(
            state["params"], state["opt_state"], *data[i % N_BATCHES]
        )
        return loss.block_until_ready()

    return step


# ----------------------------------------------------------------------------------------
# 2. Flax NNX.


def _nnx_setup(config: Config, graph: bool = True) -> Any:
    """`(nnx, model, optimizer, loss_fn, data)`, or None without flax."""
    try:
        from flax import nnx
    except ImportError:
        return None

    class MLP(nnx.Module):
        def __init__(self, sizes: tuple[int, ...], rngs: Any) -> None:
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)]
            )

        def __call__(self, x: jax.Array) -> jax.Array:
            *hidden, last = self.layers
            for layer in hidden:
                x = jnp.tanh(layer(x))
            return last(x)

    params, data = _init(config)
    with nnx.set_graph_mode(graph):
        model = MLP(config.sizes, nnx.Rngs(0))
        for layer, p in zip(model.layers, params, strict=True):
            layer.kernel[...] = p["W"]  # nnx.Linear's kernel is (in, out), like jaxbp's W
            layer.bias[...] = p["b"]
        opt = nnx.Optimizer(model, optimizer(), wrt=nnx.Param)

    def loss_fn(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    return nnx, model, opt, loss_fn, data


def make_nnx_split(config: Config) -> Step | None:
    setup = _nnx_setup(config)
    if setup is None:
        return None
    nnx, model, opt, loss_fn, data = setup
    graphdef, state = nnx.split((model, opt))

    @functools.partial(jax.jit, donate_argnums=1)
    def train_step(graphdef: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        model, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss, nnx.state((model, opt))

    box = {"state": state}

    def step(i: int) -> jax.Array:
        loss, box["state"] = train_step(graphdef, box["state"], *data[i % N_BATCHES])
        return loss.block_until_ready()

    return step


def _nnx_train_step(nnx: Any, loss_fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    def train_step(model: Any, opt: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    return train_step


def make_nnx_jit(config: Config) -> Step | None:
    setup = _nnx_setup(config)
    if setup is None:
        return None
    nnx, model, opt, loss_fn, data = setup
    train_step = nnx.jit(_nnx_train_step(nnx, loss_fn), donate_argnames=("model", "opt"))

    def step(i: int) -> jax.Array:
        return train_step(model, opt, *data[i % N_BATCHES]).block_until_ready()

    return step


def make_nnx_cached(config: Config) -> Step | None:
    setup = _nnx_setup(config)
    if setup is None:
        return None
    nnx, model, opt, loss_fn, data = setup
    jitted = nnx.jit(_nnx_train_step(nnx, loss_fn), donate_argnames=("model", "opt"))
    train_step = nnx.cached_partial(jitted, model, opt)

    def step(i: int) -> jax.Array:
        return train_step(*data[i % N_BATCHES]).block_until_ready()

    return step


def make_nnx_tree(config: Config) -> Step | None:
    setup = _nnx_setup(config, graph=False)
    if setup is None:
        return None
    nnx, model, opt, loss_fn, data = setup
    with nnx.set_graph_mode(False):
        train_step = nnx.jit_partial(
            _nnx_train_step(nnx, loss_fn), model, opt, graph=False, donate_argnums=0
        )

    def step(i: int) -> jax.Array:
        with nnx.set_graph_mode(False):
            return train_step(*data[i % N_BATCHES]).block_until_ready()

    return step


# ----------------------------------------------------------------------------------------
# 3. Equinox.


def make_equinox(config: Config) -> Step | None:
    try:
        import equinox as eqx
    except ImportError:
        return None
    params, data = _init(config)
    widths = config.sizes[1:-1]
    model = eqx.nn.MLP(
        config.sizes[0],
        config.sizes[-1],
        width_size=max(widths, default=config.sizes[-1]),
        depth=len(widths),
        activation=jnp.tanh,
        key=jax.random.key(0),
    )
    # eqx.nn.Linear holds weight (out, in): jaxbp's W transposed. eqx.nn.MLP takes one
    # hidden width; for unequal widths swap in Linear layers of the right sizes.
    layers = tuple(
        eqx.tree_at(
            lambda lin: (lin.weight, lin.bias),
            eqx.nn.Linear(a, b, key=jax.random.key(0)),
            (p["W"].T, p["b"]),
        )
        for a, b, p in zip(config.sizes[:-1], config.sizes[1:], params, strict=True)
    )
    model = eqx.tree_at(lambda m: m.layers, model, layers)
    tx = optimizer()
    opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = jax.vmap(model)(x)  # Equinox layers act on one sample: vmap over the batch
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @eqx.filter_jit(donate="all-except-first")
    def train_step(batch: tuple[jax.Array, jax.Array], model: Any, opt_state: Any) -> Any:
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *batch)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    state = {"model": model, "opt_state": opt_state}

    def step(i: int) -> jax.Array:
        state["model"], state["opt_state"], loss = train_step(
            data[i % N_BATCHES], state["model"], state["opt_state"]
        )
        return loss.block_until_ready()

    return step


# ----------------------------------------------------------------------------------------
# 4, 5. PyTorch, eager and torch.compile.


def _torch_step(config: Config, compiled: bool) -> Step | None:
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        return None
    params, data = _init(config)
    layers: list[nn.Module] = []
    linears = []
    for n_in, n_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        linears.append(nn.Linear(n_in, n_out))
        layers += [linears[-1], nn.Tanh()]
    model = nn.Sequential(*layers[:-1])  # no activation after the last layer: logits
    with torch.no_grad():
        for lin, p in zip(linears, params, strict=True):
            lin.weight.copy_(torch.from_numpy(np.array(p["W"]).T))  # nn.Linear: (out, in)
            lin.bias.copy_(torch.from_numpy(np.array(p["b"])))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    tdata = [
        (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y).astype(np.int64)))
        for x, y in data
    ]

    def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        torch._dynamo.reset()  # a fresh cache per model: no recompile limit across configs
        train_step = torch.compile(train_step)

    def step(i: int) -> float:
        return train_step(model, *tdata[i % N_BATCHES]).item()  # .item() waits for the step

    return step


def make_torch(config: Config) -> Step | None:
    return _torch_step(config, compiled=False)


def make_torch_compile(config: Config) -> Step | None:
    return _torch_step(config, compiled=True)


# ----------------------------------------------------------------------------------------
# The API.

MAKERS: dict[str, Maker] = {
    "jax.grad, pure functions": make_jax,
    "Flax NNX, split/merge + jax.jit": make_nnx_split,
    "Flax NNX, nnx.cached_partial": make_nnx_cached,
    "Flax NNX, tree mode nnx.jit_partial": make_nnx_tree,
    "Flax NNX, @nnx.jit": make_nnx_jit,
    "Equinox": make_equinox,
    "PyTorch eager": make_torch,
    "PyTorch torch.compile": make_torch_compile,
}
WARMUP = {"PyTorch torch.compile": 5}  # compiles on call 1, may recompile once on call 2


def _seconds(maker: Maker, warmup: int, config: Config, reps: int) -> float | None:
    step = maker(config)
    if step is None:
        return None
    return median_seconds(step, reps, warmup=warmup)


ALTERNATIVES: dict[str, Callable[[Config, int], float | None]] = {
    name: functools.partial(_seconds, maker, WARMUP.get(name, 3)) for name, maker in MAKERS.items()
}


def _losses(maker: Maker, config: Config, steps: int = CHECK_STEPS) -> list[float] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = maker(config)
        return None if step is None else [float(step(i)) for i in range(steps)]


def make_jaxbp(grad: str) -> Maker:
    """jaxbp's own jitted step (`make_train_step`, as `jaxbp.app.bench.step_call` runs it)."""

    def make(config: Config) -> Step:
        from jaxbp import make_train_step
        from jaxbp.app.bench import KW

        params, data = _init(config)
        tx = optimizer()
        train_step = make_train_step(tx, grad=grad, **KW)
        state = {"params": params, "opt_state": tx.init(params)}

        def step(i: int) -> jax.Array:
            state["params"], state["opt_state"], metrics = train_step(
                state["params"], state["opt_state"], *data[i % N_BATCHES]
            )
            return metrics["loss"].block_until_ready()

        return step

    return make


def make_jaxbp_scan(config: Config) -> Step:
    """jaxbp manual, a whole epoch over the 8 batches in one `lax.scan` program: one call
    runs 8 steps (`STEPS_PER_CALL`), so its time is divided by 8."""
    from jaxbp import make_train_epoch
    from jaxbp.app.bench import KW

    params, data = _init(config)
    tx = optimizer()
    epoch = make_train_epoch(tx, batch_size=config.batch, **KW)
    x = jnp.concatenate([b[0] for b in data])
    y = jnp.concatenate([b[1] for b in data])
    state = {"params": params, "opt_state": tx.init(params)}

    def step(i: int) -> jax.Array:
        state["params"], state["opt_state"], metrics = epoch(
            state["params"], state["opt_state"], jax.random.key(i), x, y
        )
        return metrics["loss"][-1].block_until_ready()

    return step


SCAN = "jaxbp manual, epoch in one lax.scan"
JAXBP: dict[str, Maker] = {
    **{f"jaxbp {g}": make_jaxbp(g) for g in ("manual", "autodiff")},
    SCAN: make_jaxbp_scan,
}
STEPS_PER_CALL = {SCAN: N_BATCHES}


def check(config: Config) -> dict[str, Any]:
    """Run `CHECK_STEPS` steps of every framework (and of jaxbp's manual and jax.grad
    steps) from the same weights on the same batches; assert that each loss sequence
    matches plain JAX's to `CHECK_RTOL`. Returns, per name, the losses and the largest
    relative difference, or None for a framework that is not installed."""
    ref = _losses(make_jax, config)
    assert ref is not None
    out: dict[str, Any] = {}
    failures = []
    for name, maker in {**JAXBP, **MAKERS}.items():
        if name in STEPS_PER_CALL:
            continue  # shuffles its epoch: not comparable step by step
        losses = ref if maker is make_jax else _losses(maker, config)
        if losses is None:
            out[name] = None
            continue
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref, strict=True))
        out[name] = {"losses": losses, "max_rel_diff": rel}
        if not rel <= CHECK_RTOL:
            failures.append(f"{name}: {losses} vs plain JAX {ref} (rel {rel:.2e})")
    assert not failures, f"{config.name}: losses differ from plain JAX: " + "; ".join(failures)
    return out


def run(names: list[str], reps: int | None = None, rounds: int = 3) -> dict[str, Any]:
    """Check, then time, every framework and jaxbp's manual and jax.grad steps on each
    configuration in `names`. `reps=None`: `DEFAULT_REPS` per configuration.

    On a shared machine the load drifts, so the frameworks are timed interleaved: all
    steps are built and warmed up first, then `jaxbp.app.bench.round_robin` times one call of
    each in turn, over `rounds` rounds; a framework's time is its smallest round median.
    Returns a JSON-ready dict."""
    rows = []
    for name in names:
        config = CONFIGS[name]
        n = DEFAULT_REPS.get(name, 50) if reps is None else reps
        row: dict[str, Any] = {"config": name, "reps": n, "check": check(config), "ms": {}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            steps = {label: make(config) for label, make in {**JAXBP, **MAKERS}.items()}
            for label, step in steps.items():
                for i in range(WARMUP.get(label, 3) if step is not None else 0):
                    step(i)  # compiles here, outside the timing
            live = {label: step for label, step in steps.items() if step is not None}
            times = round_robin(live, n, rounds=rounds, warmup=0)
        row["ms"] = {
            label: 1e3 * times[label] / STEPS_PER_CALL.get(label, 1) if label in times else None
            for label in steps
        }
        rows.append(row)
    return {"devices": str(jax.devices()[0].device_kind), "rounds": rounds, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """Median ms per step, and each as a multiple of jaxbp manual's in the same run."""
    rows = result["rows"]
    labels = list(rows[0]["ms"])
    lines = [
        "| framework | " + " | ".join(f"{r['config']} ms (x manual)" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for label in labels:
        cells = []
        for r in rows:
            ms = r["ms"][label]
            base = r["ms"]["jaxbp manual"]
            cells.append("skipped" if ms is None else f"{ms:.3f} ({ms / base:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Loss check ({CHECK_STEPS} steps from the same weights and batches, against plain "
        f"JAX, rtol {CHECK_RTOL:g}): largest relative difference per framework"
    )
    for r in rows:
        diffs = ", ".join(
            f"{k} skipped" if v is None else f"{k} {v['max_rel_diff']:.1e}"
            for k, v in r["check"].items()
        )
        lines.append(f"- {r['config']} (reps {r['reps']}): {diffs}")
    lines.append(
        f"\nDevice: {result['devices']}. Each time is the smallest of {result['rounds']} "
        "interleaved round medians after warm-up; ratios are to jaxbp manual in the same run."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--reps", type=int, default=None, help=f"timed steps per framework; default {DEFAULT_REPS}"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) before timing; default: PyTorch's own default (one "
        "per core), which on a shared machine whose other core is busy can make every "
        "OpenMP region wait for a descheduled thread",
    )
    args = parser.parse_args(argv)
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    print(markdown(run(args.configs, args.reps)))


if __name__ == "__main__":
    main()
