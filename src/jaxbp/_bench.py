"""`jaxbp bench`: training-step speed and memory, manual_grad against jax.grad.

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

from jaxbp._mlp import init_mlp
from jaxbp._train import make_train_epoch, make_train_step


class Config(NamedTuple):
    """A benchmark configuration: layer sizes and batch size (tanh, softmax cross-entropy)."""

    name: str
    sizes: tuple[int, ...]
    batch: int


CONFIGS = {
    c.name: c
    for c in (
        Config("small", (64, 128, 128, 10), 128),
        Config("deep-narrow", (32, *([64] * 16), 10), 64),
        Config("medium", (784, 512, 512, 10), 256),
        Config("large", (1024, 1024, 1024, 1024, 10), 1024),
    )
}
KW = dict(activation="tanh", loss="cross_entropy")
GRADS = ("manual", "autodiff")


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
    seconds = median_seconds(lambda i: dot(a, b).block_until_ready(), reps)
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


def step_seconds(config: Config, grad: str, reps: int) -> float:
    """Median seconds of one jitted training step, each call on the next of 8 batches."""
    opt = optimizer()
    step = make_train_step(opt, grad=grad, **KW)
    params = init_mlp(jax.random.key(0), config.sizes)
    state = {"params": params, "opt_state": opt.init(params)}
    data = batches(config, 8, jax.random.key(1))

    def call(i: int) -> None:
        p, s, metrics = step(state["params"], state["opt_state"], *data[i % len(data)])
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return median_seconds(call, reps)


def scan_step_seconds(config: Config, grad: str, reps: int, steps: int = 50) -> float:
    """Median seconds per step when a whole epoch of `steps` steps runs in one `lax.scan`."""
    opt = optimizer()
    epoch = make_train_epoch(opt, batch_size=config.batch, grad=grad, **KW)
    params = init_mlp(jax.random.key(0), config.sizes)
    state = {"params": params, "opt_state": opt.init(params)}
    n = steps * config.batch
    x = jax.random.normal(jax.random.key(1), (n, config.sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (n,), 0, config.sizes[-1])

    def call(i: int) -> None:
        p, s, metrics = epoch(state["params"], state["opt_state"], jax.random.key(i), x, y)
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return median_seconds(call, max(3, reps // steps)) / steps


def step_memory_bytes(config: Config, grad: str) -> int:
    """Peak bytes of the compiled step by XLA's memory analysis: arguments, outputs and
    temporaries, less what donation lets outputs share with arguments."""
    opt = optimizer()
    step = make_train_step(opt, grad=grad, **KW)
    params = init_mlp(jax.random.key(0), config.sizes)
    x, y = batches(config, 1, jax.random.key(1))[0]
    stats = step.lower(params, opt.init(params), x, y).compile().memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def sweep_step_seconds(config: Config, models: int, reps: int, steps: int = 20) -> float:
    """Median seconds per model-step when `models` models train in one vmapped epoch."""
    from jaxbp._train import make_train_sweep

    opt = optimizer()
    sweep = make_train_sweep(opt, batch_size=config.batch, **KW)
    inits = [init_mlp(jax.random.key(s), config.sizes) for s in range(models)]
    params = jax.tree.map(lambda *v: jnp.stack(v), *inits)
    state = {"params": params, "opt_state": jax.vmap(opt.init)(params)}
    n = steps * config.batch
    x = jax.random.normal(jax.random.key(1), (n, config.sizes[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (n,), 0, config.sizes[-1])

    def call(i: int) -> None:
        keys = jax.random.split(jax.random.key(i), models)
        p, s, metrics = sweep(state["params"], state["opt_state"], keys, x, y)
        state["params"], state["opt_state"] = p, s
        metrics["loss"].block_until_ready()

    return median_seconds(call, max(3, reps // steps)) / (steps * models)


def run(names: list[str], reps: int, scan: bool = True) -> dict[str, Any]:
    """Measure every configuration in `names`; returns a JSON-ready dict."""
    rate = matmul_rate()
    rows = []
    for name in names:
        config = CONFIGS[name]
        n = max(5, reps * 128 * 128 // max(config.batch * config.sizes[1], 1))  # fewer for big ones
        row: dict[str, Any] = {"config": name, "sizes": list(config.sizes), "batch": config.batch}
        row["floor_ms"] = 1e3 * flops_per_step(config) / rate
        for grad in GRADS:
            seconds = step_seconds(config, grad, n)
            row[f"{grad}_ms"] = 1e3 * seconds
            row[f"{grad}_gflops"] = flops_per_step(config) / seconds / 1e9
            if scan:
                row[f"{grad}_scan_ms"] = 1e3 * scan_step_seconds(config, grad, n)
            row[f"{grad}_memory_mib"] = step_memory_bytes(config, grad) / 2**20
        row["ratio"] = row["manual_ms"] / row["autodiff_ms"]
        row["manual_fraction_of_matmul_rate"] = row["manual_gflops"] * 1e9 / rate
        rows.append(row)
    return {"matmul_gflops": rate / 1e9, "devices": str(jax.devices()[0].device_kind), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The table of `run`'s result."""
    head = (
        "| config | floor ms | jax.grad ms | manual ms | manual / jax.grad | manual GFLOP/s "
        "| of matmul rate | scan: jax.grad ms/step | scan: manual ms/step "
        "| memory MiB jax.grad / manual |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in result["rows"]:
        scan = [f"{r[f'{g}_scan_ms']:.3f}" if f"{g}_scan_ms" in r else "-" for g in GRADS[::-1]]
        cells = [
            r["config"],
            f"{r['floor_ms']:.3f}",
            f"{r['autodiff_ms']:.3f}",
            f"{r['manual_ms']:.3f}",
            f"{r['ratio']:.3f}",
            f"{r['manual_gflops']:.0f}",
            f"{r['manual_fraction_of_matmul_rate']:.0%}",
            *scan,
            f"{r['autodiff_memory_mib']:.2f} / {r['manual_memory_mib']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nMatmul rate measured in the same run: {result['matmul_gflops']:.0f} GFLOP/s "
        f"(jax.jit(jnp.dot), float32 1024 x 1024) on {result['devices']}."
    )
    return "\n".join(lines)
