"""The schema of every record a run folder holds, in one place, checked on read and on
write: an epoch's line of `metrics.jsonl`, `summary.json`, a run checkpoint's meta (and
the run's settings in it), and the record of a set-aside.

Each field has a type and a range (`Rule`); a record may hold fields the schema does not
name (a loop of one's own logs what it likes), and those it names must keep their rule.
`problem(record, SCHEMA)` gives the first field that breaks its rule, in words (`seconds
is null, not a finite number >= 0`), or `None`; the callers (`RunFolder`, `read_metrics`,
`load_run`) turn it into the error that names the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "CONFIG",
    "LOADABLE",
    "META",
    "METRICS_LINE",
    "OPTIMIZER_SPEC",
    "PARITY",
    "SET_ASIDE",
    "SUMMARY",
    "Rule",
    "problem",
    "shown",
]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A field's type and range: `test(value)` says whether a value keeps it, `words`
    says what it must be ("a finite number >= 0")."""

    words: str
    test: Callable[[Any], bool]
    required: bool = False
    fields: dict[str, Rule] | None = None  # an object's own schema


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """`value` as the float64 it becomes: an integer past float64's range is inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = True,
    nan: bool = False,
) -> Rule:
    """A JSON number (not a boolean) in `[low, high]` (`open_*`: the end excluded);
    `finite=False` admits inf within the range, `nan=True` NaN (a figure that could not be
    measured)."""
    if finite:
        kind = "a finite number"
    elif nan:
        kind = "a number (inf or NaN included)"
    else:
        kind = "a number (inf included)"
    ends = []
    if low > -math.inf:
        ends.append(f"{'>' if open_low else '>='} {low:g}")
    if high < math.inf:
        ends.append(f"{'<' if open_high else '<='} {high:g}")
    words = kind + (" " + " and ".join(ends) if ends else "")

    def test(value: Any) -> bool:
        if not _real(value):
            return False
        value = _float(value)
        if math.isnan(value):
            return nan
        if finite and not math.isfinite(value):
            return False
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        return above and below

    return Rule(words, test)


def integer(low: int, high: int | None = None) -> Rule:
    """A JSON integer (not a boolean, not 2.0) in `[low, high]`."""
    words = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    if low == 1 and high is None:
        words = "a positive integer"
    return Rule(
        words,
        lambda v: (
            isinstance(v, int)
            and not isinstance(v, bool)
            and v >= low
            and (high is None or v <= high)
        ),
    )


TEXT = Rule("text", lambda v: isinstance(v, str))
FLAG = Rule("true or false", lambda v: isinstance(v, bool))


def obj(fields: dict[str, Rule] | None = None) -> Rule:
    """A JSON object; with `fields`, each of them keeps its own rule."""
    return Rule("an object", lambda v: isinstance(v, dict), fields=fields)


def list_of(item: Rule) -> Rule:
    return Rule(
        f"a list, each item {item.words}", lambda v: isinstance(v, list) and all(map(item.test, v))
    )


def nullable(rule: Rule) -> Rule:
    return dataclasses.replace(
        rule, words=f"null or {rule.words}", test=lambda v: v is None or rule.test(v)
    )


def required(rule: Rule) -> Rule:
    return dataclasses.replace(rule, required=True)


UNIT = number(0, 1)
NONNEGATIVE = number(0)
FIGURE = number(0, finite=False, nan=True)
"""A parity error: >= 0; inf where the reference is 0 and the other is not, NaN where
the gradients themselves are not finite."""

SCORES: dict[str, Rule] = {
    "train_loss": number(),
    "test_loss": number(),
    "train_accuracy": UNIT,
    "test_accuracy": UNIT,
    "train_r2": number(high=1),
    "test_r2": number(high=1),
}
"""A run's scores on each split, as an epoch's line and the summary give them."""

METRICS_LINE: dict[str, Rule] = {
    "epoch": required(integer(1)),
    "seconds": NONNEGATIVE,
    "samples_per_s": NONNEGATIVE,
    **SCORES,
    "clipped": UNIT,
    "batch": NONNEGATIVE,
    "epsilon": number(0, finite=False),
    "grad_norm": NONNEGATIVE,
    "delta_norm": list_of(NONNEGATIVE),
    "grad_W_norm": list_of(NONNEGATIVE),
    "saturated": list_of(UNIT),
}
"""One epoch's line of `metrics.jsonl` (the epoch is also its line number)."""

OPTIMIZER_SPEC: dict[str, Rule] = {
    "name": required(TEXT),
    "learning_rate": required(number(0, open_low=True)),
    "momentum": nullable(number(0)),
    "nesterov": FLAG,
    "b1": number(0, 1, open_high=True),
    "b2": number(0, 1, open_high=True),
    "eps": NONNEGATIVE,
    "eps_root": NONNEGATIVE,
    "damping": number(0, open_low=True),
    "every": integer(1),
    "decay": number(0, 1, open_high=True),
    "kind": TEXT,
}
"""The optimizer a run trained with (`jaxbp.runs.optimizers`): its name, learning rate
and every other hyperparameter it used (those of `runs.OPTIMIZERS[name]`)."""

