"""The parity grid: activations x losses x depths on random data, `manual_grad` against
`jax.grad`. One case table, shared by `jaxbp check` and the test suite."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.activations import ACTIVATIONS, Activation, get_activation
from jaxbp._core.config import Config, check_dropout, check_norm
from jaxbp._core.losses import LOSSES, Loss, get_loss, get_output_activation
from jaxbp._core.tasks import CLASSIFICATION
from jaxbp._core.validate import check_float_dtype, check_int, check_real
from jaxbp._parity.report import DEFAULT_RTOL, check_parity

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
    sizes: Sequence[int],
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

    `seed` is an integer >= 0, `sizes` the layer widths `[n_0, ..., n_L]` (at least two,
    each >= 1), `batch` >= 1, `dtype` a floating dtype (float64 needs `jax_enable_x64`),
    `x_scale` a finite number.

    numpy rather than `jax.random`: the latter compiles its samplers once per new shape,
    which would dominate a grid of small problems.
    """
    seed = check_int("seed", seed, 0, "numpy's generator seed")
    sizes = _items(
        "sizes",
        sizes,
        "layer widths [n_0, ..., n_L], e.g. [6, 9, 4]",
        "a list of ints, e.g. [6, 9, 4]",
    )
    if len(sizes) < 2:
        raise ValueError(
            f"sizes must hold at least two layer widths (inputs and outputs); got {sizes!r}. "
            "Pass e.g. sizes=[6, 4] for one layer."
        )
    sizes = [check_int(f"sizes[{i}]", n, 1, "a layer width") for i, n in enumerate(sizes)]
    batch = check_int("batch", batch, 1, "samples per problem")
    dtype = check_float_dtype("dtype", dtype)
    x_scale = check_real("x_scale", x_scale, "the inputs' std", "Pass e.g. x_scale=1.0.")
    loss = get_loss(loss)
    norm = check_norm(norm)
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
    if loss.task is CLASSIFICATION:
        y = jnp.asarray(labels, jnp.int32)
    else:
        y = jnp.asarray(y_unit, dtype)
    if norm is not None:
        params = _with_norms(params, rng, dtype)
    return params, x, y


