"""A whole training step, or a whole epoch, as one Pallas kernel (`grad="fused"`).

The forward flow (eq. 1.1), the loss's output delta, the backward flow (eq. 1.4), the
weight gradients (eq. 1.3) and an optax.sgd update run in ONE `pallas_call`, so the
weights, `z_l`, `a_l` and `delta_l` never leave the chip between the matrix products.
The body is `jaxbp._fused_kernel.train_step`, written on the library's activation and
loss records, so any supported activation and loss fuses without a line of its own.

On a GPU the kernel is lowered by Pallas's Triton backend (`pltriton.CompilerParams`),
as one program (grid `(1,)`, one streaming multiprocessor). Triton needs every array a
kernel loads or stores to have a power-of-two size, and every matrix product at least
16 on each side, so with `pad=True` (the default on a GPU) the wrapper pads every width
and the batch to `max(16, next power of two)`; padding is masked so it never reaches a
gradient, and sliced off afterwards. On any other backend the same kernel runs in
Pallas's interpret mode, which is how the tests check it on the CPU.

One program holds the network and one batch's flows, so one multiprocessor's shared
memory bounds what fits (`Fused.shared_memory`, checked at trace time; `Explained` for
what the model does not cover). Measured on an H200 (experiments/results/gpu_fused.md):
the fused epoch is 1.3-1.4x faster than `jax.grad`'s scanned step at widths 32-64 and
slower at 128, spilling registers.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._config import Config, Keywords, as_config, check_params
from jaxbp._fused_kernel import Layers, Rule, epoch_kernel, launch, step_kernel
from jaxbp._validate import (
    check_epoch_data,
    check_key,
    check_output_units,
    check_x,
    is_int,
    is_real,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array
MAX_WIDTH = 256
"""Widest layer (input and output included) the kernel takes: 128 is the design point,
256 the stretch; the whole network, its trace and one batch's flows live on one chip."""
MAX_BATCH = 512
DTYPES = ("float32", "float64")
DEFAULT_WARPS = 8
"""Triton warps for the one program when `num_warps` is None. Measured on an H200 (64-128-
128-10, batch 128, one run, experiments/results/gpu_fused_run1.md): the fused epoch takes
0.072 ms a step at 8 warps, 0.122 at 4 (Triton's default), 0.099 at 16 and 1.149 at 2.
One step a call was dispatch-bound there (0.89 ms at 4 warps, 1.14 at 8, a noisy harness).
At 8 warps the kernel still runs at 255 registers a thread and spills
(experiments/results/gpu_fused_ncu.txt)."""
_MIN_BLOCK = 16  # Triton's tl.dot needs M, N, K >= 16
SHARED_MEMORY = {"7.0": 98_304, "7.5": 65_536, "8.0": 166_912, "8.6": 101_376, "8.7": 166_912}
SHARED_MEMORY |= {"8.9": 101_376, "9.0": 232_448, "10.0": 232_448, "12.0": 101_376}
"""Shared memory one thread block may use, by CUDA compute capability (NVIDIA's CUDA C++
Programming Guide; 232,448 bytes on the H200 is what Triton reported there). An unknown
GPU is taken to have the largest, so the check below never refuses what might fit."""


