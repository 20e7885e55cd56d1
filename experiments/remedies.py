"""Section 1.1.3: which of the chapter's remedies make a deep sigmoid or tanh MLP trainable.

The chapter says deep networks became trainable once weight initialisation, data
preprocessing and normalisation, dropout and momentum tamed the vanishing gradients of
plain gradient descent. This puts each remedy against the pre-2010 recipe, alone and all
together, and measures both what it does to the backward flow of eq. 1.4 and whether the
network learns.

- Baseline: `init="standard"` (U[-1/sqrt(n_in), 1/sqrt(n_in)]), plain SGD, raw inputs
  (scikit-learn's features as shipped, on the same split as `jaxbp.datasets.load`), no
  normalisation, no dropout.
- One remedy at a time: Glorot init; standardised inputs; layer norm; batch norm;
  dropout; SGD momentum 0.9 (at the same learning rate, and at a tenth of it, which
  keeps the effective step lr / (1 - momentum) of plain SGD). Also Glorot init with
  standardised inputs, the recipe of Glorot & Bengio (2010).
- All together: Glorot, standardised inputs, dropout and momentum, with batch norm or
  with layer norm.

Sigmoid and tanh MLPs (`width` units per hidden layer) of depth 5, 10 and 20 on digits
and breast_cancer, 5 seeds, one fixed learning rate and a fixed budget of SGD steps.
Seed s draws the same initial weights (up to the init's scale) and the same minibatch
order under every variant. For each: test accuracy, and per layer ||delta_l||
(`jaxbp.backprop`'s trace on a fixed batch of training samples) at initialisation and
after training. Each architecture (norm, dropout) of one dataset, activation and depth
is one compiled program: its seeds vmapped (`jaxbp.make_train_sweep`), and the variants
without a layer of their own (init, inputs, momentum) run through the same program.

Writes under `--out` (default experiments/results): remedies.png, .json, .md.

Usage: python experiments/remedies.py [--smoke] [--out DIR]
       python experiments/remedies.py --replot [--out DIR]  (redraws remedies.png from
       DIR/remedies.json without training)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import fmt_spread, log, make_parser, markdown_table, rounded, spread, write_results
from jaxbp.app.plots import pyplot

sys.path.insert(0, str(Path(__file__).parent))
# The conventions shared with the vanishing-gradients experiment: the underflow-safe norm,
# 4 significant digits in the JSON, the per-layer geometric mean, what counts as level.
from vanishing_gradients import DIGITS, LEVEL, geo, norm


class Variant(NamedTuple):
    """One recipe: the pre-2010 baseline with some remedies switched on."""

    init: str = "standard"
    standardise: bool = False
    norm: str | None = None
    dropout: float = 0.0
    momentum: float = 0.0
    lr_scale: float = 1.0

    @property
    def arch(self) -> tuple[str | None, float]:
        """What makes a different program: the layers in the network."""
        return self.norm, self.dropout


def variants(dropout: float, momentum: float, glorot: str) -> dict[str, Variant]:
    every = {"init": glorot, "standardise": True, "dropout": dropout, "momentum": momentum}
    return {
        "baseline": Variant(),
        "glorot init": Variant(init=glorot),
        "standardised inputs": Variant(standardise=True),
        "glorot + standardised": Variant(init=glorot, standardise=True),
        "layer norm": Variant(norm="layer"),
        "batch norm": Variant(norm="batch"),
        "dropout": Variant(dropout=dropout),
        "momentum": Variant(momentum=momentum),
        # the same effective step lr / (1 - momentum) as plain SGD at lr
        "momentum, lr x0.1": Variant(momentum=momentum, lr_scale=1 - momentum),
        "all, batch norm": Variant(norm="batch", **every),
        "all, layer norm": Variant(norm="layer", **every),
    }


def load(name: str, seed: int) -> dict[str, jaxbp.datasets.Dataset]:
    """One split of `name`, with its raw features and standardised (training statistics)."""
    return {
        "raw": jaxbp.datasets.load(name, seed=seed, standardise=False),
        "standardised": jaxbp.datasets.load(name, seed=seed),
    }


def make_flow_norms(config: jaxbp.Config):
    """`(params, x, y, key) -> {"loss", "delta": (N, L), "dW": (N, L)}` over N stacked
    models, jitted: ||delta_l|| and ||dL/dW_l|| per layer from `jaxbp.backprop`'s trace
    (training mode: dropout masks from `key`, batch norm on the batch's statistics)."""

    def one(params, x, y, key):
        value, grads, trace = jaxbp.backprop(params, x, y, config, key=key)
        return {
            "loss": value,
            "delta": jnp.stack([norm(d) for d in trace.delta]),
            "dW": jnp.stack([norm(g["W"]) for g in grads if "W" in g]),
        }

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


class Program(NamedTuple):
    """The compiled pieces shared by the variants of one architecture."""

    config: jaxbp.Config
    optimizer: optax.GradientTransformation
    sweep: object
    flow_norms: object
    evaluate: object


def program(activation: str, loss: str, arch, cfg: dict) -> Program:
    norm_, dropout = arch
    config = jaxbp.Config(activation=activation, loss=loss, norm=norm_, dropout=dropout)
    # The rate and momentum are hyperparameters in the state, so plain SGD (momentum 0: the
    # trace is the gradient itself), momentum 0.9 and other rates run in the same program.
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=cfg["lr"], momentum=0.0)
    sweep = jaxbp.make_train_sweep(optimizer, config, batch_size=cfg["batch_size"])
    evaluate = jax.jit(lambda p, x, y, s: jaxbp.evaluate_sweep(p, x, y, config, stats=s))
    return Program(config, optimizer, sweep, make_flow_norms(config), evaluate)


