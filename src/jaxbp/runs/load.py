"""A run folder read back: `load_run` and the `Run` it returns (see `jaxbp.runs`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jaxbp._core.config import Config
from jaxbp._core.network import init_mlp, init_stats
from jaxbp._files.checkpoint import CheckpointError, load_checkpoint, read_arrays
from jaxbp._files.guard import load_json, open_regular
from jaxbp._privacy.dp import DPSGD
from jaxbp._train.state import TrainState
from jaxbp.runs import optimizers, schema
from jaxbp.runs.folder import (
    ASIDE_FOLDERS,
    CHECKPOINT,
    METRICS,
    SUMMARY,
    RunError,
    RunFolder,
    _check_finite,
    _check_meta,
    _Held,
    _NotOurs,
    fingerprint,
    read_metrics,
)
from jaxbp.runs.table import columns, frame


@dataclasses.dataclass(frozen=True, repr=False)
class Run:
    """A `jaxbp train --out` folder, loaded: the trained state and what was logged.

    - `params`: the parameters at the checkpoint, `[{"W": (n_in, n_out), "b": (n_out,)}, ...]`
      (with `{"gain", "bias"}` after each hidden one for a normalised network).
    - `opt_state`: what the run's step takes: the optax state, or a `jaxbp.TrainState`
      for batch norm (`None` if the optimizer is unknown to this version).
    - `config`: the run's settings (dataset or data file, hidden, activation, loss, ...).
    - `epoch`: the epochs the checkpoint has seen; `metrics`: one dict per logged epoch.
    - `summary`: `summary.json` of the last finished run (`None` if it never finished).
    - `network`: the network as a `jaxbp.Config` (activation, loss, norm, dropout), for
      `jaxbp.evaluate(run.params, x, y, run.network, stats=run.stats)`.
    - `stats`: batch normalisation's running averages (`None` without batch norm).

    The optimizer and the gradient path it trained with come back as values
    (`optimizer()`, `grad_path()`, from `optimizer_spec`), so that training continues
    where the run stopped:

        epoch = jaxbp.make_train_epoch(run.optimizer(), run.network, batch_size=32,
                                       grad=run.grad_path())
        params, opt_state, _ = epoch(run.params, run.opt_state, key, x, y)

    The metrics come back as columns (`columns()`, `frame()` for a pandas DataFrame).
    """

    path: Path
    params: Any
    opt_state: Any
    config: dict[str, Any]
    epoch: int
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    network: Any = None
    stats: Any = None

    def __repr__(self) -> str:
        spec = self.optimizer_spec
        optimizer = "unknown" if spec is None else f"{spec.get('name')} {spec.get('learning_rate')}"
        state = "finished" if self.summary is not None else "unfinished"
        return (
            f"Run({str(self.path)!r}, epoch={self.epoch}, {state}, network={self.network!r}, "
            f"hidden={self.config.get('hidden')}, optimizer={optimizer!r}, "
            f"metrics={len(self.metrics)} epochs)"
        )

    @property
    def optimizer_spec(self) -> dict[str, Any] | None:
        """The optimizer the run trained with, as a spec (JSON, `jaxbp.runs.optimizers`):
        `{"name": "adam", "learning_rate": 0.001, "b1": 0.9, ...}`, its name and every
        hyperparameter. The spec its settings record (`config["optimizer_spec"]`), or for a
        run saved before specs were recorded, the one its `optimizer` and `lr` name;
        `None` if they name none this version knows."""
        return optimizers.spec_of(self.config)

    def optimizer(self) -> optax.GradientTransformation:
        """The optax transformation the run trained with, rebuilt from `optimizer_spec`:
        `run.opt_state` is its state (inside a `jaxbp.TrainState` for batch norm and
        K-FAC), so its `update` continues where the run stopped. `RunError` if this
        version cannot rebuild it (an optimizer it does not know: `run.opt_state` is
        then `None`)."""
        return optimizers.build(self._spec())[0]

    def grad_path(self) -> Any:
        """The gradient path the run trained on, as `jaxbp.make_train_step(...,
        grad=...)` and its kin take it: the `jaxbp.KFAC(...)` of a K-FAC run's spec, a
        `jaxbp.DPSGD(...)` for a DP-SGD run (`dp_clip`, `dp_noise`), else the name in its
        `grad` setting ("manual" where it holds none). `RunError` as `optimizer()`."""
        path = optimizers.build(self._spec())[1]
        cfg = self.config
        if path is None and cfg.get("dp_clip") is not None:
            sampling = cfg.get("dp_sampling") or "shuffle"
            return DPSGD(cfg["dp_clip"], cfg["dp_noise"], sampling)
        return path if path is not None else cfg.get("grad", "manual")

    def _spec(self) -> dict[str, Any]:
        """`optimizer_spec`, checked that this version rebuilds it, or `RunError`."""
        why = optimizers.problem(self.config)
        if why is not None:
            raise RunError(
                f"{self.path}: cannot rebuild the run's optimizer ({why}); build it yourself "
                "(e.g. optax.adam(lr)) and start its state afresh (run.opt_state is None)."
            )
        return optimizers.spec_of(self.config)  # type: ignore[return-value]

    def columns(self) -> dict[str, np.ndarray]:
        """The logged metrics as columns, one value an epoch (`jaxbp.runs.columns`): a
        per-layer metric such as `delta_norm` as `delta_norm_1 ... delta_norm_L`
        (layers numbered from 1, as `delta_l` in eq. 1.4), NaN where an epoch lacks it."""
        return columns(self.metrics)

    def frame(self) -> Any:
        """`columns()` as a pandas DataFrame, one row an epoch (`jaxbp.runs.frame`); an
        `ImportError` naming the fix if pandas is not installed."""
        return frame(self.metrics)

    def dataset(self) -> tuple[Any, Any]:
        """`(Dataset, DatasetInfo)` as the run trained on it: the same split, standardised,
        targets recast for the run's loss (`jaxbp.datasets.for_loss`). A split whose
        `fingerprint` differs from the one the run stored (`data_sha256`: an edited data
        file, another version's dataset) is refused with `RunError`."""
        from jaxbp import datasets

        cfg = self.config
        common = dict(seed=cfg["seed"], test_fraction=cfg.get("test_fraction", 0.2))
        if cfg.get("data") is None and cfg.get("dataset") not in datasets.INFO:
            raise RunError(
                f"{self.path}: its settings name no data file (data) and no built-in dataset "
                f"(dataset: {cfg.get('dataset')!r}, not one of {sorted(datasets.INFO)}); "
                "load the data the run trained on yourself."
            )
        if cfg.get("data") is not None:
            data, info = datasets.load_file(
                self._found(cfg["data"]),
                target=cfg.get("target"),
                labels=None if cfg.get("labels") is None else self._found(cfg["labels"]),
                **common,
            )
        else:
            data, info = datasets.load(cfg["dataset"], **common), datasets.INFO[cfg["dataset"]]
        split = datasets.for_loss(data, info, cfg["loss"])[0]
        stored = cfg.get("data_sha256")
        if stored is not None and fingerprint(split) != stored:
            source = cfg["data"] if cfg.get("data") is not None else f"dataset {cfg['dataset']!r}"
            raise RunError(
                f"{self.path}: {source} no longer gives the split this run trained on (its "
                "SHA-256 differs from the checkpoint's data_sha256: the file was edited, or "
                "the data comes from another version); load the data the run trained on."
            )
        return split, info

    def _found(self, name: str) -> str:
        """A data file the run names: runs since jaxbp 0.x store it absolute; one stored
        relative (an older run) is looked up from the working directory, or refused."""
        if os.path.isabs(name) or os.path.exists(name):
            return name
        raise RunError(
            f"{self.path}: the run names its data file by the relative path {name!r}, "
            f"which is not found from {os.getcwd()}; load the run from the folder it was "
            "trained in (runs trained now store the absolute path)."
        )


def _network(path: Path, config: dict[str, Any]) -> Config:
    """The run's network (activation, loss, normalisation, dropout) as a `jaxbp.Config`;
    settings a checkpoint predates take the values those runs had."""
    try:
        return Config(
            activation=config.get("activation"),
            loss=config.get("loss"),
            norm=config.get("norm"),
            dropout=config.get("dropout", 0.0),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its config does not name a network ({err}); refusing to load it."
        ) from None


def _sizes(path: Path, config: dict[str, Any], stored: list[np.ndarray]) -> list[int]:
    """Layer sizes from the stored weights: the state flattens as key, opt_state, params,
    and params last, `W_l, b_l` per dense layer (and `bias, gain` per normalisation after
    each hidden one): the weights are the matrices among them."""
    hidden = config.get("hidden")
    n_leaves = None
    if isinstance(hidden, list):
        n_leaves = 2 * (len(hidden) + 1) + (2 * len(hidden) if config.get("norm") else 0)
    if n_leaves is None or n_leaves > len(stored):
        raise CheckpointError(f"{path}: its config's hidden is {hidden!r}; refusing to load it.")
    weights = [a for a in stored[len(stored) - n_leaves :] if a.ndim == 2]
    if len(weights) != len(hidden) + 1:
        raise CheckpointError(f"{path}: its weights are not matrices; refusing to load it.")
    sizes = [weights[0].shape[0], *(w.shape[1] for w in weights)]
    if min(sizes) < 1:
        shapes = [list(w.shape) for w in weights]
        raise CheckpointError(f"{path}: its weights {shapes} hold no units; refusing to load it.")
    return sizes


def _settle_for_reading(path: Path) -> None:
    """Put back what a run that ended before its next checkpoint set aside (a replaced
    run, a resumed run's summary and figures), by holding the folder a moment; refuse
    (`RunError`) where that cannot be done now, rather than show the run without them."""
    aside = [name for name in ASIDE_FOLDERS if os.path.lexists(path / name)]
    if not aside:
        return
    where = path / aside[0]
    try:
        RunFolder.hold(path).close()
    except _NotOurs:
        raise
    except _Held as err:
        raise RunError(
            f"out_dir {path}: process {err.holder} is writing this run and has set files "
            f"aside in {where} until its next checkpoint; load the run when that process "
            "has ended."
        ) from None
    except (RunError, OSError) as err:
        reason = (
            f"{err.strerror}: {err.filename}"
            if isinstance(err, OSError)
            else "this process cannot write there"
        )
        raise RunError(
            f"out_dir {path}: a run that ended before its next checkpoint left files set "
            f"aside in {where}, and they cannot be put back from here ({reason}); make the "
            "folder writable (chmod u+w) and load it again."
        ) from None


def load_run(out_dir: str | Path) -> Run:
    """Load what `jaxbp train --out out_dir` wrote: parameters, optimizer state, settings,
    per-epoch metrics and summary. Raises `RunError`/`CheckpointError` (both `ValueError`)
    naming the file that is missing or damaged.

    `run.params` scores what `summary.json` says on `run.dataset()` (with
    `jaxbp.evaluate(run.params, x, y, run.network, stats=run.stats)`) when the run
    finished; a torn last metrics line (a crash mid-write) is left out. Files a run that
    ended before its next checkpoint set aside are first put back (the folder is held a
    moment, as `RunFolder.hold` does), or the load is refused saying why. For a network
    with batch normalisation `run.opt_state` is the `jaxbp.TrainState` the step takes,
    its running averages in `run.stats`.
    """
    path = Path(out_dir)
    _settle_for_reading(path)
    ckpt = path / CHECKPOINT
    if not os.path.lexists(ckpt):
        raise RunError(f"out_dir {path}: no {CHECKPOINT} there; is it a jaxbp train --out folder?")
    meta, stored = read_arrays(ckpt)
    epoch, config = _check_meta(ckpt, meta)
    if (found := schema.problem(config, schema.LOADABLE, prefix="config.")) is not None:
        raise CheckpointError(
            f"{ckpt}: its {found}; load_run rebuilds a run from the settings jaxbp train "
            "saves (hidden, activation, loss, seed, ...); refusing to load it."
        )
    network = _network(ckpt, config)
    sizes = _sizes(ckpt, config, stored)
    params = init_mlp(jax.random.key(0), sizes, norm=network.norm)
    stats = init_stats(params, network)
    key = jax.random.key(0)
    if optimizers.problem(config) is None:  # the optimizer spec: recorded, or name and lr
        optimizer, trains = optimizers.build(optimizers.spec_of(config))  # type: ignore[arg-type]
        opt_state = TrainState.create(optimizer, params, network, trains).slot()  # K-FAC's too
        like = {"params": params, "opt_state": opt_state, "key": key}
        state = load_checkpoint(ckpt, like)[0]
        params, opt_state = state["params"], state["opt_state"]
        stats = TrainState.of(opt_state).stats or None
    else:  # an optimizer this version cannot rebuild: the parameters (and averages) alone
        like = jax.tree.leaves((stats, params))  # stored last: ..., stats, params
        tail = stored[len(stored) - len(like) :]
        if [(a.shape, a.dtype) for a in tail] != [(np.shape(r), r.dtype) for r in like]:
            raise CheckpointError(
                f"{ckpt}: its parameters do not fit {sizes}; refusing to load it."
            )
        stats, params = jax.tree.unflatten(
            jax.tree.structure((stats, params)), [jax.numpy.asarray(a) for a in tail]
        )
        stats = stats or None
        opt_state = None
    _check_finite(ckpt, params)
    metrics, _ = read_metrics(path / METRICS)
    return Run(
        path, params, opt_state, config, epoch, metrics[:epoch], _summary(path), network, stats
    )


def _summary(path: Path) -> dict[str, Any] | None:
    """`summary.json` of the folder, checked against `runs.schema.SUMMARY`; `None` if the
    run never finished."""
    where = path / SUMMARY
    if not os.path.lexists(where):
        return None
    try:
        with open_regular(where) as f:
            summary = load_json(f.read())
    except OSError as err:
        raise RunError(f"{where}: not readable JSON ({err.strerror}).") from None
    except ValueError as err:
        raise RunError(f"{where}: not readable JSON ({err}).") from None
    found = schema.problem(summary, schema.SUMMARY)
    if found is not None:
        raise RunError(
            f"{where}: its {found}; the summary is damaged or was not written by jaxbp "
            "(delete it, and jaxbp train --resume writes it again)."
        )
    return summary
