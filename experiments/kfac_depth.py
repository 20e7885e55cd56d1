"""Curvature against depth: K-FAC, SGD and Adam on the chapter's deep sigmoid network.

Martens (2010, "Deep learning via Hessian-free optimization") reported that a
curvature-aware optimiser trains deep sigmoid networks that gradient descent cannot.
This puts that to the test on the network of fig. 1.11 and eq. 1.4: ten dense layers
64-[h x 9]-10, sigmoid hidden units, softmax cross-entropy, on digits (standardised 8x8
images, 10 classes), under the chapter's pre-2010 initialisation ("standard",
U[-1/sqrt(n_in), 1/sqrt(n_in)]) and under Glorot's (normal).

Optimisers, each a small grid tuned on seed 0 (the setting of lowest final training loss
is then run on every seed):

- SGD: `optax.sgd(lr)` with momentum 0 or 0.9, through `jaxbp.Manual()`.
- Adam: `optax.adam(lr)`, through `jaxbp.Manual()`.
- K-FAC: `jaxbp.KFAC(damping, every=10, decay=0.95, kind="mc")` as the gradient path,
  with `optax.sgd(lr, momentum=0.9)`, over a grid of lr and damping.
- K-FAC, clipped: the same, with the preconditioned direction clipped to global norm 1
  before the momentum (`optax.clip_by_global_norm`): a crude trust region, since jaxbp's
  K-FAC has no step-size control of its own.

All of one seed start from the same weights and see the same minibatches in the same
order (K-FAC's Monte Carlo samples come from the same per-epoch key). Measured: the
training loss on the whole training split after every epoch (and the epoch's mean
minibatch loss), the test accuracy (`jaxbp.evaluate`), the backward-flow ratio
||delta_1|| / ||delta_L|| read from `jaxbp.backprop`'s trace on a fixed batch of
training samples at initialisation and every few epochs, and the training time to a
target loss: the sum of the epochs' wall times (each epoch one compiled program, timed
to `block_until_ready`, compilation excluded and reported apart, the loss and flow
measurements excluded), and epochs to target.

Writes under `--out` (default experiments/results): kfac_depth.png, .json, .md.

Usage: python experiments/kfac_depth.py [--smoke] [--out DIR]
       python experiments/kfac_depth.py --replot [--out DIR]  (redraws kfac_depth.png from
       DIR/kfac_depth.json without training)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import fmt_spread, log, make_parser, markdown_table, rounded, spread, write_results
from jaxbp.app.plots import pyplot

sys.path.insert(0, str(Path(__file__).parent))
# The underflow-safe norm and the 4 significant digits of the vanishing-gradients experiment.
from vanishing_gradients import DIGITS, norm

METHODS = ("SGD", "Adam", "K-FAC", "K-FAC, clipped")
COLORS = {"SGD": "C0", "Adam": "C1", "K-FAC": "C3", "K-FAC, clipped": "C2"}
NO_CLIP = float("inf")
"""`max_norm` of the clip that never clips (the plain K-FAC of the brief)."""


# ---------------------------------------------------------------------------------------
# Optimisers with their hyperparameters in the state, so that one compiled epoch serves
# every setting of a grid (K-FAC's damping is part of the path: one program per damping).


def sgd(lr: float, momentum: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)


def adam(lr: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def kfac_opt(lr: float, clip: float) -> optax.GradientTransformation:
    """`clip_by_global_norm(clip)` (a no-op at `clip` = inf), then `sgd(lr, momentum=0.9)`."""
    return optax.chain(
        optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=clip),
        optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9),
    )


def optimizer(method: str, s: dict) -> optax.GradientTransformation:
    if method == "SGD":
        return sgd(s["lr"], s["momentum"])
    if method == "Adam":
        return adam(s["lr"])
    return kfac_opt(s["lr"], s.get("clip", NO_CLIP))


def path_of(method: str, s: dict, kfac: dict) -> jaxbp.GradientPath:
    if method.startswith("K-FAC"):
        return jaxbp.KFAC(damping=s["damping"], **kfac)
    return jaxbp.Manual()


def program_key(method: str, s: dict) -> tuple:
    """Settings that share a key share a compiled epoch."""
    return ("K-FAC", s["damping"]) if method.startswith("K-FAC") else (method,)


def label(method: str, s: dict) -> str:
    parts = [f"lr {s['lr']:g}"]
    if method == "SGD":
        parts.append(f"momentum {s['momentum']:g}")
    if "damping" in s:
        parts.append(f"damping {s['damping']:g}")
    if s.get("clip", NO_CLIP) != NO_CLIP:
        parts.append(f"clip {s['clip']:g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Training one setting on one seed.


class Bench:
    """The compiled pieces of one network on one data split: an epoch per program key
    (compiled ahead of time, its compile time kept), the full-training-split loss, the
    backward flow on the fixed batch, the test score."""

    def __init__(self, net, data, flow_batch, batch_size, kfac):
        self.net, self.data, self.batch_size, self.kfac = net, data, batch_size, kfac
        self.programs: dict[tuple, object] = {}
        self.compile_s: dict[str, float] = {}
        x_train, y_train, x_test, y_test = data
        xb, yb = x_train[:flow_batch], y_train[:flow_batch]

        @jax.jit
        def flow(params):
            _, _, trace = jaxbp.backprop(params, xb, yb, net)
            return jnp.stack([norm(d) for d in trace.delta])

        loss = jax.jit(lambda p, x, y: jaxbp.evaluate(p, x, y, net)["loss"])
        score = jax.jit(lambda p, x, y: jaxbp.evaluate(p, x, y, net)["accuracy"])
        self.flow = flow
        self.train_loss = lambda p: float(loss(p, x_train, y_train))
        self.test_accuracy = lambda p: float(score(p, x_test, y_test))

    def program(self, method, s, params):
        key = program_key(method, s)
        if key not in self.programs:
            opt, path = optimizer(method, s), path_of(method, s, self.kfac)
            epoch = jaxbp.epoch_fn(opt, self.net, path, batch_size=self.batch_size)
            state = jaxbp.TrainState.create(opt, params, self.net, path)
            x, y = self.data[0], self.data[1]
            t = time.perf_counter()
            self.programs[key] = epoch.lower(params, state, jax.random.key(0), x, y).compile()
            name = key[0] if len(key) == 1 else f"K-FAC (damping {key[1]:g})"
            self.compile_s[name] = time.perf_counter() - t
            log(f"  compiled the {name} epoch in {self.compile_s[name]:.1f} s")
        return self.programs[key]

    def run(self, method, s, params, order_key, epochs, flow_every, targets):
        """Train one setting from `params`; epoch e shuffles with fold_in(order_key, e)."""
        opt, path = optimizer(method, s), path_of(method, s, self.kfac)
        epoch = self.program(method, s, params)
        state = jaxbp.TrainState.create(opt, params, self.net, path)
        x, y = self.data[0], self.data[1]
        p = params
        flow_epochs, flows = [0], [np.asarray(self.flow(p), np.float64)]
        full, minibatch, seconds = [], [], []
        kfac_scales = None
        for e in range(epochs):
            t = time.perf_counter()
            p, state, metrics = epoch(p, state, jax.random.fold_in(order_key, e), x, y)
            jax.block_until_ready((p, state, metrics))
            seconds.append(time.perf_counter() - t)
            minibatch.append(float(jnp.mean(metrics["loss"])))
            full.append(self.train_loss(p))
            if (e + 1) % flow_every == 0 or e + 1 == epochs:
                flow_epochs.append(e + 1)
                flows.append(np.asarray(self.flow(p), np.float64))
            if e == 0 and isinstance(state.path_state, jaxbp.KFACState):
                kfac_scales = factor_scales(state.path_state)
            if not math.isfinite(full[-1]):
                break  # diverged: the rest stays nan
        pad = epochs - len(full)
        full, minibatch, seconds = (v + [math.nan] * pad for v in (full, minibatch, seconds))
        flows_arr = np.stack(flows)  # (checkpoints, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = flows_arr[:, 0] / flows_arr[:, -1]
        record = {
            "method": method,
            "setting": s,
            "label": label(method, s),
            "train_loss": rounded(full, DIGITS),
            "minibatch_loss": rounded(minibatch, DIGITS),
            "epoch_s": rounded(seconds, 4),
            "final_train_loss": full[-1],
            "test_accuracy": self.test_accuracy(p),
            "flow_epochs": flow_epochs,
            "ratio": [finite_or_none(v) for v in ratio],
            "delta_norms_init": rounded(flows_arr[0], DIGITS),
            "delta_norms_final": rounded(flows_arr[-1], DIGITS),
            "median_epoch_s": float(np.nanmedian(seconds)) if not all_nan(seconds) else None,
            "train_s": float(np.nansum(seconds)),
        }
        if kfac_scales is not None:
            record["kfac_factor_scales_after_epoch_1"] = kfac_scales
            record["kfac_factor_scales_final"] = factor_scales(state.path_state)
        record["to_target"] = {f"{t:g}": reach(full, seconds, t) for t in targets}
        return record


def factor_scales(kstate) -> dict:
    """Mean eigenvalue tr(F)/n of each layer's K-FAC factors A_l and G_l."""
    return {
        "A": rounded([float(jnp.trace(a)) / a.shape[0] for a in kstate.A], 3),
        "G": rounded([float(jnp.trace(g)) / g.shape[0] for g in kstate.G], 3),
    }