def run_variant(prog: Program, variant: Variant, sizes, data, cfg, key, lr=None) -> dict:
    """Train `cfg["seeds"]` models of one variant (at `lr`, by default `cfg["lr"]` times the
    variant's scale); their norms at init and after training, and their test scores."""
    lr = cfg["lr"] * variant.lr_scale if lr is None else lr
    n = cfg["seeds"]
    k_init, k_train, k_diag = jax.random.split(key, 3)
    keys = jax.random.split(k_init, n)
    params = jax.vmap(lambda k: jaxbp.init_mlp(k, sizes, init=variant.init, norm=variant.norm))(
        keys
    )
    state = jax.vmap(lambda p: jaxbp.init_train_state(prog.optimizer, p, prog.config))(params)
    opt_state = jaxbp.TrainState.of(state).opt_state
    opt_state.hyperparams["momentum"] = jnp.full((n,), variant.momentum, jnp.float32)
    opt_state.hyperparams["learning_rate"] = jnp.full((n,), lr, jnp.float32)
    x_train, y_train, x_test, y_test = data
    batch = x_train[: cfg["diag_batch"]], y_train[: cfg["diag_batch"]]
    at_init = prog.flow_norms(params, *batch, k_diag)
    losses = []
    for epoch in range(cfg["epochs"]):
        epoch_keys = jax.random.split(jax.random.fold_in(k_train, epoch), n)
        params, state, metrics = prog.sweep(params, state, epoch_keys, x_train, y_train)
        losses.append(jnp.mean(metrics["loss"], axis=1))
    trained = prog.flow_norms(params, *batch, k_diag)
    stats = jaxbp.TrainState.of(state).stats or None
    test = prog.evaluate(params, x_test, y_test, stats)
    loss_curve = np.asarray(jnp.stack(losses, axis=1), np.float64)  # (seeds, epochs)
    record = {"lr": lr, "train_loss_per_epoch": rounded(loss_curve, DIGITS)}
    for when, res in (("at_init", at_init), ("trained", trained)):
        delta = np.asarray(res["delta"], np.float64)
        dW = np.asarray(res["dW"], np.float64)
        record[when] = {
            "batch_loss": rounded(np.asarray(res["loss"], np.float64), DIGITS),
            "delta_norms": rounded(delta, DIGITS),
            "dW_norms": rounded(dW, DIGITS),
            "delta_ratio": ratios(delta),
            "dW_ratio": ratios(dW),
        }
        record[when]["delta_ratio_summary"] = spread(record[when]["delta_ratio"])
        record[when]["dW_ratio_summary"] = spread(record[when]["dW_ratio"])
    acc = np.asarray(test["accuracy"], np.float64)
    record["test_accuracy"] = acc.tolist()
    record["test_accuracy_summary"] = {
        "mean": float(acc.mean()),
        "min": float(acc.min()),
        "max": float(acc.max()),
    }
    record["final_train_loss"] = loss_curve[:, -1].tolist()
    record["diverged"] = int(np.sum(~np.isfinite(loss_curve[:, -1])))
    return record


