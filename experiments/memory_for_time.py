"""Memory for time: what back-propagation gains by storing the forward flow.

The chapter says back-propagation stores every layer's forward values (and backward
flow) so that each layer's gradient is one product of stored quantities, like dynamic
programming; recomputing them instead repeats work. This times and sizes, as the depth L
of a tanh MLP grows (width and batch fixed, cross-entropy, float32), seven ways to the
same gradient:

- `manual`: `jaxbp.manual_grad`, eqs. 1.3-1.4; stores every z_l, a_l and delta_l.
- `autodiff`: `jax.grad` of `jaxbp.loss_fn`, XLA's own reverse mode, for reference.
- `naive`: the recursion without dynamic programming (`naive_grad` below): for each layer
  l, from the output down, the forward flow from the input x up to z_l is recomputed,
  keeping only the current layer's arrays; the backward flow takes one step of eq. 1.4,
  delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T), and dL/dW_l = a_{l-1}^T delta_l. No
  z_l or a_l outlives its layer's step: O(L^2) layer evaluations, O(1) stored
  activations. (Carrying delta_{l+1} down is the recursion itself; recomputing it too,
  from the output for every l, would cost O(L^3) work, or O(L) stored z's, which saves
  no memory at all.)
- `checkpoint_each`: `jax.grad` of a loss whose every hidden layer is wrapped in
  `jax.checkpoint` (rematerialisation: only a layer's input is saved).
- `checkpoint_sqrt`: the same with segments of ceil(sqrt(L-1)) layers per checkpoint, the
  classic O(sqrt L)-memory schedule.
- `remat_each`, `remat_sqrt`: the same two schedules with the rematerialisation written
  out (`remat_block`, a custom_vjp), because XLA's CPU compiler (jax 0.10) merges
  jax.checkpoint's recomputation back into the forward pass (the findings show it by
  XLA's flop count).

Times are medians of repeated calls of the compiled programs, the methods interleaved
round by round; bytes come from XLA's compiled memory analysis
(`jax.jit(f).lower(...).compile().memory_analysis()`). Growth with L is fitted both by
the log-log slope and by least squares of a + b L against a + b L + c L^2.

Writes under `--out` (default experiments/results): memory_for_time.png, .json, .md.

Usage: python experiments/memory_for_time.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from _common import log, make_parser, write_results
from jaxbp import SOFTMAX
from jaxbp.app.plots import pyplot

ACTIVATION = "tanh"
LOSS = "cross_entropy"
METHODS = (
    "manual",
    "autodiff",
    "naive",
    "checkpoint_each",
    "checkpoint_sqrt",
    "remat_each",
    "remat_sqrt",
)
MEMORY_FIELDS = (
    "temp_size_in_bytes",
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "peak_memory_in_bytes",
)


# --- (b) the recursion without dynamic programming ---------------------------------------


def naive_grad(hidden, out, x, y):
    """The gradient of the mean cross-entropy, recomputing the forward flow for every layer.

    `hidden`: `{"W": (L-1, n, n), "b": (L-1, n)}`, the hidden layers 1..L-1 stacked (the
    input has n features too); `out`: `{"W": (n, K), "b": (K,)}`; `x: (batch, n)`;
    `y: (batch,)` integer labels. Returns grads of the same structure as `(hidden, out)`.
    Loops are `lax` loops, so the recomputations cannot be merged by the compiler.
    """
    act = jaxbp.ACTIVATIONS[ACTIVATION]
    n_hidden = hidden["W"].shape[0]

    def layer(k, a):  # a_{k+1} = phi(a_k @ W_{k+1} + b_{k+1}), eq. 1.1
        return act.fn(a @ hidden["W"][k] + hidden["b"][k][None, :])

    def forward_to(l):
        """(a_{l-1}, z_l) for a hidden layer l in 1..L-1, from x, storing nothing else."""
        a = jax.lax.fori_loop(0, l - 1, layer, x)
        return a, a @ hidden["W"][l - 1] + hidden["b"][l - 1][None, :]

    # layer L: the whole forward flow, then the source of the backward flow
    a_last = jax.lax.fori_loop(0, n_hidden, layer, x)  # a_{L-1}
    z_out = a_last @ out["W"] + out["b"][None, :]
    labels = jax.nn.one_hot(y, out["W"].shape[1], dtype=x.dtype)
    delta = jaxbp.LOSSES[LOSS].delta(z_out, SOFTMAX.fn(z_out), labels, SOFTMAX) / x.shape[0]
    grad_out = {"W": a_last.T @ delta, "b": jnp.sum(delta, axis=0)}

    def step(i, carry):  # hidden layer l = L-1-i, from the top down
        back, gW, gb = carry  # back = delta_{l+1} @ W_{l+1}^T, (batch, n)
        l = n_hidden - i
        a_prev, z = forward_to(l)  # recomputed: O(l) work
        delta = act.backward(z, act.fn(z), back)  # eq. 1.4, phi'(z_l) * back
        gW = gW.at[l - 1].set(a_prev.T @ delta)  # eq. 1.3
        gb = gb.at[l - 1].set(jnp.sum(delta, axis=0))
        return delta @ hidden["W"][l - 1].T, gW, gb

    init = (delta @ out["W"].T, jnp.zeros_like(hidden["W"]), jnp.zeros_like(hidden["b"]))
    _, gW, gb = jax.lax.fori_loop(0, n_hidden, step, init)
    return {"W": gW, "b": gb}, grad_out


def stack(params):
    """List-of-layers params to `naive_grad`'s `(hidden, out)`."""
    hidden = {k: jnp.stack([p[k] for p in params[:-1]]) for k in ("W", "b")}
    return hidden, params[-1]