def finite_or_none(v) -> float | None:
    return float(f"{v:.4g}") if np.isfinite(v) and v > 0 else None


def all_nan(values) -> bool:
    return bool(np.all(np.isnan(np.asarray(values, np.float64))))


def reach(losses, seconds, target) -> dict:
    """Epochs and training seconds until the training loss first is at most `target`
    (None if never)."""
    for e, v in enumerate(losses):
        if v <= target:
            return {"epochs": e + 1, "s": float(np.sum(seconds[: e + 1]))}
    return {"epochs": None, "s": None}


def epoch_cost(bench, best, params, order_key, rounds) -> dict:
    """Seconds per epoch of each method's best program, measured in `rounds` interleaved
    rounds (one epoch of every method a round, from the same start), so that every method
    sees the same load: the minimum (the machine's cost, the noise-robust estimate) and
    the median."""
    x, y = bench.data[0], bench.data[1]
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(rounds):
        for method in METHODS:
            s = best[method]
            opt, path = optimizer(method, s), path_of(method, s, bench.kfac)
            epoch = bench.program(method, s, params)
            state = jaxbp.TrainState.create(opt, params, bench.net, path)
            jax.block_until_ready(state)
            t = time.perf_counter()
            out = epoch(params, state, jax.random.fold_in(order_key, i), x, y)
            jax.block_until_ready(out)
            times[method].append(time.perf_counter() - t)
    return {
        m: {"min_s": float(np.min(v)), "median_s": float(np.median(v)), "rounds": rounds}
        for m, v in times.items()
    }