@dataclasses.dataclass(frozen=True)
class Fused:
    """The checked configuration of a fused kernel (see `check_fused_supported`): the
    network's `jaxbp.Config`, its widths, the optimizer's constants and how to compile."""

    config: Config
    sizes: tuple[int, ...]
    learning_rate: float
    momentum: float | None
    interpret: bool
    pad: bool
    precision: Any
    num_warps: int | None

    def rule(self, batch: int) -> Rule:
        cfg = self.config
        scale = 1 / batch if cfg.reduction == "mean" else 1
        return Rule(
            cfg.activation,
            cfg.output,
            cfg.loss,
            scale,
            self.learning_rate,
            self.momentum,
            self.precision,
        )

    @property
    def warps(self) -> int:
        return DEFAULT_WARPS if self.num_warps is None else self.num_warps

    def width(self, n: int) -> int:
        """`n` padded for the GPU lowering: a power of two, at least 16 (unchanged without pad)."""
        return max(_MIN_BLOCK, 1 << (n - 1).bit_length()) if self.pad else n

    def modelled(self, dtype: str) -> bool:
        """Whether `shared_memory` models this kernel: float32 products on the tensor cores
        (default precision) at `DEFAULT_WARPS`, where it was measured. float64 and
        precision="highest" take Triton's other matrix-product path, which asks for other
        amounts (on the H200, 344,064 bytes in float64 where the model gives 393,216)."""
        default = self.precision in (None, "default", jax.lax.Precision.DEFAULT)
        return dtype == "float32" and default and self.warps == DEFAULT_WARPS

    def shared_memory(self, batch: int, itemsize: int) -> int:
        """Bytes of shared memory Triton asks for to compile the kernel for `batch` samples.

        A model: for each layer `l > 1` the operands of eqs. 1.3 and 1.4's products,
        `a_{l-1}: (n_p, n_{l-1})`, `delta_l: (n_p, n_l)` and `W_l: (n_{l-1}, n_l)` (padded),
        are staged at once; the first layer stages `x` and `delta_1` (no backward product
        through `W_1`), a lower bound; the layer that needs most sets the need. On an H200
        at 8 warps it gives, to the byte, the three requests Triton refused at default
        precision and the one Nsight Compute read on a launch
        (experiments/results/gpu_fused.md, gpu_fused_ncu.txt), each set by a layer `l > 1`.
        """
        rows, wide = self.width(batch), [self.width(n) for n in self.sizes]
        need = [
            rows * (a + b) + (l > 0) * a * b for l, (a, b) in enumerate(itertools.pairwise(wide))
        ]
        return itemsize * max(need)


def _real(name: str, value: Any, rule: str, fix: str) -> float:
    if not is_real(value):
        raise TypeError(
            f"{name} must be a Python number ({rule}); got {type(value).__name__} {value!r}. {fix}"
        )
    return float(value)


def _check_plain(cfg: Config) -> None:
    """Refuse a configuration that is not the plain MLP of eq. 1.1 (the kernel's body)."""
    got = [] if cfg.layers is None else [f"layers={[_name(l) for l in cfg.layers]}"]
    got += [] if cfg.norm is None else [f"norm={cfg.norm!r}"]
    got += [f"dropout={cfg.dropout!r}"] if cfg.dropout else []
    if got:
        raise ValueError(
            f"the fused kernel runs the plain MLP of eq. 1.1 (dense layers, one hidden "
            f"activation), so layers must be None, norm None and dropout 0; got "
            f"{', '.join(got)}. Use grad='manual' for other layer bodies, normalisation or "
            f"dropout."
        )


def _name(layer: Any) -> str:
    return str(getattr(layer, "name", type(layer).__name__))


def _check_sgd(learning_rate: Any, momentum: Any, fix: str) -> tuple[float, float | None]:
    """optax.sgd's constants as the kernel takes them: a rate > 0, momentum in [0, 1) or None."""
    lr = _real("learning_rate", learning_rate, "a constant > 0", fix)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(
            f"learning_rate must be finite and > 0; got {learning_rate!r}. Pass e.g. 0.01."
        )
    if momentum is None:
        return lr, None
    mu = _real("momentum", momentum, "in [0, 1), or None", "Pass e.g. momentum=0.9.")
    if not 0 <= mu < 1:
        raise ValueError(
            f"momentum must lie in [0, 1) (optax.sgd's trace decay), or be None for plain "
            f"SGD; got {momentum!r}."
        )
    return lr, mu


_CONFIG_KEYWORDS = tuple(k for k in Keywords.__annotations__ if k != "key")
_OPTIONS = ("learning_rate", "momentum", "interpret", "pad", "precision", "num_warps")


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    rule = "sizes must list at least two integer widths [n_0, ..., n_L], e.g. [64, 128, 10]"
    if isinstance(sizes, np.ndarray) and sizes.ndim == 1:
        sizes = sizes.tolist()
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"{rule}; got {type(sizes).__name__} {sizes!r}.")
    if len(sizes) < 2 or not all(is_int(n) for n in sizes):
        raise ValueError(f"{rule}; got {list(sizes)!r}.")
    return tuple(int(n) for n in sizes)


