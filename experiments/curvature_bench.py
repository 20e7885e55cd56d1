"""The speed of jaxbp's per-example statistics, curvature diagonal and K-FAC path, as
ratios taken within one run on this CPU (float32).

On the "small" (64-128-128-10, batch 128) and "medium" (784-512-512-10, batch 256)
tanh / cross-entropy configurations of `jaxbp bench`, everything jitted and timed in one
process pinned to one core (jax and torch one compute thread each: on a shared machine a
thread pool waiting for a busy core distorts the times), round-robin
(`jaxbp.app.bench.round_robin`: after warm-up, the smallest of the per-round medians; a
call slower than `SLOW_S` is timed apart, in turn with the manual step and jaxbp's calls):

1. `sum_grad_squared`, `grad_variance`, `batch_dot_grad` and `diag_ggn` (exact) against
   the manual training step of `jaxbp bench` (`make_train_step`, SGD with momentum);
2. the same quantities from `jax.vmap(jax.grad(loss of one example))` (and, for the GGN
   diagonal, `jax.vmap` over examples of `jax.vjp` of the logits applied to every column
   of the loss Hessian's square root), checked equal first;
3. BackPACK (torch, float32, same sizes and batches): one backward pass with
   `SumGradSquared`, `Variance`, `BatchGrad` (1.7 has no `BatchDotGrad`: the Gram matrix
   is formed from it) or `DiagGGNExact`;
4. K-FAC: `jaxbp.step_fn(sgd(0.01, momentum=0.9), net, jaxbp.KFAC(every=10))` against the
   plain manual SGD step and against kfac-jax's optimizer on the same MLP (registered with
   `kfac_jax.register_dense` and `register_softmax_cross_entropy_loss`, same learning rate,
   momentum, damping, decay and inverse period, one sampled label per example): time per
   step over windows of 10 steps (so inverse refreshes are included), time to the first
   step (tracing and compilation), and the loss after 50 steps from the same
   initialisation on the same batches of a learnable task (`_kfac_compare.py`).

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

import jaxbp
from _common import log, make_parser, markdown_table, write_results
from _curvature_routes import VMAP, backpack_calls
from _kfac_compare import kfac_jax_status, kfac_runs
from jaxbp.app import bench

QUANTITIES = ("sum_grad_squared", "grad_variance", "batch_dot_grad", "diag_ggn")
N_BATCHES = 8
SLOW_S = 0.25
"""A call slower than this (seconds) is timed apart, with `SLOW_REPS` repetitions."""
SLOW_REPS = 2


# --- the timed calls -------------------------------------------------------------------------


def recorded(calls):
    """`(calls, times)`: the calls, each appending its wall time to `times[name]` (so
    that the fastest call is known besides `round_robin`'s medians)."""
    times = {name: [] for name in calls}

    def timing(name, call):
        def timed_call(i):
            begin = time.perf_counter()
            call(i)
            times[name].append(time.perf_counter() - begin)

        return timed_call

    return {name: timing(name, call) for name, call in calls.items()}, times


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


def jitted(fn, net):
    """`jax.jit` of `fn(params, x, y, net)`."""
    return jax.jit(lambda p, x, y: fn(p, x, y, net))


def quantity_calls(config):
    """`(calls, agreement)` for `config`: `{name: call(i)}` for the manual step, jitted
    `manual_grad`, jaxbp's quantities, the vmap route's, BackPACK's and torch's plain
    backward pass; and per quantity the vmap route's largest relative difference to jaxbp
    (checked before anything is timed)."""
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
    calls["manual_grad"] = blocking(jitted(jaxbp.manual_grad, net), params, data)
    calls |= {f"jaxbp {q}": blocking(f, params, data) for q, f in jaxbp_fns.items()}
    calls |= {f"vmap {q}": blocking(f, params, data) for q, f in vmap_fns.items()}
    calls |= {f"BackPACK {q}": c for q, c in backpack_calls(params, data).items()}
    return calls, agreement


def probe(calls):
    """`{name: seconds}`: each call compiled (its first call), then timed once."""
    seconds = {}
    for name, call in calls.items():
        call(0)
        begin = time.perf_counter()
        call(1)
        seconds[name] = time.perf_counter() - begin
    return seconds


def timed_in_turn(calls, reps, ours):
    """`(seconds, apart)`: `seconds[name]` maps every name to seconds per call, timed
    round-robin (`reps` calls each) with all the others; a call slower than `SLOW_S` at
    its probe is timed apart instead, in a round-robin of its own with the calls `ours`
    (`SLOW_REPS` rounds of one call each), and `apart[name]` holds that round-robin's
    times (of `ours` too), so that a ratio to a slow call is taken within one run."""
    slow = [name for name, t in probe(calls).items() if t > SLOW_S]
    fast = {name: call for name, call in calls.items() if name not in slow}
    seconds = bench.round_robin(fast, reps, rounds=5, warmup=1)
    apart = {}
    if slow:
        log(f"timing {', '.join(slow)} apart ({SLOW_REPS} reps each: > {SLOW_S} s a call)")
        group = {name: calls[name] for name in [*ours, *slow]}
        times = bench.round_robin(group, SLOW_REPS, rounds=SLOW_REPS, warmup=0)
        seconds |= {name: times[name] for name in slow}
        apart = dict.fromkeys(slow, times)
    return seconds, apart


def quantity_rows(config, reps):
    """Parts 1-3 for one configuration: `(rows, record)`, a row per quantity (times and
    ratios) and the configuration's record (sizes, batch and the baselines' times)."""
    calls, agreement = quantity_calls(config)
    calls, every_time = recorded(calls)
    ours = ["manual step", *(f"jaxbp {q}" for q in QUANTITIES)]
    seconds, apart = timed_in_turn(calls, reps, ours)

    def ratio(q, other):
        """jaxbp's `q` over `other`: from the medians of the round-robin that timed
        `other`, and from the fastest call of each."""
        times = apart.get(other, seconds)
        fastest = min(every_time[f"jaxbp {q}"]) / min(every_time[other])
        return times[f"jaxbp {q}"] / times[other], fastest

    rows = []
    for q in QUANTITIES:
        others = {"manual_step": "manual step", "vmap": f"vmap {q}", "backpack": f"BackPACK {q}"}
        row = {"config": config.name, "quantity": q, "jaxbp_ms": 1e3 * seconds[f"jaxbp {q}"]}
        for key, other in others.items():
            row[f"{key}_ms"] = 1e3 * seconds[other]
            row[f"over_{key}"], row[f"over_{key}_min"] = ratio(q, other)
        row["timed_apart"] = [other for other in others.values() if other in apart]
        row["vmap_rel_diff"] = agreement[q]
        rows.append(row)
    record = {
        "config": config.name,
        "sizes": list(config.sizes),
        "batch": config.batch,
        "manual_step_ms": 1e3 * seconds["manual step"],
        "manual_grad_ms": 1e3 * seconds["manual_grad"],
        "torch_backward_ms": 1e3 * seconds["BackPACK torch backward"],
    }
    return rows, record


def one_core(torch):
    """Pin this process to one core, and torch to one thread (XLA sizes its pool from the
    affinity): on a shared machine a thread pool that waits for a busy core distorts the
    times, torch's most, and one core each compares the libraries' work, not their pools.
    Must come before jax's backend starts. Returns the core."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


# --- the tables ------------------------------------------------------------------------------


def yes(ok):
    return "yes" if ok else "**no**"


def dagger(row, route):
    """A mark on a time measured apart (slower than `SLOW_S`)."""
    return " †" if f"{route} {row['quantity']}" in row["timed_apart"] else ""


def shape(record):
    """`64-128-128-10, batch 128`."""
    return f"{'-'.join(map(str, record['sizes']))}, batch {record['batch']}"


def times(ratio):
    """A ratio at two decimals, or two significant digits below 0.1 (`0.0038`)."""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def ratio_cell(row, key, target):
    """`median ratio (fastest-call ratio) yes/no`, the target checked on the median."""
    value = row[f"over_{key}"]
    return f"{times(value)} ({times(row[f'over_{key}_min'])}) {yes(target(value))}"


def config_table(record, rows):
    """One configuration's heading, baselines and table."""
    header = [
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
            r["quantity"],
            f"{r['jaxbp_ms']:.2f}",
            ratio_cell(r, "manual_step", lambda v: v <= 2),
            f"{r['vmap_ms']:.2f}{dagger(r, 'vmap')}",
            ratio_cell(r, "vmap", lambda v: v < 1),
            f"{r['backpack_ms']:.2f}{dagger(r, 'BackPACK')}",
            ratio_cell(r, "backpack", lambda v: v < 1),
        ]
        for r in rows
    ]
    text = (
        f"### {record['config']} ({shape(record)})\n\nManual step "
        f"{record['manual_step_ms']:.2f} ms, jitted manual_grad {record['manual_grad_ms']:.2f} "
        f"ms, torch forward+backward {record['torch_backward_ms']:.2f} ms.\n\n"
    )
    return text + markdown_table(header, body)


