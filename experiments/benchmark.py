"""The full benchmark: jaxbp against jax.grad and the frameworks a user would pick instead.

Writes experiments/results/benchmark.{json,md} with five tables, every ratio taken within
this one run (the machine may be shared and noisy):

1. the configurations of `jaxbp bench` (tanh MLP, softmax cross-entropy, SGD with
   momentum, float32; four plain, two with layer or batch norm): one jitted step and one
   step of a scanned epoch, manual_grad against jax.grad and against a plain
   pure-function step, GFLOP/s against the matmul rate measured here, peak memory;
2. the same step (plain configurations) in Flax NNX, Equinox and PyTorch (eager,
   torch.compile) when installed (`pip install ".[bench]"`), and jaxbp's scanned epoch
   per step against them;
3. sweeps: N models trained in one vmapped program, per-model step time for N = 1, 8, 32,
   each model with its own batch order or all with one; the epoch shuffle against
   jax.random.permutation;
4. what jax.grad alone does not give, at the medium size: per-example gradient norms and
   gradients against vmap(grad), hvp against jvp(grad), jax.grad through jaxbp.mlp's
   handwritten backward against plain autodiff, the clipped DP-SGD gradient;
5. data parallel: the medium step on 1, 2 and 4 virtual CPU devices (a subprocess with
   XLA_FLAGS=--xla_force_host_platform_device_count=4; virtual devices share the cores,
   so this shows overhead, not speed-up).

    python experiments/benchmark.py [--smoke] [--out DIR] [--skip-alternatives]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxbp
from _common import log, make_parser, write_results
from jaxbp.app import bench as _bench

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
KW = _bench.KW


def sweeps(config, models, reps, steps):
    """Per-model step time of N models in one vmapped program (epochs of `steps` steps),
    each model with its own shuffle or all with one (`shared_order`), against one model's
    scanned epoch (N = 1) and one model's jitted step. The single step is timed on its
    own: interleaved with the long sweep calls it reads slow."""
    single = _bench.round_robin({"step": _bench.step_call(config, "manual")}, 10 * reps)["step"]
    calls = {
        (n, shared): _bench.sweep_call(config, n, steps, shared)
        for n in models
        for shared in (False, True)
    }
    times = _bench.round_robin(calls, reps, rounds=5)
    per = {nk: times[nk] / (steps * nk[0]) for nk in calls}
    one = per[(1, False)]
    return [
        {
            "models": n,
            "shared_order": shared,
            "ms_per_model_step": 1e3 * per[(n, shared)],
            "ratio_to_one_model": per[(n, shared)] / one,
            "ratio_to_single_step": per[(n, shared)] / single,
            "single_step_ms": 1e3 * single,
        }
        for n, shared in calls
    ]


def extras(sizes, batch, reps):
    """Issue 6's quantities at one size, each against the obvious jax.grad alternative."""
    params = jaxbp.init_mlp(jax.random.key(0), sizes)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    sum_kw = dict(KW, reduction="sum")

    def one(p, xi, yi):
        return jaxbp.loss_fn(p, xi[None], yi[None], **sum_kw)

    vmap_grad = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))

    def row_norms(tree):
        return jnp.sqrt(
            sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1) for g in jax.tree.leaves(tree))
        )

    def user_loss(p, x, y, backward):
        z = jaxbp.mlp(p, x, activation="tanh", backward=backward)
        return jnp.mean(jax.nn.logsumexp(z, 1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])

    def dp_reference(p, x, y):
        g = vmap_grad(p, x, y)
        scale = 1.0 / jnp.maximum(1.0, row_norms(g))
        return jax.tree.map(lambda t: jnp.tensordot(scale, t, axes=1) / x.shape[0], g)

    pairs = {
        "per-example gradient norms": (
            lambda p, x, y: jaxbp.per_example_grad_norms(p, x, y, **sum_kw),
            lambda p, x, y: row_norms(vmap_grad(p, x, y)),
        ),
        "per-example gradients": (
            lambda p, x, y: jaxbp.per_example_grads(p, x, y, **sum_kw),
            vmap_grad,
        ),
        "Hessian-vector product": (
            lambda p, x, y: jaxbp.hvp(p, x, y, v, **KW),
            lambda p, x, y: jax.jvp(lambda q: jax.grad(jaxbp.loss_fn)(q, x, y, **KW), (p,), (v,))[
                1
            ],
        ),
        "jax.grad through jaxbp.mlp": (
            jax.grad(lambda p, x, y: user_loss(p, x, y, "manual")),
            jax.grad(lambda p, x, y: user_loss(p, x, y, "autodiff")),
        ),
        "clipped per-example gradient (DP-SGD, noise 0)": (
            lambda p, x, y: jaxbp.dp_value_and_grad(
                p, jax.random.key(0), x, y, l2_clip=1.0, noise_multiplier=0.0, **KW
            )[1],
            dp_reference,
        ),
    }
    calls = {}
    for name, (ours, theirs) in pairs.items():
        for side, fn in (("jaxbp", ours), ("reference", theirs)):
            jitted = jax.jit(fn)
            calls[(name, side)] = lambda i, f=jitted: jax.block_until_ready(f(params, x, y))
    times = _bench.round_robin(calls, reps)
    return [
        {
            "quantity": name,
            "jaxbp_ms": 1e3 * times[(name, "jaxbp")],
            "reference_ms": 1e3 * times[(name, "reference")],
            "speedup": times[(name, "reference")] / times[(name, "jaxbp")],
        }
        for name in pairs
    ]


