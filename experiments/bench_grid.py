"""A learning-rate x width grid three ways: one `jaxbp.Grid` program, one sweep per width,
one program per model.

The grid: 4 hidden widths x 4 learning rates of a tanh MLP (one hidden layer,
cross-entropy, `jaxbp.sgdw` with momentum 0.9) on the digits, batch 64, float32, one
shuffle shared by all models. Three ways to train it:

- "grid": `jaxbp.Grid(...).sweep`, every model masked into the widest width, one program;
- "per width": one `Grid` of one width each (its learning rates stacked), 4 programs;
- "per model": `jaxbp.epoch_fn` of `jaxbp.sgdw` with the model's constants, 16 programs,
  the loop a user writes without a grid.

For each: the seconds from nothing compiled to every model's result (initialisation and
compilation included, the persistent cache off: what a user waits for), median of fresh
processes taken in turn, and the median seconds of a warm call (interleaved rounds in one
process). The final losses of the three agree (the largest relative difference is
reported).

    python experiments/bench_grid.py [--smoke] [--out DIR] [--reps N] [--cold-reps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from _common import log, make_parser, markdown_table, write_results

WIDTHS = (16, 32, 64, 128)
RATES = (0.01, 0.03, 0.1, 0.3)
CONFIG = dict(activation="tanh", loss="cross_entropy")
BATCH = 64


def grid_way(x, y, widths, rates, epochs):
    """One program over every model: `(run, finals)` with `run()` the results' seconds."""
    grid = jaxbp.Grid(CONFIG, x.shape[1], 10, width=widths, learning_rate=rates, momentum=[0.9])
    params, state = grid.init()
    sweep = grid.sweep(batch_size=BATCH, epochs=epochs)

    def run():
        _, _, metrics = sweep(params, state, jax.random.key(1), x, y)
        loss = metrics["loss"]  # (models, [epochs,] steps)
        return jax.block_until_ready(loss.reshape(loss.shape[0], -1)[:, -1])

    return run


def per_width_way(x, y, widths, rates, epochs):
    runs = [grid_way(x, y, [w], rates, epochs) for w in widths]
    return lambda: jnp.concatenate([run() for run in runs])


def per_model_way(x, y, widths, rates, epochs):
    runs = []
    for w in widths:
        sizes = (x.shape[1], w, 10)
        net = jaxbp.Network.mlp(sizes, **CONFIG)
        params = jaxbp.init_mlp(jax.random.key(0), sizes)
        for lr in rates:
            opt = jaxbp.sgdw(lr, 0.9, 0.0)
            epoch = jaxbp.epoch_fn(opt, net, batch_size=BATCH, epochs=epochs)
            state = jaxbp.TrainState.create(opt, params, net)
            runs.append((epoch, params, state))

    def run():
        finals = [e(p, s, jax.random.key(1), x, y)[2]["loss"].ravel()[-1] for e, p, s in runs]
        return jax.block_until_ready(jnp.stack(finals))

    return run


WAYS = {"grid": grid_way, "per width": per_width_way, "per model": per_model_way}


def _setup(smoke):
    jax.config.update("jax_enable_compilation_cache", False)
    data = jaxbp.datasets.load("digits")
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    # Warm JAX itself up (its first trace and compile pay one-time costs) on a width
    # none of the ways uses, so that "cold" is each way's own initialisation and compilation.
    per_model_way(x, y, [8], [0.1], 1)()
    sizes = (WIDTHS[:2], RATES[:2], 1) if smoke else (WIDTHS, RATES, 5)
    return x, y, sizes


def _cold(name, smoke):
    """In a fresh process: the seconds from nothing compiled to `name`'s results."""
    x, y, sizes = _setup(smoke)
    start = time.perf_counter()
    finals = np.asarray(WAYS[name](x, y, *sizes)())
    print(json.dumps({"seconds": time.perf_counter() - start, "finals": finals.tolist()}))


def main(argv=None):
    parser = make_parser(__doc__, "2 widths x 2 rates, 1 epoch, 2 rounds")
    parser.add_argument("--reps", type=int, default=7, help="interleaved warm rounds")
    parser.add_argument("--cold-reps", type=int, default=3, help="fresh processes per way")
    parser.add_argument("--cold", choices=list(WAYS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold:
        return _cold(args.cold, args.smoke)
    smoke = ["--smoke"] if args.smoke else []
    cold_reps, reps = (1, 2) if args.smoke else (args.cold_reps, args.reps)
    cold_runs = {name: [] for name in WAYS}
    for _ in range(cold_reps):
        for name in WAYS:
            argv = [sys.executable, __file__, "--cold", name, *smoke]
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            cold_runs[name].append(json.loads(done.stdout)["seconds"])
            log(f"{name}: {cold_runs[name][-1]:.2f} s cold")
    cold = {name: float(np.median(t)) for name, t in cold_runs.items()}
    x, y, (widths, rates, epochs) = _setup(args.smoke)
    runs = {name: way(x, y, widths, rates, epochs) for name, way in WAYS.items()}
    finals = {name: np.asarray(run()) for name, run in runs.items()}
    warm = {name: [] for name in WAYS}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            warm[name].append(time.perf_counter() - start)
    agree = max(
        float(np.max(np.abs(finals[name] - finals["grid"]) / np.abs(finals["grid"])))
        for name in WAYS
    )
    result = {
        "widths": list(widths),
        "learning_rates": list(rates),
        "epochs": epochs,
        "batch_size": BATCH,
        "models": len(widths) * len(rates),
        "programs": {"grid": 1, "per width": len(widths), "per model": len(widths) * len(rates)},
        "cold_s": cold,
        "cold_runs_s": cold_runs,
        "warm_median_s": {name: float(np.median(t)) for name, t in warm.items()},
        "final_loss_max_rel_diff": agree,
        "final_loss": {name: f.tolist() for name, f in finals.items()},
    }
    rows = [
        [
            name,
            result["programs"][name],
            f"{cold[name]:.2f}",
            f"{cold[name] / cold['grid']:.2f}",
            f"{result['warm_median_s'][name]:.3f}",
            f"{result['warm_median_s'][name] / result['warm_median_s']['grid']:.2f}",
        ]
        for name in WAYS
    ]
    header = ["way", "programs", "cold s", "cold / grid", "warm s", "warm / grid"]
    markdown = (
        f"# A {len(widths)} widths x {len(rates)} learning rates grid, {epochs} epochs of "
        f"digits (batch {BATCH}, float32, CPU)\n\n"
        + markdown_table(header, rows)
        + f"\nFinal losses agree across the three ways to {agree:.1e} (relative).\n"
    )
    print(markdown)
    write_results(args.out, "bench_grid", result, markdown)


if __name__ == "__main__":
    main()
