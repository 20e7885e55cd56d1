"""Eq. 1.4 at work: where the backward flow vanishes, by activation, initialisation and depth.

For sigmoid, tanh and relu MLPs on the digits data (64 inputs, `width` units in every
hidden layer, 10 softmax outputs, cross-entropy), at depths 2..20, under the "standard"
initialisation U[-1/sqrt(n_in), 1/sqrt(n_in)] and under the normalised one (Glorot
uniform for sigmoid and tanh, He normal for relu), this measures layer by layer the norm
of the backward flow ||delta_l|| and of the weight gradient ||dL/dW_l||, read from
`jaxbp.backprop`'s trace on the whole training set: at initialisation, and again after
a few hundred steps of plain SGD. Seeds and both initialisations of one
(activation, depth) run side by side in one vmapped, jitted program.

The finding tested (Glorot & Bengio, 2010): under the standard initialisation the
back-propagated gradients shrink toward the input layer, the sigmoid worst; under the
normalised initialisation with tanh they stay roughly level.

Writes under `--out` (default experiments/results): vanishing_gradients.png, .json, .md.

Usage: python experiments/vanishing_gradients.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, rounded, write_results
from jaxbp.app.plots import pyplot

NORMALISED = {"sigmoid": "glorot_uniform", "tanh": "glorot_uniform", "relu": "he_normal"}
LEVEL = 10.0
"""A first/last ratio within [1/LEVEL, LEVEL] (less than a decade apart) counts as level."""
DIGITS = 4
THRESHOLDS = (0.01, 0.5)
"""Saturation thresholds, relative to the activation's largest slope: the library's default
(a unit passing back under 1% of what it could) and a lenient one (under half)."""
SATURATION_DEPTH = 10
"""The depth whose saturation the Markdown tabulates (the depth-10 sigmoid story; the
deepest run when it is not run)."""
"""Significant digits of the norms and losses in the JSON (keeps it small)."""


def norm(x: jax.Array) -> jax.Array:
    """The Frobenius norm, scaled by max |x| first, so that float32 entries near 1e-25
    (deep sigmoid nets) do not underflow when squared."""
    m = jnp.max(jnp.abs(x))
    safe = jnp.where(m > 0, m, 1)
    return m * jnp.sqrt(jnp.sum((x / safe) ** 2))


def flow_norms(params, x, y, *, activation):
    """Per-layer ||delta_l|| and ||dL/dW_l||, each `(L,)`, from jaxbp.backprop's trace, and
    per hidden layer `(L - 1,)` the fraction of saturated units at each of `THRESHOLDS`
    (`jaxbp.backward_flow_stats`: slope below that fraction of the activation's largest)."""
    value, grads, trace = jaxbp.backprop(params, x, y, activation=activation, loss="cross_entropy")
    phi = jaxbp.ACTIVATIONS[activation]
    saturated = [jaxbp.backward_flow_stats(trace, grads, phi, t)["saturated"] for t in THRESHOLDS]
    return {
        "loss": value,
        "delta": jnp.stack([norm(d) for d in trace.delta]),
        "dW": jnp.stack([norm(g["W"]) for g in grads]),
        "saturated": jnp.stack(saturated),
    }


@partial(jax.jit, static_argnums=(1, 2, 3))
def init_stack(key, sizes, inits, n_seeds):
    """Parameters for `n_seeds` seeds under each init in `inits`, stacked on a leading axis
    of length len(inits) * n_seeds (init-major). Seed s uses the same key under each init."""
    keys = jax.random.split(key, n_seeds)
    stacks = [jax.vmap(lambda k, i=init: jaxbp.init_mlp(k, sizes, init=i))(keys) for init in inits]
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *stacks)


