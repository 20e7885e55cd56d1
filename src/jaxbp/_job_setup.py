"""Everything `jaxbp train` settles before it trains: settings, data, model, optimizer,
mesh, and a resumed run's state. Bad input raises `JobError`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbp import datasets
from jaxbp._checkpoint import CheckpointError, load_checkpoint, read_meta
from jaxbp._mlp import init_mlp
from jaxbp._sharding import Mesh, data_mesh

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


class Job(NamedTuple):
    """A prepared run: settings, data, and the state training starts from."""

    cfg: dict[str, Any]
    epochs: int
    source: str
    task: str
    data: datasets.Dataset
    sizes: list[int]
    kw: dict[str, Any]
    key: jax.Array
    optimizer: optax.GradientTransformation
    params: Any
    opt_state: Any
    history: list[dict[str, Any]]
    mesh: Mesh | None
    out: Path | None


def prepare(args: argparse.Namespace) -> Job:
    """Check the arguments, load the data, build (or resume) the model and optimizer."""
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
    n_train = data.x_train.shape[0]
    if n_train < cfg["batch_size"]:
        raise JobError(
            f"{source}: {n_train} training rows (after a {cfg['test_fraction']:.0%} test "
            f"split), fewer than one batch (--batch-size {cfg['batch_size']})."
        )
    sizes = [data.x_train.shape[1], *cfg["hidden"], n_out]
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
    kw = dict(activation=cfg["activation"], loss=cfg["loss"])
    return Job(
        cfg,
        epochs,
        source,
        task,
        data,
        sizes,
        kw,
        key,
        optimizer,
        params,
        opt_state,
        history,
        mesh,
        out,
    )


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


def _mesh(devices: int | None, batch_size: int) -> Mesh | None:
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
