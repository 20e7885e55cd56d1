"""`jaxbp train`: train an MLP on a built-in or a user's dataset, end to end.

Prints a progress line per epoch, checks `manual_grad` against `jax.grad` before and
after training, and with `--out DIR` writes `metrics.jsonl`, `summary.json`,
`checkpoint.jaxbp` and `curves.png`. `--resume` continues from that checkpoint and gives
the same parameters and metrics as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp import datasets
from jaxbp._checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from jaxbp._mlp import init_mlp
from jaxbp._parity import check_parity
from jaxbp._sharding import data_mesh
from jaxbp._train import evaluate, make_train_epoch

CHECKPOINT = "checkpoint.jaxbp"
OPTIMIZERS = ("sgd", "momentum", "adam")
RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "silu")

DEFAULTS: dict[str | None, dict[str, Any]] = {
    "digits": dict(hidden=(512,), activation="relu", epochs=60),
    "breast_cancer": dict(hidden=(64,), activation="tanh", epochs=20),
    "diabetes": dict(hidden=(512,), activation="tanh", epochs=20),
    "xor": dict(hidden=(32, 32), activation="tanh", epochs=100),
    "moons": dict(hidden=(32, 32), activation="tanh", epochs=100),
    "spirals": dict(hidden=(128, 128), activation="tanh", epochs=300, lr=3e-3),
    None: dict(hidden=(128, 64), activation="tanh", epochs=30),  # a user's own data
}
"""Per-dataset settings that `jaxbp train` uses unless a flag says otherwise; every
dataset also defaults to adam, lr 1e-3, batch size 32."""


class JobError(Exception):
    """Bad input to the job: reported as one line on stderr, exit status 2."""


def _config(args: argparse.Namespace, info: datasets.DatasetInfo) -> dict[str, Any]:
    defaults = {"lr": 1e-3, "batch_size": 32, **DEFAULTS[args.dataset]}
    pick = lambda name: defaults[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    activation = pick("activation")
    return {
        "dataset": args.dataset,
        "data": None if args.data is None else str(args.data),
        "target": args.target,
        "hidden": list(pick("hidden")),
        "activation": activation,
        "init": args.init or ("he_normal" if activation in RELU_LIKE else "glorot_normal"),
        "loss": args.loss or info.loss,
        "optimizer": args.optimizer,
        "lr": pick("lr"),
        "batch_size": pick("batch_size"),
        "seed": args.seed,
        "grad": args.grad,
        "test_fraction": 0.2,
    }


def _load(args: argparse.Namespace) -> tuple[datasets.Dataset, datasets.DatasetInfo, str]:
    try:
        if args.data is not None:
            data, info = datasets.load_file(args.data, target=args.target, seed=args.seed)
            return data, info, str(args.data)
        return (
            datasets.load(args.dataset, seed=args.seed),
            datasets.INFO[args.dataset],
            args.dataset,
        )
    except (ValueError, ImportError) as err:  # a missing or malformed file, or no scikit-learn
        raise JobError(str(err)) from None


def _targets(
    data: datasets.Dataset, info: datasets.DatasetInfo, loss: str
) -> tuple[datasets.Dataset, int, str]:
    """Targets recast for `loss`; returns `(data, n_outputs, task)`."""
    if info.task == "regression":
        if loss != "mse":
            raise JobError(f"--loss {loss} does not fit a regression target; use --loss mse.")
        return data, 1, "regression"
    n_classes = 2 if info.loss == "binary_cross_entropy" else info.n_outputs
    if loss == "binary_cross_entropy":
        if n_classes != 2:
            raise JobError(
                f"--loss binary_cross_entropy needs two classes; this data has {n_classes}: "
                "use --loss cross_entropy."
            )
        cast = lambda y: y.astype(jnp.float32)  # noqa: E731
        return (
            data._replace(y_train=cast(data.y_train), y_test=cast(data.y_test)),
            1,
            "classification",
        )
    labels = lambda y: y.astype(jnp.int32)  # noqa: E731
    if loss == "cross_entropy":
        return (
            data._replace(y_train=labels(data.y_train), y_test=labels(data.y_test)),
            n_classes,
            "classification",
        )
    one_hot = lambda y: jax.nn.one_hot(labels(y), n_classes, dtype=jnp.float32)  # noqa: E731
    return (
        data._replace(y_train=one_hot(data.y_train), y_test=one_hot(data.y_test)),
        n_classes,
        "classification",
    )


def _optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.adam(lr)


class _Progress:
    """One line per epoch on stderr, redrawn in place on a terminal."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.tty = total, quiet, sys.stderr.isatty()

    def epoch(self, epoch: int, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = round(24 * epoch / self.total)
        score = next(
            (
                f"{k.removeprefix('test_')} {v:.4f}"
                for k, v in row.items()
                if k in ("test_accuracy", "test_r2")
            ),
            "",
        )
        line = (
            f"epoch {epoch:>{len(str(self.total))}}/{self.total} {'#' * done}{'.' * (24 - done)} "
            f"loss {row['train_loss']:.4f}  test {score}  {row['samples_per_s']:,.0f} samples/s"
        )
        end = "" if self.tty and epoch < self.total else "\n"
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def _parity(args: argparse.Namespace, when: str, params: Any, batch: tuple, kw: dict) -> Any:
    """`manual_grad` vs `jax.grad` on one batch, in float64 (the verdict) and float32.

    The verdict is taken in float64: in float32 a well-trained network's gradient can be a
    sum of nearly cancelling terms (output units with y_hat close to y), whose relative
    rounding error grows past 1e-5 in both paths alike, which says nothing about the math.
    """
    report32 = check_parity(params, *batch, **kw)
    with jax.enable_x64(True):
        as64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
        x, y = batch
        y = y if jnp.issubdtype(y.dtype, jnp.integer) else as64(y)
        report = check_parity(jax.tree.map(as64, params), as64(x), y, **kw)
    _say(
        args,
        f"parity {when} training (manual_grad vs jax.grad on a batch): worst rel err "
        f"{report.max_rel_err:.1e} in float64 (rtol {report.rtol:.0e}), "
        f"{report32.max_rel_err:.1e} in float32",
    )
    return report


def run(args: argparse.Namespace) -> int:
    """The `jaxbp train` job; returns the exit status."""
    if args.data is None and args.dataset is None:
        args.dataset = "digits"
    if args.target is not None and (args.data is None or args.data.suffix != ".csv"):
        raise JobError(
            "--target names the label column of a --data FILE.csv; it applies to nothing else."
        )
    data, info, source = _load(args)
    cfg = _config(args, info)
    epochs = args.epochs if args.epochs is not None else DEFAULTS[args.dataset]["epochs"]
    data, n_out, task = _targets(data, info, cfg["loss"])
    mesh = _mesh(args.devices, cfg["batch_size"])
    if args.diagnostics and cfg["grad"] != "manual":
        raise JobError(
            "--diagnostics reads the backward flow delta_l, which manual_grad keeps and "
            "jax.grad does not expose: use --grad manual."
        )
    x_train, y_train, x_test, y_test = data
    if x_train.shape[0] < cfg["batch_size"]:
        raise JobError(
            f"{source}: {x_train.shape[0]} training rows (after a {cfg['test_fraction']:.0%} test "
            f"split), fewer than one batch (--batch-size {cfg['batch_size']})."
        )
    kw = dict(activation=cfg["activation"], loss=cfg["loss"])
    sizes = [x_train.shape[1], *cfg["hidden"], n_out]
    key = jax.random.key(cfg["seed"])
    params = init_mlp(jax.random.fold_in(key, 0), sizes, init=cfg["init"])
    optimizer = _optimizer(cfg["optimizer"], cfg["lr"])
    opt_state = optimizer.init(params)

    out = None if args.out is None else Path(args.out)
    history: list[dict[str, Any]] = []
    if args.resume:
        params, opt_state, history = _resume(out, cfg, params, opt_state, key)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")

    arch = "-".join(map(str, sizes))
    _say(
        args,
        f"jaxbp train: {source}, {arch} {cfg['activation']}, {cfg['loss']}, "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['grad']} gradients",
    )
    batch = (x_train[: cfg["batch_size"]], y_train[: cfg["batch_size"]])
    parity_before = _parity(args, "before", params, batch, kw)

    train_epoch = make_train_epoch(
        optimizer,
        batch_size=cfg["batch_size"],
        grad=cfg["grad"],
        diagnostics=args.diagnostics,
        mesh=mesh,
        **kw,
    )
    steps = -(-x_train.shape[0] // cfg["batch_size"])
    start = time.perf_counter()  # compile once, outside the timed epochs
    train_epoch = train_epoch.lower(params, opt_state, key, x_train, y_train).compile()
    where = "" if mesh is None else f", batch split over {args.devices} devices"
    _say(
        args,
        f"compiled one epoch ({steps} steps in one program{where}) in "
        f"{time.perf_counter() - start:.1f} s",
    )
    scores = jax.jit(lambda p, x, y: evaluate(p, x, y, task=task, **kw))
    progress = _Progress(epochs, args.quiet)
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        params, opt_state, metrics = train_epoch(
            params, opt_state, jax.random.fold_in(key, epoch), x_train, y_train
        )
        losses = np.asarray(metrics["loss"])
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(losses)):
            step = int(np.argmin(np.isfinite(losses)))
            kept = (
                f"the last good checkpoint (epoch {epoch - 1}) is kept in {out}"
                if out and epoch > 1
                else "no checkpoint was written"
            )
            print(
                f"jaxbp train: the loss became {losses[step]} at epoch {epoch}, step {step + 1} of "
                f"{steps}; stopped ({kept}). Try a smaller --lr.",
                file=sys.stderr,
            )
            return 1
        row = {
            "epoch": epoch,
            "seconds": seconds,
            "samples_per_s": steps * cfg["batch_size"] / seconds,
        }
        for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            row |= {f"{split}_{k}": float(v) for k, v in scores(params, x, y).items()}
        # Per-step metrics averaged over the epoch; diagnostics are per layer.
        row |= {
            k: np.mean(np.asarray(v), axis=0).tolist() for k, v in metrics.items() if k != "loss"
        }
        history.append(row)
        progress.epoch(epoch, row)
        if args.diagnostics and not args.quiet:
            print(_diagnostics_line(row), file=sys.stderr)
        if out is not None:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            state = {"params": params, "opt_state": opt_state, "key": key}
            save_checkpoint(out / CHECKPOINT, state, {"epoch": epoch, "config": cfg})

    parity_after = _parity(args, "after", params, batch, kw)
    passed = parity_before.passed and parity_after.passed
    last = history[-1]
    seconds = sum(h["seconds"] for h in history)
    score = "accuracy" if task == "classification" else "r2"
    print(f"{'':<10}{'train':>10}{'test':>10}")
    for metric in ("loss", score):
        print(f"{metric:<10}{last[f'train_{metric}']:>10.4f}{last[f'test_{metric}']:>10.4f}")
    print(
        f"{epochs} epochs in {seconds:.1f} s of training; parity {'passed' if passed else 'FAILED'}"
    )
    if out is not None:
        summary = {
            "dataset": source,
            "grad": cfg["grad"],
            "epochs": epochs,
            "seconds": seconds,
            "train_loss": last["train_loss"],
            "test_loss": last["test_loss"],
            f"test_{score}": last[f"test_{score}"],
            "parity_max_rel_err": max(parity_before.max_rel_err, parity_after.max_rel_err),
            "parity_dtype": "float64",
            "devices": args.devices,
            "config": cfg,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        _figures(out, history, f"{source}: {arch} {cfg['activation']}, {cfg['grad']} gradients")
    return 0 if passed else 1


def _mesh(devices: int | None, batch_size: int) -> Any:
    if devices is None:
        return None
    available = jax.devices()
    if devices > len(available):
        hint = (
            f"; on a CPU-only machine, XLA_FLAGS=--xla_force_host_platform_device_count={devices} "
            "gives virtual devices (sharing the cores)"
            if available[0].platform == "cpu"
            else ""
        )
        raise JobError(
            f"--devices {devices}: only {len(available)} {available[0].platform} device(s) "
            f"available{hint}."
        )
    mesh = data_mesh(devices)
    if batch_size % devices:
        raise JobError(f"--batch-size {batch_size} must be a multiple of --devices {devices}.")
    return mesh


def _diagnostics_line(row: dict[str, Any]) -> str:
    fmt = lambda values, spec: " ".join(format(v, spec) for v in values)  # noqa: E731
    return (
        f"    ||delta_l|| {fmt(row['delta_norm'], '.1e')}"
        f"   ||dW_l|| {fmt(row['grad_W_norm'], '.1e')}"
        f"   saturated {fmt(row['saturated'], '.2f')}"
    )


def _figures(out: Path, history: list[dict[str, Any]], title: str) -> None:
    try:
        from jaxbp._plots import backward_flow, training_curves
    except ImportError as err:
        print(f"jaxbp train: figures skipped: {err}", file=sys.stderr)
        return
    training_curves(history, out / "curves.png", title)
    if "delta_norm" in history[0]:
        backward_flow(history, out / "diagnostics.png", title)


RESUMABLE_CHANGES = ("lr", "grad")
"""Settings that `--resume` may change (besides `--epochs`); any other must match."""


def _resume(out: Path | None, cfg: dict[str, Any], params: Any, opt_state: Any, key: jax.Array):
    if out is None:
        raise JobError("--resume needs --out DIR, the folder of the run to continue.")
    path = out / CHECKPOINT
    if not path.exists():
        raise JobError(f"--resume: no checkpoint in {out} (expected {path}).")
    try:
        saved = read_meta(path)["config"]
        differs = [k for k, v in cfg.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
        if differs:
            detail = ", ".join(
                f"{k}: {saved.get(k)!r} in the checkpoint, {cfg[k]!r} now" for k in differs
            )
            raise JobError(f"--resume: the settings differ from the checkpoint's ({detail}).")
        state, meta = load_checkpoint(path, {"params": params, "opt_state": opt_state, "key": key})
    except CheckpointError as err:
        raise JobError(str(err)) from None
    metrics = out / "metrics.jsonl"
    history = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    if len(history) < meta["epoch"]:
        raise JobError(
            f"--resume: {metrics} has {len(history)} epochs, the checkpoint {meta['epoch']}."
        )
    history = history[: meta["epoch"]]  # drop epochs logged after the checkpoint was written
    metrics.write_text("".join(json.dumps(h) + "\n" for h in history))
    return state["params"], state["opt_state"], history


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def widths(text: str) -> tuple[int, ...]:
    """`--hidden 128,64` -> (128, 64); an empty string means no hidden layer."""
    if text.strip() == "":
        return ()
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 128,64, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxbp._activations import ACTIVATIONS
    from jaxbp._losses import LOSSES
    from jaxbp._mlp import INITS
    from jaxbp._train import GRADS

    src = parser.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=sorted(datasets.INFO), help="default: digits")
    src.add_argument("--data", type=Path, help="a user's .npz (arrays x, y) or .csv file")
    parser.add_argument("--target", help="the target column of a .csv file")
    parser.add_argument("--hidden", type=widths, help="hidden widths, e.g. 128,64")
    parser.add_argument("--activation", choices=list(ACTIVATIONS))
    parser.add_argument(
        "--init", choices=list(INITS), help="default: he_normal for relu-like, else glorot_normal"
    )
    parser.add_argument("--loss", choices=list(LOSSES), help="default: the dataset's")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad", choices=GRADS, default="manual")
    parser.add_argument(
        "--out", type=Path, help="write metrics, summary, checkpoint and curves here"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="log per-layer ||delta_l||, ||dW_l|| and saturated units per epoch (manual gradients)",
    )
    parser.add_argument("--devices", type=positive_int, help="split each batch over N devices")
