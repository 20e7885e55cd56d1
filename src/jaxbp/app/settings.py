"""`jaxbp train`'s settings: resolved once from the command line into a frozen value.

`Settings.from_args` is the only place that reads the argparse namespace; the job code
sees `Settings` and nothing else. Per-dataset defaults live in `DEFAULTS`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import jaxbp

__all__ = ["ADDED_SETTINGS", "DEFAULTS", "RESUMABLE_CHANGES", "JobError", "Settings"]

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

RESUMABLE_CHANGES = ("lr", "grad", "dp_delta", "saturation")
"""Settings that `--resume` may change (besides `--epochs`); any other must match.
`dp_delta` only chooses where the privacy spent is read off, `saturation` what the
diagnostics count: neither changes a step."""

ADDED_SETTINGS: dict[str, Any] = {
    "norm": None,
    "dropout": 0.0,
    "dp_clip": None,
    "dp_noise": None,
    "dp_delta": None,
    "saturation": None,
}
"""Settings that checkpoints written before they existed lack, with the value those runs
had (a missing one compares equal to it on `--resume`); see also `completed`."""

DP_SAMPLINGS = ("poisson", "shuffle")
"""How a DP-SGD run of `jaxbp train` samples its batches (`--dp-sampling`; default
poisson, the sampling its epsilon is a guarantee for)."""


def completed(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings with those it predates filled in as its run had them:
    `ADDED_SETTINGS`, and `dp_sampling` "shuffle" for a DP-SGD run (the only sampling
    before `--dp-sampling`), `None` for any other."""
    dp = saved.get("dp_clip") is not None
    return {**ADDED_SETTINGS, "dp_sampling": "shuffle" if dp else None, **saved}


AS_GIVEN = (
    *("data", "target", "labels", "loss", "optimizer", "seed", "grad", "out", "resume"),
    *("overwrite", "quiet", "diagnostics", "devices", "dropout", "saturation"),
    *("dp_clip", "dp_noise", "dp_delta", "dp_sampling"),
)
"""The settings `Settings.from_args` takes from the command line as they are parsed."""