CONFIG: dict[str, Rule] = {
    "dataset": nullable(TEXT),
    "data": nullable(TEXT),
    "target": nullable(TEXT),
    "labels": nullable(TEXT),
    "hidden": list_of(integer(1)),
    "activation": TEXT,
    "init": TEXT,
    "loss": TEXT,
    "optimizer": TEXT,
    "lr": number(0, open_low=True),
    "optimizer_spec": obj(OPTIMIZER_SPEC),
    "batch_size": integer(1),
    "seed": integer(0, 2**32 - 1),
    "grad": TEXT,
    "test_fraction": number(0, 1, open_low=True, open_high=True),
    "norm": nullable(TEXT),
    "dropout": number(0, 1, open_high=True),
    "dp_clip": nullable(number(0, open_low=True)),
    "dp_noise": nullable(number(0)),
    "dp_delta": nullable(number(0, 1, open_low=True, open_high=True)),
    "dp_sampling": nullable(TEXT),
    "saturation": nullable(number(0, 1, open_low=True, open_high=True)),
    "data_sha256": nullable(TEXT),
}
"""A run's settings, as `jaxbp train` stores them (`Run.config`): those a loop of one's
own saves must keep the same rules."""

LOADABLE: dict[str, Rule] = {
    **CONFIG,
    **{name: required(CONFIG[name]) for name in ("hidden", "activation", "loss", "seed")},
}
"""The settings `load_run` rebuilds a run from: `CONFIG`, with the network's and the
split's (a loop of one's own must save these, as `jaxbp train` does)."""

PARITY: dict[str, Rule] = {
    "max_rel_err": required(FIGURE),
    "atol": required(NONNEGATIVE),
    "max_scaled_err": required(FIGURE),
    "passed": required(FLAG),
    "grad_norm": NONNEGATIVE,
}
"""`manual_grad` against `jax.grad` at initialisation, as a run's checkpoints carry it
(so that a resumed run reports the figure of the uninterrupted one, and judges its trained
network on the scale of `grad_norm`, the gradient's norm there)."""

META: dict[str, Rule] = {
    "epoch": required(integer(1)),
    "config": required(obj(CONFIG)),
    "parity": obj(PARITY),
}
"""A run checkpoint's meta: the epochs it has seen, the run's settings, the parity
check taken at initialisation."""

PRIVACY: dict[str, Rule] = {
    "epsilon": number(0, finite=False),
    "epsilon_per_epoch": list_of(number(0, finite=False)),
    "delta": number(0, 1, open_low=True, open_high=True),
    "accountant": TEXT,
    "l2_clip": number(0, open_low=True),
    "noise_multiplier": NONNEGATIVE,
    "sample_rate": number(0, 1, open_low=True),
    "steps": integer(1),
    "batch_sampling": TEXT,
    "sampling": TEXT,
    "clipped_fraction": UNIT,
    "clipped_fraction_last_epoch": UNIT,
}

SUMMARY: dict[str, Rule] = {
    "dataset": TEXT,
    "grad": TEXT,
    "epochs": required(integer(1)),
    "seconds": NONNEGATIVE,
    **SCORES,
    "parity_max_rel_err": FIGURE,
    "parity_atol": NONNEGATIVE,
    "parity_max_scaled_err": FIGURE,
    "parity_dtype": TEXT,
    "devices": nullable(integer(1)),
    "norm": nullable(TEXT),
    "dropout": number(0, 1, open_high=True),
    "dp": nullable(obj(PRIVACY)),
    "config": obj(CONFIG),
}
"""`summary.json`, a finished run's last word."""

SET_ASIDE: dict[str, Rule] = {"epoch": required(nullable(integer(1)))}
"""The record of a set-aside: the checkpoint epoch the folder held when it was made."""


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: JSON (null, true, NaN), at most `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem(record: Any, schema: dict[str, Rule], *, prefix: str = "") -> str | None:
    """The first field of `record` that breaks its rule in `schema`, in words (`seconds
    is null, not a finite number >= 0`; nested fields as `config.lr`), or `None`."""
    if not isinstance(record, dict):
        return f"{prefix.rstrip('.') or 'the record'} is {_kind(record)}, not an object"
    for name, rule in schema.items():
        field = f"{prefix}{name}"
        if name not in record:
            if rule.required:
                return f"{field} is missing"
            continue
        value = record[name]
        if not rule.test(value):
            got = _kind(value) if rule.fields is not None or rule.words == "an object" else None
            return f"{field} is {got or shown(value)}, not {rule.words}"
        if rule.fields is not None and isinstance(value, dict):
            found = problem(value, rule.fields, prefix=f"{field}.")
            if found is not None:
                return found
    return None


def _kind(value: Any) -> str:
    """A JSON value's kind, for a field that must be an object ("a list", "null")."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", str: "text", list: "a list", dict: "an object"}
    return kinds.get(type(value), "a number")