# ---------------------------------------------------------------------------------------
# Summaries, verdict, tables, figure.


def badness(v) -> float:
    return v if v is not None and math.isfinite(v) else math.inf


def summarise(runs: list[dict], targets, cost: dict) -> dict:
    """Over the seeds of one method's best setting; `cost`: its `epoch_cost` entry, for
    the time to target on an unloaded machine (epochs times the minimum epoch time)."""
    final = np.array([badness(r["final_train_loss"]) for r in runs], np.float64)
    acc = np.array([r["test_accuracy"] for r in runs], np.float64)
    out = {
        "final_train_loss": final.tolist(),
        "final_train_loss_median": float(np.median(final)),
        "test_accuracy": acc.tolist(),
        "test_accuracy_mean": float(acc.mean()),
        "test_accuracy_min": float(acc.min()),
        "test_accuracy_max": float(acc.max()),
        "median_epoch_s": float(np.median([r["median_epoch_s"] or math.nan for r in runs])),
    }
    for k, field in (("init", 0), ("final", -1)):
        vals = [r["ratio"][field] for r in runs]
        out[f"ratio_{k}"] = spread(vals)
    for t in targets:
        hits = [r["to_target"][f"{t:g}"] for r in runs if r["to_target"][f"{t:g}"]["epochs"]]
        out[f"target_{t:g}"] = {
            "reached": len(hits),
            "of": len(runs),
            "median_epochs": float(np.median([h["epochs"] for h in hits])) if hits else None,
            "median_s": float(np.median([h["s"] for h in hits])) if hits else None,
            "median_est_s": (
                float(np.median([h["epochs"] for h in hits])) * cost["min_s"] if hits else None
            ),
        }
    return out


