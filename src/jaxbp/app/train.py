"""`jaxbp train`: train an MLP on a built-in or a user's dataset, end to end.

Prints a progress line per epoch, checks `manual_grad` against `jax.grad` before and
after training, and with `--out DIR` writes `metrics.jsonl`, `summary.json`,
`checkpoint.jaxbp` and `curves.png` (and `diagnostics.png` with `--diagnostics`).
`--resume` continues from that checkpoint and gives the same parameters and metrics as
an uninterrupted run. Each epoch's line is logged whole and the checkpoint written only
for finite parameters; a failing write stops the run and keeps the last checkpoint.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp.app.check_table import layers_text
from jaxbp.app.job import SAMPLING, Job, Privacy, prepare
from jaxbp.app.settings import JobError, Settings
from jaxbp.runs import FIGURES, schema

__all__ = ["JobError", "run"]


def run(settings: Settings) -> int:
    """The `jaxbp train` job; returns the exit status (0 ok, 1 diverged or parity failed)."""
    job = prepare(settings)
    try:
        return _run(job)
    finally:
        if job.folder is not None:
            job.folder.close()


def _run(job: Job) -> int:
    s, cfg = job.settings, job.config
    arch = "-".join(map(str, job.sizes))
    _say(
        s,
        f"jaxbp train: {s.source}, {arch} {cfg['activation']}{_layers(s)}, {cfg['loss']}, "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
        f"{cfg['grad']} gradients",
    )
    if job.privacy is not None:
        _say(s, f"DP-SGD: {_privacy_line(job.privacy)}")
    batch = (job.data.x_train[: s.batch_size], job.data.y_train[: s.batch_size])
    parity_key = jax.random.fold_in(job.key, 2**31 - 1)  # masks of a dropout network
    if job.parity is not None:  # resumed: the figure the uninterrupted run took
        before = Figure(**{k: v for k, v in job.parity.items() if k in Figure._fields})
        _say(s, f"parity before training (at initialisation, from the checkpoint): {before}")
    else:
        before = _parity(s, "before", job.params, batch, job.model, parity_key)
    trained = _train(job, before)
    if trained is None:
        return 1
    params, history = trained
    after = _parity(s, "after", params, batch, job.model, parity_key, before.grad_norm)
    passed = before.passed and after.passed
    last = history[-1]
    seconds = sum(h["seconds"] for h in history)
    score = job.metric
    print(f"{'':<10}{'train':>10}{'test':>10}")
    for metric in ("loss", score):
        train, test = (_number(last[f"{split}_{metric}"]) for split in ("train", "test"))
        print(f"{metric:<10}{train:>10}{test:>10}")
    privacy = None
    if job.privacy is not None:
        privacy = _privacy_summary(job.privacy, history)
        meaning = {
            "poisson": "Poisson-sampled batches: the run's guarantee",
            "shuffle": "as if Poisson-sampled (batches are shuffled)",
        }[job.privacy.sampling]
        print(
            f"DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g} (RDP, "
            f"{meaning}); {privacy['clipped_fraction']:.1%} of example gradients clipped"
        )
    print(
        f"{s.epochs} epochs in {seconds:.1f} s of training; "
        f"parity {'passed' if passed else 'FAILED'}"
    )
    if job.folder is not None:
        summary = {
            "dataset": s.source,
            "grad": cfg["grad"],
            "epochs": s.epochs,
            "seconds": seconds,
            "train_loss": last["train_loss"],
            "test_loss": last["test_loss"],
            f"train_{score}": last[f"train_{score}"],
            f"test_{score}": last[f"test_{score}"],
            "parity_max_rel_err": max(before.max_rel_err, after.max_rel_err),
            "parity_atol": max(before.atol, after.atol),
            "parity_max_scaled_err": max(before.max_scaled_err, after.max_scaled_err),
            "parity_dtype": "float64",
            "devices": s.devices,
            "norm": s.norm,
            "dropout": s.dropout,
            "dp": privacy,
            "config": cfg,
        }
        job.folder.write_summary(summary)
        title = f"{s.source}: {arch} {cfg['activation']}{_layers(s)}, {cfg['grad']} gradients"
        _figures(job, history, title)
    return 0 if passed else 1


class Figure(NamedTuple):
    """A parity check as the summary and the checkpoints keep it (`runs.schema.PARITY`):
    a run's checkpoints carry the one taken at initialisation, so that a resumed run's
    summary reports what the uninterrupted run's does, and judges its trained network on
    the same scale (a run resumed from a checkpoint written before they carried it takes
    its figure where it resumes, and carries that; one written before they carried
    `grad_norm` has 0 there, the trained gradient's own scale)."""

    max_rel_err: float
    atol: float
    max_scaled_err: float
    passed: bool
    grad_norm: float = 0.0  # ||jax.grad|| in float64

    @classmethod
    def of(cls, report: Any) -> Figure:
        return cls(
            float(report.max_rel_err),
            float(report.atol),
            float(report.max_scaled_err),
            bool(report.passed),
            float(report.grad_norm),
        )

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"worst rel err {self.max_rel_err:.1e} in float64 ({verdict})"


def _number(value: float) -> str:
    """A table entry of at most 9 characters: 4 decimals, or 3 digits where those are wider."""
    text = f"{value:.4f}"
    return text if len(text) <= 9 else f"{value:.3g}"


def _layers(settings: Settings) -> str:
    """ ", layer norm, dropout 0.2" (the remedies a run's network has), or ""."""
    text = layers_text(settings.norm, settings.dropout)
    return f", {text}" if text else ""


def _privacy_line(p: Privacy) -> str:
    sampled = {
        "poisson": "Poisson-sampled batches, so a guarantee",
        "shuffle": "as if batches were Poisson-sampled; they are shuffled, see jaxbp.dp_epsilon",
    }[p.sampling]
    return (
        f"clip {p.l2_clip:g}, noise {p.noise_multiplier:g}; {p.steps} steps at sampling rate "
        f"{p.sample_rate:.4g} spend epsilon {p.epsilon:.3g} at delta {p.delta:g} (RDP "
        f"accountant, {sampled})"
    )


def _privacy_summary(p: Privacy, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What summary.json says of a DP-SGD run: the privacy spent over all its epochs and
    after each (at this run's delta, whatever delta logged them), how batches were
    sampled, and the fraction of example gradients clipped (over all epochs, and in the
    last)."""
    clipped = [h["clipped"] for h in history]
    return {
        "epsilon": p.epsilon,
        "epsilon_per_epoch": [p.tracker(epoch).epsilon for epoch in range(1, len(history) + 1)],
        "delta": p.delta,
        "accountant": "rdp",
        "l2_clip": p.l2_clip,
        "noise_multiplier": p.noise_multiplier,
        "sample_rate": p.sample_rate,
        "steps": p.steps,
        "batch_sampling": p.sampling,
        "sampling": SAMPLING[p.sampling],
        "clipped_fraction": sum(clipped) / len(clipped),
        "clipped_fraction_last_epoch": clipped[-1],
    }


def _finite(tree: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _train(job: Job, before: Figure) -> tuple[Any, list[dict[str, Any]]] | None:
    """The epochs, each one compiled program; `None` if the loss, the parameters or an
    epoch's record (`runs.schema.METRICS_LINE`: an evaluated loss that overflowed) stopped
    being finite (the last good checkpoint is kept). Each checkpoint carries `before`,
    the parity check at initialisation."""
    s, (x_train, y_train, x_test, y_test) = job.settings, job.data
    if job.privacy is None:
        train_epoch = jaxbp.make_train_epoch(
            job.optimizer,
            job.model,
            batch_size=s.batch_size,
            grad=job.path,
            diagnostics=s.diagnostics,
            grad_norm=True,
            mesh=job.mesh,
            donate=True,  # the loop never reads an epoch's inputs again
        )
    else:  # DP-SGD: the manual path's per-example gradients, clipped, noised
        train_epoch = jaxbp.make_dp_train_epoch(
            job.optimizer,
            job.model,
            batch_size=s.batch_size,
            l2_clip=job.privacy.l2_clip,
            noise_multiplier=job.privacy.noise_multiplier,
            sampling=job.privacy.sampling,
            donate=True,
        )
    steps = -(-x_train.shape[0] // s.batch_size)
    start = time.perf_counter()  # compile once, outside the timed epochs
    train_epoch = train_epoch.lower(job.params, job.opt_state, job.key, x_train, y_train).compile()
    where = "" if job.mesh is None else f", batch split over {s.devices} devices"
    _say(
        s,
        f"compiled one epoch ({steps} steps in one program{where}) in "
        f"{time.perf_counter() - start:.1f} s",
    )
    # Evaluation mode: dropout off, batch norm with its running averages.
    scores = jax.jit(
        lambda p, stats, x, y: jaxbp.evaluate(p, x, y, job.model, task=job.task, stats=stats)
    )
    progress = _Progress(s.epochs, s.quiet, job.metric)
    params, opt_state, history = job.params, job.opt_state, list(job.history)
    for epoch in range(len(history) + 1, s.epochs + 1):
        start = time.perf_counter()
        params, opt_state, metrics = train_epoch(
            params, opt_state, jax.random.fold_in(job.key, epoch), x_train, y_train
        )
        losses = np.asarray(metrics["loss"])
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(losses)):
            step = int(np.argmin(np.isfinite(losses)))
            _stop(
                job,
                epoch,
                f"the loss became {losses[step]} at epoch {epoch}, step {step + 1} of {steps}",
            )
            return None
        if not _finite(params):
            _stop(job, epoch, f"the parameters became non-finite in the last step of epoch {epoch}")
            return None
        row = {"epoch": epoch, "seconds": seconds, "samples_per_s": steps * s.batch_size / seconds}
        for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            measured = scores(params, _stats(opt_state), x, y)
            row |= {f"{split}_{k}": float(v) for k, v in measured.items()}
        # Per-step metrics averaged over the epoch; diagnostics are per layer.
        row |= {
            k: np.mean(np.asarray(v), axis=0).tolist() for k, v in metrics.items() if k != "loss"
        }
        if job.privacy is not None:  # the privacy spent so far, at this run's delta
            row["epsilon"] = job.privacy.tracker(epoch).epsilon
        if (found := schema.problem(row, schema.METRICS_LINE)) is not None:
            _stop(job, epoch, f"the record of epoch {epoch} is not finite ({found})")
            return None
        history.append(row)
        progress.epoch(epoch, row)
        if s.diagnostics and not s.quiet:
            print(_diagnostics_line(row), file=sys.stderr)
        if job.folder is not None:
            state = {"params": params, "opt_state": opt_state, "key": job.key}
            _save(job, epoch, row, state, before)
    return params, history


def _stats(opt_state: Any) -> Any:
    """Batch norm's running averages in a step's state, or `None` (no state of its own)."""
    return jaxbp.TrainState.of(opt_state).stats or None


def _save(job: Job, epoch: int, row: dict[str, Any], state: dict[str, Any], before: Figure) -> None:
    """Log the epoch, then checkpoint it (with the parity check at initialisation); a
    failing write is reported (`OSError` with the file named) with the checkpoint that
    is kept."""
    assert job.folder is not None
    try:
        job.folder.append(row)
        job.folder.save(epoch, state, job.config, parity=before._asdict())
    except OSError as err:
        kept, fix = _kept(job, epoch)
        raise OSError(
            err.errno,
            f"{err.strerror or err} while saving epoch {epoch} ({kept}; free space and {fix})",
            str(job.out),
        ) from None


def _kept(job: Job, epoch: int, good: str = "") -> tuple[str, str]:
    """What a run stopped during `epoch` leaves in `--out` (`good`: a word for the
    checkpoint), and how to go on from there."""
    if job.out is not None and epoch > 1:
        kept = f"the {good}checkpoint of epoch {epoch - 1} is kept in {job.out}"
        return kept, "continue with --resume"
    replaced = " (any run it was replacing is put back)" if job.settings.overwrite else ""
    return f"no checkpoint was written{replaced}", "run it again"


def _stop(job: Job, epoch: int, what: str) -> None:
    kept, _ = _kept(job, epoch, "last good ")
    fix = "--lr, --dp-clip or --dp-noise" if job.privacy is not None else "--lr"
    print(f"jaxbp train: {what}; stopped ({kept}). Try a smaller {fix}.", file=sys.stderr)


class _Progress:
    """One line per epoch on stderr, redrawn in place on a terminal."""

    def __init__(self, total: int, quiet: bool, metric: str):
        self.total, self.quiet, self.tty = total, quiet, sys.stderr.isatty()
        self.metric = metric

    def epoch(self, epoch: int, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        done = round(24 * epoch / self.total)
        score = f"{self.metric} {row[f'test_{self.metric}']:.4f}"
        if "epsilon" in row:
            score += f"  epsilon {row['epsilon']:.3g}"
        line = (
            f"epoch {epoch:>{len(str(self.total))}}/{self.total} {'#' * done}{'.' * (24 - done)} "
            f"loss {row['train_loss']:.4f}  test {score}  {row['samples_per_s']:,.0f} samples/s"
        )
        end = "" if self.tty and epoch < self.total else "\n"
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def _say(settings: Settings, text: str) -> None:
    if not settings.quiet:
        print(text, flush=True)


def _parity(
    settings: Settings,
    when: str,
    params: Any,
    batch: tuple,
    model: jaxbp.Config,
    key: Any,
    initial: float = 0.0,
) -> Any:
    """`manual_grad` vs `jax.grad` on one batch, in float64 (the verdict) and float32.

    The verdict is taken in float64: in float32 a well-trained network's gradient can be a
    sum of nearly cancelling terms (output units with y_hat close to y), whose relative
    rounding error grows past 1e-5 in both paths alike, which says nothing about the math.
    For the same reason a leaf that fails `rtol` on its own norm is judged again on the
    scale of the whole gradient, `atol = rtol max(||g||, initial)`, where `initial` is the
    norm of the gradient at initialisation (0 for that check itself): trained on, float64
    meets the same wall, since each output delta y_hat - y rounds on the scale of y however
    small it gets. A wrong derivative is off on the scale of the gradient it computes,
    and still fails. A network with batch normalisation is judged on the scale of the
    whole gradient from the start: the bias before each batch norm has an exactly-zero
    gradient, whose relative error is rounding over rounding.
    `key` draws a dropout network's masks (the same for both paths).
    Returns the float64 verdict as a `Figure`.
    """
    report32 = jaxbp.check_parity(params, *batch, model, key=key, atol=None)
    with jax.enable_x64(True):
        as64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
        x, y = batch
        y = y if jnp.issubdtype(y.dtype, jnp.integer) else as64(y)
        params64 = jax.tree.map(as64, params)
        report = jaxbp.check_parity(params64, as64(x), y, model, key=key, atol=None)
        scale, on = max(report.grad_norm, initial), "||grad||"
        if not report.passed and report.rtol * scale > report.atol:
            atol = report.rtol * scale
            report = jaxbp.check_parity(params64, as64(x), y, model, key=key, atol=atol)
            on = "||grad at initialisation||" if initial > report.grad_norm else on
    atol = (
        f", atol {report.atol:.1e} = rtol x {on}: worst error on that scale "
        f"{report.max_scaled_err:.1e}"
        if report.atol
        else ""
    )
    _say(
        settings,
        f"parity {when} training (manual_grad vs jax.grad on a batch): worst rel err "
        f"{report.max_rel_err:.1e} in float64 (rtol {report.rtol:.0e}{atol}), "
        f"{report32.max_scaled_err:.1e} in float32",
    )
    return Figure.of(report)


def _diagnostics_line(row: dict[str, Any]) -> str:
    fmt = lambda values, spec: " ".join(format(v, spec) for v in values)  # noqa: E731
    return (
        f"    ||delta_l|| {fmt(row['delta_norm'], '.1e')}"
        f"   ||dW_l|| {fmt(row['grad_W_norm'], '.1e')}"
        f"   saturated {fmt(row['saturated'], '.2f')}"
    )


def _figures(job: Job, history: list[dict[str, Any]], title: str) -> None:
    try:
        from jaxbp.app.plots import backward_flow, training_curves
    except ImportError as err:
        print(f"jaxbp train: figures skipped: {err}", file=sys.stderr)
        return
    assert job.out is not None
    curves, diagnostics = (job.out / name for name in FIGURES)
    training_curves(history, curves, title, job.metric)
    if any("delta_norm" in h for h in history):
        backward_flow(history, diagnostics, title)