def unstack(hidden, out):
    n = hidden["W"].shape[0]
    return [{"W": hidden["W"][i], "b": hidden["b"][i]} for i in range(n)] + [out]


# --- (c) rematerialisation --------------------------------------------------------------


def hidden_block(params, a):
    """Hidden layers `params` applied to `a`, by the library's forward (tanh throughout)."""
    return jaxbp.forward(params, a, activation=ACTIVATION, output_activation=ACTIVATION)


@jax.custom_vjp
def remat_block(params, a):
    """`hidden_block`, differentiated by recomputing it in the backward pass from its
    saved input: rematerialisation written out, for when the compiler undoes jax.checkpoint."""
    return hidden_block(params, a)


def _remat_fwd(params, a):
    return hidden_block(params, a), (params, a)  # save the block's input only


def _remat_bwd(saved, g):
    params, a = saved
    # `+ 0 * g` ties the recomputation to the incoming cotangent, so XLA can neither run
    # it during the forward pass nor merge it with the forward pass's copy by CSE.
    a = a + 0 * g[:1, :1]
    _, vjp = jax.vjp(hidden_block, params, a)
    return vjp(g)


remat_block.defvjp(_remat_fwd, _remat_bwd)


def segmented_loss(params, x, y, *, block, segment):
    """The mean cross-entropy with the hidden layers run by `block` in segments of
    `segment` layers (`block` is `jax.checkpoint(hidden_block)` or `remat_block`)."""
    a = x
    hidden = params[:-1]
    for i in range(0, len(hidden), segment):
        a = block(hidden[i : i + segment], a)
    return jaxbp.loss_fn(params[-1:], a, y, activation=ACTIVATION, loss=LOSS)


def programs(depth):
    """Each method as `(function, how to build its arguments from (params, x, y))`."""
    kw = {"activation": ACTIVATION, "loss": LOSS}
    sqrt_segment = max(1, math.ceil(math.sqrt(depth - 1)))
    as_list = lambda p, x, y: (p, x, y)  # noqa: E731
    checkpoint = jax.checkpoint(hidden_block)

    def segmented(block, segment):
        return (jax.grad(partial(segmented_loss, block=block, segment=segment)), as_list)

    return {
        "manual": (partial(jaxbp.manual_grad, **kw), as_list),
        "autodiff": (jax.grad(partial(jaxbp.loss_fn, **kw)), as_list),
        "naive": (naive_grad, lambda p, x, y: (*stack(p), x, y)),
        "checkpoint_each": segmented(checkpoint, 1),
        "checkpoint_sqrt": segmented(checkpoint, sqrt_segment),
        "remat_each": segmented(remat_block, 1),
        "remat_sqrt": segmented(remat_block, sqrt_segment),
    }


def as_layers(method, grads):
    return unstack(*grads) if method == "naive" else grads


def rel_err(grads, ref):
    """Largest per-leaf ||g - ref|| / ||ref|| (float64 arithmetic)."""
    worst = 0.0
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        worst = max(worst, float(np.linalg.norm(g - r) / np.linalg.norm(r)))
    return worst