def ratios(norms: np.ndarray) -> list[float | None]:
    """||first layer|| / ||last layer|| per seed; None where it is 0, inf or nan."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = norms[:, 0] / norms[:, -1]
    return [rounded(v, DIGITS) if np.isfinite(v) and v > 0 else None for v in r]


def fmt_acc(r: dict) -> str:
    a = r["test_accuracy_summary"]
    text = f"{a['mean']:.3f} [{a['min']:.2f}, {a['max']:.2f}]"
    return text + (f" ({r['diverged']} diverged)" if r["diverged"] else "")


def find(records, dataset, activation, variant, depth) -> dict:
    for r in records:
        if (r["dataset"], r["activation"], r["variant"], r["depth"]) == (
            dataset,
            activation,
            variant,
            depth,
        ):
            return r
    raise KeyError((dataset, activation, variant, depth))


def main_table(records, dataset, names, activations, depths) -> str:
    head = ["variant", "depth"]
    for act in activations:
        head += [f"{act} test acc", f"{act} ratio init", f"{act} ratio trained"]
    rows = []
    for name in names:
        for depth in depths:
            row = [name, str(depth)]
            for act in activations:
                r = find(records, dataset, act, name, depth)
                row += [
                    fmt_acc(r),
                    fmt_spread(r["at_init"]["delta_ratio_summary"]),
                    fmt_spread(r["trained"]["delta_ratio_summary"]),
                ]
            rows.append(row)
    return markdown_table(head, rows)


def lr_table(records, lr_records, dataset, depth, lr, names) -> str:
    """Test accuracy of the plain variants at the main rate and the checked ones."""
    rates = sorted({lr} | {r["lr"] for r in lr_records})
    acts = list(dict.fromkeys(r["activation"] for r in lr_records))
    rows = []
    for act in acts:
        for name in names:
            cells = []
            for rate in rates:
                if rate == lr:
                    cells.append(fmt_acc(find(records, dataset, act, name, depth)))
                    continue
                rec = [
                    r
                    for r in lr_records
                    if (r["activation"], r["variant"], r["lr"]) == (act, name, rate)
                ]
                cells.append(fmt_acc(rec[0]))
            rows.append([act, name, *cells])
    return markdown_table(["activation", "variant", *(f"lr {v:g}" for v in rates)], rows)


def chance(data) -> float:
    """The test accuracy of always predicting the training split's majority class."""
    y_train, y_test = np.asarray(data[1]), np.asarray(data[3])
    values, counts = np.unique(y_train, return_counts=True)
    return float(np.mean(y_test == values[np.argmax(counts)]))


def verdict(records, dataset, activation, names, depth, chance_acc) -> list[str]:
    """Computed from the numbers: at `depth`, which variants have a level backward flow
    at initialisation (every seed has a ratio, none lost to zero/nan, and their
    geometric mean lies within [1/LEVEL, LEVEL]) and which learn (mean test accuracy at
    least 0.1 above chance)."""
    level, learns = [], []
    for name in names:
        r = find(records, dataset, activation, name, depth)
        s = r["at_init"]["delta_ratio_summary"]
        if s["missing"] == 0 and 1 / LEVEL <= s["geomean"] <= LEVEL:
            level.append(name)
        if r["test_accuracy_summary"]["mean"] >= chance_acc + 0.1:
            learns.append(name)
    return [
        f"- {dataset}, {activation}, depth {depth}: level flow at init "
        f"({1 / LEVEL:g} <= ratio <= {LEVEL:g}): {', '.join(level) or 'none'}; "
        f"learns (mean test accuracy >= chance {chance_acc:.2f} + 0.1): "
        f"{', '.join(learns) or 'none'}."
    ]


