"""Why cross-entropy: squared error on a sigmoid/softmax output against the chapter's
maximum-likelihood losses (eq. 1.2), by their output deltas and by learning speed.

(a) The source of the backward flow, `delta_L = dl/dz_L` (eq. 1.4), of a saturated output.
One sigmoid unit with target y = 1: squared error gives `2 (a - y) a (1 - a)`, which
vanishes as the unit saturates on the wrong side (z -> -inf); binary cross-entropy gives
`a - y`, which stays near -1. The same for a 10-way softmax whose logits put all the
probability on a wrong class. The deltas are the library's handwritten ones
(`jaxbp.LOSSES[...].delta`), checked against `jax.grad` and against `jaxbp.backprop`.

(b) Learning from a saturated start. A 1-hidden-layer tanh network on breast_cancer (one
sigmoid unit) and on digits (10-way softmax) starts with its output bias set so that it
confidently gives every sample the same wrong answer (sigmoid: bias -c, i.e. "class 0" for
all; softmax: bias +c on class 0), c from 0 (no saturation) up. Squared error and
cross-entropy train from identical starts with the same optimizer and learning rate; we
count the epochs until the training accuracy reaches a target. Seeds x saturation levels
are one `jax.vmap`ped program per dataset, loss and optimizer.

Writes why_cross_entropy.{png,json,md} under --out (default experiments/results).
Usage: python experiments/why_cross_entropy.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, markdown_table, rounded, write_results
from jaxbp import SOFTMAX, datasets
from jaxbp.app.plots import pyplot

LOSS_PAIRS = {
    # dataset -> {name: (loss, output_activation)}; the first is squared error
    "breast_cancer": {
        "mse + sigmoid": ("mse", "sigmoid"),
        "cross-entropy": ("binary_cross_entropy", None),
    },
    "digits": {"mse + softmax": ("mse", "softmax"), "cross-entropy": ("cross_entropy", None)},
}


# ---------------------------------------------------------------------------------------
# (a) output deltas of a saturated unit


@partial(jax.jit, static_argnames=("loss", "output_activation"))
def unit_deltas(z, y, loss, output_activation):
    """delta_L of each row of logits `z: (batch, n_L)`, three ways: (handwritten, backprop
    trace, jax.grad). The "network" is one identity layer, so its input is the logit."""
    rec = jaxbp.LOSSES[loss]
    out = SOFTMAX if output_activation == "softmax" else jaxbp.ACTIVATIONS[output_activation]
    handwritten = rec.delta(z, out.fn(z), y, out)
    n = z.shape[1]
    params = [{"W": jnp.eye(n, dtype=z.dtype), "b": jnp.zeros((n,), z.dtype)}]
    kw = dict(activation="identity", loss=loss, reduction="sum")
    kw["output_activation"] = output_activation if loss == "mse" else None
    trace = jaxbp.backprop(params, z, y, **kw)[2]
    by_grad = jax.grad(lambda x: jaxbp.loss_fn(params, x, y, **kw))(z)  # dL/dx = dl/dz here
    return handwritten, trace.delta[-1], by_grad


def part_a(z_max, n_points, k_classes):
    """|delta_L| of a sigmoid unit (target 1) over z, and ||delta_L|| of a softmax whose
    logits are s on a wrong class, 0 elsewhere; in float64."""
    with jax.enable_x64(True):
        z = jnp.linspace(-z_max, z_max, n_points, dtype=jnp.float64)[:, None]
        ones = jnp.ones_like(z)
        sigmoid = {
            name: unit_deltas(z, ones, loss, "sigmoid")
            for name, loss in (("mse + sigmoid", "mse"), ("cross-entropy", "binary_cross_entropy"))
        }
        s = jnp.linspace(0, z_max, n_points, dtype=jnp.float64)
        logits = s[:, None] * jax.nn.one_hot(jnp.ones_like(s, jnp.int32), k_classes, dtype=s.dtype)
        target = jax.nn.one_hot(jnp.zeros_like(s, jnp.int32), k_classes, dtype=s.dtype)
        softmax = {
            "mse + softmax": unit_deltas(logits, target, "mse", "softmax"),
            "cross-entropy": unit_deltas(logits, target, "cross_entropy", "softmax"),
        }
        result = {"z": np.asarray(z[:, 0]).tolist(), "s": np.asarray(s).tolist()}
        worst = 0.0
        for kind, deltas, size in (("sigmoid", sigmoid, jnp.abs), ("softmax", softmax, None)):
            for name, (hand, trace, grad) in deltas.items():
                for other in (trace, grad):  # per row, ||hand - other|| / ||jax.grad||
                    err = jnp.linalg.norm(hand - other, axis=1) / jnp.linalg.norm(grad, axis=1)
                    worst = max(worst, float(jnp.max(err)))
                mag = size(hand)[:, 0] if size else jnp.linalg.norm(hand, axis=1)
                result[f"{kind}: {name}"] = rounded(mag)
        result["max_rel_err_vs_jax_grad_and_backprop"] = worst
    return result


# ---------------------------------------------------------------------------------------
# (b) learning speed from a saturated start


def saturate(params, c, multiclass):
    """Set the output bias so the network confidently answers class 0 for every sample."""
    b = params[-1]["b"]
    bias = c * jax.nn.one_hot(0, b.shape[0], dtype=b.dtype) if multiclass else -c * jnp.ones_like(b)
    return [*params[:-1], {"W": params[-1]["W"], "b": bias}]


def targets(y, loss, output_activation, n_classes):
    """Integer labels for cross_entropy, one-hot rows for mse on a softmax, else 0/1 floats."""
    if loss == "cross_entropy":
        return y.astype(jnp.int32)
    if output_activation == "softmax":
        return jax.nn.one_hot(y.astype(jnp.int32), n_classes, dtype=jnp.float32)
    return y.astype(jnp.float32)


def train_grid(data, sizes, kw, optimizer, seeds, levels, epochs, batch_size):
    """Train every (seed, saturation) pair; per-epoch metrics `(seeds * levels, epochs + 1)`
    (epoch 0 is the start), and the mean ||delta_L|| per sample at the start."""
    x_train, y_train, x_test, y_test = data
    multiclass = kw["loss"] == "cross_entropy" or kw["output_activation"] == "softmax"
    epoch_fn = jaxbp.make_train_epoch(optimizer, batch_size=batch_size, **kw)
    score = lambda p, x, y: jaxbp.evaluate(p, x, y, task="classification", **kw)  # noqa: E731

    def metrics(params):
        train, test = score(params, x_train, y_train), score(params, x_test, y_test)
        return {
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "test_accuracy": test["accuracy"],
        }

    def one(seed, c):
        key = jax.random.key(seed)
        params = saturate(jaxbp.init_mlp(jax.random.fold_in(key, 0), sizes), c, multiclass)
        trace = jaxbp.backprop(params, x_train, y_train, **kw)[2]
        delta0 = x_train.shape[0] * jnp.mean(jnp.linalg.norm(trace.delta[-1], axis=1))  # undo mean

        def body(carry, epoch):
            params, opt_state, _ = epoch_fn(
                *carry, jax.random.fold_in(key, epoch), x_train, y_train
            )
            return (params, opt_state), metrics(params)

        start = metrics(params)
        _, history = jax.lax.scan(body, (params, optimizer.init(params)), jnp.arange(1, epochs + 1))
        history = {k: jnp.concatenate([start[k][None], v]) for k, v in history.items()}
        return history, delta0

    s, c = np.meshgrid(np.asarray(seeds), np.asarray(levels, np.float32), indexing="ij")
    history, delta0 = jax.jit(jax.vmap(one))(jnp.asarray(s.ravel()), jnp.asarray(c.ravel()))
    shape = (len(seeds), len(levels))
    return (
        {k: np.asarray(v).reshape(*shape, -1) for k, v in history.items()},
        np.asarray(delta0).reshape(shape),
    )


def epochs_to(accuracy, target):
    """First epoch whose training accuracy reaches `target`, per run; None if never."""
    hit = accuracy >= target
    return [[int(np.argmax(row)) if row.any() else None for row in runs] for runs in hit]


def part_b(names, hidden, activation, optimizers, seeds, levels, epochs, batch_size, target):
    rows = []
    for name in names:
        data = datasets.load(name, seed=0)
        n_classes = 10 if name == "digits" else 2
        n_out = datasets.INFO[name].n_outputs
        sizes = [data.x_train.shape[1], *hidden, n_out]
        for opt_name, optimizer in optimizers.items():
            for label, (loss, output_activation) in LOSS_PAIRS[name].items():
                start = time.perf_counter()
                kw = dict(activation=activation, loss=loss, output_activation=output_activation)
                cast = lambda y: targets(y, loss, output_activation, n_classes)  # noqa: E731, B023
                d = (data.x_train, cast(data.y_train), data.x_test, cast(data.y_test))
                history, delta0 = train_grid(
                    d, sizes, kw, optimizer, seeds, levels, epochs, batch_size
                )
                reach = epochs_to(history["train_accuracy"], target)
                for j, c in enumerate(levels):
                    hits = [reach[i][j] for i in range(len(seeds))]
                    done = [h for h in hits if h is not None]
                    rows.append(
                        {
                            "dataset": name,
                            "architecture": "-".join(map(str, sizes)),
                            "optimizer": opt_name,
                            "loss": label,
                            "saturation": float(c),
                            "initial_delta_norm": float(np.mean(delta0[:, j])),
                            "initial_train_accuracy": float(
                                np.mean(history["train_accuracy"][:, j, 0])
                            ),
                            "epochs_to_target": hits,
                            "runs_reaching_target": len(done),
                            "median_epochs_to_target": (
                                float(np.median([h if h is not None else np.inf for h in hits]))
                            ),
                            "final_train_accuracy": float(
                                np.mean(history["train_accuracy"][:, j, -1])
                            ),
                            "final_test_accuracy": float(
                                np.mean(history["test_accuracy"][:, j, -1])
                            ),
                            "train_accuracy_per_epoch": rounded(history["train_accuracy"][:, j]),
                            "train_loss_per_epoch": rounded(history["train_loss"][:, j]),
                        }
                    )
                log(
                    f"  {name} {opt_name} {label}: {len(seeds)} seeds x {len(levels)} levels, "
                    f"{epochs} epochs in {time.perf_counter() - start:.1f} s; epochs to "
                    f"{target:.0%} by saturation: "
                    + ", ".join(
                        f"c={c:g}: {r['median_epochs_to_target']:g}"
                        for c, r in zip(levels, rows[-len(levels) :])
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------
# outputs


def color(label):
    """Cross-entropy blue, squared error red, in every panel."""
    return "C0" if label == "cross-entropy" else "C3"


def delta_curves(ax, a, unit, x, labels, every):
    """Part (a)'s `|delta_L|` of `unit` ("sigmoid" or "softmax") against `a[x]`, one curve
    per loss (`labels`: loss name -> legend), with every `every`-th point marked (jax.grad
    gives the same values there)."""
    for name, label in labels.items():
        v = np.asarray(a[f"{unit}: {name}"])
        ax.plot(a[x], v, color=color(name), label=label)
        ax.plot(a[x][::every], v[::every], "o", mfc="none", color="k", ms=4)
    ax.plot([], [], "o", mfc="none", color="k", ms=4, label="jax.grad (same values)")


def plot(a, rows, levels, show_level, epochs, target, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.6))
    every = max(1, len(a["z"]) // 25)
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    markers = dict(zip(names, "sD"))

    ax = axes[0, 0]
    labels = {"mse + sigmoid": "squared error: 2 (a - y) a (1 - a)", "cross-entropy": "BCE: a - y"}
    delta_curves(ax, a, "sigmoid", "z", labels, every)
    ax.set(
        yscale="log",
        xlabel="z (logit of the one sigmoid unit)",
        ylabel="|delta_L| = |dl/dz|",
        title="(a) one sigmoid unit, target y = 1",
    )
    ax.axvspan(min(a["z"]), -2, color="0.9", zorder=0)
    ax.text(min(a["z"]) + 0.3, 1e-9, "saturated\non the\nwrong side", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[0, 1]
    labels = {"mse + softmax": "squared error on softmax", "cross-entropy": "cross-entropy: a - y"}
    delta_curves(ax, a, "softmax", "s", labels, every)
    ax.set(
        yscale="log",
        xlabel="s (logit of a wrong class; the others 0)",
        ylabel="||delta_L||",
        title="(a) 10-way softmax, confidently wrong",
    )
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[0, 2]
    for name, marker in markers.items():
        for label in LOSS_PAIRS[name]:
            sel = [r for r in rows if (r["dataset"], r["loss"]) == (name, label)]
            sel = [r for r in sel if r["optimizer"] == sel[0]["optimizer"]]
            ax.plot(
                [r["saturation"] for r in sel],
                [r["initial_delta_norm"] for r in sel],
                marker=marker,
                color=color(label),
                label=f"{name}: {label}",
            )
    ax.set(
        yscale="log",
        xlabel="saturation c of the initial output bias",
        ylabel="mean ||delta_L|| per sample at the start",
        title="(b) output delta at the saturated start",
    )
    ax.legend(fontsize=8)

    first_opt = rows[0]["optimizer"]
    for ax in axes[1, len(names) : 2]:
        ax.set_axis_off()  # --smoke runs one dataset
    for ax, name in zip(axes[1, :2], names):
        for label in LOSS_PAIRS[name]:
            for c, ls in ((0.0, ":"), (show_level, "-")):
                r = next(
                    r
                    for r in rows
                    if (r["dataset"], r["loss"], r["optimizer"], r["saturation"])
                    == (name, label, first_opt, c)
                )
                acc = np.asarray(r["train_accuracy_per_epoch"])
                ep = np.arange(acc.shape[1])
                ax.plot(ep, acc.mean(axis=0), color=color(label), ls=ls, label=f"{label}, c={c:g}")
                ax.fill_between(
                    ep, acc.min(axis=0), acc.max(axis=0), color=color(label), alpha=0.15
                )
        ax.axhline(target, color="0.5", lw=0.8)
        ax.set(
            xlabel="epoch",
            ylabel="training accuracy (mean, min-max over seeds)",
            ylim=(0, 1.02),
            title=f"(b) {name}, {first_opt}: from a start saturated at c={show_level:g}",
        )
        ax.legend(fontsize=8, loc="lower right")

    ax = axes[1, 2]
    styles = dict(zip(dict.fromkeys(r["optimizer"] for r in rows), ("-", "--")))
    for name, marker in markers.items():
        for label in LOSS_PAIRS[name]:
            for opt, ls in styles.items():
                sel = [
                    r
                    for r in rows
                    if (r["dataset"], r["loss"], r["optimizer"]) == (name, label, opt)
                ]
                med = [min(r["median_epochs_to_target"], epochs + 1) for r in sel]
                ax.plot(
                    [r["saturation"] for r in sel], med, marker=marker, ls=ls, color=color(label)
                )
    proxies = [
        ([], dict(color="C3"), "squared error (mse)"),
        ([], dict(color="C0"), "cross-entropy"),
        *(([], dict(color="k", marker=m, ls="none"), name) for name, m in markers.items()),
        *(([], dict(color="k", ls=ls), opt) for opt, ls in styles.items()),
    ]
    for data, style, label in proxies:
        ax.plot(data, data, label=label, **style)
    ax.axhline(epochs + 1, color="0.5", lw=0.8)
    ax.text(levels[0], epochs + 1.5, f"not reached in {epochs} epochs", fontsize=8)
    ax.set(
        xlabel="saturation c of the initial output bias",
        ylabel=f"epochs to {target:.0%} training accuracy (median)",
        ylim=(0, epochs + 4),
        title="(b) learning speed from a saturated start",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.95))
    fig.suptitle("Squared error on sigmoid/softmax outputs vs cross-entropy (eq. 1.2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def median_epochs(r, epochs):
    """A setting's median epochs to the target, or `> epochs` where the median run missed it."""
    med = r["median_epochs_to_target"]
    return f"{med:g}" if np.isfinite(med) else f"> {epochs}"


