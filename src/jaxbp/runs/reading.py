"""Reading a run's records: its metrics log, its checkpoint's meta and parameters, the
fingerprint of its data (see `jaxbp.runs`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbp._files.checkpoint import CheckpointError
from jaxbp._files.guard import load_json, open_regular
from jaxbp.runs import schema

__all__ = ["RunError", "describe", "fingerprint", "read_metrics"]

CHECKPOINT = "checkpoint.jaxbp"  # one name a line: the API reference lists each
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FIGURES = ("curves.png", "diagnostics.png")
RUN_FILES = (METRICS, CHECKPOINT, SUMMARY, *FIGURES)
"""The files a run writes in its folder (besides its lock and set-asides)."""


class RunError(ValueError):
    """A run folder that cannot be used as asked: held by another run, damaged, refused."""


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """The epochs logged in `path` and whether a torn last line (a crash mid-write) was
    dropped. A damaged line before the last, epochs out of order, or a line that breaks
    the schema (`runs.schema.METRICS_LINE`: `"seconds": null`, an accuracy of 2, ...)
    raise `RunError` naming the file and the line."""
    path = Path(path)
    if not os.path.lexists(path):
        return [], False
    try:
        with open_regular(path) as f:
            blob = f.read()
    except OSError as err:
        raise RunError(
            f"{path}: cannot read the metrics log ({err.strerror}); refusing to use it."
        ) from None
    lines = blob.split(b"\n")
    torn = lines.pop() != b""  # the text after the last newline: empty unless torn
    rows = []
    for i, line in enumerate(lines, start=1):
        try:
            row = load_json(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not _is_epoch(row.get("epoch"), i):
            raise RunError(
                f"{path}: line {i} is not the record of epoch {i}; the metrics log is damaged "
                "or was written by two runs at once; refusing to use it."
            )
        found = schema.problem(row, schema.METRICS_LINE)
        if found is not None:
            raise RunError(
                f"{path}: line {i} (epoch {i}): {found}; the metrics log is damaged or was "
                "not written by jaxbp; refusing to use it (restore the log, or start a new "
                "run: --overwrite or another --out)."
            )
        rows.append(row)
    return rows, torn


def _is_epoch(value: Any, epoch: int) -> bool:
    """Whether `value` is the integer `epoch` (not `true`, not `1.0`)."""
    return isinstance(value, int) and not isinstance(value, bool) and value == epoch


def fingerprint(data: Any) -> str:
    """The SHA-256 of a split (`jaxbp.datasets.Dataset`, or any sequence of arrays): values,
    shapes and dtypes. `jaxbp train` stores it as `data_sha256`, which a resumed run and
    `Run.dataset()` must match (a changed data or labels file, another version's data)."""
    digest = hashlib.sha256()
    for array in data:
        array = np.asarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check_meta(path: Path, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """`(epoch, config)` of a run checkpoint's meta, checked against `runs.schema.META`
    (the run's settings included), or `CheckpointError`."""
    epoch, config = meta.get("epoch"), meta.get("config")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise CheckpointError(
            f"{path}: its epoch is {_repr(epoch)}, not a positive integer; refusing to load it."
        )
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: its config is {type(config).__name__}, not an object; refusing to load it."
        )
    found = schema.problem(meta, schema.META)
    if found is not None:
        raise CheckpointError(f"{path}: its {found}; refusing to load it.")
    return epoch, config


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_finite(path: Path, params: Any) -> None:
    """Refuse parameters holding NaN or inf (`CheckpointError`); keys and integer leaves
    are not parameters and pass."""
    for i, leaf in enumerate(jax.tree.leaves(params)):
        if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact) and not np.all(
            np.isfinite(np.asarray(leaf))
        ):
            raise CheckpointError(
                f"{path}: parameter array {i} holds NaN or inf; refusing to load it."
            )


def describe(folder: str | Path) -> str | None:
    """What run `folder` holds ("a finished run of 4 epochs", ...), or `None` if none.
    Nothing is followed out of the folder: a symbolic link counts as present, unread."""
    folder = Path(folder)
    metrics = folder / METRICS
    if os.path.lexists(folder / SUMMARY):
        try:
            with open_regular(folder / SUMMARY, follow=False) as f:
                summary = load_json(f.read())
        except (OSError, ValueError):
            return "a finished run"
        if schema.problem(summary, schema.SUMMARY) is not None:
            return "a finished run"
        return f"a finished run of {summary['epochs']} epochs"
    if os.path.lexists(folder / CHECKPOINT):
        return "an unfinished run with a checkpoint"
    if os.path.lexists(metrics) and metrics.lstat().st_size > 0:
        return "a run's metrics.jsonl"
    present = [name for name in RUN_FILES if name != METRICS and os.path.lexists(folder / name)]
    if present:
        return f"files a run writes ({', '.join(present)})"
    return None
