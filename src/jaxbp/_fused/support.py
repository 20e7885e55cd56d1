"""What the fused kernel supports, checked; and its step and epoch launched.

A whole training step, or a whole epoch, as one Pallas kernel (`jaxbp.Fused()`).

The forward flow (eq. 1.1), the loss's output delta, the backward flow (eq. 1.4), the
weight gradients (eq. 1.3) and an optax.sgd update run in ONE `pallas_call`, so the
weights, `z_l`, `a_l` and `delta_l` never leave the chip between the matrix products.
The body is `jaxbp._fused.kernel.train_step`, written on the library's activation and
loss records, so any supported activation and loss fuses without a line of its own.

On a GPU the kernel is lowered by Pallas's Triton backend (`pltriton.CompilerParams`),
as one program (grid `(1,)`, one streaming multiprocessor). Triton needs every array a
kernel loads or stores to have a power-of-two size, and every matrix product at least
16 on each side, so with `pad=True` (the default on a GPU) the wrapper pads every width
and the batch to `max(16, next power of two)`; padding is masked so it never reaches a
gradient, and sliced off afterwards. On any other backend the same kernel runs in
Pallas's interpret mode, which is how the tests check it on the CPU.

One program holds the network and one batch's flows, so one multiprocessor's shared
memory bounds what fits (`Kernel.shared_memory`, checked at trace time; `Explained` for
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
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.config import KEYWORDS, Config, Keywords
from jaxbp._core.network import Network, as_config
from jaxbp._core.validate import (
    check_in_dtype,
    check_output_units,
    check_x,
    is_int,
    is_real,
)
from jaxbp._fused.kernel import Layers, Rule, epoch_kernel, launch, step_kernel

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
class Kernel:
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
    got = [] if cfg.layers is None else [f"layers={[layer.name for layer in cfg.layers]}"]
    got += [] if cfg.norm is None else [f"norm={cfg.norm!r}"]
    got += [f"dropout={cfg.dropout!r}"] if cfg.dropout else []
    if got:
        raise ValueError(
            f"the fused kernel runs the plain MLP of eq. 1.1 (dense layers, one hidden "
            f"activation), so layers must be None, norm None and dropout 0; got "
            f"{', '.join(got)}. Use grad='manual' for other layer bodies, normalisation or "
            f"dropout."
        )


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
) -> Kernel:
    """Check that the fused kernel supports this network and optimizer; return its `Kernel`.

    Raises `ValueError`/`TypeError` naming the argument, the rule, the value and the fix.
    The arguments are those of `fused_step_fn`. Compiling for a GPU, it also lowers a tiny
    copy of the kernel through Triton, so an activation or loss whose primitives Triton
    lacks (the exact GELU's `erfc`) is refused here rather than inside the first step.
    """
    unknown = sorted(set(keywords) - set(KEYWORDS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; the fused kernel takes sizes, config "
            f"or its keywords {list(KEYWORDS)}, and the options {list(_OPTIONS)}."
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
    kernel = Kernel(
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
        probe_gpu_lowering(kernel)
    return kernel


def probe_gpu_lowering(kernel: Kernel) -> None:
    """Lower a tiny 16-16-16 copy of `config`'s kernel for CUDA through Triton, or raise
    ValueError naming what Triton cannot lower. Runs on any machine (lowering needs no GPU)."""
    tiny = dataclasses.replace(kernel, sizes=(16, 16, 16), interpret=False, pad=True)
    zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
    params = [{"W": zeros((16, 16)), "b": zeros(16)} for _ in range(2)]
    trace = None if kernel.momentum is None else params
    y = zeros((16, 16))  # probability rows suit every loss
    step = functools.partial(_step, tiny)
    try:
        jax.jit(step).trace(params, trace, zeros((16, 16)), y).lower(lowering_platforms=("cuda",))
    except NotImplementedError as error:
        cfg = kernel.config
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


def param_keys(params: Any) -> None:
    """Refuse `params` that are not a plain MLP's list of `{"W", "b"}` dicts, naming the
    entry and the fix."""
    if not isinstance(params, (list, tuple)) or not params:
        empty = "an empty " if isinstance(params, (list, tuple)) else ""
        raise TypeError(f"{PARAMS_RULE}; got {empty}{type(params).__name__}. {PARAMS_FIX}")
    for i, layer in enumerate(params):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            got = f"keys {sorted(layer)}" if isinstance(layer, dict) else type(layer).__name__
            raise TypeError(f"{PARAMS_RULE}; params[{i}] has {got}. {PARAMS_FIX}")


def param_sizes(params: Any, config: Config) -> tuple[int, ...]:
    """The widths `(n_0, ..., n_L)` of plain-MLP `params`, else an error naming params."""
    param_keys(params)
    Network.of(params, config)  # shapes chain, leaves floating
    return (np.shape(params[0]["W"])[0], *(np.shape(layer["W"])[1] for layer in params))


def _avals(tree: Any) -> Any:
    """`tree` with each leaf as `dtype[shape]`, for messages."""

    def aval(leaf: Any) -> str:
        dtype = getattr(leaf, "dtype", None)
        return f"{type(leaf).__name__ if dtype is None else dtype}{list(np.shape(leaf))}"

    return jax.tree.map(aval, tree)


def _check_widths(kernel: Kernel, params: Any) -> None:
    """At trace time: `params` are a plain MLP's, of the widths the kernel was built for."""
    sizes = param_sizes(params, kernel.config)
    if sizes != kernel.sizes:
        raise ValueError(
            f"params have layer widths {list(sizes)} but this fused kernel was built for "
            f"sizes={list(kernel.sizes)}; build it with sizes={list(sizes)}."
        )


def _dtype(kernel: Kernel, params: Any, trace: Any) -> str:
    """The dtype the kernel computes in (`_params_dtype`), which must hold the rate."""
    dtype = _params_dtype(kernel, params, trace)
    fix = "Pass a learning rate the parameters' dtype can hold."
    check_in_dtype("learning_rate", kernel.learning_rate, dtype, fix)
    return dtype


def _params_dtype(kernel: Kernel, params: Any, trace: Any) -> str:
    """At trace time: the dtype the kernel computes in, the parameters' (one of `DTYPES`),
    with `trace` the momentum buffer shaped like them (or `None` without momentum)."""
    dtypes = {jnp.result_type(leaf).name for leaf in jax.tree.leaves(params)}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise TypeError(
            f"the fused kernel computes in the parameters' dtype, which must be one of "
            f"{list(DTYPES)} for every leaf; got {sorted(dtypes)}. Cast them all, e.g. "
            f"jax.tree.map(lambda p: p.astype(jnp.float32), params)."
        )
    if kernel.momentum is None and trace is not None:
        raise ValueError("trace must be None with momentum=None (plain SGD keeps no trace).")
    if kernel.momentum is not None:
        want, got = _avals(params), None if trace is None else _avals(trace)
        if got != want:
            raise ValueError(
                f"trace must be the momentum buffer shaped like params, in their dtype, "
                f"{want}; got {got}. Start it at jax.tree.map(jnp.zeros_like, params)."
            )
    return dtypes.pop()


def _check_batch(kernel: Kernel, x: Array, batch: int, batch_axis: int, dtype: str) -> None:
    """Refuse, at trace time, a batch the kernel cannot hold: over `MAX_BATCH`, or, compiling
    for a GPU, one whose flows need more shared memory than the GPU has."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(
            f"the fused kernel holds one batch's flows on chip, so the batch must lie in "
            f"[1, {MAX_BATCH}]; x has shape {x.shape} (batch axis {batch_axis}). Use a "
            f"smaller batch_size."
        )
    if kernel.interpret or not kernel.modelled(dtype):
        return  # outside the model, a compile that does not fit is told by `Explained`
    itemsize, (capability, limit) = jnp.dtype(dtype).itemsize, _shared_memory_limit()
    need = kernel.shared_memory(batch, itemsize)
    if need <= limit:
        return
    fits = [b for b in (2**k for k in range(4, 10)) if kernel.shared_memory(b, itemsize) <= limit]
    fix = f"a batch of at most {fits[-1]} (batch_size), " if fits else ""
    raise ValueError(
        f"the fused kernel holds one batch's flows on chip: x has shape {x.shape} (batch axis "
        f"{batch_axis}), and sizes={list(kernel.sizes)} with a batch of {batch} in {dtype} "
        f"need {need:,} bytes of shared memory (widths and batch padded to "
        f"{[kernel.width(n) for n in kernel.sizes]} and {kernel.width(batch)}), more than the "
        f"{limit:,} this GPU offers (compute capability {capability}). Use {fix}narrower "
        f"layers, or grad='manual'."
    )


class Explained:
    """A jitted function of the fused path whose Triton compile failure for lack of shared
    memory (outside the model of `Kernel.shared_memory`) ends in one ValueError naming the
    network and the fix. Everything else, `lower` and `trace` included, is the function's."""

    def __init__(self, fn: Callable[..., Any], kernel: Kernel | None = None) -> None:
        self._fn, self._kernel = fn, kernel
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
            what = "" if self._kernel is None else f" for sizes={list(self._kernel.sizes)}"
            raise ValueError(
                f"the fused kernel{what} does not fit on one GPU multiprocessor: Triton asks for "
                f"{need:,} bytes of shared memory and this GPU offers {limit:,}. Use a smaller "
                f"batch_size or narrower layers (float32 at default precision needs the "
                f"least), or grad='manual'."
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name in ("_fn", "_kernel"):  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._fn, name)


def _shared_memory_limit() -> tuple[str, int]:
    """The default GPU's compute capability and its shared memory per block (`SHARED_MEMORY`)."""
    capability = str(getattr(jax.devices()[0], "compute_capability", "unknown"))
    return capability, SHARED_MEMORY.get(capability, max(SHARED_MEMORY.values()))


def _step(kernel: Kernel, params: Layers, trace: Any, x: Any, y: Any) -> tuple[Layers, Any, Array]:
    """`fused_step_fn`'s step: the call checked, then `run_step`."""
    _check_widths(kernel, params)
    return run_step(kernel, params, trace, check_x(x, kernel.sizes[0]), y)


def run_step(
    kernel: Kernel, params: Layers, trace: Any, x: Array, y: Any
) -> tuple[Layers, Any, Array]:
    """One fused step on a checked `x: (batch, n_0)` and `params` of the kernel's widths:
    `(params, trace, loss)` after the update."""
    dtype = _dtype(kernel, params, trace)
    _check_batch(kernel, x, x.shape[0], 0, dtype)
    x = x.astype(dtype)
    y = kernel.config.loss.targets(y, x.shape[0], kernel.sizes[-1], x.dtype)
    new_params, new_trace, values = launch(kernel, step_kernel, params, trace, x, y)
    return new_params, new_trace, values[0]


def _epoch(
    kernel: Kernel, params: Layers, trace: Any, xs: Any, ys: Any
) -> tuple[Layers, Any, Array]:
    """`fused_epoch_fn`'s epoch: the call checked, then `run_epoch`."""
    _check_widths(kernel, params)
    xs = jnp.asarray(xs)
    if xs.ndim != 3 or xs.shape[0] < 1:
        raise ValueError(
            f"xs must be the epoch's batches, (steps, batch, n_0) with steps >= 1; got shape "
            f"{xs.shape}. Stack pre-shuffled batches: x[idx] with idx of shape (steps, batch)."
        )
    steps, batch = xs.shape[:2]
    xs = check_x(xs.reshape(steps * batch, xs.shape[2]), kernel.sizes[0]).reshape(xs.shape)
    ys = jnp.asarray(ys)
    if ys.shape[:2] != (steps, batch):
        raise ValueError(
            f"ys must hold one target batch per x batch, shape ({steps}, {batch}, ...) to match "
            f"xs {xs.shape}; got shape {ys.shape}."
        )
    return run_epoch(kernel, params, trace, xs, ys)


def run_epoch(
    kernel: Kernel, params: Layers, trace: Any, xs: Array, ys: Array
) -> tuple[Layers, Any, Array]:
    """A fused epoch over checked batches `xs: (steps, batch, n_0)`, `ys: (steps, batch,
    ...)`: `(params, trace, losses)`, one loss a step."""
    dtype = _dtype(kernel, params, trace)
    steps, batch = xs.shape[:2]
    _check_batch(kernel, xs, batch, 1, dtype)
    flat = ys.reshape(steps * batch, *ys.shape[2:])
    flat = kernel.config.loss.targets(flat, steps * batch, kernel.sizes[-1], dtype)
    return launch(
        kernel, epoch_kernel, params, trace, xs.astype(dtype), flat.reshape(steps, batch, -1)
    )
