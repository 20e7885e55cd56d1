"""Issue 15, item 3: the fused Pallas training step against XLA's paths, on a lent GPU.

    PYTHONPATH=src python3 experiments/gpu_fused.py [--smoke] [--warps N ...] [--out DIR]
    PYTHONPATH=src python3 experiments/gpu_fused.py --envelope [--out DIR]
    PYTHONPATH=src ncu --clock-control none -k regex:fused -c 2 --metrics METRICS \
        python3 experiments/gpu_fused.py --profile

One run measures, per training step (median over repeated calls, each blocking on its
result): the fused step (`jaxbp.fused_step_fn`, one jitted call a step) and the
fused epoch (`fused_epoch_fn`, one kernel for the whole epoch), `make_train_step` with
grad="manual" and grad="autodiff" one jitted step at a time, `make_train_epoch` (one
`lax.scan`) for both, and a 32-model `make_train_sweep` (per model). All use
optax.sgd(0.01, momentum=0.9), tanh, softmax cross-entropy, float32 at default matmul
precision (TF32 on the GPU, in XLA and in Triton alike). It does so on the small
configuration (64-128-128-10, batch 128) and along a curve over width (32, 64, 256;
batch 128) and batch (64, 256, 512; width 128), and first checks, on the device, the
fused parameters against manual_grad + optax after 1 and 50 steps: exactly ("highest",
IEEE products on both sides) at 32-64-64-10, batch 64, in float32 and float64, and at
default precision (TF32 rounding) on the small configuration. `--warps` also times
those Triton num_warps on the small configuration; `--envelope` records which points one
`make_train_step(grad="fused")` step takes or refuses; `--profile` runs one fused epoch
each of 64-128-128-10 and 64-64-64-10 for a profiler.

Writes gpu_fused.json and gpu_fused.md under --out (default experiments/results), after
every point, so a run cut off keeps what it measured. A point that fails is recorded with
its error, not fatal. --smoke runs tiny sizes in interpret mode on the CPU in seconds.
"""

import argparse
import functools
import itertools
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import jaxbp
from _common import RESULTS, write_results
from _common import log as log_line
from jaxbp import fused_epoch_fn, fused_step_fn

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
    """A progress line on stderr, stamped with the seconds since the script started."""
    log_line(f"[{time.perf_counter() - START:6.1f} s] {message}")


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


def dispatch_floor_ms(timing):
    """ms of one jitted call that does almost nothing (x + 1 on 16 floats), blocking on its
    result: what any one-call-a-step path pays before its kernels run."""
    add = jax.jit(lambda v: v + 1)
    box = [jnp.zeros(16, jnp.float32)]

    def call(i):
        box[0] = add(box[0])
        box[0].block_until_ready()

    return 1e3 * median_s(call, *timing)


def failure(error):
    """A compile failure is a result here: one line for the table, the traceback's tail in
    the log."""
    log("".join(traceback.format_exception(error)[-12:]))
    return f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"