def sharded_worker(config_name, reps):
    """In a process with 4 virtual devices: the step on meshes of 1, 2 and 4 devices."""
    import optax

    config = _bench.CONFIGS[config_name]
    calls = {}
    for n in (1, 2, 4):
        mesh = jaxbp.data_mesh(n)
        for grad in _bench.GRADS:
            opt = optax.sgd(1e-2, momentum=0.9)
            step = jaxbp.make_train_step(opt, grad=grad, mesh=mesh, **KW)
            params = jaxbp.init_mlp(jax.random.key(0), config.sizes)
            state = {"p": params, "s": opt.init(params)}
            data = _bench.batches(config, 8, jax.random.key(1))

            def call(i, step=step, state=state, data=data):
                state["p"], state["s"], m = step(state["p"], state["s"], *data[i % 8])
                m["loss"].block_until_ready()

            calls[(n, grad)] = call
    times = _bench.round_robin(calls, reps)
    print(json.dumps([{"devices": n, "grad": g, "ms": 1e3 * t} for (n, g), t in times.items()]))


def sharded(config_name, reps):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, __file__, "--sharded-worker", config_name, str(reps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    base = {r["grad"]: r["ms"] for r in rows if r["devices"] == 1}
    for r in rows:
        r["ratio_to_1_device"] = r["ms"] / base[r["grad"]]
    return rows


def markdown(result):
    lines = ["## jaxbp bench", "", _bench.markdown(result["bench"]), ""]
    if result.get("alternatives"):
        import bench_alternatives

        lines += [
            "## Against the alternatives (ms per step, x jaxbp manual step)",
            "",
            bench_alternatives.markdown(result["alternatives"]),
            "",
        ]
    lines += [
        "## Sweeps: N small models in one vmapped program",
        "",
        "| models | batch order | ms per model-step | x one model (scanned epoch) "
        "| x jitted single step |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['models']} | {'shared' if r['shared_order'] else 'own'} | "
        f"{r['ms_per_model_step']:.4f} | {r['ratio_to_one_model']:.3f} | "
        f"{r['ratio_to_single_step']:.3f} |"
        for r in result["sweeps"]
    ]
    lines += [
        "",
        f"One jitted step of the same model, timed on its own: "
        f"{result['sweeps'][0]['single_step_ms']:.4f} ms. 'own': each model shuffles with "
        "its own key; 'shared': one key, the same batches for every model "
        "(`make_train_sweep(..., shared_order=True)`).",
        "",
        "## The epoch shuffle (ms per shuffle of n samples)",
        "",
        "| n | jax.random.permutation | jaxbp | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['n']} | {r['jax_ms']:.3f} | {r['jaxbp_ms']:.3f} | {r['speedup']:.2f}x |"
        for r in result["shuffle"]
    ]
    lines += [
        "",
        f"## What jax.grad alone does not give ({result['extras_size']})",
        "",
        "| quantity | jaxbp ms | jax.grad-based reference ms | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['quantity']} | {r['jaxbp_ms']:.3f} | {r['reference_ms']:.3f} | {r['speedup']:.2f}x |"
        for r in result["extras"]
    ]
    lines += [
        "",
        f"## Data parallel on virtual CPU devices ({result['sharded_config']})",
        "",
        "| devices | gradient | ms per step | x 1 device |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['devices']} | {r['grad']} | {r['ms']:.3f} | {r['ratio_to_1_device']:.2f} |"
        for r in result["sharded"]
    ]
    lines += ["", f"Machine: {result['machine']}; {result['wall_s']:.0f} s for the whole run."]
    return "\n".join(lines) + "\n"


def main():
    parser = make_parser(__doc__, "tiny sizes, a minute or less")
    parser.add_argument("--skip-alternatives", action="store_true")
    parser.add_argument("--sharded-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--markdown-from", type=Path, help="only rebuild the table from a JSON")
    args = parser.parse_args()
    if args.markdown_from:
        print(markdown(json.loads(args.markdown_from.read_text())))
        return
    if args.sharded_worker:
        sharded_worker(args.sharded_worker[0], int(args.sharded_worker[1]))
        return

    start = time.perf_counter()
    smoke = args.smoke
    configs = ["small"] if smoke else list(_bench.CONFIGS)
    reps = 5 if smoke else 300
    result = {"smoke": smoke}
    log("1/5 jaxbp bench: manual_grad vs jax.grad on " + ", ".join(configs))
    result["bench"] = _bench.run(configs, reps)
    if not (smoke or args.skip_alternatives):
        import bench_alternatives

        log("2/5 the same step in the alternatives")
        plain = [name for name in configs if _bench.CONFIGS[name].norm is None]
        result["alternatives"] = bench_alternatives.run(plain)  # their models have no norms
    log("3/5 sweeps")
    models = (1, 2) if smoke else (1, 8, 32)
    result["sweeps"] = sweeps(
        _bench.CONFIGS["small"], models, 3 if smoke else 30, 4 if smoke else 20
    )
    result["shuffle"] = _bench.shuffle_times(
        (100, 1000) if smoke else (1437, 2560, 60_000), 6 if smoke else 60
    )
    log("4/5 per-example gradients, hvp, custom_vjp, DP-SGD")
    size, batch = ([16, 8, 4], 8) if smoke else ([784, 512, 512, 10], 256)
    result["extras_size"] = f"{'-'.join(map(str, size))}, batch {batch}"
    result["extras"] = extras(size, batch, 3 if smoke else 30)
    log("5/5 data parallel on 1, 2, 4 virtual devices")
    result["sharded_config"] = "small" if smoke else "medium"
    result["sharded"] = sharded(result["sharded_config"], 3 if smoke else 50)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
    result["wall_s"] = time.perf_counter() - start
    write_results(args.out, "benchmark", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
