"""Two gradient paths, one trajectory: `manual_grad` (eq. 1.4) and `jax.grad` side by side.

On digits, breast_cancer and diabetes, with the settings of `jaxbp train`, every seed trains
two copies of the same network from the same initial parameters and the same minibatch
order, one on the handwritten gradients and one on `jax.grad`. After every epoch it records
both training losses, both test scores and how far apart the two parameter sets have
drifted: the largest `|p_manual - p_autodiff|` over all entries, and the largest
`||p_manual - p_autodiff|| / ||p_autodiff||` over the leaves. The whole run is repeated in
float64 as a control: if the paths compute the same function, the gap there should sit
near float64 rounding. Seeds are `jax.vmap`ped: one compiled program per dataset and dtype.

Writes two_paths.{png,json,md} under --out (default experiments/results).
Usage: python experiments/two_paths.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, markdown_table, mean_sd, rounded, write_results
from jaxbp import datasets
from jaxbp.app.plots import pyplot


def stacked_data(name, seeds, dtype):
    """Each seed's own split (as `jaxbp train --seed` makes it), stacked on a leading axis."""
    splits = [datasets.load(name, seed=s) for s in seeds]
    cast = lambda v: v if jnp.issubdtype(v.dtype, jnp.integer) else v.astype(dtype)  # noqa: E731
    return [jnp.stack([cast(split[i]) for split in splits]) for i in range(4)]


def tree_gap(pm, pa):
    """(max |pm - pa| over all entries, max over leaves of ||pm - pa|| / ||pa||)."""
    diffs = [m - a for m, a in zip(jax.tree.leaves(pm), jax.tree.leaves(pa))]
    max_abs = jnp.max(jnp.stack([jnp.max(jnp.abs(d)) for d in diffs]))
    rel = [jnp.linalg.norm(d) / jnp.linalg.norm(a) for d, a in zip(diffs, jax.tree.leaves(pa))]
    return max_abs, jnp.max(jnp.stack(rel))


def make_program(cfg, task, kw):
    """One epoch of both paths for one seed, plus their scores and gap; vmapped over seeds."""
    optimizer = optax.adam(cfg["lr"])
    epochs = {
        grad: jaxbp.make_train_epoch(optimizer, batch_size=cfg["batch_size"], grad=grad, **kw)
        for grad in ("manual", "autodiff")
    }
    score = "accuracy" if task == "classification" else "r2"

    def one_seed(pm, om, pa, oa, seed_key, epoch, x_train, y_train, x_test, y_test):
        key = jax.random.fold_in(seed_key, epoch)  # the epoch's shuffle, as `jaxbp train`'s
        pm, om, mm = epochs["manual"](pm, om, key, x_train, y_train)
        pa, oa, ma = epochs["autodiff"](pa, oa, key, x_train, y_train)
        max_abs, max_rel = tree_gap(pm, pa)
        row = {"max_abs_diff": max_abs, "max_rel_diff": max_rel}
        for path, params, metrics in (("manual", pm, mm), ("autodiff", pa, ma)):
            test = jaxbp.evaluate(params, x_test, y_test, task=task, **kw)
            row[f"train_loss_{path}"] = jnp.mean(metrics["loss"])  # mean over the epoch's steps
            row[f"test_loss_{path}"] = test["loss"]
            row[f"test_{score}_{path}"] = test[score]
        return pm, om, pa, oa, row

    program = jax.vmap(one_seed, in_axes=(0, 0, 0, 0, 0, None, 0, 0, 0, 0))
    return optimizer, jax.jit(program, donate_argnums=(0, 1, 2, 3))