def run_setting(activation, depth, cfg, data, key):
    """Norms at init and after training for every (init, seed) of one activation and depth,
    all in one jitted program vmapped over the models."""
    x_train = data[0]
    inits = ("standard", NORMALISED[activation])
    sizes = [x_train.shape[1]] + [cfg["width"]] * (depth - 1) + [10]
    k_init, k_train = jax.random.split(key)
    params = init_stack(k_init, tuple(sizes), inits, cfg["seeds"])
    n_models = len(inits) * cfg["seeds"]
    keys = jax.random.split(k_train, (n_models, cfg["epochs"]))  # one per model and epoch

    optimizer = optax.sgd(cfg["lr"])
    epoch = jaxbp.make_train_epoch(
        optimizer, activation=activation, loss="cross_entropy", batch_size=cfg["batch_size"]
    )

    def one_model(params, keys, x_train, y_train, x_test, y_test):
        at_init = flow_norms(params, x_train, y_train, activation=activation)

        def one_epoch(carry, key):
            params, opt_state, metrics = epoch(*carry, key, x_train, y_train)
            return (params, opt_state), jnp.mean(metrics["loss"])

        init_state = (params, optimizer.init(params))
        (params, _), epoch_loss = jax.lax.scan(one_epoch, init_state, keys)
        trained = flow_norms(params, x_train, y_train, activation=activation)
        test = jaxbp.evaluate(params, x_test, y_test, activation=activation, loss="cross_entropy")
        return at_init, trained, epoch_loss, test["accuracy"]

    program = jax.jit(jax.vmap(one_model, in_axes=(0, 0, None, None, None, None)))
    at_init, trained, epoch_loss, accuracy = program(params, keys, *data)

    out = []
    for i, init in enumerate(inits):
        rows = slice(i * cfg["seeds"], (i + 1) * cfg["seeds"])
        record = {"activation": activation, "init": init, "depth": depth}
        for when, res in (("at_init", at_init), ("trained", trained)):
            delta = np.asarray(res["delta"][rows], np.float64)  # (seeds, L)
            dW = np.asarray(res["dW"][rows], np.float64)
            record[when] = {
                "loss": np.asarray(res["loss"][rows]).tolist(),
                "delta_norms": rounded(delta, DIGITS),
                "dW_norms": rounded(dW, DIGITS),
                "delta_ratio": ratios(delta),
                "dW_ratio": ratios(dW),
                # (threshold, hidden layer): the fraction of saturated units, mean over seeds
                "saturated": rounded(np.mean(np.asarray(res["saturated"][rows]), axis=0), 3),
            }
        record["train_loss_per_epoch"] = rounded(epoch_loss[rows], DIGITS)
        record["test_accuracy"] = np.asarray(accuracy[rows]).tolist()
        out.append(record)
    return out


