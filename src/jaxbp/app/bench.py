"""`jaxbp bench`: training-step speed and memory, manual_grad against jax.grad, and
both against a plain step written here with nothing of jaxbp in it.

Every time is the median over many calls after warm-up, rotating among several input
batches, and every comparison is a ratio taken within one run: the machine may be shared
and noisy, so absolute times from different runs do not compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import jaxbp
from jaxbp import init_mlp, init_train_state, make_train_epoch, make_train_step, make_train_sweep


class Config(NamedTuple):
    """A benchmark configuration: layer sizes and batch size (tanh, softmax cross-entropy),
    and `norm` ("layer", "batch") after each hidden dense layer, or `None`."""

    name: str
    sizes: tuple[int, ...]
    batch: int
    norm: str | None = None


CONFIGS = {
    c.name: c
    for c in (
        Config("small", (64, 128, 128, 10), 128),
        Config("deep-narrow", (32, *([64] * 16), 10), 64),
        Config("medium", (784, 512, 512, 10), 256),
        Config("large", (1024, 1024, 1024, 1024, 10), 1024),
        Config("small-layernorm", (64, 128, 128, 10), 128, "layer"),
        Config("small-batchnorm", (64, 128, 128, 10), 128, "batch"),
    )
}
KW = dict(activation="tanh", loss="cross_entropy")
GRADS = ("manual", "autodiff")
PLAIN = "plain"
"""The name of the plain step (`plain_step`) among the timed calls."""


def network(config: Config) -> jaxbp.Config:
    """The network of `config` as a `jaxbp.Config` (`KW`, and its normalisation)."""
    return jaxbp.Config(**KW, norm=config.norm)


def init(config: Config) -> tuple[Any, Any]:
    """`(params, opt_state)` for `config`: the state a `jaxbp.TrainState` with batch norm."""
    params = init_mlp(jax.random.key(0), config.sizes, norm=config.norm)
    return params, init_train_state(optimizer(), params, network(config))


def plain_loss(params: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    """The mean softmax cross-entropy of a tanh MLP, written out: the reference that knows
    nothing of jaxbp."""
    a = x
    for layer in params[:-1]:
        a = jnp.tanh(a @ layer["W"] + layer["b"][None, :])
    logits = a @ params[-1]["W"] + params[-1]["b"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def plain_step(opt: optax.GradientTransformation) -> Callable[..., Any]:
    """`step(params, opt_state, x, y) -> (params, opt_state, loss)`: `jax.value_and_grad`
    of `plain_loss`, the optax update, `jax.jit` with donation, nothing else."""

    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(plain_loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def flops_per_step(config: Config) -> float:
    """6 x batch x sum(n_in n_out): forward, and the two matmuls of the backward pass."""
    return (
        6.0
        * config.batch
        * sum(a * b for a, b in zip(config.sizes[:-1], config.sizes[1:], strict=False))
    )


def median_seconds(call: Callable[[int], Any], reps: int, warmup: int = 3) -> float:
    """Median wall time of `call(i)` (which must block on its result) over `reps` calls."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(reps):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(n: int = 1024, reps: int = 30) -> float:
    """FLOP/s of `jax.jit(jnp.dot)` on two float32 n x n matrices on this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = round_robin({"dot": lambda i: dot(a, b).block_until_ready()}, reps)["dot"]
    return 2.0 * n**3 / seconds


def batches(config: Config, count: int, key: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """`count` random `(x, labels)` batches for `config`."""
    out = []
    for k in jax.random.split(key, count):
        kx, ky = jax.random.split(k)
        x = jax.random.normal(kx, (config.batch, config.sizes[0]), jnp.float32)
        out.append((x, jax.random.randint(ky, (config.batch,), 0, config.sizes[-1])))
    return out


def optimizer() -> optax.GradientTransformation:
    return optax.sgd(1e-2, momentum=0.9)


def step_call(config: Config, grad: str) -> Callable[[int], None]:
    """`call(i)`: one jitted training step on batch `i % 8`, blocking on its result;
    `grad` is "manual", "autodiff" or `PLAIN` (the plain step, plain networks only)."""
    if grad == PLAIN:
        return plain_call(config)
    step = make_train_step(optimizer(), network(config), grad=grad, donate=True)
    params, opt_state = init(config)
    state = {"params": params, "opt_state": opt_state}
    data = batches(config, 8, jax.random.key(1))

    def call(i: int) -> None:
        p, s, metrics = step(state["params"], state["opt_state"], *data[i % len(data)])
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return call


def plain_call(config: Config) -> Callable[[int], None]:
    """`call(i)`: one plain step (`plain_step`) on batch `i % 8`, as `step_call` runs jaxbp's."""
    if config.norm is not None:
        raise ValueError(
            f"the plain step is a plain tanh MLP; {config.name} has {config.norm} norm."
        )
    opt = optimizer()
    step = plain_step(opt)
    params = init_mlp(jax.random.key(0), config.sizes)
    state = {"params": params, "opt_state": opt.init(params)}
    data = batches(config, 8, jax.random.key(1))

    def call(i: int) -> None:
        p, s, loss = step(state["params"], state["opt_state"], *data[i % len(data)])
        state["params"], state["opt_state"] = p, s
        loss.block_until_ready()

    return call