class JobError(Exception):
    """A user's mistake in a job's input: reported as one line on stderr, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `jaxbp train` was asked to do, defaults resolved; `loss=None` means the
    data's own loss (known once the data is read)."""

    dataset: str | None
    data: Path | None
    target: str | None
    labels: Path | None
    hidden: tuple[int, ...]
    activation: str
    init: str
    loss: str | None
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    seed: int
    grad: str
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    diagnostics: bool = False
    devices: int | None = None
    test_fraction: float = 0.2
    norm: str | None = None
    dropout: float = 0.0
    dp_clip: float | None = None
    dp_noise: float | None = None
    dp_delta: float | None = None
    dp_sampling: str | None = None
    saturation: float | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Settings:
        """Resolve the parsed command line (never modified) into `Settings`, refusing
        combinations of flags that make no sense with a `JobError`."""
        dataset = "digits" if ns.data is None and ns.dataset is None else ns.dataset
        defaults = {"lr": 1e-3, "batch_size": 32, **DEFAULTS[dataset]}
        pick = lambda name: defaults[name] if getattr(ns, name) is None else getattr(ns, name)  # noqa: E731
        activation = pick("activation")
        settings = cls(
            dataset=dataset,
            hidden=tuple(pick("hidden")),
            activation=activation,
            init=ns.init or jaxbp.ACTIVATIONS[activation].init,
            lr=pick("lr"),
            batch_size=pick("batch_size"),
            epochs=pick("epochs"),
            norm=None if ns.norm == "none" else ns.norm,
            **{name: getattr(ns, name) for name in AS_GIVEN},
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse flags that do not go together."""
        suffix = None if self.data is None else self.data.suffix.lower()
        if self.target is not None and suffix != ".csv":
            raise JobError(
                "--target names the label column of a --data FILE.csv; it applies to nothing else."
            )
        if self.labels is not None and suffix in (None, ".csv", ".npz"):
            raise JobError(
                "--labels names the labels file of --data IDX images (MNIST's format); "
                "it applies to nothing else."
            )
        if self.resume and self.overwrite:
            raise JobError(
                "--resume continues the run in --out, --overwrite replaces it: pick one."
            )
        if self.out is None and (self.resume or self.overwrite):
            flag = "--resume" if self.resume else "--overwrite"
            raise JobError(f"{flag} needs --out DIR, the folder of the run.")
        kfac_clash = [
            flag
            for flag, clash in (
                ("--grad autodiff", self.grad != "manual"),
                (f"--norm {self.norm}", bool(self.norm)),
                ("--dp-clip/--dp-noise", self.dp),
                ("--diagnostics", self.diagnostics),
            )
            if clash
        ]
        if self.optimizer == "kfac" and kfac_clash:
            flag = kfac_clash[0]
            raise JobError(
                f"--optimizer kfac preconditions the manual gradient of dense layers with "
                f"their Kronecker factors, and {flag} does not go with it: drop {flag}, or "
                "use another --optimizer."
            )
        if self.saturation is not None and not self.diagnostics:
            raise JobError(
                f"--saturation {self.saturation:g} sets the threshold of the saturated-units "
                "diagnostic; it needs --diagnostics."
            )
        if self.diagnostics and self.grad != "manual":
            raise JobError(
                "--diagnostics reads the backward flow delta_l, which manual_grad keeps and "
                "jax.grad does not expose: use --grad manual."
            )
        if not self.hidden and (self.norm or self.dropout):
            flag = f"--norm {self.norm}" if self.norm else f"--dropout {self.dropout:g}"
            raise JobError(
                f"{flag} acts after each hidden layer, and --hidden gives none; add a hidden "
                "layer (e.g. --hidden 32) or drop the flag."
            )
        # The layer records say what they need of a batch; of the layers jaxbp train builds,
        # only a --norm one can ask for more than one example (batch norm: min_batch 2).
        need = max(layer.min_batch for layer in self.layers)
        if self.batch_size < need:
            raise JobError(
                f"--norm {self.norm} normalises over the batch and needs --batch-size {need} "
                f"or more (got {self.batch_size}: one sample normalises to 0, the output no "
                "longer depends on x); use a larger batch or --norm layer."
            )
        self._check_dp()

    @property
    def layers(self) -> tuple[Any, ...]:
        """The network's layer records, input to logits (`jaxbp.Config.body`): one dense
        layer per hidden width and the output, a `--norm` layer after each hidden one."""
        n_params = len(self.hidden) + 1 + (len(self.hidden) if self.norm else 0)
        network = jaxbp.Config(activation=self.activation, norm=self.norm, dropout=self.dropout)
        return network.body(n_params)

    @property
    def dp(self) -> bool:
        """Whether the run trains with DP-SGD (`--dp-clip` and `--dp-noise`)."""
        return self.dp_clip is not None

    def _check_dp(self) -> None:
        if (self.dp_clip is None) != (self.dp_noise is None):
            given, missing = (
                ("--dp-clip", "--dp-noise SIGMA")
                if self.dp_noise is None
                else ("--dp-noise", "--dp-clip C")
            )
            raise JobError(
                f"{given} needs {missing} too: DP-SGD clips each example's gradient to norm "
                "C and adds noise of std SIGMA x C, and takes both (e.g. --dp-clip 1 "
                "--dp-noise 1.1)."
            )
        if not self.dp:
            for flag, given, what in (
                ("--dp-delta", self.dp_delta, "the delta of a DP-SGD run's epsilon"),
                ("--dp-sampling", self.dp_sampling, "how a DP-SGD run samples its batches"),
            ):
                if given is not None:
                    raise JobError(f"{flag} sets {what}; it needs --dp-clip and --dp-noise.")
            return
        refusals = (
            (  # a layer whose record has no per-example gradients: only a --norm one here
                not all(layer.per_example for layer in self.layers),
                f"--norm {self.norm} cannot train with DP-SGD: batch normalisation mixes the "
                "examples of a batch, so no example has a gradient of its own to clip "
                "(Opacus refuses it for the same reason); use --norm layer or --norm none.",
            ),
            (
                self.grad != "manual",
                f"--grad {self.grad} cannot train with DP-SGD: jaxbp clips each example's "
                "gradient from the backward flow that manual_grad keeps; use --grad manual.",
            ),
            (
                self.diagnostics,
                "--diagnostics is not available with DP-SGD (its epoch logs loss, grad_norm "
                "and the clipped fraction); drop one of them.",
            ),
            (
                self.devices is not None,
                "--devices cannot split a DP-SGD run yet (its epoch runs on one device); "
                "drop --devices.",
            ),
        )
        for refused, message in refusals:
            if refused:
                raise JobError(message)

    @property
    def source(self) -> str:
        """The data, as the progress line and the summary name it."""
        return str(self.data) if self.data is not None else str(self.dataset)

    def config(self, loss: str, dp_delta: float | None = None) -> dict[str, Any]:
        """The settings a checkpoint stores and `--resume` compares (JSON); `dp_delta` is
        the resolved delta of a DP-SGD run (its default depends on the data)."""
        return {
            "dataset": self.dataset,
            "data": None if self.data is None else str(self.data),
            "target": self.target,
            "labels": None if self.labels is None else str(self.labels),
            "hidden": list(self.hidden),
            "activation": self.activation,
            "init": self.init,
            "loss": loss,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "optimizer_spec": jaxbp.runs.OPTIMIZERS[self.optimizer].spec(self.lr),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "grad": self.grad,
            "test_fraction": self.test_fraction,
            "norm": self.norm,
            "dropout": self.dropout,
            "dp_clip": self.dp_clip,
            "dp_noise": self.dp_noise,
            "dp_delta": dp_delta,
            "dp_sampling": self.sampling,
            "saturation": self.saturation,
        }

    @property
    def sampling(self) -> str | None:
        """A DP-SGD run's batch sampling (`--dp-sampling`, default "poisson"), or `None`.
        A resumed run given no `--dp-sampling` keeps its checkpoint's (`job.prepare`)."""
        if not self.dp:
            return None
        return self.dp_sampling or "poisson"