def ratios(norms: np.ndarray) -> list[float]:
    """First-layer over last-layer norm per seed; nan where the last is 0 (a dead net)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (norms[:, 0] / norms[:, -1]).tolist()


def spread(values: list[float]) -> dict:
    """Geometric mean, min and max over seeds of positive finite values, and how many
    seeds gave 0 or nan instead (underflow to 0, or 0/0 in a net whose units all died)."""
    v = np.asarray(values, np.float64)
    ok = v[np.isfinite(v) & (v > 0)]
    if ok.size == 0:
        return {"geomean": None, "min": None, "max": None, "n_bad": int(v.size)}
    return {
        "geomean": float(np.exp(np.mean(np.log(ok)))),
        "log10_std": float(np.std(np.log10(ok))),
        "min": float(ok.min()),
        "max": float(ok.max()),
        "n_bad": int(v.size - ok.size),
    }


def fmt(s: dict) -> str:
    if s["geomean"] is None:
        return f"n/a ({s['n_bad']} zero/nan)"
    bad = f", {s['n_bad']} zero/nan" if s["n_bad"] else ""
    return f"{s['geomean']:.2g} [{s['min']:.2g}, {s['max']:.2g}{bad}]"


def summarise(records: list[dict]) -> None:
    for r in records:
        for when in ("at_init", "trained"):
            for kind in ("delta", "dW"):
                r[when][f"{kind}_ratio_summary"] = spread(r[when][f"{kind}_ratio"])
        acc = np.asarray(r["test_accuracy"])
        r["test_accuracy_summary"] = {
            "mean": float(acc.mean()),
            "min": float(acc.min()),
            "max": float(acc.max()),
        }


def find(records, activation, init, depth):
    return next(
        r for r in records if (r["activation"], r["init"], r["depth"]) == (activation, init, depth)
    )


def verdict(records: list[dict], depth: int, when: str) -> list[str]:
    """Plain statements of what the numbers at `depth` say about the claims tested
    (claims about an activation that was not run say so)."""
    acts = [a for a in NORMALISED if any(r["activation"] == a for r in records)]
    pairs = [(a, i) for a in acts for i in ("standard", NORMALISED[a])]
    g = {p: find(records, *p, depth)[when]["delta_ratio_summary"]["geomean"] for p in pairs}
    w = {p: find(records, *p, depth)[when]["dW_ratio_summary"]["geomean"] for p in pairs}

    def shown(v):
        return "n/a" if v is None else f"{v:.2g}"

    def shrinks(v):
        return v is not None and v < 1 / LEVEL

    def level(v):
        return v is not None and 1 / LEVEL <= v <= LEVEL

    std = {a: g[(a, "standard")] for a in acts}
    which = [a for a, v in std.items() if shrinks(v)]
    lines = [
        f"- Standard init, ||delta_1|| / ||delta_L|| at depth {depth}: "
        + ", ".join(f"{a} {shown(v)}" for a, v in std.items())
        + ". "
        + (
            f"**Agrees**: the backward flow shrinks toward the input for all {len(acts)} "
            f"(by more than a factor {LEVEL:g})."
            if len(which) == len(acts)
            else f"**Partly**: it shrinks by more than a factor {LEVEL:g} only for "
            f"{', '.join(which) or 'none'}."
        )
    ]
    known = {a: v for a, v in std.items() if v is not None}
    worst = min(known, key=known.get) if known else None
    if "sigmoid" not in acts:
        lines.append("- Sigmoid worst under the standard init: not run.")
    else:
        lines.append(
            "- Sigmoid worst under the standard init: "
            + (
                "**agrees** (smallest ratio)."
                if worst == "sigmoid"
                else f"**disagrees**: the smallest ratio is {worst}'s."
            )
        )
    if "tanh" not in acts:
        lines.append("- Normalised (Glorot) init with tanh: not run.")
    else:
        tanh_norm = g[("tanh", NORMALISED["tanh"])]
        lines.append(
            f"- Normalised (Glorot) init with tanh: ratio {shown(tanh_norm)} at depth "
            f"{depth}, i.e. {per_layer(tanh_norm, depth)} per layer. "
            + (
                f"**Agrees**: roughly level (within a factor {LEVEL:g} over {depth - 1} layers)."
                if level(tanh_norm)
                else "**Disagrees**: not level by that measure."
            )
        )
    others = [(a, NORMALISED[a]) for a in acts if a != "tanh"]
    lines.append(
        "- The other normalised settings: "
        + "; ".join(
            f"{a} + {i} {shown(g[(a, i)])} ({'level' if level(g[(a, i)]) else 'not level'})"
            for a, i in others
        )
        + "."
    )
    flat = [
        f"{a} + {i} (delta {shown(g[(a, i)])}, dW {shown(w[(a, i)])})"
        for a, i in pairs
        if shrinks(g[(a, i)]) and level(w[(a, i)])
    ]
    lines.append(
        "- Where the backward flow shrinks but the weight gradients stay level: "
        + ("; ".join(flat) if flat else "none")
        + ". (Glorot & Bengio's linear analysis predicts this at initialisation: "
        "||dW_l|| ~ ||a_{l-1}|| ||delta_l||, and a shrinking delta_l can be offset by "
        "activations a_{l-1} that grow toward the input.)"
    )
    lines.append(
        f"- Weight gradients, ||dW_1|| / ||dW_L|| at depth {depth}: "
        + ", ".join(
            f"{a} {shown(w[(a, 'standard')])} (standard) / {shown(w[(a, NORMALISED[a])])} "
            f"({NORMALISED[a]})"
            for a in acts
        )
        + "."
    )
    return lines


def per_layer(ratio, depth):
    return "n/a" if ratio is None else f"x{ratio ** (1 / (depth - 1)):.3f}"


def saturation(records: list[dict], depth: int) -> list[str]:
    """The saturation table at `depth` and what it says about the sigmoid."""
    lines = [
        "| activation | init | delta ratio, init | "
        + " | ".join(
            f"saturated < {t:g} x slope, {when}" for t in THRESHOLDS for when in ("init", "trained")
        )
        + " |",
        "|---|---|---|" + "---|" * (2 * len(THRESHOLDS)),
    ]
    mean = {}
    for r in (r for r in records if r["depth"] == depth):
        cells = []
        for i in range(len(THRESHOLDS)):
            for when in ("at_init", "trained"):
                layers = r[when]["saturated"][i]
                mean[r["activation"], r["init"], when, i] = float(np.mean(layers))
                cells.append(f"{np.mean(layers):.2f} [{min(layers):.2f}, {max(layers):.2f}]")
        ratio = fmt(r["at_init"]["delta_ratio_summary"])
        lines.append(f"| {r['activation']} | {r['init']} | {ratio} | " + " | ".join(cells) + " |")
    if ("sigmoid", "standard", "at_init", 0) in mean:
        strict, lenient = (mean["sigmoid", "standard", "at_init", i] for i in (0, 1))
        ratio = find(records, "sigmoid", "standard", depth)["at_init"]["delta_ratio_summary"]
        lines += [
            "",
            f"- Sigmoid, standard init, depth {depth}: ||delta_1|| / ||delta_L|| "
            f"{fmt(ratio)} with {strict:.2f} of its hidden units saturated (slope below "
            f"{THRESHOLDS[0]:g} of the sigmoid's largest, 1/4) and {lenient:.2f} below half "
            "of it: "
            + (
                "the flow vanishes through units that pass back nearly all they can. The "
                "bound is the slope itself: each layer multiplies delta by at most 1/4 "
                "times its weights (eq. 1.4, fig. 1.11), not by saturated units."
                if strict < 0.05
                else "saturated units carry part of the loss."
            ),
        ]
    return lines


def table(records: list[dict]) -> str:
    head = (
        "| activation | init | depth | delta ratio, init | delta ratio, trained "
        "| dW ratio, init | dW ratio, trained | test accuracy, trained |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in records:
        acc = r["test_accuracy_summary"]
        lines.append(
            f"| {r['activation']} | {r['init']} | {r['depth']} "
            f"| {fmt(r['at_init']['delta_ratio_summary'])} "
            f"| {fmt(r['trained']['delta_ratio_summary'])} "
            f"| {fmt(r['at_init']['dW_ratio_summary'])} "
            f"| {fmt(r['trained']['dW_ratio_summary'])} "
            f"| {acc['mean']:.3f} [{acc['min']:.3f}, {acc['max']:.3f}] |"
        )
    return head + "\n".join(lines) + "\n"


def geo(norms: list[list[float]]) -> np.ndarray:
    """Geometric mean over seeds, per layer (zeros and nans left out)."""
    a = np.asarray(norms, np.float64)
    a = np.where(np.isfinite(a) & (a > 0), a, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no finite norm: nan
        return np.exp(np.nanmean(np.log(a), axis=0))


def figure(records: list[dict], depths: list[int], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    deep = max(depths)
    acts = [a for a in NORMALISED if any(r["activation"] == a for r in records)]
    fig, axes = plt.subplots(3, len(acts), figsize=(5 * len(acts), 12), squeeze=False)
    for col, act in enumerate(acts):
        for init, color in (("standard", "C3"), (NORMALISED[act], "C0")):
            for when, ls in (("at_init", "-"), ("trained", "--")):
                label = f"{init}, {when.replace('_', ' ')}"
                rec = find(records, act, init, deep)[when]
                layers = np.arange(1, deep + 1)
                a = np.asarray(rec["delta_norms"])
                a = np.where(np.isfinite(a) & (a > 0), a, np.nan)
                axes[0, col].plot(layers, geo(rec["delta_norms"]), ls, color=color, label=label)
                axes[0, col].fill_between(
                    layers,
                    np.nanmin(a, axis=0),
                    np.nanmax(a, axis=0),
                    color=color,
                    alpha=0.12,
                    lw=0,
                )
                for row, kind in ((1, "delta"), (2, "dW")):
                    s = [find(records, act, init, d)[when][f"{kind}_ratio_summary"] for d in depths]
                    y = np.array([np.nan if v["geomean"] is None else v["geomean"] for v in s])
                    lo = np.array([np.nan if v["min"] is None else v["min"] for v in s])
                    hi = np.array([np.nan if v["max"] is None else v["max"] for v in s])
                    axes[row, col].plot(depths, y, ls + "o", color=color, ms=3, label=label)
                    axes[row, col].fill_between(depths, lo, hi, color=color, alpha=0.12, lw=0)
        for ax in axes[:, col]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0, col].set(
            title=f"{act}: ||delta_l|| per layer, depth {deep}",
            xlabel="layer l (1 = first hidden, L = output)",
            ylabel="||delta_l|| (log scale)",
            yscale="log",
        )
        axes[1, col].set(
            title=f"{act}: ||delta_1|| / ||delta_L|| against depth",
            xlabel="depth L (weight layers)",
            ylabel="ratio (log scale)",
            yscale="log",
        )
        axes[2, col].set(
            title=f"{act}: ||dW_1|| / ||dW_L|| against depth",
            xlabel="depth L (weight layers)",
            ylabel="ratio (log scale)",
            yscale="log",
        )
        for ax in axes[1:, col]:
            ax.axhline(1, color="grey", lw=0.8, ls=":")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle(
        "Backward flow under eq. 1.4 on digits: geometric mean over seeds, band = min..max",
        y=0.995,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = make_parser(__doc__, "tiny sizes, for tests").parse_args(argv)

    activations = ["tanh", "relu"] if args.smoke else list(NORMALISED)
    depths = [2, 3] if args.smoke else list(range(2, 21, 2))
    seeds = 1 if args.smoke else 5  # per init; both inits run in the same vmapped program
    width = 16 if args.smoke else 64  # units in every hidden layer
    lr = 0.1  # plain SGD, the chapter's gradient descent
    batch_size = 32
    epochs = 1 if args.smoke else 7  # 45 steps an epoch on the 1438 training digits
    n_train = 64 if args.smoke else None  # None: the whole training split
    seed = 0

    start = time.perf_counter()
    data = jaxbp.datasets.load("digits", seed=seed)
    data = (data.x_train[:n_train], data.y_train[:n_train], data.x_test, data.y_test)
    cfg = {"seeds": seeds, "width": width, "lr": lr, "batch_size": batch_size, "epochs": epochs}
    steps = epochs * -(-data[0].shape[0] // batch_size)
    log(f"digits: {data[0].shape[0]} training samples, {steps} SGD steps per model")
    records = []
    key = jax.random.key(seed)
    for activation in activations:
        for depth in depths:
            t = time.perf_counter()
            key, sub = jax.random.split(key)
            new = run_setting(activation, depth, cfg, data, sub)
            summarise(new)
            records += new
            msg = "; ".join(
                f"{r['init']}: delta ratio {fmt(r['at_init']['delta_ratio_summary'])} -> "
                f"{fmt(r['trained']['delta_ratio_summary'])}, "
                f"acc {r['test_accuracy_summary']['mean']:.2f}"
                for r in new
            )
            log(f"{activation:<7} depth {depth:>2} ({time.perf_counter() - t:4.1f} s)  {msg}")

    args.out.mkdir(parents=True, exist_ok=True)
    figure(records, depths, args.out / "vanishing_gradients.png")
    deep = max(depths)
    shallow = SATURATION_DEPTH if SATURATION_DEPTH in depths else deep
    verdicts = {when: verdict(records, deep, when) for when in ("at_init", "trained")}
    wall = time.perf_counter() - start
    result = {
        "experiment": "vanishing_gradients",
        "config": {
            **cfg,
            "depths": depths,
            "dataset": "digits",
            "n_train": int(data[0].shape[0]),
            "steps": steps,
            "optimizer": "sgd",
            "inits": {a: ["standard", NORMALISED[a]] for a in activations},
            "level_factor": LEVEL,
        },
        "settings": records,
        "verdict": verdicts,
        "jax_version": jax.__version__,
        "wall_s": wall,
    }
    md = [
        "# Where gradients vanish: eq. 1.4 on digits",
        "",
        f"MLPs 64-{width}x(L-1)-10 on digits, cross-entropy, float32; {seeds} seeds per "
        f"setting. Norms are Frobenius norms over the whole training split "
        f"({data[0].shape[0]} samples), read from `jaxbp.backprop`'s trace. `delta ratio` is "
        "||delta_1|| / ||delta_L|| (first hidden layer over the output layer), `dW ratio` is "
        "||dL/dW_1|| / ||dL/dW_L||. Each cell: geometric mean over seeds [min, max]; "
        "`trained` is after "
        f"{steps} steps of SGD (lr {lr}, batch {batch_size}). Standard init is "
        "U[-1/sqrt(n_in), 1/sqrt(n_in)]; normalised is Glorot uniform (sigmoid, tanh) or He "
        "normal (relu). A ratio counts as *level* within a factor "
        f"{LEVEL:g} of 1 and as *shrinking* below 1/{LEVEL:g}. `zero/nan`: seeds "
        "left out of a cell because their ratio is 0 (the first layer's norm underflowed "
        "float32) or 0/0 (every unit of the last hidden layer outputs 0, a dead relu net).",
        "",
        f"## Verdict at depth {deep}, at initialisation (computed from the numbers below)",
        "",
        *verdicts["at_init"],
        "",
        f"## Verdict at depth {deep}, after training",
        "",
        *verdicts["trained"],
        "",
        f"## Saturation at depth {shallow}",
        "",
        "The fraction of (sample, hidden unit) pairs whose slope |phi'(z)| is below a "
        "threshold times the activation's largest slope (`jaxbp.backward_flow_stats`, the "
        "step's `saturated` metric with `jaxbp.Manual(diagnostics=True, threshold=...)`), "
        "mean over hidden layers and seeds [min, max over layers].",
        "",
        *saturation(records, shallow),
        "",
        "## All settings",
        "",
        table(records),
        f"Run time {wall:.0f} s.",
    ]
    write_results(args.out, "vanishing_gradients", result, "\n".join(md) + "\n", indent=None)
    log(f"wrote {args.out}/vanishing_gradients.{{png,json,md}} in {wall:.1f} s")


if __name__ == "__main__":
    main()