def run(name, cfg, seeds, dtype):
    """Train both paths on every seed; returns per-epoch metrics, each `(epochs, seeds)`."""
    info = datasets.INFO[name]
    kw = dict(activation=cfg["activation"], loss=info.loss)
    x_train, y_train, x_test, y_test = stacked_data(name, seeds, dtype)
    sizes = [x_train.shape[-1], *cfg["hidden"], info.n_outputs]
    optimizer, program = make_program(cfg, info.task, kw)

    @jax.jit
    def setup(seeds):
        """Both paths' starting points: one initialisation per seed, in two copies (the
        program donates them). Drawn in float32 in both runs, so float64 starts there too."""
        keys = jax.vmap(jax.random.key)(seeds)  # as `jaxbp train --seed s`
        params = jax.vmap(
            lambda k: jaxbp.init_mlp(jax.random.fold_in(k, 0), sizes, init=cfg["init"])
        )(keys)
        pm = jax.tree.map(lambda p: p.astype(dtype), params)
        pa = jax.tree.map(jnp.copy, pm)
        return keys, pm, jax.vmap(optimizer.init)(pm), pa, jax.vmap(optimizer.init)(pa)

    keys, pm, om, pa, oa = setup(jnp.asarray(seeds))
    history = []
    start = time.perf_counter()
    for epoch in range(1, cfg["epochs"] + 1):
        pm, om, pa, oa, row = program(pm, om, pa, oa, keys, epoch, x_train, y_train, x_test, y_test)
        history.append({k: np.asarray(v, np.float64) for k, v in row.items()})
        if epoch == 1 or epoch % 10 == 0 or epoch == cfg["epochs"]:
            log(
                f"  {name} {jnp.dtype(dtype).name} epoch {epoch}/{cfg['epochs']}: loss manual "
                f"{history[-1]['train_loss_manual'].mean():.4f} autodiff "
                f"{history[-1]['train_loss_autodiff'].mean():.4f}, max |dp| "
                f"{history[-1]['max_abs_diff'].max():.1e} ({time.perf_counter() - start:.1f} s)"
            )
    curves = {k: np.stack([h[k] for h in history]) for k in history[0]}
    final = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(pm)]  # manual path's
    return sizes, curves, final, time.perf_counter() - start


def summarise(name, cfg, sizes, seeds, runs, finals):
    score = "accuracy" if datasets.INFO[name].task == "classification" else "r2"
    c32, c64 = runs["float32"], runs["float64"]
    mean = lambda v: float(np.mean(v))  # noqa: E731
    sd = lambda v: float(np.std(v))  # noqa: E731
    return {
        "dataset": name,
        "architecture": "-".join(map(str, sizes)),
        "activation": cfg["activation"],
        "init": cfg["init"],
        "loss": datasets.INFO[name].loss,
        "epochs": cfg["epochs"],
        "seeds": list(seeds),
        "score": score,
        **{
            f"{key}_{path}": [float(v) for v in c32[f"{key}_{path}"][-1]]
            for key in ("train_loss", "test_loss", f"test_{score}")
            for path in ("manual", "autodiff")
        },
        "test_score_manual_mean": mean(c32[f"test_{score}_manual"][-1]),
        "test_score_manual_sd": sd(c32[f"test_{score}_manual"][-1]),
        "test_score_autodiff_mean": mean(c32[f"test_{score}_autodiff"][-1]),
        "test_score_autodiff_sd": sd(c32[f"test_{score}_autodiff"][-1]),
        "largest_score_gap": float(
            np.max(np.abs(c32[f"test_{score}_manual"][-1] - c32[f"test_{score}_autodiff"][-1]))
        ),
        "float32_max_abs_diff_first_epoch": float(c32["max_abs_diff"][0].max()),
        "float32_max_abs_diff_final": float(c32["max_abs_diff"][-1].max()),
        "float32_max_abs_diff_over_training": float(c32["max_abs_diff"].max()),
        "float32_max_rel_diff_final": float(c32["max_rel_diff"][-1].max()),
        "float64_max_abs_diff_final": float(c64["max_abs_diff"][-1].max()),
        "float64_max_abs_diff_over_training": float(c64["max_abs_diff"].max()),
        "float64_max_rel_diff_final": float(c64["max_rel_diff"][-1].max()),
        # the size of float32 rounding itself: the manual path in float32 against float64
        "manual_float32_vs_float64_max_abs_diff_final": float(
            max(np.max(np.abs(a - b)) for a, b in zip(finals["float32"], finals["float64"]))
        ),
        "per_epoch": {
            dtype: {k: rounded(v) for k, v in curves.items()} for dtype, curves in runs.items()
        },
    }