def parity_grid(
    activations: Sequence[str | Activation] | None = None,
    losses: Sequence[str | Loss | tuple[str | Loss, Any]] | None = None,
    *,
    dtypes: Sequence[str] | None = None,
    depths: Sequence[int] = (1, 2, 3, 4, 5),
    norms: Sequence[str | None] = (None,),
    dropouts: Sequence[float] = (0.0,),
    batch: int = 7,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """`manual_grad` against `jax.grad` over a grid; yields one record per case.

    **Arguments** (each axis a list, never a bare string or record: `activations=["tanh"]`):

    - `activations`: hidden activations, names or `jaxbp.Activation` records (default:
      every built-in).
    - `losses`: entries of two kinds, mixed freely (default: every built-in loss with
      every kind of output it takes, `LOSS_OUTPUTS`):
      - a `(loss, output_activation)` pair, the loss a name or a `jaxbp.Loss`, the output
        a name, a record or `None` for the loss's link;
      - a bare loss (name or record): that loss with every output `LOSS_OUTPUTS` lists for
        it (`"mse"`: identity, sigmoid, tanh, softmax), or with its link alone if it is not
        listed there (a loss of your own).
    - `norms`, `dropouts`: the normalisations (`None`, "layer", "batch") and dropout
      rates of `jaxbp.Config` to cross with the rest (dropout masks from a fixed key).
      A network whose layers make a gradient leaf exactly 0 (the bias before a batch
      norm) is judged with `atol="auto"`, on the scale of the gradient.
    - `dtypes`, `depths`, `batch`, `seed`: the problems, random (`random_problem`) with
      widths `6-9-...-9-4`. `dtypes` are names or dtypes among "float16", "bfloat16",
      "float32" and "float64" (those with a default tolerance, `DEFAULT_RTOL`); float64
      needs `jax_enable_x64` (refused without it, rather than run in float32). The default,
      `None`, is float32, and float64 too when x64 is on. `depths`
      are integers >= 1 (dense layers; 1 has no hidden layer), `batch` >= 1, `seed` >= 0.

    Every argument is checked, and each loss paired with its output, when `parity_grid`
    is called, before any case runs. Each record holds `dtype`, `activation`, `loss`,
    `output_activation` (names), `depth`, `norm`, `dropout`, `max_rel_err`,
    `max_scaled_err` (on the verdict's scale, see `ParityReport.max_scaled_err`), `rtol`
    and `passed`. Depth 1 has no hidden layer, so it is skipped for a normalisation or
    dropout (a grid left with no case at all is refused).
    """
    acts = [
        get_activation(a, argument=f"activations[{i}]")
        for i, a in enumerate(
            ACTIVATIONS.values()
            if activations is None
            else _items("activations", activations, "activation names or jaxbp.Activation records")
        )
    ]
    pairs = _loss_outputs(losses, acts[0])
    if dtypes is None:
        dtypes = ("float32", "float64") if jax.config.jax_enable_x64 else ("float32",)
    dtype_names = [
        _known_dtype(f"dtypes[{i}]", d).name
        for i, d in enumerate(_items("dtypes", dtypes, "dtype names, e.g. ('float32', 'float64')"))
    ]
    depths = [
        check_int(f"depths[{i}]", d, 1, "the number of dense layers; 1: no hidden layer")
        for i, d in enumerate(_items("depths", depths, "integers >= 1, e.g. (1, 2, 3)"))
    ]
    norms = [
        _prefixed(f"norms[{i}]", check_norm, n)
        for i, n in enumerate(_items("norms", norms, "None, 'layer' or 'batch'"))
    ]
    dropouts = [
        _prefixed(f"dropouts[{i}]", check_dropout, r)
        for i, r in enumerate(_items("dropouts", dropouts, "rates in [0, 1), e.g. (0.0, 0.2)"))
    ]
    batch = check_int("batch", batch, 1, "samples per problem")
    seed = check_int("seed", seed, 0, "the grid's first problem")
    cases = [
        case
        for case in itertools.product(dtype_names, acts, pairs, norms, dropouts, depths)
        if not (case[-1] == 1 and (case[3] is not None or case[4]))
    ]
    if not cases:
        raise ValueError(
            f"parity_grid has no case to run: depths={depths} has no hidden layer for "
            f"norms={norms} and dropouts={dropouts} to act on (depth 1 is skipped for a "
            "normalisation or dropout). Add a depth >= 2, e.g. depths=(2, 3)."
        )
    return _run_grid(cases, batch, seed)


def _run_grid(cases: list[tuple[Any, ...]], batch: int, seed: int) -> Iterator[dict[str, Any]]:
    # One problem number per case run (skipped depth-1 cases take none), as always.
    problem = itertools.count(seed * 10_000)
    for dtype, act, (loss, output), norm, rate, depth in cases:
        cfg = Config(act, loss, output, norm=norm, dropout=rate)
        sizes = [6] + [9] * (depth - 1) + [4]
        params, x, y = random_problem(
            next(problem), sizes, batch, loss, jnp.dtype(dtype), norm=norm
        )
        report = check_parity(params, x, y, cfg, atol=None, compiled=False)  # shared small programs
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


def _items(name: str, value: Any, what: str, example: str | None = None) -> list[Any]:
    """`value` as a non-empty list, refusing a bare string (iterated, it would be letters)
    and a single record or number. `example`: what to pass instead of a bare string
    (default: that string in a list)."""
    if isinstance(value, (str, bytes)):
        fix = example or f"{name}=[{value!r}]"
        raise TypeError(
            f"{name} must be a list of {what}, not a bare string ({value!r} would be read "
            f"letter by letter); got {value!r}. Pass {fix}."
        )
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        label = getattr(value, "name", None)
        got = f"one {type(value).__name__} " + (repr(label) if label else f"{value!r:.60}")
        raise TypeError(
            f"{name} must be a list of {what}; got {got}. "
            f"Pass a list, {name}=[...], one entry per case."
        )
    items = list(value)
    if not items:
        raise ValueError(
            f"{name} must not be empty (an empty axis makes an empty grid, which would pass "
            f"vacuously); got {value!r}. Leave {name} out for the default, or pass one or more."
        )
    return items


def _loss_outputs(losses: Any, act: Activation) -> list[tuple[Loss, Any]]:
    """The `(loss, output)` pairs of `losses` (see `parity_grid`), each checked by building
    its `Config`, so that a loss given an output it does not take is refused up front."""
    entries = (
        LOSS_OUTPUTS
        if losses is None
        else _items("losses", losses, "(loss, output_activation) pairs or loss names")
    )
    pairs: list[tuple[Loss, Any]] = []
    for i, entry in enumerate(entries):
        where = f"losses[{i}] = {entry!r}"
        if isinstance(entry, (str, Loss)):
            loss = _prefixed(where, get_loss, entry)
            listed = [out for name, out in LOSS_OUTPUTS if LOSSES.get(name) is loss]
            found = [(loss, get_output_activation(out)) for out in listed] or [(loss, None)]
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            loss, out = entry
            loss = _prefixed(where, get_loss, loss)
            output = None if out is None else _prefixed(where, get_output_activation, out)
            found = [(loss, output)]
        else:
            raise TypeError(
                f"losses entries must be (loss, output_activation) pairs or bare losses "
                f"(names or jaxbp.Loss records); got {where}. Pass e.g. "
                "losses=[('mse', 'identity'), 'cross_entropy']."
            )
        for loss, output in found:
            _prefixed(where, lambda loss=loss, output=output: Config(act, loss, output))
        pairs += found
    return pairs


def _prefixed(where: str, check: Any, *args: Any) -> Any:
    """`check(*args)`, its `TypeError`/`ValueError` prefixed with which entry it was."""
    try:
        return check(*args)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def _known_dtype(name: str, value: Any) -> np.dtype:
    """`value` as a floating dtype (`check_float_dtype`) among `DEFAULT_RTOL`'s."""
    dtype = check_float_dtype(name, value)
    if dtype.name not in DEFAULT_RTOL:
        raise ValueError(
            f"{name} must be one of {sorted(DEFAULT_RTOL)} (the dtypes with a default "
            f"tolerance, DEFAULT_RTOL); got {value!r}. Pass e.g. 'float32'."
        )
    return dtype


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