def reached(r):
    """How many of a setting's runs reached the target, as `k/n`."""
    return f"{r['runs_reaching_target']}/{len(r['epochs_to_target'])}"


def table(rows, epochs, target):
    levels = list(dict.fromkeys(r["saturation"] for r in rows))
    summary = []
    for key in dict.fromkeys((r["dataset"], r["optimizer"], r["loss"]) for r in rows):
        same = (r for r in rows if (r["dataset"], r["optimizer"], r["loss"]) == key)
        summary.append([*key, *(f"{median_epochs(r, epochs)} ({reached(r)})" for r in same)])
    runs = [
        [
            r["dataset"],
            r["optimizer"],
            r["loss"],
            f"{r['saturation']:g}",
            f"{r['initial_train_accuracy']:.3f}",
            f"{r['initial_delta_norm']:.2e}",
            reached(r),
            median_epochs(r, epochs),
            f"{r['final_train_accuracy']:.3f}",
            f"{r['final_test_accuracy']:.3f}",
        ]
        for r in rows
    ]
    runs_header = [
        "dataset",
        "optimizer",
        "loss",
        "saturation c",
        "initial accuracy",
        "initial mean ‖delta_L‖",
        f"runs reaching {target:.0%}",
        f"median epochs to {target:.0%}",
        f"train accuracy after {epochs} epochs",
        f"test accuracy after {epochs} epochs",
    ]
    return (
        f"Median epochs to {target:.0%} training accuracy (runs that got there) from an output "
        "layer saturated at c:\n\n"
        + markdown_table(["dataset", "optimizer", "loss", *(f"c = {c:g}" for c in levels)], summary)
        + "\nEvery run:\n\n"
        + markdown_table(runs_header, runs)
    )


