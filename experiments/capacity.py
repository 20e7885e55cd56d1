"""Capacity: decision boundaries on xor, moons and spirals as the hidden layers grow.

The chapter says a network's capacity grows with its width and depth (section 1.1.2).
Here one-hidden-layer tanh networks of widths 2 to 128, and networks of 2 and 3 hidden
layers of width 16, are trained with binary cross-entropy on the three 2-d datasets of
`jaxbp.datasets`; each setting is trained from several seeds (initialisation and
minibatch order; the data are the same). The figure shows each setting's predicted
probability P(y = 1 | x) over the plane with its 1/2 contour and the training points;
the table gives train and test accuracy (mean and standard deviation over seeds).
Datasets x seeds are one `jax.vmap`ped program per architecture.

Writes capacity.{png,json,md} under --out (default experiments/results).
Usage: python experiments/capacity.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, markdown_table, mean_sd, rounded, write_results
from jaxbp import datasets
from jaxbp.app.plots import pyplot


def plane(x, n):
    """A square `n x n` grid covering the points `x: (m, 2)` with a margin: `(n * n, 2)`."""
    lo, hi = x.min(axis=0) - 0.4, x.max(axis=0) + 0.4
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float32)


def n_params(sizes):
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def train_all(data, grids, hidden, kw, optimizer, seeds, epochs, batch_size):
    """Train `hidden` on every dataset (leading axis of `data`) from every seed.

    Returns per (dataset, seed): train/test accuracy and loss after training, the training
    loss per epoch, and P(y = 1) on the dataset's grid.
    """
    sizes = [2, *hidden, 1]
    epoch_fn = jaxbp.make_train_epoch(optimizer, batch_size=batch_size, **kw)

    def one(seed, x_train, y_train, x_test, y_test, grid):
        key = jax.random.key(seed)
        params = jaxbp.init_mlp(jax.random.fold_in(key, 0), sizes)

        def body(carry, epoch):
            params, opt_state, metrics = epoch_fn(
                *carry, jax.random.fold_in(key, epoch), x_train, y_train
            )
            return (params, opt_state), jnp.mean(metrics["loss"])

        (params, _), losses = jax.lax.scan(
            body, (params, optimizer.init(params)), jnp.arange(1, epochs + 1)
        )
        train = jaxbp.evaluate(params, x_train, y_train, **kw)
        test = jaxbp.evaluate(params, x_test, y_test, **kw)
        prob = jaxbp.forward(params, grid, activation=kw["activation"], output_activation="sigmoid")
        return {
            "train_accuracy": train["accuracy"],
            "test_accuracy": test["accuracy"],
            "train_loss": train["loss"],
            "test_loss": test["loss"],
            "loss_per_epoch": losses,
            "grid_prob": prob[:, 0],
        }

    over_seeds = jax.vmap(one, in_axes=(0, None, None, None, None, None))
    over_data = jax.vmap(over_seeds, in_axes=(None, 0, 0, 0, 0, 0))
    out = jax.jit(over_data)(jnp.asarray(seeds), *data, grids)
    return {k: np.asarray(v) for k, v in out.items()}


def plot(names, archs, results, data, grids, n_grid, path):
    plt = pyplot()
    fig, axes = plt.subplots(
        len(names),
        len(archs),
        figsize=(2.25 * len(archs) + 0.8, 2.45 * len(names) + 0.6),
        squeeze=False,
    )
    levels = np.linspace(0, 1, 11)
    mesh = None
    for i, name in enumerate(names):
        x, y = np.asarray(data[0][i]), np.asarray(data[1][i])
        show = np.random.default_rng(0).permutation(x.shape[0])[:300]  # a readable subset
        u = grids[i][:, 0].reshape(n_grid, n_grid)
        v = grids[i][:, 1].reshape(n_grid, n_grid)
        for j, hidden in enumerate(archs):
            r = results[hidden]
            ax = axes[i, j]
            prob = r["grid_prob"][i, 0].reshape(n_grid, n_grid)  # the first seed's network
            mesh = ax.contourf(u, v, prob, levels=levels, cmap="RdBu_r", vmin=0, vmax=1)
            ax.contour(u, v, prob, levels=[0.5], colors="k", linewidths=1.0)
            ax.scatter(
                x[show, 0], x[show, 1], c=y[show], cmap="RdBu_r", vmin=0, vmax=1, s=5,
                edgecolors="k", linewidths=0.2,
            )  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            train, test = r["train_accuracy"][i].mean(), r["test_accuracy"][i].mean()
            ax.set_title(f"train {train:.2f}  test {test:.2f}", fontsize=8)
            if i == 0:
                label = "-".join(map(str, hidden))
                ax.annotate(
                    f"hidden {label}", (0.5, 1.22), xycoords="axes fraction", ha="center",
                    fontsize=10, weight="bold",
                )  # fmt: skip
            if j == 0:
                ax.set_ylabel(name, fontsize=11, weight="bold")
    fig.suptitle(
        "Decision boundaries as width (left) and depth (right) grow: P(y = 1 | x) of the "
        "first seed's network, 1/2 contour in black, training points coloured by class;\n"
        "titles: mean accuracy over seeds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 0.95, 1))
    cax = fig.add_axes((0.955, 0.15, 0.01, 0.7))
    fig.colorbar(mesh, cax=cax, label="P(y = 1 | x)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows):
    header = ["dataset", "hidden", "parameters", "train accuracy", "test accuracy", "train loss"]
    cells = [
        [
            r["dataset"],
            r["hidden"],
            r["parameters"],
            mean_sd(r, "train_accuracy"),
            mean_sd(r, "test_accuracy"),
            f"{r['train_loss_mean']:.3f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def main():
    args = make_parser(__doc__, "1 seed, 1 epoch, one 2-2 network").parse_args()

    names = ["xor", "moons", "spirals"]
    archs = [(2,), (4,), (8,), (16,), (32,), (128,), (16, 16), (16, 16, 16)]
    activation, lr, batch_size, epochs = "tanh", 3e-3, 32, 300
    n_samples, seeds, n_grid = 1000, [0, 1, 2, 3, 4], 160
    if args.smoke:
        archs, epochs, seeds, n_grid = [(2, 2)], 1, [0], 20

    start = time.perf_counter()
    kw = dict(activation=activation, loss="binary_cross_entropy")
    splits = [datasets.load(name, seed=0, n_samples=n_samples) for name in names]
    data = [jnp.stack([split[i] for split in splits]) for i in range(4)]  # (datasets, n, ...)
    grids = jnp.stack([plane(np.asarray(split.x_train), n_grid) for split in splits])
    results, rows = {}, []
    for hidden in archs:
        t = time.perf_counter()
        optimizer = optax.adam(lr)
        results[hidden] = r = train_all(
            data, grids, hidden, kw, optimizer, seeds, epochs, batch_size
        )
        for i, name in enumerate(names):
            rows.append(
                {
                    "dataset": name,
                    "hidden": "-".join(map(str, hidden)),
                    "depth": len(hidden),
                    "parameters": n_params([2, *hidden, 1]),
                    **{
                        f"{k}_{stat}": float(fn(r[k][i]))
                        for k in ("train_accuracy", "test_accuracy", "train_loss", "test_loss")
                        for stat, fn in (("mean", np.mean), ("sd", np.std))
                    },
                    "train_accuracy_per_seed": r["train_accuracy"][i].tolist(),
                    "test_accuracy_per_seed": r["test_accuracy"][i].tolist(),
                    "loss_per_epoch_mean": rounded(r["loss_per_epoch"][i].mean(axis=0)),
                }
            )
        log(
            f"hidden {'-'.join(map(str, hidden)):<9} {len(seeds)} seeds x {len(names)} datasets, "
            f"{epochs} epochs in {time.perf_counter() - t:.1f} s: test accuracy "
            + ", ".join(f"{n} {r['test_accuracy'][i].mean():.3f}" for i, n in enumerate(names))
        )

    rows.sort(key=lambda r: names.index(r["dataset"]))  # stable: architectures keep their order
    result = {
        "experiment": "capacity",
        "smoke": args.smoke,
        "wall_s": time.perf_counter() - start,
        "settings": {
            "datasets": names,
            "n_samples": n_samples,
            "architectures": ["-".join(map(str, h)) for h in archs],
            "activation": activation,
            "loss": "binary_cross_entropy",
            "optimizer": f"adam lr {lr:g}",
            "batch_size": batch_size,
            "epochs": epochs,
            "seeds": seeds,
        },
        "results": rows,
    }
    write_results(args.out, "capacity", result, table(rows))
    plot(names, archs, results, data, np.asarray(grids), n_grid, args.out / "capacity.png")
    log(table(rows))
    log(f"wrote capacity.{{png,json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
