"""The parity grid: activations x losses x depths on random data, `manual_grad` against
`jax.grad`. One case table, shared by `jaxbp check` and the test suite."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import ACTIVATIONS, Activation, get_activation
from jaxbp._config import Config, check_norm
from jaxbp._losses import Loss, get_loss, get_output_activation
from jaxbp._parity import check_parity
from jaxbp._tasks import CLASSIFICATION

LOSS_OUTPUTS = (
    ("mse", "identity"),
    ("mse", "sigmoid"),
    ("mse", "tanh"),
    ("mse", "softmax"),
    ("binary_cross_entropy", "sigmoid"),
    ("cross_entropy", "softmax"),
    ("huber", "identity"),
    ("huber", "tanh"),
)
"""Every built-in loss with the kinds of output it takes: canonical links and the general
product."""


def random_problem(
    seed: int,
    sizes: list[int],
    batch: int,
    loss: str | Loss,
    dtype: Any,
    *,
    x_scale: float = 1.0,
    norm: str | None = None,
) -> tuple[list[dict[str, jax.Array]], jax.Array, jax.Array]:
    """Random `(params, x, y)` from numpy's generator seeded with `seed`: Glorot-normal
    weights, small random biases (so the bias path is exercised), normal inputs of std
    `x_scale`, and targets that suit the loss's task (labels for classification,
    U[0, 1] otherwise). With `norm` ("layer" or "batch"), a normalisation's `{"gain",
    "bias"}` follows each hidden dense layer (as `init_mlp(..., norm=...)` lays them out),
    drawn near (1, 0) so that both paths are exercised; the rest of the problem is as
    without it.

    numpy rather than `jax.random`: the latter compiles its samplers once per new shape,
    which would dominate a grid of small problems.
    """
    rng = np.random.default_rng(seed)
    params = [
        {
            "W": jnp.asarray(rng.normal(0, np.sqrt(2 / (n_in + n_out)), (n_in, n_out)), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=n_out), dtype),
        }
        for n_in, n_out in itertools.pairwise(sizes)
    ]
    x = jnp.asarray(x_scale * rng.normal(size=(batch, sizes[0])), dtype)
    labels = rng.integers(0, sizes[-1], batch)
    y_unit = rng.uniform(size=(batch, sizes[-1]))
    if get_loss(loss).task is CLASSIFICATION:
        y = jnp.asarray(labels, jnp.int32)
    else:
        y = jnp.asarray(y_unit, dtype)
    if check_norm(norm) is not None:
        params = _with_norms(params, rng, dtype)
    return params, x, y


def parity_grid(
    activations: Sequence[str | Activation] | None = None,
    losses: Sequence[tuple[str | Loss, Any]] | None = None,
    *,
    dtypes: Sequence[str] = ("float32", "float64"),
    depths: Sequence[int] = (1, 2, 3, 4, 5),
    norms: Sequence[str | None] = (None,),
    dropouts: Sequence[float] = (0.0,),
    batch: int = 7,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """`manual_grad` against `jax.grad` over a grid; yields one record per case.

    **Arguments:**

    - `activations`: hidden activations, names or `jaxbp.Activation` records (default:
      every built-in).
    - `losses`: `(loss, output_activation)` pairs, a loss a name or a `jaxbp.Loss`, the
      output a name, a record or `None` for the loss's link (default: every built-in
      loss with every kind of output it takes, `LOSS_OUTPUTS`).
    - `norms`, `dropouts`: the normalisations (`None`, "layer", "batch") and dropout
      rates of `jaxbp.Config` to cross with the rest (dropout masks from a fixed key).
      A network whose layers make a gradient leaf exactly 0 (the bias before a batch
      norm) is judged with `atol="auto"`, on the scale of the gradient.
    - `dtypes`, `depths`, `batch`, `seed`: the problems, random (`random_problem`) with
      widths `6-9-...-9-4`. float64 needs `jax_enable_x64`.

    Each record holds `dtype`, `activation`, `loss`, `output_activation` (names), `depth`,
    `norm`, `dropout`, `max_rel_err`, `max_scaled_err` (on the verdict's scale, see
    `ParityReport.max_scaled_err`), `rtol` and `passed`. Depth 1 has no hidden layer, so
    it is skipped for a normalisation or dropout.
    """
    acts = [get_activation(a) for a in (ACTIVATIONS if activations is None else activations)]
    pairs = [
        (get_loss(loss), None if out is None else get_output_activation(out))
        for loss, out in (LOSS_OUTPUTS if losses is None else losses)
    ]
    problem = itertools.count(seed * 10_000)
    cases = itertools.product(dtypes, acts, pairs, norms, dropouts, depths)
    for dtype, act, (loss, output), norm, rate, depth in cases:
        if depth == 1 and (norm is not None or rate):
            continue  # no hidden layer: nothing to normalise or drop
        cfg = Config(act, loss, output, norm=norm, dropout=rate)
        sizes = [6] + [9] * (depth - 1) + [4]
        params, x, y = random_problem(
            next(problem), sizes, batch, loss, jnp.dtype(dtype), norm=norm
        )
        body = cfg.body(len(params))
        exact_zeros = any(getattr(layer, "zeroes_preceding_bias", False) for layer in body)
        report = check_parity(params, x, y, cfg, atol="auto" if exact_zeros else 0.0)
        yield {
            "dtype": dtype,
            "activation": act.name,
            "loss": loss.name,
            "output_activation": cfg.output.name,
            "depth": depth,
            "norm": norm,
            "dropout": rate,
            "max_rel_err": report.max_rel_err,
            "max_scaled_err": report.max_scaled_err,
            "rtol": report.rtol,
            "passed": report.passed,
        }


def _with_norms(params: list[Any], rng: Any, dtype: Any) -> list[Any]:
    """The dense `params` with a normalisation's `{gain, bias}` after each hidden one,
    drawn near (1, 0) so that the gain and bias paths are exercised."""
    out = []
    for i, layer in enumerate(params):
        out.append(layer)
        if i < len(params) - 1:
            n = layer["b"].shape[0]
            out.append(
                {
                    "gain": jnp.asarray(1 + 0.2 * rng.normal(size=n), dtype),
                    "bias": jnp.asarray(0.1 * rng.normal(size=n), dtype),
                }
            )
    return out
