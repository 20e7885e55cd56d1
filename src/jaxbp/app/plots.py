"""Figures, drawn with matplotlib (the optional `plot` extra), imported only here.

`pyplot()` gives matplotlib on the headless Agg backend (experiments use it too);
`training_curves` and `backward_flow` draw `jaxbp train`'s figures from its per-epoch
metrics, each written whole or not at all (`save`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from jaxbp.runs import write_atomic

__all__ = ["backward_flow", "pyplot", "save", "training_curves"]


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend, or a clear ImportError."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "figures need matplotlib, which is not installed: pip install 'jaxbp[plot]'."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path) -> None:
    """Write `fig` as a PNG at `path` (120 dpi) atomically, and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        pyplot().close(fig)
    write_atomic(Path(path), buf.getvalue())


def training_curves(
    history: list[dict[str, Any]], path: str | Path, title: str, metric: str | None = None
) -> None:
    """Loss (train and test) and the task's `metric` (test; "accuracy" or "r2", the
    `jaxbp.Task.metric`; by default whichever the history logs) per epoch, side by side."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    if metric is None:  # the histories of earlier versions name no metric
        metric = "accuracy" if "test_accuracy" in history[0] else "r2"
    score = f"test_{metric}"
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend()
    ax_score.plot(epochs, [h[score] for h in history], color="C1")
    ax_score.set(xlabel="epoch", ylabel=score.removeprefix("test_"), title=f"test {score[5:]}")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def backward_flow(history: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Per-layer ||delta_l|| and fraction of saturated hidden units, per epoch (the
    epochs that logged them: a resumed run may have added or dropped `--diagnostics`)."""
    plt = pyplot()
    history = [h for h in history if "delta_norm" in h]
    epochs = [h["epoch"] for h in history]
    fig, (ax_delta, ax_sat) = plt.subplots(1, 2, figsize=(9, 3.4))
    for l in range(len(history[0]["delta_norm"])):
        ax_delta.plot(epochs, [h["delta_norm"][l] for h in history], label=f"layer {l + 1}")
    ax_delta.set(
        xlabel="epoch", ylabel="||delta_l||", yscale="log", title="backward flow (eq. 1.4)"
    )
    ax_delta.legend(fontsize=7)
    for l in range(len(history[0]["saturated"])):
        ax_sat.plot(epochs, [h["saturated"][l] for h in history], label=f"layer {l + 1}")
    ax_sat.set(xlabel="epoch", ylabel="fraction", ylim=(0, 1), title="saturated hidden units")
    ax_sat.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
