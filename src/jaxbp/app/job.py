"""Everything `jaxbp train` settles before it trains: data, model, optimizer, mesh, the
run folder (held, and checked before anything in it changes), and a resumed run's state.
A user's mistake raises `JobError`; a damaged checkpoint `CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax

import jaxbp
from jaxbp import datasets
from jaxbp.app.settings import RESUMABLE_CHANGES, JobError, Settings, completed
from jaxbp.runs import METRICS, OPTIMIZERS, PATHS, RunFolder, describe, fingerprint
from jaxbp.runs.optimizers import spec_of

__all__ = [
    "MAX_ACTIVATIONS",
    "MAX_PARAMS",
    "Job",
    "JobError",
    "Privacy",
    "default_delta",
    "prepare",
]

MAX_PARAMS = 2**28
"""Most parameters `jaxbp train` builds (1 GiB in float32, before the optimizer's state)."""

MAX_ACTIVATIONS = 2**30
"""Most hidden and output values one batch may hold (batch size x the sum of the widths)."""


SAMPLING = {
    "poisson": (
        "Poisson sampling at rate batch_size / n_train (each example in each step's batch "
        "with that probability; padded and masked, the sum divided by the expected batch "
        "size): the sampling the RDP accountant analyses, so epsilon is the run's guarantee"
    ),
    "shuffle": (
        "shuffled fixed-size batches (one permutation per epoch), accounted as Poisson "
        "sampling at rate batch_size / n_train: the figure common practice reports, not a "
        "proven bound for shuffled batches (see jaxbp.dp_epsilon)"
    ),
}
"""How a DP-SGD run of `jaxbp train` samples its batches (`--dp-sampling`), and what its
epsilon means."""


class Privacy(NamedTuple):
    """A DP-SGD run's plan and the privacy it spends over all `--epochs` (RDP accountant):
    `steps` in all, `per_epoch` each epoch, batches sampled by `sampling` ("poisson" or
    "shuffle")."""

    l2_clip: float
    noise_multiplier: float
    delta: float
    sample_rate: float
    steps: int
    epsilon: float
    sampling: str
    per_epoch: int

    def tracker(self, epochs: int) -> jaxbp.DPTracker:
        """The privacy spent after `epochs` epochs (`jaxbp.DPTracker`)."""
        return jaxbp.DPTracker(
            self.noise_multiplier, self.sample_rate, self.delta, epochs * self.per_epoch
        )


def default_delta(n: int) -> float:
    """The largest power of ten strictly below `1 / n`: 1e-4 for 1438 examples (digits), 1e-4 for
    1000 (1e-3 would equal 1/n)."""
    return 10.0 ** -len(str(n))


@dataclasses.dataclass(frozen=True)
class Job:
    """A prepared run: its settings, the data, and the state training starts from.

    `config` is the settings a checkpoint stores (JSON), `model` the network's
    `jaxbp.Config`; `task` is the data's ("classification" or "regression") and `metric`
    its score ("accuracy" or "r2"); `opt_state` is what the step takes (a
    `jaxbp.TrainState` with batch norm's running averages); `history` holds a resumed
    run's logged epochs; `privacy` a DP-SGD run's plan; `folder` is the held `--out`
    folder (`None` without `--out`); `parity` is a resumed run's parity check at
    initialisation, as its checkpoint carries it (`runs.schema.PARITY`; `None` for a new
    run, or a checkpoint written before it was stored).
    """

    settings: Settings
    config: dict[str, Any]
    model: jaxbp.Config
    task: str
    metric: str
    data: datasets.Dataset
    sizes: tuple[int, ...]
    key: jax.Array
    optimizer: optax.GradientTransformation
    path: Any
    params: Any
    opt_state: Any
    history: tuple[dict[str, Any], ...]
    mesh: Any
    folder: RunFolder | None
    privacy: Privacy | None = None
    parity: dict[str, Any] | None = None

    @property
    def out(self) -> Path | None:
        return None if self.folder is None else self.folder.path


def prepare(settings: Settings) -> Job:
    """Load the data, build (or resume) the model and optimizer, and hold `--out`.

    Nothing in `--out` changes unless every check has passed; the caller closes
    `job.folder`.
    """
    data, info = _load(settings)
    loss = settings.loss or info.loss
    try:
        data, n_out = datasets.for_loss(data, info, loss)
    except ValueError as err:
        raise JobError(f"--loss {loss}: {err}") from None
    mesh = _mesh(settings.devices, settings.batch_size)
    n_train = data.x_train.shape[0]
    if n_train < settings.batch_size:
        raise JobError(
            f"{settings.source}: {n_train} training rows (after a {settings.test_fraction:.0%} "
            f"test split), fewer than one batch (--batch-size {settings.batch_size})."
        )
    sizes = (data.x_train.shape[1], *settings.hidden, n_out)
    _check_size(settings, sizes)
    privacy = _privacy(settings, n_train) if settings.dp else None
    config = settings.config(loss, None if privacy is None else privacy.delta)
    for name in ("data", "labels"):  # found again from any working directory (load_run)
        config[name] = _absolute(config[name])
    config["data_sha256"] = None if settings.out is None else fingerprint(data)
    model = jaxbp.Config(
        activation=settings.activation, loss=loss, norm=settings.norm, dropout=settings.dropout
    )
    key = jax.random.key(settings.seed)
    params = jaxbp.init_mlp(
        jax.random.fold_in(key, 0), list(sizes), init=settings.init, norm=settings.norm
    )
    optimizer = OPTIMIZERS[settings.optimizer](settings.lr)
    path = PATHS.get(settings.optimizer, settings.grad)  # K-FAC brings its own
    if settings.saturation is not None:  # the diagnostics' threshold
        path = jaxbp.Manual(threshold=settings.saturation)
    opt_state = jaxbp.init_train_state(optimizer, params, model, path=PATHS.get(settings.optimizer))
    metric = jaxbp.TASKS[info.task].metric
    folder, history, parity = None, (), None
    if settings.out is not None:
        folder = RunFolder.hold(settings.out)
        try:
            if settings.resume:
                like = {"params": params, "opt_state": opt_state, "key": key}
                logged = _logged(metric, privacy is not None)
                params, opt_state, history = _resume(folder, settings, config, like, logged)
                parity = folder.initial_parity()
                if privacy is not None:  # the checkpoint's sampling, unless one was given
                    privacy = privacy._replace(sampling=config["dp_sampling"])
            else:
                what = describe(folder.path)
                if what is not None and not settings.overwrite:
                    raise JobError(
                        f"--out {folder.path} already holds {what}; continue it with --resume, "
                        "or pass --overwrite to replace it."
                    )
                folder.start_new(overwrite=settings.overwrite)
        except BaseException:
            folder.close()
            raise
    return Job(
        settings=settings,
        config=config,
        model=model,
        task=info.task,
        metric=metric,
        data=data,
        sizes=sizes,
        key=key,
        optimizer=optimizer,
        path=path,
        params=params,
        opt_state=opt_state,
        history=tuple(history),
        mesh=mesh,
        folder=folder,
        privacy=privacy,
        parity=parity,
    )


def _absolute(name: str | None) -> str | None:
    """A data file's path made absolute (not resolved: a symbolic link stays one)."""
    return None if name is None else os.path.abspath(name)


def _privacy(settings: Settings, n_train: int) -> Privacy:
    """The DP-SGD plan, its epsilon computed before anything trains (so a missing
    accountant or an absurd delta is refused up front)."""
    assert settings.dp_clip is not None and settings.dp_noise is not None
    delta = default_delta(n_train) if settings.dp_delta is None else settings.dp_delta
    if delta >= 1 / n_train:
        raise JobError(
            f"--dp-delta {delta:g}: at least 1/n_train = 1/{n_train}; delta is the chance that "
            "the guarantee fails outright, and at 1/n releasing one random example whole "
            f"would qualify. Use a delta below 1/n, e.g. {default_delta(n_train):g} (the default)."
        )
    plan = jaxbp.dp_epoch_sampling(n=n_train, batch_size=settings.batch_size, epochs=1)
    try:
        tracker = jaxbp.DPTracker.of(
            noise_multiplier=settings.dp_noise, sample_rate=plan.sample_rate, delta=delta
        )
    except ImportError as err:
        raise JobError(f"--dp-clip/--dp-noise: {err}") from None
    steps = settings.epochs * plan.steps
    epsilon = tracker.advanced(steps).epsilon
    sampling = settings.sampling
    assert sampling is not None
    return Privacy(
        settings.dp_clip,
        settings.dp_noise,
        delta,
        plan.sample_rate,
        steps,
        epsilon,
        sampling,
        plan.steps,
    )


def _load(settings: Settings) -> tuple[datasets.Dataset, datasets.DatasetInfo]:
    try:
        if settings.data is not None:
            return datasets.load_file(
                settings.data, target=settings.target, labels=settings.labels, seed=settings.seed
            )
        return datasets.load(settings.dataset, seed=settings.seed), datasets.INFO[settings.dataset]
    except (ValueError, ImportError) as err:  # a missing or malformed file, or no scikit-learn
        raise JobError(str(err)) from None


def _check_size(settings: Settings, sizes: tuple[int, ...]) -> None:
    """Refuse a network too big to allocate, before anything is allocated."""
    n_params = sum((a + 1) * b for a, b in itertools.pairwise(sizes))
    arch = "-".join(map(str, sizes))
    if n_params > MAX_PARAMS:
        raise JobError(
            f"--hidden {','.join(map(str, settings.hidden))}: a {arch} network has "
            f"{n_params:,} parameters, over jaxbp train's limit of {MAX_PARAMS:,}; use "
            "narrower or fewer layers."
        )
    values = settings.batch_size * sum(sizes[1:])
    if values > MAX_ACTIVATIONS:
        raise JobError(
            f"--batch-size {settings.batch_size} with a {arch} network holds {values:,} "
            f"values per batch, over the limit of {MAX_ACTIVATIONS:,}; use a smaller batch."
        )


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
    mesh = jaxbp.data_mesh(devices)
    if batch_size % devices:
        raise JobError(f"--batch-size {batch_size} must be a multiple of --devices {devices}.")
    return mesh


def _logged(metric: str, dp: bool) -> frozenset[str]:
    """What each epoch's line of `jaxbp train`'s log holds (and a resumed run reads)."""
    scores = {f"{split}_{m}" for split in ("train", "test") for m in ("loss", metric)}
    return frozenset({"seconds", "samples_per_s", *scores, *(["clipped"] if dp else [])})


def _resume(
    folder: RunFolder,
    settings: Settings,
    config: dict[str, Any],
    like: dict[str, Any],
    logged: frozenset[str],
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The state and logged epochs of the run in `folder`, checked whole; the log is cut
    back to the checkpoint's epoch (a crash can leave one epoch logged past it), and
    each epoch's line must hold what this run logs (`logged`)."""
    found = folder.saved()
    if found is None:
        raise JobError(f"--resume: no checkpoint in {folder.path} (expected {folder.checkpoint}).")
    epoch, saved = found
    saved = completed({"data_sha256": config["data_sha256"], **saved})  # older: unknown
    if settings.dp_sampling is None and config["dp_sampling"] is not None:
        config["dp_sampling"] = saved["dp_sampling"]  # not asked for: the run's own
    spec = spec_of(saved)  # older: from optimizer and lr; --lr may change on --resume
    saved["optimizer_spec"] = spec and {**spec, "learning_rate": config["lr"]}
    for name in ("data", "labels"):  # older runs stored them as given: relative to here
        if isinstance(saved.get(name), str):
            saved[name] = _absolute(saved[name])
    same = (*RESUMABLE_CHANGES, "data_sha256")
    differs = [k for k, v in config.items() if k not in same and saved.get(k) != v]
    if differs:
        detail = ", ".join(
            f"{k}: {saved.get(k)!r} in the checkpoint, {config[k]!r} now" for k in differs
        )
        raise JobError(f"--resume: the settings differ from the checkpoint's ({detail}).")
    if saved["data_sha256"] != config["data_sha256"]:
        raise JobError(
            f"--resume: {settings.source} changed since the checkpoint (the data it holds "
            "differs); resume with the data the run trained on, or start a new run "
            "(--overwrite or another --out)."
        )
    if settings.epochs < epoch:
        raise JobError(
            f"--resume: the checkpoint in {folder.path} has trained {epoch} epochs, more than "
            f"--epochs {settings.epochs}; ask for at least {epoch}."
        )
    state = folder.load(like)
    metrics = folder.path / METRICS
    history, torn = folder.history()
    if not epoch <= len(history) <= epoch + 1:
        raise JobError(
            f"--resume: {metrics} logs {len(history)} epochs, the checkpoint {epoch}; they do "
            "not belong to one run (a crash leaves at most one epoch logged past the "
            "checkpoint). Refusing to change either."
        )
    for row in history[:epoch]:
        if missing := sorted(logged - row.keys()):
            raise JobError(
                f"--resume: {metrics} epoch {row['epoch']} lacks {', '.join(missing)}, which "
                "jaxbp train logs for these settings; that log was not written by a jaxbp "
                "train run like this one. Start a new run (--overwrite or another --out)."
            )
    folder.keep_epochs(history[:epoch], torn)
    return state["params"], state["opt_state"], history[:epoch]