def span(values):
    """`a-b` (or `a` when all are equal as `times` writes them)."""
    low, high = times(min(values)), times(max(values))
    return low if low == high else f"{low}-{high}"


def summary(result):
    """The measured numbers in a few sentences: per configuration each quantity over the
    manual step and the ranges over the vmap route and BackPACK; K-FAC against kfac-jax."""
    parts = []
    for record in result["configs"]:
        rows = [r for r in result["quantities"] if r["config"] == record["config"]]
        steps = ", ".join(f"{r['over_manual_step']:.2f}x ({r['quantity']})" for r in rows)
        parts.append(
            f"On {record['config']} ({shape(record)}) jaxbp's quantities take {steps} the "
            f"manual step's time, {span([r['over_vmap'] for r in rows])}x the vmap route's and "
            f"{span([r['over_backpack'] for r in rows])}x BackPACK's."
        )
    k = result["kfac"]
    runs = k["runs"]
    ours, sgd = runs["jaxbp_kfac"], runs["sgd"]
    text = (
        f"jaxbp's K-FAC step on {k['config']} takes {ours['ms_per_step']:.1f} ms "
        f"({ours['ms_per_step'] / sgd['ms_per_step']:.2f}x the SGD step"
    )
    losses = f"a loss of {ours['loss_last5_mean']:.3f} over its last 5 of {k['train_steps']} steps"
    if "kfac_jax" in runs:
        theirs = runs["kfac_jax"]
        text += f", {ours['ms_per_step'] / theirs['ms_per_step']:.2f}x kfac-jax's"
        losses += f" (kfac-jax {theirs['loss_last5_mean']:.3f}"
    else:
        losses += " (kfac-jax not run"
    losses += f", SGD {sgd['loss_last5_mean']:.3f})"
    parts.append(f"{text}) and reaches {losses}.")
    return " ".join(parts)