def _check_precision(precision: Any) -> None:
    """Refuse a `precision` that `lax.dot_general` would refuse inside the first step."""
    zeros = jax.ShapeDtypeStruct((1, 1), jnp.float32)
    try:
        jax.eval_shape(functools.partial(jax.lax.dot, precision=precision), zeros, zeros)
    except (TypeError, ValueError):
        raise ValueError(
            f"precision must be None, a jax.lax.Precision, one of its names ('default', "
            f"'high', 'highest') or a pair of them, as jax.lax.dot takes; got {precision!r}."
        ) from None


def check_fused_supported(
    sizes: Sequence[int],
    config: Config | None = None,
    *,
    learning_rate: float,
    momentum: float | None = None,
    interpret: bool | None = None,
    pad: bool | None = None,
    precision: Any = None,
    num_warps: int | None = None,
    **keywords: Unpack[Keywords],
) -> Fused:
    """Check that the fused kernel supports this network and optimizer; return its `Fused`.

    Raises `ValueError`/`TypeError` naming the argument, the rule, the value and the fix.
    The arguments are those of `fused_step_fn`. Compiling for a GPU, it also lowers a tiny
    copy of the kernel through Triton, so an activation or loss whose primitives Triton
    lacks (the exact GELU's `erfc`) is refused here rather than inside the first step.
    """
    unknown = sorted(set(keywords) - set(_CONFIG_KEYWORDS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; the fused kernel takes sizes, config "
            f"or its keywords {list(_CONFIG_KEYWORDS)}, and the options {list(_OPTIONS)}."
        )
    cfg = as_config(config, keywords)
    _check_plain(cfg)
    sizes = list(_check_sizes(sizes))
    for i, n in enumerate(sizes):
        if not 1 <= n <= MAX_WIDTH:
            raise ValueError(
                f"the fused kernel holds the whole network on one chip, so every width must lie "
                f"in [1, {MAX_WIDTH}]; sizes[{i}] is {n} in {sizes!r}. Use grad='manual' for "
                f"wider layers."
            )
    schedule_fix = "The fused kernel takes a constant rate; use grad='manual' for schedules."
    lr, momentum = _check_sgd(learning_rate, momentum, schedule_fix)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    elif not isinstance(interpret, bool):
        raise TypeError(f"interpret must be None, True or False; got {interpret!r}.")
    elif not interpret and jax.default_backend() != "gpu":
        raise ValueError(
            f"interpret=False compiles the kernel with Triton, which needs a GPU; the default "
            f"backend here is {jax.default_backend()!r}. Pass interpret=None (the default) or True."
        )
    if pad is not None and not isinstance(pad, bool):
        raise TypeError(
            f"pad must be None (pad on a GPU only), True or False; got {pad!r}. Pass pad=True "
            f"to pad every width and the batch to a power of two >= 16."
        )
    _check_precision(precision)
    if num_warps is not None and (not is_int(num_warps) or num_warps not in (1, 2, 4, 8, 16)):
        raise ValueError(f"num_warps must be None or one of 1, 2, 4, 8, 16; got {num_warps!r}.")
    check_output_units(cfg.output, sizes[-1])
    fused = Fused(
        cfg,
        tuple(sizes),
        lr,
        momentum,
        interpret,
        (not interpret) if pad is None else pad,
        precision,
        None if num_warps is None else int(num_warps),
    )
    if not interpret:
        probe_gpu_lowering(fused)
    return fused


def probe_gpu_lowering(fused: Fused) -> None:
    """Lower a tiny 16-16-16 copy of `config`'s kernel for CUDA through Triton, or raise
    ValueError naming what Triton cannot lower. Runs on any machine (lowering needs no GPU)."""
    tiny = dataclasses.replace(fused, sizes=(16, 16, 16), interpret=False, pad=True)
    zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
    params = [{"W": zeros((16, 16)), "b": zeros(16)} for _ in range(2)]
    trace = None if fused.momentum is None else params
    y = zeros((16, 16))  # probability rows suit every loss
    step = functools.partial(_step, tiny)
    try:
        jax.jit(step).trace(params, trace, zeros((16, 16)), y).lower(lowering_platforms=("cuda",))
    except NotImplementedError as error:
        cfg = fused.config
        raise ValueError(
            f"the fused kernel cannot be compiled for the GPU with activation="
            f"{cfg.activation.name!r}, loss={cfg.loss.name!r}, output_activation="
            f"{cfg.output.name!r}: Pallas's Triton lowering reports {error} Use "
            f"grad='manual' on the GPU for this configuration (interpret mode works anywhere)."
        ) from None


PARAMS_RULE = (
    "the fused kernel trains the plain MLP of eq. 1.1, so params must be a non-empty list of "
    "{'W': (n_in, n_out), 'b': (n_out,)} dicts, one per dense layer"
)
PARAMS_FIX = "Build them with jaxbp.init_mlp(key, sizes) (no norm), or use grad='manual'."


def param_sizes(params: Any, config: Config) -> tuple[int, ...]:
    """The widths `(n_0, ..., n_L)` of plain-MLP `params`, else an error naming params."""
    if not isinstance(params, (list, tuple)) or not params:
        empty = "an empty " if isinstance(params, (list, tuple)) else ""
        raise TypeError(f"{PARAMS_RULE}; got {empty}{type(params).__name__}. {PARAMS_FIX}")
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            got = f"keys {sorted(layer)}" if isinstance(layer, dict) else type(layer).__name__
            raise TypeError(f"{PARAMS_RULE}; params[{i}] has {got}. {PARAMS_FIX}")
    check_params(params, config.body(len(params)))  # shapes chain, leaves floating
    return (np.shape(params[0]["W"])[0], *(np.shape(layer["W"])[1] for layer in params))


def _avals(tree: Any) -> Any:
    """`tree` with each leaf as `dtype[shape]`, for messages."""

    def aval(leaf: Any) -> str:
        dtype = getattr(leaf, "dtype", None)
        return f"{type(leaf).__name__ if dtype is None else dtype}{list(np.shape(leaf))}"

    return jax.tree.map(aval, tree)


def _check_call(fused: Fused, params: Any, trace: Any) -> str:
    """Check params and trace at trace time; return the dtype the kernel computes in."""
    sizes = param_sizes(params, fused.config)
    if sizes != fused.sizes:
        raise ValueError(
            f"params have layer widths {list(sizes)} but this fused kernel was built for "
            f"sizes={list(fused.sizes)}; build it with sizes={list(sizes)}."
        )
    dtypes = {jnp.result_type(leaf).name for leaf in jax.tree.leaves(params)}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise TypeError(
            f"the fused kernel computes in the parameters' dtype, which must be one of "
            f"{list(DTYPES)} for every leaf; got {sorted(dtypes)}. Cast them all, e.g. "
            f"jax.tree.map(lambda p: p.astype(jnp.float32), params)."
        )
    if fused.momentum is None and trace is not None:
        raise ValueError("trace must be None with momentum=None (plain SGD keeps no trace).")
    if fused.momentum is not None:
        want, got = _avals(params), None if trace is None else _avals(trace)
        if got != want:
            raise ValueError(
                f"trace must be the momentum buffer shaped like params, in their dtype, "
                f"{want}; got {got}. Start it at jax.tree.map(jnp.zeros_like, params)."
            )
    return dtypes.pop()


def _check_batch(fused: Fused, x: Array, batch: int, batch_axis: int, dtype: str) -> None:
    """Refuse, at trace time, a batch the kernel cannot hold: over `MAX_BATCH`, or, compiling
    for a GPU, one whose flows need more shared memory than the GPU has."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(
            f"the fused kernel holds one batch's flows on chip, so the batch must lie in "
            f"[1, {MAX_BATCH}]; x has shape {x.shape} (batch axis {batch_axis}). Use a "
            f"smaller batch_size."
        )
    if fused.interpret or not fused.modelled(dtype):
        return  # outside the model, a compile that does not fit is told by `Explained`
    itemsize, (capability, limit) = jnp.dtype(dtype).itemsize, _shared_memory_limit()
    need = fused.shared_memory(batch, itemsize)
    if need <= limit:
        return
    fits = [b for b in (2**k for k in range(4, 10)) if fused.shared_memory(b, itemsize) <= limit]
    fix = f"a batch of at most {fits[-1]} (batch_size), " if fits else ""
    raise ValueError(
        f"the fused kernel holds one batch's flows on chip: x has shape {x.shape} (batch axis "
        f"{batch_axis}), and sizes={list(fused.sizes)} with a batch of {batch} in {dtype} "
        f"need {need:,} bytes of shared memory (widths and batch padded to "
        f"{[fused.width(n) for n in fused.sizes]} and {fused.width(batch)}), more than the "
        f"{limit:,} this GPU offers (compute capability {capability}). Use {fix}narrower "
        f"layers, or grad='manual'."
    )


class Explained:
    """A jitted function of the fused path whose Triton compile failure for lack of shared
    memory (outside the model of `Fused.shared_memory`) ends in one ValueError naming the
    network and the fix. Everything else, `lower` and `trace` included, is the function's."""

    def __init__(self, fn: Callable[..., Any], fused: Fused | None = None) -> None:
        self._fn, self._fused = fn, fused
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._fn(*args, **kwargs)
        except jax.errors.JaxRuntimeError as error:
            found = re.search(
                r"Shared memory size limit exceeded: requested (\d+), available: (\d+)", str(error)
            )
            if found is None:
                raise
            need, limit = (int(v) for v in found.groups())
            what = "" if self._fused is None else f" for sizes={list(self._fused.sizes)}"
            raise ValueError(
                f"the fused kernel{what} does not fit on one GPU multiprocessor: Triton asks for "
                f"{need:,} bytes of shared memory and this GPU offers {limit:,}. Use a smaller "
                f"batch_size or narrower layers (float32 at default precision needs the "
                f"least), or grad='manual'."
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name in ("_fn", "_fused"):  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._fn, name)


def _shared_memory_limit() -> tuple[str, int]:
    """The default GPU's compute capability and its shared memory per block (`SHARED_MEMORY`)."""
    capability = str(getattr(jax.devices()[0], "compute_capability", "unknown"))
    return capability, SHARED_MEMORY.get(capability, max(SHARED_MEMORY.values()))


def _step(fused: Fused, params: Layers, trace: Any, x: Any, y: Any) -> tuple[Layers, Any, Array]:
    dtype = _check_call(fused, params, trace)
    x = check_x(x, fused.sizes[0])
    _check_batch(fused, x, x.shape[0], 0, dtype)
    x = x.astype(dtype)
    y = fused.config.loss.targets(y, x.shape[0], fused.sizes[-1], x.dtype)
    new_params, new_trace, values = launch(fused, step_kernel, params, trace, x, y)
    return new_params, new_trace, values[0]


def _epoch(fused: Fused, params: Layers, trace: Any, xs: Any, ys: Any) -> tuple[Layers, Any, Array]:
    dtype = _check_call(fused, params, trace)
    xs = jnp.asarray(xs)
    if xs.ndim != 3 or xs.shape[0] < 1:
        raise ValueError(
            f"xs must be the epoch's batches, (steps, batch, n_0) with steps >= 1; got shape "
            f"{xs.shape}. Stack pre-shuffled batches: x[idx] with idx of shape (steps, batch)."
        )
    steps, batch = xs.shape[:2]
    _check_batch(fused, xs, batch, 1, dtype)
    xs = check_x(xs.reshape(steps * batch, xs.shape[2]), fused.sizes[0]).astype(dtype)
    xs = xs.reshape(steps, batch, -1)
    ys = jnp.asarray(ys)
    if ys.shape[:2] != (steps, batch):
        raise ValueError(
            f"ys must hold one target batch per x batch, shape ({steps}, {batch}, ...) to match "
            f"xs {xs.shape}; got shape {ys.shape}."
        )
    flat = ys.reshape(steps * batch, *ys.shape[2:])
    flat = fused.config.loss.targets(flat, steps * batch, fused.sizes[-1], xs.dtype)
    return launch(fused, epoch_kernel, params, trace, xs, flat.reshape(steps, batch, -1))


def fused_step_fn(
    sizes: Sequence[int], config: Config | None = None, **options: Any
) -> Callable[[Layers, Any, Array, Array], tuple[Layers, Any, Array]]:
    """One SGD training step as one Pallas kernel:
    `step(params, trace, x, y) -> (params, trace, loss)`, jitted.

    **Arguments** (those of `check_fused_supported`):

    - `sizes`: the widths `[n_0, ..., n_L]`, each at most `MAX_WIDTH`.
    - `config`, or its keywords (`activation`, `loss`, `output_activation`, `reduction`):
      the network, as for `jaxbp.loss_fn`; `layers` must be None (the plain MLP).
    - `learning_rate`, `momentum`: optax.sgd's, as Python floats (`momentum=None`: plain
      SGD, `p - lr g`; else `t = g + momentum t`, `p - lr t`).
    - `interpret`: `None` compiles with Triton on a GPU and interprets elsewhere.
    - `pad`: pad widths and batch to powers of two >= 16, as Triton needs; default on a GPU.
    - `precision`: for every matrix product (`"highest"`: IEEE float32 on the GPU, not TF32).
    - `num_warps`: Triton's warps for the one program (default `DEFAULT_WARPS`, 8).

    **Call:** `params` as `jaxbp.init_mlp` returns (float32 or float64), `trace` the momentum
    buffer shaped like `params` (`None` without momentum), `x: (batch, n_0)` (cast to the
    parameters' dtype), `y` as for `jaxbp.loss_fn`, `batch <= MAX_BATCH` (on a GPU, also
    within its shared memory: refused at trace time, naming the largest batch that fits).
    `loss` is the loss on the batch before the update. Nothing is donated.
    """
    fused = check_fused_supported(sizes, config, **options)
    return Explained(jax.jit(functools.partial(_step, fused)), fused)


def fused_epoch_fn(
    sizes: Sequence[int], config: Config | None = None, **options: Any
) -> Callable[[Layers, Any, Array, Array], tuple[Layers, Any, Array]]:
    """A whole epoch as one Pallas kernel: `epoch(params, trace, xs, ys) -> (params, trace,
    losses)`, jitted.

    Takes the arguments of `fused_step_fn`. `xs: (steps, batch, n_0)` are the epoch's
    batches, already shuffled; `ys: (steps, batch, ...)` their targets. The kernel loops
    over the steps with the weights and trace kept on chip, and equals `steps` calls of
    the fused step; `losses: (steps,)` holds each step's loss before its update.
    """
    fused = check_fused_supported(sizes, config, **options)
    return Explained(jax.jit(functools.partial(_epoch, fused)), fused)


class FusedSGD(NamedTuple):
    """`optax.sgd(learning_rate, momentum)` whose constants the fused kernel can read.

    Use it as the optimizer of `make_train_step(..., grad="fused")` and
    `make_train_epoch(..., grad="fused")`; its `init` and `update` are optax.sgd's, so the
    same optimizer state also serves `grad="manual"` and `grad="autodiff"`.
    """

    learning_rate: float
    momentum: float | None = None

    def transformation(self) -> Any:
        import optax

        return optax.sgd(self.learning_rate, momentum=self.momentum)

    def init(self, params: Any) -> Any:
        return self.transformation().init(params)

    def update(self, updates: Any, state: Any, params: Any = None) -> Any:
        return self.transformation().update(updates, state, params)


def fused_sgd(learning_rate: float, momentum: float | None = None) -> FusedSGD:
    """The optimizer of the fused gradient path: SGD, with `momentum` or without (`None`)."""
    return FusedSGD(*_check_sgd(learning_rate, momentum, "Pass e.g. learning_rate=0.01."))


def _require_fused_sgd(optimizer: Any) -> None:
    if not isinstance(optimizer, FusedSGD):
        raise ValueError(
            "grad='fused' runs the SGD update inside the kernel, so its optimizer must be "
            "jaxbp.fused_sgd(learning_rate, momentum); got "
            f"{type(optimizer).__name__}. Use grad='manual' for other optimizers."
        )
    _check_sgd(optimizer.learning_rate, optimizer.momentum, "Build it with jaxbp.fused_sgd.")


def _fused_for(optimizer: FusedSGD, config: Config, params: Any, opt_state: Any) -> Fused:
    """The kernel for `params` (checked to be a plain MLP) and `opt_state` (checked to be
    `optimizer.init(params)`), at trace time."""
    fused = check_fused_supported(
        param_sizes(params, config),
        config,
        learning_rate=optimizer.learning_rate,
        momentum=optimizer.momentum,
    )
    want = jax.eval_shape(optimizer.init, params)
    got = _state_kind(opt_state)
    if got == _state_kind(want):
        if jax.tree.structure(opt_state) == jax.tree.structure(want) and (
            _avals(opt_state) == _avals(want)
        ):
            return fused
        leaves = jax.tree.leaves(_avals(opt_state)), jax.tree.leaves(_avals(want))
        got = f"{got} with leaves {leaves[0]}, not {leaves[1]}"
    trace = "" if optimizer.momentum is None else " with a momentum trace shaped like params"
    raise ValueError(
        f"opt_state must be optimizer.init(params) of this jaxbp.fused_sgd("
        f"{optimizer.learning_rate}, momentum={optimizer.momentum}): optax.sgd's "
        f"{_state_kind(want)}{trace}; got {got}. Build it with optimizer.init(params)."
    )


def _state_kind(state: Any) -> str:
    """An optimizer state by its parts' type names, e.g. `(TraceState, EmptyState)`."""
    plain = isinstance(state, tuple) and not hasattr(state, "_fields")
    names = ["None" if p is None else type(p).__name__ for p in (state if plain else (state,))]
    return f"({', '.join(names)})" if plain else names[0]


def _momentum_buffer(fused: Fused, opt_state: Any) -> Any:
    return None if fused.momentum is None else opt_state[0].trace


def _with_buffer(fused: Fused, opt_state: Any, trace: Any) -> Any:
    if fused.momentum is None:
        return opt_state
    return (opt_state[0]._replace(trace=trace), *opt_state[1:])


def fused_update(
    optimizer: Any, config: Config
) -> Callable[[Layers, Any, Array, Array], tuple[Layers, Any, dict[str, Array]]]:
    """The training update of `make_train_step(..., grad="fused")`: one kernel a step."""
    _require_fused_sgd(optimizer)
    _check_plain(config)

    def update(params: Layers, opt_state: Any, key: Any, x: Array, y: Array) -> Any:
        del key  # no random layers: _check_plain refuses them
        fused = _fused_for(optimizer, config, params, opt_state)
        params, trace, loss = _step(fused, params, _momentum_buffer(fused, opt_state), x, y)
        return params, _with_buffer(fused, opt_state, trace), {"loss": loss}

    return update


def fused_epoch(
    optimizer: Any, config: Config, batch_size: int, batches: Callable[[Array, int, int], Array]
) -> Callable[[Layers, Any, Array, Array, Array], Any]:
    """The epoch of `make_train_epoch(..., grad="fused")`: one kernel for all its steps,
    over the batches `batches(key, n, batch_size)` of the other gradient paths. Refuses
    what `jaxbp._train.scan_epoch` refuses, with its messages."""
    _require_fused_sgd(optimizer)
    _check_plain(config)

    def epoch(params: Layers, opt_state: Any, key: Array, x: Array, y: Array) -> Any:
        fused = _fused_for(optimizer, config, params, opt_state)
        check_key(key)
        x = check_x(x, fused.sizes[0])
        n = check_epoch_data(x, y, batch_size)
        idx = batches(key, n, batch_size)
        trace = _momentum_buffer(fused, opt_state)
        params, trace, losses = _epoch(fused, params, trace, x[idx], jnp.asarray(y)[idx])
        return params, _with_buffer(fused, opt_state, trace), {"loss": losses}

    return epoch
