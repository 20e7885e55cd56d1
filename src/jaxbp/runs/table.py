"""A run's metrics as columns, one value an epoch: what a table, a plot or pandas wants
(`Run.columns`, `Run.frame`). pandas is optional: `frame` imports it when called."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxbp.runs.schema import _float  # an integer past float64's range: inf

__all__ = ["columns", "frame"]

INT64 = (-(2**63), 2**63 - 1)


def columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The metrics `rows` (one dict an epoch, as `metrics.jsonl` holds them and
    `Run.metrics` gives them) as columns of `len(rows)` values each, in the order their
    names first appear.

    - A number becomes a float64 column, NaN where an epoch lacks it (a resumed run whose
      first epochs predate a metric); an int64 column where every epoch holds an integer
      (`epoch`).
    - A list (a per-layer metric: `delta_norm`, `grad_W_norm`, `saturated`) becomes one
      column per item, `NAME_1 ... NAME_L`, numbered from 1 as the layers of eq. 1.4 are:
      `delta_norm_l` is `||delta_l||` of layer `l = 1 ... L`, `grad_W_norm_l` the norm of
      `dL/dW_l`, `saturated_l` the fraction saturated in hidden layer `l = 1 ... L - 1`.
      An epoch whose list is shorter has NaN in the rest.
    - Anything else (text, true or false, an object) becomes an object column, `None`
      where an epoch lacks it.

    `ValueError` if a list's column would take the name of another metric (a list
    `delta_norm` and a number `delta_norm_1`).
    """
    cells: dict[str, dict[int, Any]] = {}
    source: dict[str, str] = {}  # the metric each column comes from
    for i, row in enumerate(rows):
        for name, value in row.items():
            if isinstance(value, (list, tuple)):
                items = [(f"{name}_{layer}", v) for layer, v in enumerate(value, start=1)]
            else:
                items = [(name, value)]
            for column, v in items:
                if source.setdefault(column, name) != name:
                    raise ValueError(
                        f"metrics: column {column!r} would hold both metric {source[column]!r} "
                        f"and an item of the list {name!r} (epoch row {i}); rename one of "
                        "them in the log."
                    )
                cells.setdefault(column, {})[i] = v
    return {column: _column(values, len(rows)) for column, values in cells.items()}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _column(values: dict[int, Any], n: int) -> np.ndarray:
    """One column of `n` cells from the `values` present (by row): see `columns`."""
    present = list(values.values())
    ints = all(isinstance(v, int) and _is_real(v) and INT64[0] <= v <= INT64[1] for v in present)
    if ints and len(values) == n:
        return np.array(present, np.int64)
    if all(map(_is_real, present)):
        out = np.full(n, np.nan)
        for i, v in values.items():
            out[i] = _float(v)
        return out
    objects = np.full(n, None, object)
    for i, v in values.items():
        objects[i] = v
    return objects


def frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """`columns(rows)` as a `pandas.DataFrame`, one row an epoch. pandas is imported
    here, and an `ImportError` says how to install it if it is missing."""
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "a run's metrics as a DataFrame (Run.frame, jaxbp.runs.frame) need pandas, which "
            "is not installed: pip install 'jaxbp[frame]' (or pip install pandas); "
            "Run.columns() gives the same columns as numpy arrays without it."
        ) from None
    return pandas.DataFrame(columns(rows))