def plot(summaries, path):
    plt = pyplot()
    fig, axes = plt.subplots(2, len(summaries), figsize=(4.6 * len(summaries), 7.4), squeeze=False)
    for col, s in enumerate(summaries):
        c32 = s["per_epoch"]["float32"]
        epochs = np.arange(1, s["epochs"] + 1)
        ax = axes[0, col]
        for i, seed in enumerate(s["seeds"]):
            manual = np.asarray(c32["train_loss_manual"])[:, i]
            autodiff = np.asarray(c32["train_loss_autodiff"])[:, i]
            ax.plot(epochs, manual, color=f"C{i}", lw=1.6, label=f"seed {seed} manual")
            ax.plot(epochs, autodiff, color="k", ls=(0, (2, 3)), lw=1.0)
        ax.plot([], [], color="k", ls=(0, (2, 3)), lw=1.0, label="autodiff (every seed)")
        ax.set(
            yscale="log",
            xlabel="epoch",
            ylabel=f"training loss ({s['loss']})",
            title=f"{s['dataset']}: {s['architecture']} {s['activation']}",
        )
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for dtype, ls in (("float32", "-"), ("float64", "--")):
            curves = s["per_epoch"][dtype]
            for key, color, label in (
                ("max_abs_diff", "C3", "max |p_manual - p_autodiff|"),
                ("max_rel_diff", "C0", "max over leaves ||diff|| / ||p||"),
            ):
                v = np.maximum(np.asarray(curves[key]), 1e-18)  # an exact 0 shows at the floor
                ax.plot(epochs, np.median(v, axis=1), color=color, ls=ls, label=f"{label}, {dtype}")
                ax.fill_between(epochs, v.min(axis=1), v.max(axis=1), color=color, alpha=0.15)
        ax.set(yscale="log", xlabel="epoch", ylabel="parameter gap (median, min-max over seeds)")
        ax.set_title("manual vs autodiff parameters", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Handwritten back-propagation and jax.grad from the same seed: same losses, "
        "parameters apart only by rounding"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(summaries):
    header = [
        "dataset",
        "network",
        "epochs",
        "seeds",
        "test score",
        "manual",
        "autodiff",
        "largest gap in test score",
        "max abs param diff, float32 (epoch 1 / final)",
        "max rel diff, float32 (final)",
        "max abs param diff, float64 (final)",
        "for scale: manual float32 vs float64 (final)",
    ]
    cells = [
        [
            s["dataset"],
            f"{s['architecture']} {s['activation']}",
            s["epochs"],
            len(s["seeds"]),
            s["score"],
            mean_sd(s, "test_score_manual", 4),
            mean_sd(s, "test_score_autodiff", 4),
            f"{s['largest_score_gap']:.1e}",
            f"{s['float32_max_abs_diff_first_epoch']:.1e} / {s['float32_max_abs_diff_final']:.1e}",
            f"{s['float32_max_rel_diff_final']:.1e}",
            f"{s['float64_max_abs_diff_final']:.1e}",
            f"{s['manual_float32_vs_float64_max_abs_diff_final']:.1e}",
        ]
        for s in summaries
    ]
    return markdown_table(header, cells)


def main():
    args = make_parser(__doc__, "breast_cancer only, 1 seed, 2 epochs, 8 units").parse_args()

    # The settings of `jaxbp train` for each dataset (adam, lr 1e-3, batch 32).
    settings = {
        "digits": dict(hidden=(512,), activation="relu", init="he_normal", epochs=60),
        "breast_cancer": dict(hidden=(64,), activation="tanh", init="glorot_normal", epochs=20),
        "diabetes": dict(hidden=(512,), activation="tanh", init="glorot_normal", epochs=20),
    }
    lr, batch_size = 1e-3, 32
    seeds = [0, 1, 2, 3, 4]
    if args.smoke:  # each dataset and dtype is a program to compile: keep one dataset
        settings = {"breast_cancer": {**settings["breast_cancer"], "hidden": (8,), "epochs": 2}}
        seeds = [0]

    start = time.perf_counter()
    summaries = []
    for name, cfg in settings.items():
        cfg = {**cfg, "lr": lr, "batch_size": batch_size}
        runs, finals = {}, {}
        for dtype in (jnp.float32, jnp.float64):
            kind = jnp.dtype(dtype).name
            with jax.enable_x64(dtype == jnp.float64):
                sizes, runs[kind], finals[kind], seconds = run(name, cfg, seeds, dtype)
            log(f"{name} {kind}: {len(seeds)} seeds x 2 paths in {seconds:.1f} s")
        summaries.append(summarise(name, cfg, sizes, seeds, runs, finals))

    result = {
        "experiment": "two_paths",
        "optimizer": f"adam lr {lr:g}",
        "batch_size": batch_size,
        "seeds": seeds,
        "smoke": args.smoke,
        "wall_s": time.perf_counter() - start,
        "datasets": summaries,
    }
    write_results(args.out, "two_paths", result, table(summaries))
    plot(summaries, args.out / "two_paths.png")
    log(table(summaries))
    log(f"wrote two_paths.{{png,json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
