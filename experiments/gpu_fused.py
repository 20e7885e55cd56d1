"""Issue 15, item 3: the fused Pallas training step against XLA's paths, on a lent GPU.

    python experiments/gpu_fused.py [--smoke] [--out DIR]

One run measures, per training step (median over repeated calls, each blocking on its
result): the fused step (`jaxbp.fused_step_fn`, one jitted call a step) and the
fused epoch (`fused_epoch_fn`, one kernel for the whole epoch), `make_train_step` with
grad="manual" and grad="autodiff" one jitted step at a time, `make_train_epoch` (one
`lax.scan`) for both, and a 32-model `make_train_sweep` (per model). All use
optax.sgd(0.01, momentum=0.9), tanh, softmax cross-entropy, float32 at default matmul
precision (TF32 on the GPU, in XLA and in Triton alike). It does so on the small
configuration (64-128-128-10, batch 128) and along a curve over width (32, 64, 128, 256;
batch 128) and batch (64, 128, 256, 512; width 128). It also checks, on the device, the
fused parameters against manual_grad + optax after 1 and 50 steps (matmuls at "highest"
precision on both sides), in float32 and float64.

Writes gpu_fused.json and gpu_fused.md under --out (default experiments/results).
A point that fails to compile (Triton's shared memory or registers) is recorded with its
error, not fatal. --smoke runs tiny sizes in interpret mode on the CPU in seconds.
"""

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import jaxbp
from jaxbp import fused_epoch_fn, fused_step_fn