def fmt_target(t: dict) -> str:
    if not t["reached"]:
        return f"0/{t['of']}"
    return (
        f"{t['reached']}/{t['of']}: {t['median_epochs']:.0f} ep, "
        f"{t['median_s']:.2f} s ({t['median_est_s']:.2f} s)"
    )


def fmt_loss(values) -> str:
    return " / ".join("diverged" if not math.isfinite(v) else f"{v:.3g}" for v in values)


def results_table(result, init, targets) -> str:
    head = ["method", "best setting (seed 0)", "epochs", "final train loss per seed"]
    head += ["test accuracy mean [min, max]"]
    head += [f"to loss {t:g}: seeds, median epochs, s (est. s)" for t in targets]
    head += ["ratio init", "ratio end", "median s/epoch in the runs"]
    rows = []
    for method in METHODS:
        b = result["best"][init][method]
        s = b["summary"]
        rows.append(
            [
                method,
                b["label"],
                b["epochs"],
                fmt_loss(s["final_train_loss"]),
                f"{s['test_accuracy_mean']:.3f} [{s['test_accuracy_min']:.3f}, "
                f"{s['test_accuracy_max']:.3f}]",
                *(fmt_target(s[f"target_{t:g}"]) for t in targets),
                fmt_spread(s["ratio_init"]),
                fmt_spread(s["ratio_final"]),
                f"{s['median_epoch_s']:.3f}",
            ]
        )
    return markdown_table(head, rows)


def ratio_course_table(result, init) -> str:
    """The ratio over training of each method's best setting (geometric mean over seeds)."""
    rows = []
    for method in METHODS:
        runs = result["best"][init][method]["runs"]
        epochs = runs[0]["flow_epochs"]
        cells = []
        for i in range(len(epochs)):
            g = spread([r["ratio"][i] if i < len(r["ratio"]) else None for r in runs])
            cells.append("n/a" if g["geomean"] is None else f"{g['geomean']:.1e}")
        rows.append([method, " → ".join(f"{e}: {c}" for e, c in zip(epochs, cells))])
    return markdown_table(["method", "epoch: ||delta_1|| / ||delta_L|| (geometric mean)"], rows)


def grid_table(result, init, targets) -> str:
    rows = []
    for r in result["grid"][init]:
        reached = ", ".join(
            f"{t}: {v['epochs']} ep" if v["epochs"] else f"{t}: no"
            for t, v in r["to_target"].items()
        )
        ratio = r["ratio"][-1]
        rows.append(
            [
                r["method"],
                r["label"],
                fmt_loss([badness(r["final_train_loss"])]),
                f"{r['test_accuracy']:.3f}",
                reached,
                "n/a" if ratio is None else f"{ratio:.1e}",
            ]
        )
    head = ["method", "setting", "final train loss", "test accuracy", "reached (epochs)"]
    return markdown_table([*head, "ratio end"], rows)


def verdict(result, init, targets) -> list[str]:
    """Which methods reach each target on every seed, and how the ratio moved."""
    best = result["best"][init]
    lines = []
    for t in targets:
        parts = []
        for method in METHODS:
            s = best[method]["summary"][f"target_{t:g}"]
            if s["reached"]:
                parts.append(
                    f"{method} {s['reached']}/{s['of']} seeds (median {s['median_epochs']:.0f} "
                    f"epochs, {s['median_s']:.2f} s)"
                )
            else:
                parts.append(f"{method} 0/{s['of']}")
        lines.append(f"- {init} init, training loss <= {t:g}: " + "; ".join(parts) + ".")
    parts = []
    for method in METHODS:
        s = best[method]["summary"]
        parts.append(
            f"{method} {fmt_spread(s['ratio_init'])} → {fmt_spread(s['ratio_final'])} "
            f"(final loss {fmt_loss([s['final_train_loss_median']])} median)"
        )
    lines.append(f"- {init} init, ||delta_1|| / ||delta_L|| at init → end: " + "; ".join(parts))
    return lines


