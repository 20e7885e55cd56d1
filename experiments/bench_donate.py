"""What donating an epoch's parameters and optimizer state saves: `jaxbp train`'s epoch,
compiled with `donate=True` (what the CLI does) and with `donate=False` (the library's
default since it follows JAX's convention), timed in turn in one process.

The networks are `jaxbp train`'s digits default (64-512-10 relu, adam, batch 32, one
epoch of 45 steps per call) and a wider one (64-1024-1024-10 relu), where the state to
copy is larger. Each call is one whole epoch; `jaxbp.app.bench.round_robin` interleaves the two
variants and reports the smaller of its per-round medians. The ratio is donated over
copied: below 1, donation saves time.

    python experiments/bench_donate.py [--smoke] [--out DIR] [--reps N]
"""

from __future__ import annotations

import jax
import optax

import jaxbp
from _common import log, make_parser, markdown_table, write_results
from jaxbp import datasets
from jaxbp.app import bench

NETWORKS = {"digits default": [64, 512, 10], "wide": [64, 1024, 1024, 10]}


def epoch_call(sizes, donate, data):
    """`call(i)`: one epoch from a fresh copy of the state (a donated one is consumed)."""
    (x, y), cfg = data, jaxbp.Config(activation="relu", loss="cross_entropy")
    optimizer = optax.adam(1e-3)
    params = jaxbp.init_mlp(jax.random.key(0), sizes, init="he_normal")
    epoch = jaxbp.make_train_epoch(optimizer, cfg, batch_size=32, donate=donate)
    state = {"params": params, "opt": optimizer.init(params)}

    def call(i):
        # Donation consumes its inputs: the loop carries the outputs, as jaxbp train does.
        state["params"], state["opt"], metrics = epoch(
            state["params"], state["opt"], jax.random.key(i), x, y
        )
        jax.block_until_ready(metrics["loss"])

    return call


def main():
    parser = make_parser(__doc__, "few repetitions")
    parser.add_argument("--reps", type=int, help="epochs timed per variant (default 60)")
    args = parser.parse_args()
    reps = args.reps or (6 if args.smoke else 60)
    digits = datasets.load("digits", seed=0)
    data = (digits.x_train, digits.y_train)
    rows, result = [], {"reps": reps, "networks": {}}
    for name, sizes in NETWORKS.items():
        calls = {d: epoch_call(sizes, d, data) for d in (True, False)}
        seconds = bench.round_robin(calls, reps, rounds=3, warmup=2)
        ratio = seconds[True] / seconds[False]
        log(f"{name}: donated {seconds[True] * 1e3:.2f} ms, copied {seconds[False] * 1e3:.2f} ms")
        result["networks"][name] = {
            "sizes": sizes,
            "donated_ms": 1e3 * seconds[True],
            "copied_ms": 1e3 * seconds[False],
            "ratio": ratio,
        }
        arch = "-".join(map(str, sizes))
        rows.append(
            [
                name,
                arch,
                f"{1e3 * seconds[True]:.2f}",
                f"{1e3 * seconds[False]:.2f}",
                f"{ratio:.3f}",
            ]
        )
    header = ["network", "sizes", "donated ms/epoch", "copied ms/epoch", "donated / copied"]
    text = (
        "# Donating an epoch's state\n\n"
        f"One epoch of 45 adam steps (batch 32, digits), {reps} epochs each, interleaved.\n\n"
        + markdown_table(header, rows)
    )
    write_results(args.out, "bench_donate", result, text)
    print(text)


if __name__ == "__main__":
    main()