def memory(compiled) -> dict:
    """XLA's memory analysis as a dict of ints; None where XLA gives none."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        stats = None
    return {f: (None if stats is None else getattr(stats, f, None)) for f in MEMORY_FIELDS}


def flops(compiled) -> float | None:
    """XLA's cost-analysis flop count (a while loop's body is counted once), or None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def make_problem(depth, width, batch, classes, key):
    k_p, k_x, k_y = jax.random.split(key, 3)
    params = jaxbp.init_mlp(k_p, [width] * depth + [classes])
    x = jax.random.normal(k_x, (batch, width), jnp.float32)
    y = jax.random.randint(k_y, (batch,), 0, classes)
    return params, x, y


def measure_depth(depth, cfg, key):
    """Compile every method at one depth, check its gradient, size it and time it."""
    params, x, y = make_problem(depth, cfg["width"], cfg["batch"], cfg["classes"], key)
    compiled, args, rec = {}, {}, {}
    for method, (fn, make_args) in programs(depth).items():
        args[method] = make_args(params, x, y)
        t = time.perf_counter()
        compiled[method] = jax.jit(fn).lower(*args[method]).compile()
        rec[method] = {
            "compile_s": time.perf_counter() - t,
            "memory": memory(compiled[method]),
            "xla_flops": flops(compiled[method]),
        }

    ref = compiled["manual"](*args["manual"])
    for method in METHODS:  # warm-up, and every gradient against manual_grad's
        grads = as_layers(method, compiled[method](*args[method]))
        rec[method]["rel_err_vs_manual"] = rel_err(grads, ref)
    assert rec["naive"]["rel_err_vs_manual"] < cfg["rtol"], rec["naive"]
    assert all(rec[m]["rel_err_vs_manual"] < cfg["rtol"] for m in METHODS), rec

    # one timed round, then as many more as the budget allows; methods interleaved so
    # that a change in the machine's load hits them all alike
    times = {m: [] for m in METHODS}

    def one_round():
        for method in METHODS:
            t = time.perf_counter()
            jax.block_until_ready(compiled[method](*args[method]))
            times[method].append(time.perf_counter() - t)

    one_round()
    per_round = sum(t[0] for t in times.values())
    rounds = min(cfg["max_reps"], max(cfg["min_reps"], int(cfg["budget_s"] / per_round)))
    for _ in range(rounds - 1):
        one_round()
    for method in METHODS:
        rec[method]["times_s"] = times[method]
        rec[method]["median_s"] = statistics.median(times[method])
    for method in METHODS:
        rec[method]["time_vs_manual"] = rec[method]["median_s"] / rec["manual"]["median_s"]
    return rec


def aliasing_check(depths, size, classes, key):
    """manual_grad's XLA temp buffer when batch == width == `size` (compiled, not run):
    each stored activation then has the shape of a weight gradient."""
    out = {}
    for depth in depths:
        params, x, y = make_problem(depth, size, size, classes, key)
        fn, _ = programs(depth)["manual"]
        out[depth] = memory(jax.jit(fn).lower(params, x, y).compile())["temp_size_in_bytes"]
    return out


# --- fits ------------------------------------------------------------------------------------


def growth_class(slope: float) -> str:
    if slope < 0.25:
        return "constant"
    if slope < 0.75:
        return "sublinear"
    return "linear" if slope < 1.5 else "quadratic"


def fit(depths, values) -> dict:
    """Growth of `values` with depth: the log-log slope (over depths >= 8 where there are
    three such points, else all), and weighted least squares (relative residuals) of
    a + b L against a + b L + c L^2, with the share of c L^2 at the largest depth."""
    L = np.asarray(depths, np.float64)
    v = np.asarray(values, np.float64)
    use = L >= 8 if np.sum(L >= 8) >= 3 else np.ones_like(L, bool)
    slope = float(np.polyfit(np.log(L[use]), np.log(v[use]), 1)[0])
    out = {"loglog_slope": slope, "slope_depths": L[use].astype(int).tolist()}
    for name, cols in (("linear", [L**0, L]), ("quadratic", [L**0, L, L**2])):
        A = np.stack(cols, axis=1)
        coef, *_ = np.linalg.lstsq(A / v[:, None], np.ones_like(v), rcond=None)
        out[name] = {
            "coef": coef.tolist(),
            "rel_rms_residual": float(np.sqrt(np.mean((A @ coef / v - 1) ** 2))),
        }
    a, b, c = out["quadratic"]["coef"]
    top = L.max()
    out["quadratic_share_at_max_depth"] = float(c * top**2 / (a + b * top + c * top**2))
    out["growth"] = growth_class(slope)
    return out


