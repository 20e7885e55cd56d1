"""Run folders: what `jaxbp train --out` writes, how a run holds one, and `load_run`.

A run folder holds `metrics.jsonl` (one JSON line per epoch, each appended whole with one
write and fsynced), `checkpoint.jaxbp` (atomic, checksummed, with the epoch and the run's
settings as its meta), `summary.json`, `curves.png`, `diagnostics.png`, and `.jaxbp.lock`,
which the writing run holds (`flock`) so that a second run into the same folder is
refused at once. Whatever a crash leaves (a torn last metrics line, a temporary
checkpoint file) is repaired or ignored, never trusted.

Every record in the folder keeps a schema (`jaxbp.runs.schema`: each field a type and a
range), checked when it is written and when it is read: a metrics line, the summary,
the checkpoint's meta and the run's settings in it. Nothing is followed out of the
folder: each name the run writes must be a regular file (the lock and the log with no
other hard link), or the folder is refused before anything in it changes.

`jaxbp train` is one client of this module; a training loop of one's own writes a folder
that `load_run` reads by the same calls, when the settings it saves name the network as
`jaxbp train`'s do (`hidden`, `activation`, `loss`, `optimizer`, `lr`, `seed`, `dataset`
or `data`). The optimizer is recorded as a spec too (`optimizer_spec`: its name and every
hyperparameter, `jaxbp.runs.optimizers`), from which `Run.optimizer()` and
`Run.grad_path()` rebuild what the run trained with; the logged epochs come back as
columns (`Run.columns`, `Run.frame`: `jaxbp.runs.columns`, `jaxbp.runs.frame`).
`jaxbp train --resume` continues it only when the settings are all those `jaxbp train`
stores for the command (`Run.config` of a `jaxbp train` run shows them: `init`,
`batch_size`, `grad`, `optimizer_spec`, `data_sha256`, ...) and every logged epoch holds
what `jaxbp train` logs:

    folder = RunFolder.hold(Path("runs/mine"))
    folder.start_new()                    # a folder holding a run: overwrite=True
    ...                                   # each epoch:
    folder.append({"epoch": epoch, "train_loss": ...})
    folder.save(epoch, {"params": p, "opt_state": s, "key": key}, settings)
    folder.close()
"""

from jaxbp._files.checkpoint import write_atomic
from jaxbp.runs import optimizers, schema
from jaxbp.runs.folder import (
    CHECKPOINT,
    FIGURES,
    METRICS,
    OPTIMIZERS,
    PATHS,
    SUMMARY,
    RunError,
    RunFolder,
    describe,
    fingerprint,
    read_metrics,
)
from jaxbp.runs.load import Run, load_run
from jaxbp.runs.table import columns, frame

__all__ = [
    "CHECKPOINT",
    "FIGURES",
    "METRICS",
    "OPTIMIZERS",
    "PATHS",
    "SUMMARY",
    "Run",
    "RunError",
    "RunFolder",
    "columns",
    "describe",
    "fingerprint",
    "frame",
    "load_run",
    "optimizers",
    "read_metrics",
    "schema",
    "write_atomic",
]