def scan_call(config: Config, grad: str, steps: int) -> Callable[[int], None]:
    """`call(i)`: one epoch of `steps` steps compiled into one `lax.scan` program."""
    epoch = make_train_epoch(
        optimizer(), network(config), batch_size=config.batch, grad=grad, donate=True
    )
    params, opt_state = init(config)
    state = {"params": params, "opt_state": opt_state}
    n = steps * config.batch
    x = jax.random.normal(jax.random.key(1), (n, config.sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (n,), 0, config.sizes[-1])

    def call(i: int) -> None:
        p, s, metrics = epoch(state["params"], state["opt_state"], jax.random.key(i), x, y)
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return call


def round_robin(
    calls: dict[str, Callable[[int], None]], reps: int, rounds: int = 3, warmup: int = 3
) -> dict[str, float]:
    """Seconds per call of each of `calls`, robust to a shared machine's drifting load.

    After warm-up, `rounds` rounds each time `reps // rounds` calls of every entry in turn
    (one call of each, then the next), in reversed order every other round; an entry's
    time is the smallest of its per-round medians.
    """
    for call in calls.values():
        for i in range(warmup):
            call(i)
    best: dict[str, float] = {}
    per_round = max(1, -(-reps // rounds))
    for r in range(rounds):
        names = list(calls)[:: 1 if r % 2 == 0 else -1]
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(per_round):
            for name in names:
                start = time.perf_counter()
                calls[name](i)
                times[name].append(time.perf_counter() - start)
        for name, t in times.items():
            best[name] = min(best.get(name, float("inf")), statistics.median(t))
    return best


def step_memory_bytes(config: Config, grad: str) -> int:
    """Peak bytes of the compiled step by XLA's memory analysis: arguments, outputs and
    temporaries, less what donation lets outputs share with arguments."""
    step = make_train_step(optimizer(), network(config), grad=grad, donate=True)
    params, opt_state = init(config)
    x, y = batches(config, 1, jax.random.key(1))[0]
    stats = step.lower(params, opt_state, x, y).compile().memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def sweep_call(
    config: Config, models: int, steps: int, shared_order: bool = False
) -> Callable[[int], None]:
    """`call(i)`: `models` models each train one epoch of `steps` steps, in one program;
    each shuffles with its own key, or all with one (`shared_order`)."""
    opt = optimizer()
    sweep = make_train_sweep(
        opt, batch_size=config.batch, shared_order=shared_order, donate=True, **KW
    )
    inits = [init_mlp(jax.random.key(s), config.sizes) for s in range(models)]
    params = jax.tree.map(lambda *v: jnp.stack(v), *inits)
    state = {"params": params, "opt_state": jax.vmap(opt.init)(params)}
    n = steps * config.batch
    x = jax.random.normal(jax.random.key(1), (n, config.sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (n,), 0, config.sizes[-1])

    def call(i: int) -> None:
        key = jax.random.key(i)
        keys = key if shared_order else jax.random.split(key, models)
        p, s, metrics = sweep(state["params"], state["opt_state"], keys, x, y)
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return call


def shuffle_times(sizes: tuple[int, ...], reps: int) -> list[dict[str, float]]:
    """ms of one jitted epoch shuffle of `n` samples: `jax.random.permutation` against
    jaxbp's (`jaxbp.epoch_batches` with one batch of all `n`), timed in turn."""
    rows = []
    for n in sizes:
        fns = {
            "jax.random.permutation": jax.jit(lambda k, n=n: jax.random.permutation(k, n)),
            "jaxbp": jax.jit(lambda k, n=n: jaxbp.epoch_batches(k, n, n)),
        }
        times = round_robin(
            {
                name: lambda i, f=f: f(jax.random.key(i)).block_until_ready()
                for name, f in fns.items()
            },
            reps,
        )
        rows.append(
            {
                "n": n,
                "jax_ms": 1e3 * times["jax.random.permutation"],
                "jaxbp_ms": 1e3 * times["jaxbp"],
                "speedup": times["jax.random.permutation"] / times["jaxbp"],
            }
        )
    return rows


def reps_for(config: Config, reps: int) -> int:
    """`reps` for the small configuration, fewer for bigger ones (at least 30)."""
    return max(30, round(reps * flops_per_step(CONFIGS["small"]) / flops_per_step(config)))


def run(names: list[str], reps: int, scan_steps: int = 20) -> dict[str, Any]:
    """Measure every configuration in `names`; returns a JSON-ready dict.

    The two gradient paths, and for a plain network the plain step (`plain_step`), are
    timed in turn (`round_robin`), steps and scanned epochs separately; `reps` steps for
    "small", proportionally fewer for bigger configurations.
    """
    rate = matmul_rate()
    rows = []
    for name in names:
        config = CONFIGS[name]
        n = reps_for(config, reps)
        row: dict[str, Any] = {"config": name, "sizes": list(config.sizes), "batch": config.batch}
        paths = GRADS if config.norm else (*GRADS, PLAIN)
        steps = round_robin({g: step_call(config, g) for g in paths}, n, rounds=5)
        scans = round_robin(
            {g: scan_call(config, g, scan_steps) for g in GRADS},
            max(10, n // scan_steps),
            rounds=5,
        )
        for grad in GRADS:
            row[f"{grad}_ms"] = 1e3 * steps[grad]
            row[f"{grad}_gflops"] = flops_per_step(config) / steps[grad] / 1e9
            row[f"{grad}_scan_ms"] = 1e3 * scans[grad] / scan_steps
            row[f"{grad}_memory_mib"] = step_memory_bytes(config, grad) / 2**20
        row["ratio"] = row["manual_ms"] / row["autodiff_ms"]
        row["norm"] = config.norm
        plain = steps.get(PLAIN)
        row["plain_ms"] = None if plain is None else 1e3 * plain
        for grad in GRADS:
            row[f"{grad}_over_plain"] = None if plain is None else steps[grad] / plain
        row["scan_ratio"] = row["manual_scan_ms"] / row["autodiff_scan_ms"]
        rows.append(row)
    # The matmul rate again at the end; the better of the two is the machine's rate.
    rate = max(rate, matmul_rate())
    for row in rows:
        config = CONFIGS[row["config"]]
        row["floor_ms"] = 1e3 * flops_per_step(config) / rate
        row["manual_fraction_of_matmul_rate"] = row["manual_gflops"] * 1e9 / rate
        row["manual_scan_fraction_of_matmul_rate"] = (
            flops_per_step(config) / (row["manual_scan_ms"] / 1e3) / rate
        )
    return {"matmul_gflops": rate / 1e9, "devices": str(jax.devices()[0].device_kind), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The table of `run`'s result."""
    lines = [
        "| config | FLOP floor ms | jax.grad ms | manual ms | manual / jax.grad | plain ms | "
        "manual / plain | jax.grad / plain | manual GFLOP/s (of matmul rate) | scan: jax.grad "
        "ms/step | scan: manual ms/step | scan: manual / jax.grad (of matmul rate) | peak MiB "
        "jax.grad / manual |",
        "|" + "---|" * 13,
    ]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for r in result["rows"]:
        cells = [
            r["config"],
            f"{r['floor_ms']:.3f}",
            f"{r['autodiff_ms']:.3f}",
            f"{r['manual_ms']:.3f}",
            f"{r['ratio']:.3f}",
            fmt(r.get("plain_ms"), ".3f"),
            fmt(r.get("manual_over_plain"), ".3f"),
            fmt(r.get("autodiff_over_plain"), ".3f"),
            f"{r['manual_gflops']:.0f} ({r['manual_fraction_of_matmul_rate']:.0%})",
            f"{r['autodiff_scan_ms']:.3f}",
            f"{r['manual_scan_ms']:.3f}",
            f"{r['scan_ratio']:.3f} ({r['manual_scan_fraction_of_matmul_rate']:.0%})",
            f"{r['autodiff_memory_mib']:.2f} / {r['manual_memory_mib']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nMatmul rate measured in the same run: {result['matmul_gflops']:.0f} GFLOP/s "
        f"(jax.jit(jnp.dot), float32 1024 x 1024) on {result['devices']}. Median times; the "
        "gradient paths and the plain step timed in turn. Plain: `jax.value_and_grad` of a "
        "tanh MLP's softmax cross-entropy written out, the optax update, `jax.jit` with "
        "donation, nothing else (plain networks only: –). The -layernorm and -batchnorm "
        "configurations add a normalisation after each hidden dense layer (batch norm's "
        "step state a `jaxbp.TrainState`)."
    )
    return "\n".join(lines)
