"""The optimizers a run may name, and the spec a run records of the one it trained with.

Each optimizer `jaxbp train --optimizer NAME` builds is a record (`OptimizerKind`) that
owns every hyperparameter it uses, besides the learning rate: the optax transformation's
and, for K-FAC, the gradient path's (`jaxbp.KFAC`'s own defaults). A run records its
optimizer as a spec, a JSON object holding the name and every hyperparameter:

    {"name": "adam", "learning_rate": 0.001, "b1": 0.9, "b2": 0.999, "eps": 1e-08, "eps_root": 0.0}

`jaxbp train` stores it as the `optimizer_spec` of the run's settings (checked by
`runs.schema.OPTIMIZER_SPEC`), and `Run.optimizer()` and `Run.grad_path()` rebuild the
optax transformation and the gradient path from it; a run saved before specs were
recorded has the spec its `optimizer` and `lr` name (`spec_of`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax

from jaxbp._curvature.kfac_path import KFAC
from jaxbp.runs import schema

__all__ = ["OPTIMIZERS", "PATHS", "OptimizerKind", "build", "problem", "spec_of"]


@dataclasses.dataclass(frozen=True)
class OptimizerKind:
    """An optimizer a run may name: the optax transformation and its hyperparameters
    (besides the learning rate), and the gradient path it brings with it, if any.

    - `name`: the name `--optimizer` takes and the spec holds.
    - `transform`: `(learning_rate, **hyper) -> optax.GradientTransformation`.
    - `hyper`: every keyword of `transform` the optimizer sets, with its value.
    - `path`: a `jaxbp.GradientPath` record class (`jaxbp.KFAC`), built from the spec's
      values of its fields (its own defaults in a new spec); `None`: the run trains on
      the gradient `--grad` names.

    Calling it with a learning rate builds the transformation (`OPTIMIZERS["adam"](1e-3)`).
    """

    name: str
    transform: Callable[..., optax.GradientTransformation]
    hyper: Mapping[str, Any]
    path: type | None = None

    @property
    def path_hyper(self) -> dict[str, Any]:
        """The gradient path's hyperparameters, with its record's defaults."""
        if self.path is None:
            return {}
        return {f.name: f.default for f in dataclasses.fields(self.path)}

    def spec(self, learning_rate: float) -> dict[str, Any]:
        """The spec of this optimizer at `learning_rate` (JSON): name and every
        hyperparameter."""
        return {"name": self.name, "learning_rate": learning_rate, **self.hyper, **self.path_hyper}

    def __call__(self, learning_rate: float) -> optax.GradientTransformation:
        return build(self.spec(learning_rate))[0]


OPTIMIZERS: dict[str, OptimizerKind] = {
    kind.name: kind
    for kind in (
        OptimizerKind("sgd", optax.sgd, {"momentum": None, "nesterov": False}),
        OptimizerKind("momentum", optax.sgd, {"momentum": 0.9, "nesterov": False}),
        OptimizerKind("adam", optax.adam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}),
        OptimizerKind("kfac", optax.sgd, {"momentum": 0.9, "nesterov": False}, KFAC),
    )
}
"""The optimizers a run may name; `OPTIMIZERS[name](lr)` builds one."""

PATHS = {name: kind.path(**kind.path_hyper) for name, kind in OPTIMIZERS.items() if kind.path}
"""The gradient paths an optimizer's name brings with it (K-FAC: the preconditioned
gradient, `jaxbp.KFAC` with its defaults, under `optax.sgd(lr, momentum=0.9)`); the
others train on the gradient `--grad` names."""


def spec_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The optimizer spec of a run's settings: the `optimizer_spec` it records, or, for a
    run saved before specs were, the spec its `optimizer` and `lr` name (`None` when they
    name none this version knows)."""
    if "optimizer_spec" in config:
        return config["optimizer_spec"]
    kind, lr = OPTIMIZERS.get(config.get("optimizer")), config.get("lr")  # type: ignore[arg-type]
    if kind is None or not schema.CONFIG["lr"].test(lr):
        return None
    return kind.spec(lr)


def problem(config: dict[str, Any]) -> str | None:
    """Why this version cannot rebuild the optimizer of a run's settings (`spec_of`), in
    words, or `None`: no spec, a name it does not know, hyperparameters other than the
    optimizer's, a spec that contradicts the settings' `optimizer` or `lr`."""
    spec = spec_of(config)
    if spec is None:
        return (
            f"its settings record no optimizer_spec, and optimizer {config.get('optimizer')!r} "
            f"at lr {config.get('lr')!r} is not one of {sorted(OPTIMIZERS)} with a learning rate"
        )
    if (found := schema.problem(spec, schema.OPTIMIZER_SPEC, prefix="optimizer_spec.")) is not None:
        return found
    kind = OPTIMIZERS.get(spec["name"])
    if kind is None:
        return f"optimizer_spec names {spec['name']!r}, not one of {sorted(OPTIMIZERS)}"
    for field, own in (("optimizer", "name"), ("lr", "learning_rate")):
        if field in config and config[field] != spec[own]:
            return f"optimizer_spec.{own} is {spec[own]!r} but {field} is {config[field]!r}"
    takes = {"name", "learning_rate", *kind.hyper, *kind.path_hyper}
    if spec.keys() != takes:
        odd = sorted(spec.keys() - takes) or sorted(takes - spec.keys())
        verb = "holds" if spec.keys() - takes else "lacks"
        return (
            f"optimizer_spec {verb} {', '.join(odd)}; {kind.name!r} takes exactly "
            f"{', '.join(sorted(takes))}"
        )
    try:
        build(spec)
    except (TypeError, ValueError) as err:  # a path's own check (K-FAC's kind, ...)
        return f"optimizer_spec: {err}"
    return None


def build(spec: dict[str, Any]) -> tuple[optax.GradientTransformation, Any]:
    """`(transformation, path)` of a spec that passes `problem`: the optax transformation
    and the gradient path it brings (`None`: the run's `--grad`)."""
    kind = OPTIMIZERS[spec["name"]]
    transform = kind.transform(spec["learning_rate"], **{k: spec[k] for k in kind.hyper})
    path = None if kind.path is None else kind.path(**{k: spec[k] for k in kind.path_hyper})
    return transform, path