RESULTS = Path(__file__).parent / "results"
# NVIDIA H200 SXM datasheet (nvidia.com/en-us/data-center/h200): TF32 tensor core 989
# TFLOP/s with 2:4 sparsity, so 494.5 dense; FP32 (no tensor cores) 67 TFLOP/s; HBM3e
# 4.8 TB/s; 132 streaming multiprocessors. The fused kernel is one program on one SM.
PEAK_TF32 = 494.5e12
PEAK_FP32 = 67e12
PEAK_BYTES = 4.8e12
SMS = 132
LR, MOMENTUM = 0.01, 0.9
KW = dict(activation="tanh", loss="cross_entropy")
START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def median_s(call, budget_s, max_reps, warmup=2):
    """Median seconds of `call(i)` (blocking) over up to `max_reps` calls or `budget_s`."""
    for i in range(warmup):
        call(i)
    times = []
    while len(times) < max_reps and (len(times) < 3 or sum(times) < budget_s):
        t = time.perf_counter()
        call(len(times))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def data(sizes, n, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (
        jax.random.normal(kx, (n, sizes[0]), jnp.float32),
        jax.random.randint(ky, (n,), 0, sizes[-1]),
    )


def fused_step_call(sizes, batch, **kw):
    step = fused_step_fn(sizes, **KW, learning_rate=LR, momentum=MOMENTUM, **kw)
    params = jaxbp.init_mlp(jax.random.key(0), sizes)
    state = [params, jax.tree.map(jnp.zeros_like, params)]
    x, y = data(sizes, 8 * batch)

    def call(i):
        j = (i % 8) * batch
        state[0], state[1], loss = step(*state, x[j : j + batch], y[j : j + batch])
        loss.block_until_ready()

    return call


def fused_epoch_call(sizes, batch, steps):
    epoch = fused_epoch_fn(sizes, **KW, learning_rate=LR, momentum=MOMENTUM)
    x, y = data(sizes, steps * batch)

    @jax.jit
    def shuffled_epoch(params, trace, key):  # the same shuffle and gather as the scan
        idx = jaxbp.epoch_batches(key, x.shape[0], batch)
        return epoch(params, trace, x[idx], y[idx])

    params = jaxbp.init_mlp(jax.random.key(0), sizes)
    state = [params, jax.tree.map(jnp.zeros_like, params)]

    def call(i):
        state[0], state[1], losses = shuffled_epoch(*state, jax.random.key(i))
        losses.block_until_ready()

    return call


def xla_step_call(sizes, batch, grad):
    opt = optax.sgd(LR, MOMENTUM)
    step = jaxbp.make_train_step(opt, grad=grad, **KW)
    params = jaxbp.init_mlp(jax.random.key(0), sizes)
    state = [params, opt.init(params)]
    x, y = data(sizes, 8 * batch)

    def call(i):
        j = (i % 8) * batch
        state[0], state[1], metrics = step(*state, x[j : j + batch], y[j : j + batch])
        metrics["loss"].block_until_ready()

    return call


def xla_epoch_call(sizes, batch, steps, grad, models=None):
    opt = optax.sgd(LR, MOMENTUM)
    x, y = data(sizes, steps * batch)
    if models is None:
        run = jaxbp.make_train_epoch(opt, batch_size=batch, grad=grad, **KW)
        params = jaxbp.init_mlp(jax.random.key(0), sizes)
        state = [params, opt.init(params)]
        keys = lambda i: jax.random.key(i)  # noqa: E731
    else:
        run = jaxbp.make_train_sweep(opt, batch_size=batch, grad=grad, **KW)
        inits = [jaxbp.init_mlp(k, sizes) for k in jax.random.split(jax.random.key(0), models)]
        params = jax.tree.map(lambda *v: jnp.stack(v), *inits)
        state = [params, jax.vmap(opt.init)(params)]
        keys = lambda i: jax.random.split(jax.random.key(i), models)  # noqa: E731

    def call(i):
        state[0], state[1], metrics = run(*state, keys(i), x, y)
        metrics["loss"].block_until_ready()

    return call


def point(sizes, batch, steps, models, timing, extra=False):
    """ms per step of every path at one configuration; errors recorded, not raised."""
    paths = {
        "fused_step": (lambda: fused_step_call(sizes, batch), 1),
        "fused_epoch": (lambda: fused_epoch_call(sizes, batch, steps), steps),
        "manual_step": (lambda: xla_step_call(sizes, batch, "manual"), 1),
        "autodiff_step": (lambda: xla_step_call(sizes, batch, "autodiff"), 1),
        "manual_scan": (lambda: xla_epoch_call(sizes, batch, steps, "manual"), steps),
        "autodiff_scan": (lambda: xla_epoch_call(sizes, batch, steps, "autodiff"), steps),
        "sweep_per_model": (
            lambda: xla_epoch_call(sizes, batch, steps, "manual", models),
            steps * models,
        ),
    }
    if extra:  # Triton's launch shape, on the small configuration only
        paths["fused_step_8_warps"] = (lambda: fused_step_call(sizes, batch, num_warps=8), 1)
    row = {"sizes": list(sizes), "batch": batch}
    for name, (make, per_call) in paths.items():
        try:
            row[name] = 1e3 * median_s(make(), *timing) / per_call
        except Exception as error:  # a compile failure is a result here
            row[name] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        value = row[name]
        log(
            f"{sizes} batch {batch}: {name} "
            + (f"{value:.4f} ms" if isinstance(value, float) else value)
        )
    flops = 6.0 * batch * sum(a * b for a, b in itertools.pairwise(sizes))
    n_params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    io = 4 * batch * (sizes[0] + sizes[-1])  # x and the one-hot targets, float32
    state = 4 * 2 * n_params  # params and momentum trace
    row["flop_per_step"] = flops
    row["min_bytes_step"] = 2 * state + io  # read and write the state, read the batch
    row["min_bytes_epoch_step"] = io + 2 * state / steps  # the state stays on chip
    for name in ("fused_step", "fused_epoch", "autodiff_scan"):
        if isinstance(row[name], float):
            seconds = row[name] / 1e3
            bytes_ = row["min_bytes_epoch_step" if name == "fused_epoch" else "min_bytes_step"]
            row[f"{name}_tflops"] = flops / seconds / 1e12
            row[f"{name}_of_tf32_peak"] = flops / seconds / PEAK_TF32
            row[f"{name}_of_one_sm_tf32"] = flops / seconds / (PEAK_TF32 / SMS)
            row[f"{name}_of_bandwidth"] = bytes_ / seconds / PEAK_BYTES
    return row


def reference(params, xs, ys, steps):
    """`steps` steps of manual_grad + optax.sgd in one jitted scan."""
    opt = optax.sgd(LR, MOMENTUM)
    cfg = jaxbp.Config(**KW)

    def body(carry, batch):
        p, state = carry
        updates, state = opt.update(jaxbp.manual_grad(p, *batch, cfg), state, p)
        return (optax.apply_updates(p, updates), state), None

    run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), (xs[:steps], ys[:steps]))[0])
    params, state = run(params, opt.init(params))
    return params, state[0].trace