def martens(result, inits, targets) -> list[str]:
    """The Martens question, answered from the numbers: at the first target, does a K-FAC
    variant reach it on every seed where neither SGD nor Adam does? With, per method, on
    how many seeds its best setting reaches it, the lowest final training loss of its whole
    grid (seed 0), and how many of its settings reach the target there."""
    t = targets[0]
    lines = []
    for init in inits:
        best = result["best"][init]
        ok = {m: best[m]["summary"][f"target_{t:g}"] for m in METHODS}
        every = [m for m in METHODS if ok[m]["reached"] == ok[m]["of"]]
        first = [m for m in ("SGD", "Adam") if ok[m]["reached"] == ok[m]["of"]]
        curv = [m for m in ("K-FAC", "K-FAC, clipped") if ok[m]["reached"] == ok[m]["of"]]
        if curv == ["K-FAC, clipped"] and not first:
            word = "**Holds, with K-FAC's step clipped** (plain K-FAC does not reach it)"
        elif curv and not first:
            word = "**Holds**"
        elif curv:
            word = "**Does not hold as stated** (a first-order method trains it too)"
        else:
            word = "**Does not hold here** (no K-FAC setting trains it)"
        parts = []
        for m in METHODS:
            grid = [r for r in result["grid"][init] if r["method"] == m]
            low = min(badness(r["final_train_loss"]) for r in grid)
            hits = sum(r["to_target"][f"{t:g}"]["epochs"] is not None for r in grid)
            parts.append(
                f"{m} {ok[m]['reached']}/{ok[m]['of']} seeds (its grid: {hits}/{len(grid)} "
                f"settings reach it, lowest final loss {fmt_loss([low])})"
            )
        lines.append(
            f"- {init} init: {word}. Loss <= {t:g} (chance: ln 10 = 2.30) on every seed: "
            f"{', '.join(every) or 'none'}. " + "; ".join(parts) + "."
        )
    return lines


def damping_reach(result, init) -> str:
    """For the best clipped K-FAC run (seed 0): the layers where sqrt(damping) exceeds the
    mean eigenvalue of G_l after one epoch, i.e. where the damping, not the curvature,
    sets the scale of the step."""
    run = result["best"][init]["K-FAC, clipped"]["runs"][0]
    root = math.sqrt(run["setting"]["damping"])
    g = run["kfac_factor_scales_after_epoch_1"]["G"]
    under = [i + 1 for i, v in enumerate(g) if v < root]
    return (
        f"sqrt(damping) = {root:.1e} exceeds tr(G_l)/n in layers "
        f"{', '.join(map(str, under)) or 'none'} of {len(g)}: there the damping, not the "
        "curvature of the backward flow, sets the scale of the step, which is close to "
        "(A_l + sqrt(damping) I)^-1 dW_l / sqrt(damping)."
    )