def figure(records, datasets, activations, names, depths, path: Path) -> None:
    plt = pyplot()
    panels = [(d, a) for d in datasets for a in activations]
    deep = max(depths)
    fig, axes = plt.subplots(3, len(panels), figsize=(5.2 * len(panels), 13), squeeze=False)
    # Ten colours, then the same ten dashed: every variant keeps a style of its own.
    styles = {name: (f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]) for i, name in enumerate(names)}
    width = 0.8 / len(depths)
    for col, (dataset, act) in enumerate(panels):
        ax = axes[0, col]
        for j, depth in enumerate(depths):
            acc = [find(records, dataset, act, n, depth)["test_accuracy_summary"] for n in names]
            mean = np.array([a["mean"] for a in acc])
            err = np.array([[a["mean"] - a["min"], a["max"] - a["mean"]] for a in acc]).T
            xs = np.arange(len(names)) + (j - (len(depths) - 1) / 2) * width
            shade = 0.35 + 0.65 * j / len(depths)
            ax.bar(xs, mean, width, yerr=err, capsize=2, alpha=shade, label=f"depth {depth}")
        ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set(title=f"{dataset}, {act}: test accuracy (min..max)", ylim=(0, 1.02))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        for row, when in ((1, "at_init"), (2, "trained")):
            ax = axes[row, col]
            for name in names:
                norms = find(records, dataset, act, name, deep)[when]["delta_norms"]
                layers = np.arange(1, deep + 1)
                color, line = styles[name]
                ax.plot(layers, geo(norms), marker="o", ms=2, ls=line, color=color, label=name)
            ax.set(
                title=f"{dataset}, {act}, depth {deep}: ||delta_l||, "
                + ("at init" if when == "at_init" else "trained"),
                xlabel="layer l (1 = first hidden, L = output)",
                ylabel="||delta_l|| (geometric mean over seeds)",
                yscale="log",
            )
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle("Remedies for depth (section 1.1.3): accuracy and the backward flow", y=0.998)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(out: Path) -> None:
    """Redraw the figure from the records a full run stored, without training again."""
    saved = json.loads((out / "remedies.json").read_text())
    records = saved["settings"]
    firsts = lambda key: list(dict.fromkeys(r[key] for r in records))  # noqa: E731
    depths = sorted(set(firsts("depth")))
    names = firsts("variant")
    figure(records, firsts("dataset"), firsts("activation"), names, depths, out / "remedies.png")
    log(f"wrote {out / 'remedies.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__, "tiny sizes, for tests")
    parser.add_argument(
        "--replot", action="store_true", help="redraw remedies.png from --out's remedies.json"
    )
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.out)
        return

    datasets = ["breast_cancer"] if args.smoke else ["digits", "breast_cancer"]
    activations = ["tanh"] if args.smoke else ["sigmoid", "tanh"]
    depths = [3] if args.smoke else [5, 10, 20]  # weight layers
    seeds = 2 if args.smoke else 5
    width = 8 if args.smoke else 64  # units in every hidden layer
    lr = 0.1  # one rate for every variant (see the README paragraph for why)
    momentum = 0.9
    dropout = 0.1  # after every hidden activation
    glorot = "glorot_uniform"
    batch_size = 32
    steps = 6 if args.smoke else 1350  # SGD steps per model, the same on both datasets
    lr_check = [0.03, 0.3]  # other rates, for the plain variants at the smallest depth
    lr_check_variants = ["baseline", "glorot init", "standardised inputs"]
    diag_batch = 32 if args.smoke else 256  # the fixed training batch the norms are read on
    seed = 0

    start = time.perf_counter()
    table = variants(dropout, momentum, glorot)
    names = list(table)
    records, chances, config, lr_records = [], {}, {}, []
    key = jax.random.key(seed)
    for dataset in datasets:
        data = load(dataset, seed)
        n_train = data["raw"].x_train.shape[0]
        epochs = max(1, round(steps / -(-n_train // batch_size)))
        info = jaxbp.datasets.INFO[dataset]
        chances[dataset] = chance(data["raw"])
        cfg = {"seeds": seeds, "lr": lr, "batch_size": batch_size, "epochs": epochs}
        cfg["diag_batch"] = diag_batch
        config[dataset] = {**cfg, "n_train": n_train, "steps": epochs * -(-n_train // batch_size)}
        log(f"{dataset}: {n_train} training samples, {epochs} epochs of batch {batch_size}")
        k_data = jax.random.fold_in(key, datasets.index(dataset))
        for activation in activations:
            for depth in depths:
                sizes = [data["raw"].x_train.shape[1]] + [width] * (depth - 1) + [info.n_outputs]
                archs = {}
                for name, variant in table.items():
                    archs.setdefault(variant.arch, []).append(name)
                for arch, group in archs.items():
                    t = time.perf_counter()
                    prog = program(activation, info.loss, arch, cfg)
                    for name in group:
                        variant = table[name]
                        inputs = data["standardised" if variant.standardise else "raw"]
                        rec = run_variant(prog, variant, sizes, inputs, cfg, k_data)
                        rec.update(
                            dataset=dataset, activation=activation, depth=depth, variant=name
                        )
                        records.append(rec)
                        log(
                            f"{dataset:<13} {activation:<7} depth {depth:>2} {name:<19} "
                            f"acc {fmt_acc(rec):<30} ratio "
                            f"{fmt_spread(rec['at_init']['delta_ratio_summary'])} -> "
                            f"{fmt_spread(rec['trained']['delta_ratio_summary'])}"
                        )
                    if dataset == datasets[0] and depth == min(depths) and arch == (None, 0.0):
                        for rate in lr_check:  # the same program, another rate in the state
                            for name in lr_check_variants:
                                variant = table[name]
                                inputs = data["standardised" if variant.standardise else "raw"]
                                rec = run_variant(prog, variant, sizes, inputs, cfg, k_data, rate)
                                keep = ("lr", "test_accuracy", "test_accuracy_summary", "diverged")
                                rec = {k: rec[k] for k in keep}
                                rec.update(activation=activation, depth=depth, variant=name)
                                lr_records.append(rec)
                                log(f"  lr check {activation} {name} lr {rate}: {fmt_acc(rec)}")
                    log(f"  ({time.perf_counter() - t:.1f} s for {group})")

    args.out.mkdir(parents=True, exist_ok=True)
    figure(records, datasets, activations, names, depths, args.out / "remedies.png")
    deep = max(depths)
    verdicts = [
        line
        for d in datasets
        for a in activations
        for line in verdict(records, d, a, names, deep, chances[d])
    ]
    wall = time.perf_counter() - start
    result = {
        "experiment": "remedies",
        "smoke": args.smoke,
        "config": {
            "datasets": config,
            "activations": activations,
            "depths": depths,
            "width": width,
            "seeds": seeds,
            "optimizer": "sgd",
            "lr": lr,
            "batch_size": batch_size,
            "dropout": dropout,
            "momentum": momentum,
            "level_factor": LEVEL,
            "variants": {name: v._asdict() for name, v in table.items()},
        },
        "chance_accuracy": chances,
        "settings": records,
        "lr_check": lr_records,
        "verdict": verdicts,
        "jax_version": jax.__version__,
        "wall_s": wall,
    }
    md = [
        "# Remedies for depth (section 1.1.3)",
        "",
        f"Sigmoid and tanh MLPs n_0-{width}x(L-1)-n_out, float32, {seeds} seeds per cell, "
        f"plain SGD at lr {lr} (batch {batch_size}) for "
        + ", ".join(f"{c['steps']} steps ({c['epochs']} epochs) on {d}" for d, c in config.items())
        + ". Baseline: standard init U[-1/sqrt(n_in), 1/sqrt(n_in)], raw inputs (scikit-learn's "
        "features, same split as `jaxbp.datasets.load`), no normalisation, no dropout, no "
        f"momentum. Remedies: {glorot} init; standardised inputs; layer norm or batch norm "
        f"after each hidden dense layer; dropout {dropout} after each hidden activation; "
        f"momentum {momentum}; *all* = all of them with batch norm or with layer norm. "
        "Test accuracy: mean [min, max] over seeds. *ratio* = ||delta_1|| / ||delta_L|| "
        "(first hidden layer over output layer, `delta_l = dL/dz_l` after the norm), "
        f"geometric mean [min, max] over seeds, from `jaxbp.backprop` on the first {diag_batch} "
        "training samples (training mode), at initialisation and after training. Chance "
        "(majority class): " + ", ".join(f"{d} {c:.3f}" for d, c in chances.items()) + ".",
        "",
        f"## Verdict at depth {deep} (computed from the numbers below)",
        "",
        *verdicts,
        "",
    ]
    for dataset in datasets:
        md += [f"## {dataset}", "", main_table(records, dataset, names, activations, depths)]
    md += [
        f"## Learning-rate check ({datasets[0]}, depth {min(depths)})",
        "",
        lr_table(records, lr_records, datasets[0], min(depths), lr, lr_check_variants),
        f"Run time {wall:.0f} s.",
    ]
    write_results(args.out, "remedies", result, "\n".join(md) + "\n", indent=None)
    log(f"wrote {args.out}/remedies.{{png,json,md}} in {wall:.1f} s")


if __name__ == "__main__":
    main()