# --- output ---------------------------------------------------------------------------------


def mib(b):
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def figure(depths, records, path):
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    top = depths[-1]
    fig, (ax_t, ax_m, ax_r) = plt.subplots(1, 3, figsize=(17, 5.2))
    for i, method in enumerate(METHODS):
        r = records[top][method]
        style = {
            "color": f"C{i}",
            "marker": "osD^v<>"[i],
            "ms": 4,
            "ls": "--" if method.startswith("checkpoint") else "-",
        }
        med = [records[d][method]["median_s"] * 1e3 for d in depths]
        q1, q3 = np.transpose(
            [np.percentile(records[d][method]["times_s"], [25, 75]) * 1e3 for d in depths]
        )
        ax_t.plot(depths, med, label=f"{method} ({med[-1]:.1f} ms at L={top})", **style)
        ax_t.fill_between(depths, q1, q3, color=f"C{i}", alpha=0.15, lw=0)
        temp = [records[d][method]["memory"]["temp_size_in_bytes"] for d in depths]
        if all(t is not None for t in temp):
            label = f"{method} ({mib(temp[-1])} MiB at L={top})"
            ax_m.plot(depths, [max(t, 1) / 2**20 for t in temp], label=label, **style)
        ratio = [records[d][method]["time_vs_manual"] for d in depths]
        label = f"{method} ({r['time_vs_manual']:.2f}x at L={top})"
        ax_r.plot(depths, ratio, label=label, **style)
    ref = np.asarray(depths, np.float64)
    t0 = records[top]["manual"]["median_s"] * 1e3
    ax_t.plot(ref, t0 * ref / ref[-1], "k:", lw=1, label="slope 1 (linear)")
    ax_t.plot(ref, 8 * t0 * (ref / ref[-1]) ** 2, "k-.", lw=1, label="slope 2 (quadratic)")
    ax_t.set(ylabel="median time per gradient (ms)", title="time (band: quartiles of the rounds)")
    ax_m.set(ylabel="XLA temp buffer (MiB)", title="memory: compiled temp_size_in_bytes")
    ax_r.set(ylabel="time / manual_grad's time", title="time relative to manual_grad")
    for ax in (ax_t, ax_m, ax_r):
        ax.set(xscale="log", yscale="log", xlabel="depth L (weight layers)")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7.5)
    ax_r.yaxis.set_major_formatter(ScalarFormatter())
    ax_r.yaxis.set_minor_formatter(ScalarFormatter())
    fig.suptitle(
        "Memory for time: the gradient of a tanh MLP by stored forward flow (manual_grad), "
        "recomputation (naive) and rematerialisation",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tables(depths, records, fits) -> str:
    lines = [
        "Median time per gradient (ms) and, in the last columns, the ratio to manual_grad's:",
        "",
        "| depth | "
        + " | ".join(METHODS)
        + " | "
        + " | ".join(f"{m} / manual" for m in METHODS[1:])
        + " |",
        "|---|" + "---|" * (2 * len(METHODS) - 1),
    ]
    for d in depths:
        r = records[d]
        lines.append(
            f"| {d} | "
            + " | ".join(f"{r[m]['median_s'] * 1e3:.2f}" for m in METHODS)
            + " | "
            + " | ".join(f"{r[m]['time_vs_manual']:.2f}" for m in METHODS[1:])
            + " |"
        )
    lines += [
        "",
        "XLA temp buffer (MiB) from the compiled memory analysis; arguments (parameters and "
        "data) and outputs (gradients) are the same for every method and listed once:",
        "",
        "| depth | " + " | ".join(METHODS) + " | arguments | outputs |",
        "|---|" + "---|" * (len(METHODS) + 2),
    ]
    for d in depths:
        r = records[d]
        lines.append(
            f"| {d} | "
            + " | ".join(mib(r[m]["memory"]["temp_size_in_bytes"]) for m in METHODS)
            + f" | {mib(r['manual']['memory']['argument_size_in_bytes'])}"
            f" | {mib(r['manual']['memory']['output_size_in_bytes'])} |"
        )
    lines += [
        "",
        "XLA's flop count from the compiled cost analysis (GFLOP; `naive` runs in while "
        "loops, whose bodies XLA counts once, so its entry is not its work):",
        "",
        "| depth | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for d in depths:
        r = records[d]
        cells = [
            "n/a" if r[m]["xla_flops"] is None else f"{r[m]['xla_flops'] / 1e9:.3f}"
            for m in METHODS
        ]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Growth with depth: log-log slope (0 constant, 0.5 square root, 1 linear, "
        "2 quadratic) and its class, and the least-squares fits (relative RMS residual of "
        "a + bL and of a + bL + cL^2, and the share of cL^2 in the quadratic fit at the "
        "largest depth):",
        "",
        "| method | quantity | log-log slope | growth | linear fit resid. | quadratic fit "
        "resid. | cL^2 share |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for qty in ("time", "temp_bytes"):
            f = fits[method].get(qty)
            if f is None:
                lines.append(f"| {method} | {qty} | n/a | n/a | n/a | n/a | n/a |")
                continue
            lines.append(
                f"| {method} | {qty} | {f['loglog_slope']:.2f} | {f['growth']} "
                f"| {f['linear']['rel_rms_residual']:.3f} "
                f"| {f['quadratic']['rel_rms_residual']:.3f} "
                f"| {f['quadratic_share_at_max_depth']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def findings(depths, records, fits, cfg, aliasing) -> list[str]:
    """Sentences computed from the numbers, for the Markdown."""
    top = depths[-1]
    r = records[top]
    temp = {m: r[m]["memory"]["temp_size_in_bytes"] for m in METHODS}
    fl = {m: r[m]["xla_flops"] for m in METHODS}

    def growth(m, q):
        f = fits[m].get(q)
        return "n/a" if f is None else f"{f['growth']} (slope {f['loglog_slope']:.2f})"

    lines = [
        "- Time: "
        + ", ".join(f"{m} {growth(m, 'time')}" for m in METHODS)
        + f". At depth {top}, relative to manual_grad: "
        + ", ".join(f"{m} {r[m]['time_vs_manual']:.2f}x" for m in METHODS[1:])
        + "."
    ]
    products = {"manual": 3 * top - 1, "naive": top + top * (top - 1) // 2 + 2 * top}
    lines.append(
        f"- Counting matrix products at depth {top}: manual_grad does {products['manual']} "
        f"(L forward, L for the dW_l, L-1 for the backward flow), the naive recursion "
        f"{products['naive']} (L + L(L-1)/2 forward, 2L backward), "
        f"{products['naive'] / products['manual']:.1f}x as many; the measured time ratio "
        f"is {r['naive']['time_vs_manual']:.1f}x."
    )
    if all(v is not None for v in temp.values()):
        layer = 4 * cfg["batch"] * cfg["width"]
        lines.append(
            f"- Memory (XLA temp buffer at depth {top}; one layer's activations, batch x "
            f"width float32, are {mib(layer)} MiB): "
            + ", ".join(f"{m} {mib(temp[m])} MiB" for m in METHODS)
            + ". Growth: "
            + ", ".join(f"{m} {growth(m, 'temp_bytes')}" for m in METHODS)
            + "."
        )
    else:
        lines.append("- Memory: XLA gave no memory analysis on this backend.")
    if all(fl[m] is not None for m in ("manual", "checkpoint_each", "remat_each")):
        same = abs(fl["checkpoint_each"] / fl["manual"] - 1) < 0.02
        lines.append(
            f"- Recomputation, by XLA's flop count at depth {top}: manual "
            f"{fl['manual'] / 1e9:.3f} GFLOP, jax.checkpoint per layer "
            f"{fl['checkpoint_each'] / 1e9:.3f}, sqrt segments "
            f"{fl['checkpoint_sqrt'] / 1e9:.3f}; remat_block per layer "
            f"{fl['remat_each'] / 1e9:.3f}, sqrt segments {fl['remat_sqrt'] / 1e9:.3f}. "
            + (
                "The jax.checkpoint programs do no more work than manual_grad: on this "
                "backend XLA merged the recomputation back into the forward pass, so "
                "they rematerialise nothing."
                if same
                else "The jax.checkpoint programs do recompute."
            )
        )
    if aliasing and all(v is not None for v in aliasing.values()):
        lines.append(
            f"- Side check, batch == width == {cfg['alias_size']}: manual_grad's temp buffer "
            "is "
            + ", ".join(f"{mib(v)} MiB at depth {d}" for d, v in aliasing.items())
            + " (compiled only). When an activation has a weight gradient's shape, XLA can "
            "keep it in the output buffer of a gradient not yet written, so temp_size alone "
            "would hide the stored forward flow; the timed runs use batch != width."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = make_parser(__doc__, "tiny sizes, for tests").parse_args(argv)

    depths = [2, 4] if args.smoke else [2, 4, 8, 16, 32, 64]
    width = 8 if args.smoke else 128  # units per hidden layer, and input features
    batch = 16 if args.smoke else 256  # != width: see aliasing_check
    classes = 10
    budget_s = 0.1 if args.smoke else 5.0  # seconds of timed rounds per depth, about
    min_reps, max_reps = (2, 3) if args.smoke else (9, 51)
    alias_size = 16 if args.smoke else 256  # batch == width for the side check
    rtol = 1e-4  # every gradient against manual_grad's, float32 rounding
    seed = 0

    cfg = {
        "width": width,
        "batch": batch,
        "classes": classes,
        "budget_s": budget_s,
        "min_reps": min_reps,
        "max_reps": max_reps,
        "alias_size": alias_size,
        "rtol": rtol,
    }
    start = time.perf_counter()
    key = jax.random.key(seed)
    records = {}
    for depth in depths:
        t = time.perf_counter()
        rec = measure_depth(depth, cfg, jax.random.fold_in(key, depth))
        records[depth] = rec
        log(
            f"depth {depth:>2} ({time.perf_counter() - t:5.1f} s, "
            f"{len(rec['manual']['times_s'])} rounds): "
            + ", ".join(
                f"{m} {rec[m]['median_s'] * 1e3:.1f} ms/"
                f"{mib(rec[m]['memory']['temp_size_in_bytes'])} MiB"
                for m in METHODS
            )
        )
    aliasing = aliasing_check(depths[:1] if args.smoke else depths, alias_size, classes, key)
    log(
        f"side check, batch == width == {alias_size}: manual temp MiB "
        + ", ".join(f"{d}: {mib(v)}" for d, v in aliasing.items())
    )
    fits = {}
    for method in METHODS:
        fits[method] = {"time": fit(depths, [records[d][method]["median_s"] for d in depths])}
        temp = [records[d][method]["memory"]["temp_size_in_bytes"] for d in depths]
        if all(t is not None and t > 0 for t in temp):
            fits[method]["temp_bytes"] = fit(depths, temp)

    args.out.mkdir(parents=True, exist_ok=True)
    figure(depths, records, args.out / "memory_for_time.png")
    wall = time.perf_counter() - start
    found = findings(depths, records, fits, cfg, aliasing)
    result = {
        "experiment": "memory_for_time",
        "config": {
            **cfg,
            "depths": depths,
            "activation": ACTIVATION,
            "loss": LOSS,
            "dtype": "float32",
            "init": "glorot_normal",
            "sqrt_segments": {d: max(1, math.ceil(math.sqrt(d - 1))) for d in depths},
        },
        "methods": list(METHODS),
        "records": {str(d): records[d] for d in depths},
        "fits": fits,
        "aliasing_check_temp_bytes": {str(d): v for d, v in aliasing.items()},
        "findings": found,
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "wall_s": wall,
    }
    md = [
        "# Memory for time: stored forward flow against recomputation",
        "",
        f"tanh MLP {width}-{width}x(L-1)-{classes}, batch {batch}, cross-entropy, float32, "
        f"on {result['device']} (jax {jax.__version__}), depths {depths}. Median wall time "
        "per gradient of the compiled program over repeated rounds, the methods interleaved "
        "in each round; every method's gradient matches manual_grad's to a relative error "
        f"below {rtol:g} per leaf (asserted). Methods: `manual` = jaxbp.manual_grad (stores "
        "the forward flow); `autodiff` = jax.grad of jaxbp.loss_fn; `naive` = the forward "
        "flow recomputed from x for every layer, nothing of it stored (O(L^2) layer "
        "evaluations); `checkpoint_*` = jax.grad with jax.checkpoint around every layer "
        "(`each`) or around segments of ceil(sqrt(L-1)) layers (`sqrt`); `remat_*` = the "
        "same segments with the recomputation written out (a custom_vjp that saves a "
        "segment's input and recomputes it in the backward pass, tied to the incoming "
        "cotangent).",
        "",
        "## Findings (computed from the numbers below)",
        "",
        *found,
        "",
        "## Numbers",
        "",
        tables(depths, records, fits),
        f"Run time {wall:.0f} s.",
    ]
    write_results(args.out, "memory_for_time", result, "\n".join(md) + "\n")
    log(f"wrote {args.out}/memory_for_time.{{png,json,md}} in {wall:.1f} s")


if __name__ == "__main__":
    main()