def data(sizes, n, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (
        jax.random.normal(kx, (n, sizes[0]), jnp.float32),
        jax.random.randint(ky, (n,), 0, sizes[-1]),
    )


def eight_batches(sizes, batch):
    """Eight (x, y) batches, sliced once, so a timed call is the step's one dispatch alone."""
    x, y = data(sizes, 8 * batch)
    return [(x[j : j + batch], y[j : j + batch]) for j in range(0, 8 * batch, batch)]


def fused_step_call(sizes, batch, **kw):
    step = fused_step_fn(sizes, **KW, learning_rate=LR, momentum=MOMENTUM, **kw)
    params = jaxbp.init_mlp(jax.random.key(0), sizes)
    state = [params, jax.tree.map(jnp.zeros_like, params)]
    batches = eight_batches(sizes, batch)

    def call(i):
        state[0], state[1], loss = step(*state, *batches[i % 8])
        loss.block_until_ready()

    return call


def fused_epoch_call(sizes, batch, steps, **kw):
    epoch = fused_epoch_fn(sizes, **KW, learning_rate=LR, momentum=MOMENTUM, **kw)
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
    batches = eight_batches(sizes, batch)

    def call(i):
        state[0], state[1], metrics = step(*state, *batches[i % 8])
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


def point(sizes, batch, steps, models, timing, warps=()):
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
    for n in warps:  # Triton's launch shape (registers per program)
        paths[f"fused_step_{n}_warps"] = (
            functools.partial(fused_step_call, sizes, batch, num_warps=n),
            1,
        )
        paths[f"fused_epoch_{n}_warps"] = (
            functools.partial(fused_epoch_call, sizes, batch, steps, num_warps=n),
            steps,
        )
    row = {"sizes": list(sizes), "batch": batch}
    for name, (make, per_call) in paths.items():
        try:
            row[name] = 1e3 * median_s(make(), *timing) / per_call
        except Exception as error:
            row[name] = failure(error)
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


def parity(sizes, batch, dtype, precision, steps=50):
    """Fused step (1 and `steps` calls) and fused epoch (`steps` steps) against the manual
    path; the keys say 50, the number of steps of a full run."""
    params = jaxbp.init_mlp(jax.random.key(0), sizes, dtype=dtype)
    x, y = data(sizes, steps * batch)
    xs, ys = x.astype(dtype).reshape(steps, batch, -1), y.reshape(steps, batch)
    kw = dict(**KW, learning_rate=LR, momentum=MOMENTUM, precision=precision)
    step = fused_step_fn(sizes, **kw)
    out = {"dtype": jnp.dtype(dtype).name, "sizes": list(sizes), "batch": batch}
    out["precision"] = precision or "default"
    with jax.default_matmul_precision(precision or "default"):
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
        "| sizes | batch | dtype | precision | fused step, 1 step | fused step, 50 steps "
        "| fused epoch, 50 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["parity"]:
        head = f"| {'-'.join(map(str, p['sizes']))} | {p['batch']} | {p['dtype']} "
        head += f"| {p['precision']} "
        if "error" in p:
            lines.append(f"{head}| {p['error']} | | |")
            continue
        lines.append(
            f"{head}| {p['fused_step_after_1']:.1e} | {p['fused_step_after_50']:.1e} "
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
    warps = [(n, v) for r in result["points"] for n, v in r.items() if "_warps" in n]
    if warps:
        lines += ["", "## Triton's num_warps on the small configuration (ms per step)", ""]
        lines += ["| variant | ms per step |", "|---|---|"]
        lines += [f"| {n} | {fmt(v)} |" for n, v in warps]
    if "dispatch_floor_ms" in result:
        lines += [
            "",
            f"Dispatch floor: one jitted call that adds 1 to 16 floats, blocking on its result, "
            f"takes {result['dispatch_floor_ms']:.4f} ms (median): every one-call-a-step path "
            f"pays it.",
        ]
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


def envelope(out):
    """Which points of the curve the fused path takes on this GPU: one `make_train_step(...,
    grad="fused")` step each, or the one-line error it ends in (never a raw XLA error)."""
    rows = []
    points = [([64, w, w, 10], 128, "float32") for w in (32, 64, 128, 256)]
    points += [([64, 128, 128, 10], b, "float32") for b in (64, 256, 512)]
    points += [([32, 64, 64, 10], 64, "float64"), ([64, 128, 128, 10], 128, "float64")]
    for sizes, batch, dtype in points:
        jax.config.update("jax_enable_x64", dtype == "float64")
        opt = jaxbp.fused_sgd(LR, MOMENTUM)
        step = jaxbp.make_train_step(opt, grad="fused", **KW)
        params = jaxbp.init_mlp(jax.random.key(0), sizes, dtype=dtype)
        x, y = data(sizes, batch)
        try:
            _, _, metrics = step(params, opt.init(params), x.astype(dtype), y)
            outcome = f"runs, loss {float(metrics['loss']):.4f}"
        except Exception as error:
            outcome = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        rows.append({"sizes": sizes, "batch": batch, "dtype": dtype, "outcome": outcome})
        log(f"{sizes} batch {batch} {dtype}: {outcome}")
    jax.config.update("jax_enable_x64", False)
    write_results(out, "gpu_fused_envelope", rows)


def profile():
    """One fused epoch each of 64-128-128-10 and 64-64-64-10 (batch 128), for a profiler:
    one launch of the kernel each."""
    for sizes in ([64, 128, 128, 10], [64, 64, 64, 10]):
        fused_epoch_call(sizes, 128, 50)(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, interpret mode")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder for the results (default {RESULTS}; with --smoke a temporary folder, so "
        "a smoke run never replaces the GPU's numbers)",
    )
    parser.add_argument(
        "--warps", type=int, nargs="*", default=[], help="also time these num_warps (small)"
    )
    parser.add_argument("--envelope", action="store_true", help="which sizes fit, then stop")
    parser.add_argument("--profile", action="store_true", help="two fused epochs, then stop")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="gpu_fused_")) if args.smoke else RESULTS
    if args.envelope:
        return envelope(args.out)
    if args.profile:
        return profile()
    if args.smoke:  # interpret mode on the CPU, in seconds
        small, mid, widths, batches = ([8, 16, 16, 4], 16), ([8, 16, 16, 4], 16), [], []
        steps, models, timing, deadline_s = 3, 2, (0.0, 2), 60.0
    else:  # the width curve at batch 128, the batch curve at width 128, widest last
        small, mid = ([64, 128, 128, 10], 128), ([32, 64, 64, 10], 64)
        widths, batches = [32, 64, 256], [64, 256, 512]
        steps, models, timing, deadline_s = 50, 32, (0.3, 200), 290.0
    device = jax.devices()[0]
    result = {"device": f"{device} ({device.device_kind})", "jax": jax.__version__}
    result["smoke"] = args.smoke
    result["num_warps"] = jaxbp.Fused().warps
    log(f"device {result['device']}, backend {jax.default_backend()}")
    result["dispatch_floor_ms"] = dispatch_floor_ms(timing)
    log(f"dispatch floor {result['dispatch_floor_ms']:.4f} ms a call")
    result["points"] = []
    result["parity"] = []
    # Exact parity ("highest": IEEE float32 products on both sides) where the kernel's
    # shared memory allows it, then the timed configuration at default precision (TF32 in
    # Triton and in XLA alike, so its error is TF32 rounding, about 1e-3).
    checks = [(*mid, jnp.float32, "highest")]
    checks += [] if args.smoke else [(*mid, jnp.float64, "highest"), (*small, jnp.float32, None)]
    for sizes, batch, dtype, precision in checks:
        jax.config.update("jax_enable_x64", dtype == jnp.float64)
        try:
            result["parity"].append(parity(sizes, batch, dtype, precision, steps))
        except Exception as error:
            result["parity"].append(
                {
                    "sizes": sizes,
                    "batch": batch,
                    "dtype": jnp.dtype(dtype).name,
                    "precision": precision or "default",
                    "error": failure(error),
                }
            )
        save(result, args.out)
        log(f"parity {result['parity'][-1]}")
    jax.config.update("jax_enable_x64", False)

    configs = [(small, args.warps)]
    configs += [(([small[0][0], w, w, small[0][-1]], small[1]), ()) for w in widths[:2]]
    configs += [((small[0], b), ()) for b in batches[:2]]
    configs += [(([small[0][0], w, w, small[0][-1]], small[1]), ()) for w in widths[2:]]
    configs += [((small[0], b), ()) for b in batches[2:]]
    for (sizes, batch), warps in configs:
        if time.perf_counter() - START > deadline_s:
            log(f"deadline: skipping {sizes} batch {batch}")
            continue
        result["points"].append(point(sizes, batch, steps, models, timing, warps))
        save(result, args.out)
    print(markdown(save(result, args.out)))


def save(result, out):
    """Write what is measured so far (a run cut off at its time limit keeps its points)."""
    result["wall_s"] = time.perf_counter() - START
    write_results(out, "gpu_fused", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