def main():
    args = make_parser(__doc__, "breast_cancer, sgd, 1 seed, 2 epochs, 2 levels").parse_args()

    z_max, n_points, k_classes = 12.0, 241, 10  # part (a)
    names = ["breast_cancer", "digits"]  # part (b)
    hidden, activation = (64,), "tanh"
    lr_sgd, lr_adam, batch_size = 0.1, 1e-3, 32
    seeds = [0, 1, 2, 3, 4]
    levels = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]  # saturation c of the initial output bias
    show_level = 6.0
    epochs, target = 40, 0.9
    if args.smoke:
        n_points, hidden, seeds, levels, show_level, epochs = 25, (8,), [0], [0.0, 6.0], 6.0, 2
        names = ["breast_cancer"]

    start = time.perf_counter()
    a = part_a(z_max, n_points, k_classes)
    log(
        "(a) deltas: handwritten vs jax.grad and backprop, max rel err "
        f"{a['max_rel_err_vs_jax_grad_and_backprop']:.1e}"
    )
    optimizers = {
        f"sgd lr {lr_sgd:g}": optax.sgd(lr_sgd),
        f"adam lr {lr_adam:g}": optax.adam(lr_adam),
    }
    if args.smoke:  # each (dataset, loss, optimizer) is a program to compile
        optimizers = dict(list(optimizers.items())[:1])
    rows = part_b(names, hidden, activation, optimizers, seeds, levels, epochs, batch_size, target)

    pick = lambda z, name: a[f"sigmoid: {name}"][int(np.argmin(np.abs(np.asarray(a["z"]) - z)))]  # noqa: E731
    result = {
        "experiment": "why_cross_entropy",
        "smoke": args.smoke,
        "wall_s": time.perf_counter() - start,
        "settings": {
            "hidden": list(hidden),
            "activation": activation,
            "batch_size": batch_size,
            "seeds": seeds,
            "saturation_levels": levels,
            "epochs": epochs,
            "target_train_accuracy": target,
            "saturation": "output bias -c on the sigmoid unit (every sample called class 0); "
            "+c on class 0 of the softmax",
        },
        "unit_deltas": a,
        "sigmoid_delta_at_z": {
            f"{z:g}": {name: pick(z, name) for name in ("mse + sigmoid", "cross-entropy")}
            for z in (-10.0, -6.0, -2.0, 0.0)
        },
        "training": rows,
    }
    write_results(args.out, "why_cross_entropy", result, table(rows, epochs, target))
    plot(a, rows, levels, show_level, epochs, target, args.out / "why_cross_entropy.png")
    log(table(rows, epochs, target))
    log(f"wrote why_cross_entropy.{{png,json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
