"""`jaxbp train`: train an MLP on a built-in or a user's dataset, end to end.

Prints a progress line per epoch, checks `manual_grad` against `jax.grad` before and
after training, and with `--out DIR` writes `metrics.jsonl`, `summary.json`,
`checkpoint.jaxbp` and `curves.png` (and `diagnostics.png` with `--diagnostics`).
`--resume` continues from that checkpoint and gives the same parameters and metrics as
an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._checkpoint import save_checkpoint
from jaxbp._job_setup import CHECKPOINT, Job, JobError, prepare
from jaxbp._parity import ParityReport, check_parity
from jaxbp._train import evaluate, make_train_epoch

__all__ = ["JobError", "run"]


def run(args: argparse.Namespace) -> int:
    """The `jaxbp train` job; returns the exit status (0 ok, 1 diverged or parity failed)."""
    job = prepare(args)
    cfg = job.cfg
    arch = "-".join(map(str, job.sizes))
    _say(
        args,
        f"jaxbp train: {job.source}, {arch} {cfg['activation']}, {cfg['loss']}, "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
        f"{cfg['grad']} gradients",
    )
    batch = (job.data.x_train[: cfg["batch_size"]], job.data.y_train[: cfg["batch_size"]])
    before = _parity(args, "before", job.params, batch, job.kw)
    trained = _train(args, job)
    if trained is None:
        return 1
    params, history = trained
    after = _parity(args, "after", params, batch, job.kw)
    passed = before.passed and after.passed
    last = history[-1]
    seconds = sum(h["seconds"] for h in history)
    score = "accuracy" if job.task == "classification" else "r2"
    print(f"{'':<10}{'train':>10}{'test':>10}")
    for metric in ("loss", score):
        print(f"{metric:<10}{last[f'train_{metric}']:>10.4f}{last[f'test_{metric}']:>10.4f}")
    print(
        f"{job.epochs} epochs in {seconds:.1f} s of training; "
        f"parity {'passed' if passed else 'FAILED'}"
    )
    if job.out is not None:
        summary = {
            "dataset": job.source,
            "grad": cfg["grad"],
            "epochs": job.epochs,
            "seconds": seconds,
            "train_loss": last["train_loss"],
            "test_loss": last["test_loss"],
            f"test_{score}": last[f"test_{score}"],
            "parity_max_rel_err": max(before.max_rel_err, after.max_rel_err),
            "parity_dtype": "float64",
            "devices": args.devices,
            "config": cfg,
        }
        (job.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        _figures(
            job.out, history, f"{job.source}: {arch} {cfg['activation']}, {cfg['grad']} gradients"
        )
    return 0 if passed else 1


def _train(args: argparse.Namespace, job: Job) -> tuple[Any, list[dict[str, Any]]] | None:
    """The epochs, each one compiled program; `None` if the loss stopped being finite."""
    cfg, (x_train, y_train, x_test, y_test) = job.cfg, job.data
    train_epoch = make_train_epoch(
        job.optimizer,
        batch_size=cfg["batch_size"],
        grad=cfg["grad"],
        diagnostics=args.diagnostics,
        mesh=job.mesh,
        **job.kw,
    )
    steps = -(-x_train.shape[0] // cfg["batch_size"])
    start = time.perf_counter()  # compile once, outside the timed epochs
    train_epoch = train_epoch.lower(job.params, job.opt_state, job.key, x_train, y_train).compile()
    where = "" if job.mesh is None else f", batch split over {args.devices} devices"
    _say(
        args,
        f"compiled one epoch ({steps} steps in one program{where}) in "
        f"{time.perf_counter() - start:.1f} s",
    )
    scores = jax.jit(lambda p, x, y: evaluate(p, x, y, task=job.task, **job.kw))
    progress = _Progress(job.epochs, args.quiet)
    params, opt_state, history = job.params, job.opt_state, list(job.history)
    for epoch in range(len(history) + 1, job.epochs + 1):
        start = time.perf_counter()
        params, opt_state, metrics = train_epoch(
            params, opt_state, jax.random.fold_in(job.key, epoch), x_train, y_train
        )
        losses = np.asarray(metrics["loss"])
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(losses)):
            step = int(np.argmin(np.isfinite(losses)))
            kept = (
                f"the last good checkpoint (epoch {epoch - 1}) is kept in {job.out}"
                if job.out and epoch > 1
                else "no checkpoint was written"
            )
            print(
                f"jaxbp train: the loss became {losses[step]} at epoch {epoch}, step "
                f"{step + 1} of {steps}; stopped ({kept}). Try a smaller --lr.",
                file=sys.stderr,
            )
            return None
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
        if job.out is not None:
            with (job.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            state = {"params": params, "opt_state": opt_state, "key": job.key}
            save_checkpoint(job.out / CHECKPOINT, state, {"epoch": epoch, "config": cfg})
    return params, history


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


def _parity(
    args: argparse.Namespace, when: str, params: Any, batch: tuple, kw: dict
) -> ParityReport:
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