def kfac_table(k):
    """The K-FAC section: settings, then a row per optimizer."""
    text = (
        f"## K-FAC training step ({k['config']}: {shape(k)})\n\n"
        "SGD(0.01, momentum 0.9) for all; K-FAC damping 0.1, decay 0.95, "
        f"inverses every {k['window']} steps, one sampled label per example. Time per step: the "
        f"fastest of {k['windows']} windows of {k['window']} consecutive steps (each with one "
        "inverse refresh), taken in turn with the other optimizers, divided by the window; "
        "first step = building the optimizer state and the first step (tracing, compilation). "
        f"Loss after {k['train_steps']} steps on a learnable task (teacher labels), same "
        f"initialisation and batches. kfac-jax: {k['kfac_jax_note']}.\n\n"
    )
    names = {"sgd": "SGD step (jaxbp manual)", "jaxbp_kfac": "jaxbp KFAC", "kfac_jax": "kfac-jax"}
    sgd = k["runs"]["sgd"]["ms_per_step"]
    header = [
        "optimizer",
        "ms / step",
        "/ SGD step",
        "first step s",
        "loss step 1",
        f"loss steps {k['train_steps'] - 4}-{k['train_steps']}",
        "held-out loss",
    ]
    body = [
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
    return text + markdown_table(header, body)


def markdown(result):
    load = result["load_average_1min"]
    text = (
        "## jaxbp curvature bench (CPU, float32)\n\n"
        f"{result['device']}; the process pinned to one core (jax and torch one compute "
        f"thread each: the machine is shared, 1-minute load average {load['start']:.1f} at "
        f"the start, {load['end']:.1f} at the end). Times: round-robin, the smallest of the "
        "per-round medians. tanh MLP, softmax cross-entropy (mean). The manual step is "
        "`jaxbp bench`'s (manual_grad + SGD with momentum, jitted); BackPACK's time is one "
        "forward and one backward pass with the extension (for batch_dot_grad BackPACK 1.7 "
        "has no `BatchDotGrad`: `BatchGrad` and the Gram matrix of its (N, P) per-example "
        "gradients, as the vmap route forms them; jaxbp multiplies each layer's (N, N) Gram "
        "matrices of its inputs and deltas). Ratios: from the medians, and in parentheses from "
        "the fastest call of each (less sensitive to other processes on the machine); yes/no: "
        "the target, on the medians. The vmap route agrees with jaxbp to "
        f"{max(r['vmap_rel_diff'] for r in result['quantities']):.1e} (max relative "
        "difference, float32) before it is timed.\n\n"
        f"**Summary.** {result['summary']}\n\n"
    )
    for record in result["configs"]:
        rows = [r for r in result["quantities"] if r["config"] == record["config"]]
        text += config_table(record, rows) + "\n"
    if any(r["timed_apart"] for r in result["quantities"]):
        text += (
            f"† slower than {SLOW_S} s a call: timed apart, {SLOW_REPS} rounds of one call "
            "each in turn with the manual step and jaxbp's four calls, and its ratio taken "
            "from that round-robin.\n\n"
        )
    text += kfac_table(result["kfac"])
    return text + "\n" + "".join(f"- {line}\n" for line in result["notes"])


def kfac_jax_clause(k):
    """`; kfac-jax's step, with the same work, is R x the SGD step` (or nothing)."""
    if "kfac_jax" not in k["runs"]:
        return ""
    ratio = k["runs"]["kfac_jax"]["ms_per_step"] / k["runs"]["sgd"]["ms_per_step"]
    return f"; kfac-jax's step, with the same work, is {ratio:.2f}x the SGD step"


def notes(result):
    """Short sentences on the targets, from the numbers."""
    out = []
    outputs = {c["config"]: c["sizes"][-1] for c in result["configs"]}
    for r in result["quantities"]:
        where = f"{r['config']} {r['quantity']}"
        if r["over_manual_step"] > 2:
            why = (
                f"it carries K = {outputs[r['config']]} curvature columns back through every "
                "layer but the first, where the step carries one delta"
                if r["quantity"] == "diag_ggn"
                else "the per-example squares and products add work of the backward pass's size"
            )
            out.append(f"{where}: {r['over_manual_step']:.2f}x the manual step (target 2x): {why}.")
        if r["over_vmap"] >= 1:
            out.append(f"{where}: not faster than the vmap route ({r['over_vmap']:.2f}x).")
        if r["over_backpack"] >= 1:
            out.append(f"{where}: not faster than BackPACK ({r['over_backpack']:.2f}x).")
    k = result["kfac"]
    ratio = k["runs"]["jaxbp_kfac"]["ms_per_step"] / k["runs"]["sgd"]["ms_per_step"]
    if ratio > 2:
        sizes = k["sizes"]
        out.append(
            f"jaxbp K-FAC is {ratio:.2f}x the SGD step (target 2x): the sampled column doubles "
            "the backward pass, the factors add (n_in^2 + n_out^2) x batch per layer, the "
            "preconditioning n_in^2 n_out + n_in n_out^2 per layer, and every "
            f"{k['window']} steps the refresh inverts {len(sizes) - 1} pairs of factors up to "
            f"{max(sizes)}x{max(sizes)}{kfac_jax_clause(k)}."
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

    core = one_core(torch)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    start = time.perf_counter()
    names, reps, kfac_config = ("small", "medium"), 200, "medium"
    window, windows, train_steps = 10, 9, 50
    if args.smoke:
        names, reps, kfac_config = ("small",), 6, "small"
        window, windows, train_steps = 3, 2, 6
    load_before = os.getloadavg()[0]
    kfac_jax, kfac_jax_note = kfac_jax_status()
    log(f"kfac-jax: {kfac_jax_note}")
    quantities, configs = [], []
    for name in names:
        config = bench.CONFIGS[name]
        rows, record = quantity_rows(
            config, bench.reps_for(config, reps) if not args.smoke else reps
        )
        quantities += rows
        configs.append(record)
        for r in rows:
            log(
                f"{name} {r['quantity']}: {r['jaxbp_ms']:.2f} ms, "
                f"{r['over_manual_step']:.2f}x step, {r['over_vmap']:.2f}x vmap, "
                f"{r['over_backpack']:.2f}x BackPACK ({time.perf_counter() - start:.0f} s)"
            )
    config = bench.CONFIGS[kfac_config]
    runs = kfac_runs(config, kfac_jax, window, windows, train_steps, N_BATCHES)
    for name, r in runs.items():
        log(
            f"{kfac_config} {name}: {r['ms_per_step']:.2f} ms/step, first step "
            f"{r['first_step_s']:.1f} s, loss {r['loss_first']:.3f} -> {r['loss_last5_mean']:.3f}"
        )
    result = {
        "experiment": "curvature_bench",
        "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)",
        "core": core,
        "threads": 1,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "backpack-for-pytorch": importlib.metadata.version("backpack-for-pytorch"),
            "kfac-jax": None if kfac_jax is None else importlib.metadata.version("kfac-jax"),
        },
        "smoke": args.smoke,
        "configs": configs,
        "quantities": quantities,
        "kfac": {
            "config": kfac_config,
            "sizes": list(config.sizes),
            "batch": config.batch,
            "window": window,
            "windows": windows,
            "train_steps": train_steps,
            "kfac_jax_note": kfac_jax_note,
            "runs": runs,
        },
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    result["summary"] = summary(result)
    result["notes"] = notes(result)
    result["wall_s"] = time.perf_counter() - start
    text = markdown(result)
    write_results(args.out, "curvature_bench", result, text)
    log(text)
    log(f"wrote curvature_bench.{{json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