def worst_rel(a, b):
    return max(
        float(jnp.linalg.norm((u - v).ravel()) / jnp.linalg.norm(v.ravel()))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def parity(sizes, batch, dtype, steps=50):
    """Fused step (1 and `steps` calls) and fused epoch (`steps` steps) against the manual
    path; the keys say 50, the number of steps of a full run."""
    params = jaxbp.init_mlp(jax.random.key(0), sizes, dtype=dtype)
    x, y = data(sizes, steps * batch)
    xs, ys = x.astype(dtype).reshape(steps, batch, -1), y.reshape(steps, batch)
    kw = dict(**KW, learning_rate=LR, momentum=MOMENTUM, precision="highest")
    step = fused_step_fn(sizes, **kw)
    out = {"dtype": jnp.dtype(dtype).name, "sizes": list(sizes), "batch": batch}
    with jax.default_matmul_precision("highest"):
        state = (params, jax.tree.map(jnp.zeros_like, params))
        for s in range(steps):
            state = step(*state, xs[s], ys[s])[:2]
            if s in (0, steps - 1):
                key = f"fused_step_after_{1 if s == 0 else 50}"
                out[key] = worst_rel(state, reference(params, xs, ys, s + 1))
        trace = jax.tree.map(jnp.zeros_like, params)
        got = fused_epoch_fn(sizes, **kw)(params, trace, xs, ys)[:2]
        out["fused_epoch_after_50"] = worst_rel(got, reference(params, xs, ys, steps))
    out["steps"] = steps
    return out


def markdown(result):
    lines = [
        "# The fused training step on the GPU (issue 15)",
        "",
        f"Device: {result['device']}; jax {result['jax']}; {result['wall_s']:.0f} s wall. "
        "ms per step, median; tanh, softmax cross-entropy, SGD momentum 0.9, float32 at "
        "default precision.",
        "",
        "## Parity on the device (worst per-leaf relative error, params and trace)",
        "",
        "| dtype | fused step, 1 step | fused step, 50 steps | fused epoch, 50 steps |",
        "|---|---|---|---|",
    ]
    for p in result["parity"]:
        if "error" in p:
            lines.append(f"| {p['dtype']} | {p['error']} | | |")
            continue
        lines.append(
            f"| {p['dtype']} | {p['fused_step_after_1']:.1e} | {p['fused_step_after_50']:.1e} "
            f"| {p['fused_epoch_after_50']:.1e} |"
        )
    names = [
        "fused_step",
        "fused_epoch",
        "manual_step",
        "autodiff_step",
        "manual_scan",
        "autodiff_scan",
        "sweep_per_model",
    ]
    lines += ["", "## ms per step", "", "| sizes | batch | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "fails"  # noqa: E731
    for row in result["points"]:
        cells = " | ".join(fmt(row.get(n)) for n in names)
        lines.append(f"| {'-'.join(map(str, row['sizes']))} | {row['batch']} | {cells} |")
    lines += [
        "",
        "## Speed-up over jax.grad's scanned step, and the fraction of the hardware reached",
        "",
        "| sizes | batch | scan / fused step | scan / fused epoch | fused epoch TFLOP/s "
        "| of H200 TF32 peak | of one SM | of HBM bandwidth (state on chip) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["points"]:
        scan, step, epoch = (row.get(n) for n in ("autodiff_scan", "fused_step", "fused_epoch"))
        if not all(isinstance(v, float) for v in (scan, step, epoch)):
            lines.append(f"| {'-'.join(map(str, row['sizes']))} | {row['batch']} | n/a |||||")
            continue
        lines.append(
            f"| {'-'.join(map(str, row['sizes']))} | {row['batch']} | {scan / step:.2f}x | "
            f"{scan / epoch:.2f}x | {row['fused_epoch_tflops']:.3f} | "
            f"{row['fused_epoch_of_tf32_peak']:.2%} | {row['fused_epoch_of_one_sm_tf32']:.1%} | "
            f"{row['fused_epoch_of_bandwidth']:.2%} |"
        )
    errors = [
        f"- {'-'.join(map(str, r['sizes']))} batch {r['batch']}, {n}: {v}"
        for r in result["points"]
        for n, v in r.items()
        if isinstance(v, str)
    ]
    if errors:
        lines += ["", "## Failures", "", *errors]
    lines += [
        "",
        f"Peaks (NVIDIA H200 SXM datasheet): TF32 dense {PEAK_TF32 / 1e12:.1f} TFLOP/s, "
        f"FP32 {PEAK_FP32 / 1e12:.0f} TFLOP/s, HBM {PEAK_BYTES / 1e12:.1f} TB/s, {SMS} SMs. "
        "FLOPs per step: 6 x batch x sum(n_in n_out). Bandwidth: the minimum bytes a step "
        "must move (x, one-hot targets; for the fused epoch the state once per epoch).",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, interpret mode")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    if args.smoke:  # interpret mode on the CPU, in seconds
        small, widths, batches = ([8, 16, 16, 4], 16), [], []
        steps, models, timing, deadline_s = 3, 2, (0.0, 2), 60.0
    else:  # the width curve at batch 128, the batch curve at width 128
        small, widths, batches = ([64, 128, 128, 10], 128), [32, 64, 256], [64, 256, 512]
        steps, models, timing, deadline_s = 50, 32, (0.5, 200), 210.0
    result = {"device": str(jax.devices()[0]), "jax": jax.__version__, "smoke": args.smoke}
    log(f"device {result['device']}, backend {jax.default_backend()}")
    result["parity"] = []
    for dtype in (jnp.float32,) if args.smoke else (jnp.float32, jnp.float64):
        jax.config.update("jax_enable_x64", dtype == jnp.float64)
        try:
            result["parity"].append(parity(*small, dtype, steps))
        except Exception as error:
            result["parity"].append({"dtype": jnp.dtype(dtype).name, "error": str(error)[:200]})
        log(f"parity {result['parity'][-1]}")
    jax.config.update("jax_enable_x64", False)

    configs = [(small, True)]
    configs += [(([small[0][0], w, w, small[0][-1]], small[1]), False) for w in widths]
    configs += [((small[0], b), False) for b in batches]
    result["points"] = []
    for (sizes, batch), extra in configs:
        if time.perf_counter() - START > deadline_s:
            log(f"deadline: skipping {sizes} batch {batch}")
            continue
        result["points"].append(point(sizes, batch, steps, models, timing, extra))
    result["wall_s"] = time.perf_counter() - START
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_fused.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "gpu_fused.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