def figure(result, inits, targets, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(inits), 3, figsize=(17, 4.6 * len(inits)), squeeze=False)
    for row, init in enumerate(inits):
        best = result["best"][init]
        for method in METHODS:
            color = COLORS[method]
            for i, r in enumerate(best[method]["runs"]):
                name = f"{method} ({best[method]['label']})" if i == 0 else None
                loss = np.asarray(r["train_loss"], np.float64)
                epochs = np.arange(1, loss.size + 1)
                secs = np.cumsum(np.nan_to_num(np.asarray(r["epoch_s"], np.float64)))
                axes[row, 0].plot(epochs, loss, color=color, lw=1, alpha=0.8, label=name)
                axes[row, 1].plot(secs, loss, color=color, lw=1, alpha=0.8, label=name)
                ratio = [np.nan if v is None else v for v in r["ratio"]]
                axes[row, 2].plot(
                    r["flow_epochs"], ratio, "o-", color=color, ms=2, lw=1, alpha=0.8, label=name
                )
        for ax in axes[row, :2]:
            for t in targets:
                ax.axhline(t, color="grey", lw=0.8, ls=":")
            ax.set(yscale="log", ylabel="training loss (whole split, log)")
        axes[row, 0].set(title=f"{init} init: training loss per epoch", xlabel="epoch")
        axes[row, 1].set(
            title=f"{init} init: against training time",
            xlabel="seconds of training (compile excluded, log)",
            xscale="log",
        )
        axes[row, 2].set(
            title=f"{init} init: ||delta_1|| / ||delta_L|| on a fixed batch",
            xlabel="epoch",
            ylabel="ratio (log)",
            yscale="log",
        )
        axes[row, 2].axhline(1, color="grey", lw=0.8, ls=":")
        for ax in axes[row]:
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle(
        "Depth-10 sigmoid MLP on digits: best setting of each optimiser, one line per seed",
        y=0.995,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__, "tiny sizes, for tests")
    parser.add_argument(
        "--replot", action="store_true", help="redraw kfac_depth.png from --out's kfac_depth.json"
    )
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.out)
        return

    depth = 4 if args.smoke else 10  # dense layers
    width = 16 if args.smoke else 64  # units in every hidden layer
    inits = ["standard", "glorot_normal"]
    seeds = 2 if args.smoke else 3
    batch_size = 32
    epochs = {"SGD": 100, "Adam": 100, "K-FAC": 30, "K-FAC, clipped": 30}
    if args.smoke:
        epochs = dict.fromkeys(METHODS, 2)
    flow_every = 1 if args.smoke else 5  # epochs between readings of the backward flow
    cost_rounds = 2 if args.smoke else 10  # interleaved epochs timed per method
    flow_batch = 32 if args.smoke else 256  # the fixed batch: the first training samples
    targets = [0.5, 0.05]  # training losses (chance: ln 10 = 2.30)
    n_train = 128 if args.smoke else None  # None: the whole training split
    kfac = {"every": 10, "decay": 0.95, "kind": "mc"}  # the path's other settings
    clip = 1.0  # global norm of the clipped K-FAC direction
    grids = {
        "SGD": [
            {"lr": lr, "momentum": m} for m in (0.0, 0.9) for lr in (0.01, 0.03, 0.1, 0.3, 1.0)
        ],
        "Adam": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)],
        "K-FAC": [{"lr": lr, "damping": d} for d in (1e-1, 1e-3, 1e-5) for lr in (0.03, 0.1, 0.3)],
    }
    if args.smoke:
        grids = {
            "SGD": [{"lr": 0.1, "momentum": 0.9}],
            "Adam": [{"lr": 1e-3}],
            "K-FAC": [{"lr": 0.1, "damping": 1e-3}],
        }
    grids["K-FAC, clipped"] = [{**s, "clip": clip} for s in grids["K-FAC"]]
    data_seed = 0

    start = time.perf_counter()
    d = jaxbp.datasets.load("digits", seed=data_seed)
    data = (d.x_train[:n_train], d.y_train[:n_train], d.x_test, d.y_test)
    sizes = [data[0].shape[1]] + [width] * (depth - 1) + [10]
    net = jaxbp.Network.mlp(sizes, activation="sigmoid", loss="cross_entropy")
    bench = Bench(net, data, flow_batch, batch_size, kfac)
    steps = -(-data[0].shape[0] // batch_size)
    log(f"digits: {data[0].shape[0]} training samples, {steps} steps an epoch; sizes {sizes}")

    def seed_keys(seed):
        return jax.random.fold_in(jax.random.key(seed), 0), jax.random.fold_in(
            jax.random.key(seed), 1
        )

    result: dict = {"grid": {}, "best": {}, "diagnostics_check": {}}
    for init in inits:
        k_init, k_order = seed_keys(0)
        params0 = jaxbp.init_mlp(k_init, sizes, init=init)
        result["diagnostics_check"][init] = diagnostics_check(net, params0, data, flow_batch)
        grid_runs = []
        for method in METHODS:
            for s in grids[method]:
                r = bench.run(method, s, params0, k_order, epochs[method], flow_every, targets)
                r["seed"] = 0
                grid_runs.append(r)
                log(
                    f"{init:<13} seed 0 {method:<14} {r['label']:<40} final loss "
                    f"{r['final_train_loss']:.4g}, test acc {r['test_accuracy']:.3f}, ratio "
                    f"{fmt_opt(r['ratio'][0])} -> {fmt_opt(r['ratio'][-1])}, "
                    f"{r['train_s']:.1f} s"
                )
        result["grid"][init] = grid_runs
        result["best"][init] = {}
        for method in METHODS:
            mine = [r for r in grid_runs if r["method"] == method]
            top = min(mine, key=lambda r: badness(r["final_train_loss"]))
            runs = [top]
            for seed in range(1, seeds):
                k_init, k_order = seed_keys(seed)
                params = jaxbp.init_mlp(k_init, sizes, init=init)
                r = bench.run(
                    method, top["setting"], params, k_order, epochs[method], flow_every, targets
                )
                r["seed"] = seed
                runs.append(r)
                log(
                    f"{init:<13} seed {seed} {method:<14} {r['label']:<40} final loss "
                    f"{r['final_train_loss']:.4g}, test acc {r['test_accuracy']:.3f}, "
                    f"{r['train_s']:.1f} s"
                )
            result["best"][init][method] = {
                "setting": top["setting"],
                "label": top["label"],
                "epochs": epochs[method],
                "runs": runs,
            }

    # The cost of an epoch, interleaved, on the first init's seed-0 weights and settings.
    k_init, k_order = seed_keys(0)
    params0 = jaxbp.init_mlp(k_init, sizes, init=inits[0])
    best0 = {m: result["best"][inits[0]][m]["setting"] for m in METHODS}
    cost = epoch_cost(bench, best0, params0, k_order, cost_rounds)
    result["epoch_cost"] = cost
    log(
        "s/epoch, min [median] of "
        + f"{cost_rounds} interleaved rounds: "
        + ", ".join(f"{m} {c['min_s']:.3f} [{c['median_s']:.3f}]" for m, c in cost.items())
    )
    for init in inits:
        for method in METHODS:
            b = result["best"][init][method]
            b["summary"] = summarise(b["runs"], targets, cost[method])

    args.out.mkdir(parents=True, exist_ok=True)
    figure(result, inits, targets, args.out / "kfac_depth.png")
    verdicts = [line for init in inits for line in verdict(result, init, targets)]
    answer = martens(result, inits, targets)
    wall = time.perf_counter() - start
    result = {
        "experiment": "kfac_depth",
        "smoke": args.smoke,
        "config": {
            "dataset": "digits",
            "data_seed": data_seed,
            "n_train": int(data[0].shape[0]),
            "sizes": sizes,
            "activation": "sigmoid",
            "loss": "cross_entropy",
            "inits": inits,
            "seeds": seeds,
            "batch_size": batch_size,
            "steps_per_epoch": steps,
            "epochs": epochs,
            "grids": grids,
            "kfac": kfac,
            "clip": clip,
            "targets": targets,
            "flow_batch": flow_batch,
            "flow_every": flow_every,
            "cost_rounds": cost_rounds,
            "tuning": "grid on seed 0; lowest final training loss; then seeds 1.. at that setting",
        },
        "compile_s": bench.compile_s,
        **result,
        "verdict": verdicts,
        "martens": answer,
        "jax_version": jax.__version__,
        "wall_s": wall,
    }
    md = markdown(result, inits, targets, wall)
    write_results(args.out, "kfac_depth", result, md, indent=None)
    log(f"wrote {args.out}/kfac_depth.{{png,json,md}} in {wall:.1f} s")


def replot(out: Path) -> None:
    """Redraw the figure from the records a full run stored, without training again."""
    saved = json.loads((out / "kfac_depth.json").read_text())
    cfg = saved["config"]
    figure(saved, cfg["inits"], cfg["targets"], out / "kfac_depth.png")
    log(f"wrote {out / 'kfac_depth.png'}")


def fmt_opt(v) -> str:
    return "n/a" if v is None else f"{v:.1e}"


def diagnostics_check(net, params, data, flow_batch) -> dict:
    """The ratio from `jaxbp.Manual(diagnostics=True)`'s `delta_norm` (one SGD step on the
    fixed batch, read before the update) against the one from `jaxbp.backprop`'s trace."""
    xb, yb = data[0][:flow_batch], data[1][:flow_batch]
    opt, path = optax.sgd(0.0), jaxbp.Manual(diagnostics=True)
    state = jaxbp.TrainState.create(opt, params, net, path)
    _, _, metrics = jaxbp.step_fn(opt, net, path)(params, state, None, xb, yb)
    dn = np.asarray(metrics["delta_norm"], np.float64)
    _, _, trace = jaxbp.backprop(params, xb, yb, net)
    tn = np.array([float(norm(t)) for t in trace.delta])
    return {
        "ratio_diagnostics": float(dn[0] / dn[-1]),
        "ratio_backprop": float(tn[0] / tn[-1]),
        "max_rel_diff_delta_norm": float(np.max(np.abs(dn - tn) / tn)),
    }


def markdown(result, inits, targets, wall) -> str:
    cfg = result["config"]
    e = cfg["epochs"]
    compile_cells = ", ".join(f"{k} {v:.1f} s" for k, v in result["compile_s"].items())
    md = [
        "# Curvature against depth: K-FAC, SGD and Adam on a depth-10 sigmoid MLP",
        "",
        f"MLP {'-'.join(map(str, cfg['sizes']))} (sigmoid hidden units, softmax "
        f"cross-entropy, float32) on digits ({cfg['n_train']} training samples, split seed "
        f"{cfg['data_seed']}), batch {cfg['batch_size']} ({cfg['steps_per_epoch']} steps an "
        f"epoch), {cfg['seeds']} seeds; a seed fixes the initial weights and the minibatch "
        f"order, the same for every optimiser. Epochs: SGD and Adam {e['SGD']}, K-FAC "
        f"{e['K-FAC']} (K-FAC's epoch costs several SGD epochs). K-FAC: "
        f"`jaxbp.KFAC(damping, every={cfg['kfac']['every']}, decay={cfg['kfac']['decay']}, "
        f'kind="{cfg["kfac"]["kind"]}")` with `optax.sgd(lr, momentum=0.9)`; *K-FAC, '
        f"clipped*: the preconditioned direction clipped to global norm {cfg['clip']:g} "
        "before the momentum. Each optimiser's grid runs on seed 0 (all settings below); "
        "the setting of lowest final training loss then runs on every seed. *Training "
        "loss* is the loss on the whole training split after each epoch. *ratio* = "
        "||delta_1|| / ||delta_L|| from `jaxbp.backprop` on the first "
        f"{cfg['flow_batch']} training samples, geometric mean [min, max] over seeds. "
        "*Time to target*: median over the seeds that reach it of the epochs and of the "
        "summed epoch wall times (each epoch one compiled program, timed to "
        "`block_until_ready`, compilation and measurements excluded); in parentheses the "
        "median epochs times the method's minimum epoch time in "
        f"{cfg['cost_rounds']} interleaved rounds (table below), which discounts the load "
        "of this shared 2-core machine (other jobs ran beside this one, so the summed "
        "wall times are noisy).",
        "",
        "## Martens (2010): does curvature reach what SGD cannot? (computed from the numbers)",
        "",
        *result["martens"],
        "",
        "## Verdict lines",
        "",
        *result["verdict"],
        "",
    ]
    for init in inits:
        md += [
            f"## {init} init",
            "",
            results_table(result, init, targets),
            "Backward-flow ratio over training (best setting, geometric mean over seeds):",
            "",
            ratio_course_table(result, init),
        ]
        check = result["diagnostics_check"][init]
        md += [
            f"`jaxbp.Manual(diagnostics=True)` on the fixed batch at init (seed 0) gives the "
            f"ratio {check['ratio_diagnostics']:.3e}, `jaxbp.backprop`'s trace "
            f"{check['ratio_backprop']:.3e} (largest relative gap of a layer's ||delta_l||: "
            f"{check['max_rel_diff_delta_norm']:.1e}).",
            "",
        ]
        kf = result["best"][init]["K-FAC, clipped"]["runs"][0]
        if "kfac_factor_scales_after_epoch_1" in kf:
            sc = kf["kfac_factor_scales_after_epoch_1"]
            md += [
                f"K-FAC's factors after one epoch ({kf['label']}, seed 0), mean eigenvalue "
                "tr(F)/n per layer 1..L: G_l "
                + ", ".join(f"{v:.0e}" for v in sc["G"])
                + "; A_l "
                + ", ".join(f"{v:.2g}" for v in sc["A"])
                + ". The damping adds sqrt(damping) to both; "
                + damping_reach(result, init),
                "",
            ]
    cost = result["epoch_cost"]
    md += [
        f"## Cost of an epoch ({inits[0]} init's best settings, {cfg['steps_per_epoch']} steps)",
        "",
        markdown_table(
            ["method", "min s/epoch", "median s/epoch", "min relative to SGD"],
            [
                [
                    m,
                    f"{c['min_s']:.4f}",
                    f"{c['median_s']:.4f}",
                    f"{c['min_s'] / cost['SGD']['min_s']:.1f}x",
                ]
                for m, c in cost.items()
            ],
        ),
    ]
    md += ["## Every setting (seed 0)", ""]
    for init in inits:
        md += [f"### {init} init", "", grid_table(result, init, targets)]
    md += [f"Compile times: {compile_cells}. Run time {wall:.0f} s."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
