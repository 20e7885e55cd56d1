"""The body of the fused training step: eqs. 1.1, 1.4 and 1.3 and an SGD update, on values.

Everything here runs inside one `pallas_call` (see `jaxbp._fused.support`), so it is written on
plain arrays already loaded from the kernel's refs: no autodiff, no Python-level state.
Index alphabet: `n` batch (padded to `n_p` on the GPU), `l` layer 1..L, `n_l` width.

    forward flow:   z_l = a_{l-1} @ W_l + b_l,  a_l = phi(z_l) * m_l,  a_0 = x        (1.1)
    source:         delta_L = s * dl/dz_L * r             (the loss record's own delta)
    backward flow:  delta_l = (delta_{l+1} @ W_{l+1}^T) * phi'(z_l)                 (1.4)
    gradients:      g_W_l = a_{l-1}^T @ delta_l,  g_b_l = sum_n delta_l               (1.3)
    update:         t = g + mu t;  p = p - lr t   (optax.sgd; without momentum p - lr g)

`s` is `1 / batch` for reduction "mean" and 1 for "sum"; `r: (n_p, 1)` is 1 on real
samples and 0 on padding rows, `m_l: (1, n_l)` is 1 on real hidden units and 0 on
padding units, so padding never reaches a gradient (all ones when nothing is padded).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxbp._core.activations import Activation
from jaxbp._core.losses import Loss, OutputActivation

if TYPE_CHECKING:
    from jaxbp._fused.support import Kernel

Array = jax.Array
Layers = list[dict[str, Array]]

_NN = (((1,), (0,)), ((), ()))  # a @ b
_TN = (((0,), (0,)), ((), ()))  # a^T @ b: the batch sum of eq. 1.3
_NT = (((1,), (1,)), ((), ()))  # a @ b^T: the weights run backwards in eq. 1.4


@dataclasses.dataclass(frozen=True)
class Rule:
    """The static configuration of one fused kernel: records, hyperparameters, precision.

    `scale` is `s` above; `learning_rate` and `momentum` are Python floats (momentum
    `None` for plain SGD); `precision` is passed to every matrix product.
    """

    hidden: Activation
    output: OutputActivation
    loss: Loss
    scale: float
    learning_rate: float
    momentum: float | None
    precision: Any = None


def _dot(a: Array, b: Array, dims: Any, precision: Any) -> Array:
    return lax.dot_general(a, b, dims, precision=precision)


def _sgd(rule: Rule, p: Array, t: Array | None, g: Array) -> tuple[Array, Array | None]:
    """optax.sgd on one leaf: `t = g + mu t`, `p + (-lr) t`; plain `p + (-lr) g` without mu.
    Results keep `p`'s dtype (as `optax.apply_updates` does), whatever a record promoted to."""
    if rule.momentum is not None:
        g = t = (g + rule.momentum * t).astype(p.dtype)
    return (p + (-rule.learning_rate) * g).astype(p.dtype), t


_FIX = "Fix that function of the record (see jaxbp.Activation and jaxbp.Loss)."


def _record(
    value: Any, shape: tuple[int, ...], what: str, *, broadcast: bool = False, fix: str = _FIX
) -> Array:
    """`value`, a record function's result, if it has `shape` (or broadcasts to it), else a
    ValueError naming the record and the function, at trace time: the kernel's masks and
    batch sums would broadcast a wrong shape into a silently wrong step."""
    got = jnp.shape(value)
    if got != shape and not (broadcast and _broadcasts(got, shape)):
        also = " (or one that broadcasts to it)" if broadcast else ""
        raise ValueError(
            f"{what} must return an array of shape {shape}{also}; got shape {got}. {fix}"
        )
    return value


def _broadcasts(got: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(got, shape) == shape
    except ValueError:
        return False


def train_step(
    rule: Rule,
    params: Layers,
    trace: Layers | None,
    x: Array,
    y: Array,
    rows: Array,
    units: list[Array],
) -> tuple[Layers, Layers | None, Array]:
    """One training step on loaded values: `(params, trace, loss)` after the update.

    `params`, `trace`: per layer `{"W": (n_{l-1}, n_l), "b": (n_l,)}` (trace `None` without
    momentum); `x: (n_p, n_0)`; `y: (n_p, n_L)` prepared targets; `rows: (n_p, 1)`;
    `units`: one `(1, n_l)` mask per hidden layer. `loss` is the reduced loss before the
    update, a scalar.
    """
    depth = len(params)
    hidden, output, loss = (repr(r.name) for r in (rule.hidden, rule.output, rule.loss))
    zs, acts = [], [x]
    for l, layer in enumerate(params):  # eq. 1.1
        z = _dot(acts[-1], layer["W"], _NN, rule.precision) + layer["b"][None, :]
        if l == depth - 1:
            a = _record(rule.output.fn(z), z.shape, f"output_activation={output}: fn(z_L), a_L,")
        else:
            what = f"activation={hidden}: fn(z), phi(z) elementwise,"
            a = _record(rule.hidden.fn(z), z.shape, what) * units[l]
        zs.append(z)
        acts.append(a)
    z_L, a_L = zs[-1], acts[-1]
    n = (z_L.shape[0],)
    value = rule.loss.value(z_L, a_L, y)
    fix = "Sum over the output axis only, e.g. jnp.sum(..., axis=-1), not over the batch."
    value = _record(value, n, f"loss={loss}: value(z, a, y), one loss a sample,", fix=fix)
    value = rule.scale * jnp.sum(value[:, None] * rows)
    delta = rule.loss.delta(z_L, a_L, y, rule.output)
    delta = _record(delta, z_L.shape, f"loss={loss}: delta(z, a, y, output), dl/dz_L,")
    delta = rule.scale * delta * rows  # delta_L

    new_params: Layers = [{} for _ in range(depth)]
    new_trace: Layers | None = None if trace is None else [{} for _ in range(depth)]
    for l in reversed(range(depth)):
        grads = {
            "W": _dot(acts[l], delta, _TN, rule.precision),  # eq. 1.3
            "b": jnp.sum(delta, axis=0),
        }
        if l > 0:  # eq. 1.4, with the weights before this step's update
            g = _dot(delta, params[l]["W"], _NT, rule.precision)
            deriv = rule.hidden.deriv(zs[l - 1], acts[l])
            what = f"activation={hidden}: deriv(z, a), phi'(z) elementwise,"
            delta = g * _record(deriv, g.shape, what, broadcast=True)
        for leaf in ("W", "b"):
            t = None if trace is None else trace[l][leaf]
            new_params[l][leaf], t = _sgd(rule, params[l][leaf], t, grads[leaf])
            if new_trace is not None:
                new_trace[l][leaf] = t
    return new_params, new_trace, value


def _load(refs: Any) -> Any:
    return jax.tree.map(lambda ref: ref[...], refs)


def _store(refs: Any, values: Any) -> None:
    for ref, value in zip(jax.tree.leaves(refs), jax.tree.leaves(values), strict=True):
        ref[...] = value.astype(ref.dtype)


def step_kernel(
    rule: Rule, params_ref, trace_ref, x_ref, y_ref, rows_ref, units_ref, *out_refs
) -> None:
    """The kernel of one step: refs in the order `pallas_call` passes them (outputs last:
    params, trace, loss `(1, 1)`)."""
    params_out, trace_out, loss_out = out_refs
    params, trace, value = train_step(
        rule,
        _load(params_ref),
        _load(trace_ref),
        x_ref[...],
        y_ref[...],
        rows_ref[...],
        _load(units_ref),
    )
    _store(params_out, params)
    _store(trace_out, trace)
    loss_out[...] = jnp.reshape(value, (1, 1)).astype(loss_out.dtype)


def epoch_kernel(
    rule: Rule, params_ref, trace_ref, xs_ref, ys_ref, rows_ref, units_ref, *out_refs
) -> None:
    """The kernel of one epoch: a `fori_loop` over `xs: (steps, n_p, n_0)` and the matching
    `ys`, the parameters and trace carried on chip between steps; losses `(steps, 1)`."""
    params_out, trace_out, losses_out = out_refs
    rows, units = rows_ref[...], _load(units_ref)

    def body(i: Array, carry: tuple[Layers, Layers | None]) -> tuple[Layers, Layers | None]:
        params, trace, value = train_step(rule, *carry, xs_ref[i], ys_ref[i], rows, units)
        losses_out[pl.ds(i, 1), :] = jnp.reshape(value, (1, 1)).astype(losses_out.dtype)
        return params, trace

    carry = (_load(params_ref), _load(trace_ref))
    params, trace = lax.fori_loop(0, xs_ref.shape[0], body, carry)
    _store(params_out, params)
    _store(trace_out, trace)


def _pad(a: Array, shape: tuple[int, ...], value: float = 0.0) -> Array:
    if a.shape == shape:
        return a
    return jnp.pad(
        a, [(0, s - n) for n, s in zip(a.shape, shape, strict=True)], constant_values=value
    )


def _pad_logit(output: OutputActivation, dtype: Any) -> float:
    """A logit for padding output units that the link maps to 0 beside a real unit, so the
    unit adds nothing to any loss or delta: 0 (identity, tanh, ...) or a huge negative number
    (sigmoid, softmax). Computed from the record, eagerly."""
    with jax.ensure_compile_time_eval():
        for value in (0.0, float(jnp.finfo(dtype).min) / 2):
            if float(output.fn(jnp.asarray([[0.0, value]], dtype))[0, 1]) == 0:
                return value
    raise ValueError(
        f"output_activation={output.name!r} maps no padding logit to 0, so the fused kernel "
        f"cannot pad its output layer for the GPU; pass pad=False with power-of-two widths, "
        f"or use grad='manual'."
    )


def launch(
    fused: Kernel, kernel: Callable[..., None], params: Layers, trace: Any, x: Array, y: Array
) -> tuple[Layers, Any, Array]:
    """Pad, run `kernel` in one `pallas_call`, un-pad. `x: (..., n, n_0)`, `y: (..., n, n_L)`;
    returns the losses `(steps,)` (one for a step)."""
    dtype, batch, lead = x.dtype, x.shape[-2], x.shape[:-2]
    sizes = fused.sizes
    wide = [fused.width(n) for n in sizes]
    rows = fused.width(batch)
    logit = _pad_logit(fused.config.output, dtype) if fused.pad else 0.0

    def pad_layers(layers: Layers, out_value: float) -> Layers:
        last = len(layers) - 1
        return [
            {
                "W": _pad(layer["W"], (wide[l], wide[l + 1])),
                "b": _pad(layer["b"], (wide[l + 1],), out_value if l == last else 0.0),
            }
            for l, layer in enumerate(layers)
        ]

    args = (
        pad_layers(params, logit),
        None if trace is None else pad_layers(trace, 0.0),
        _pad(x, (*lead, rows, wide[0])),
        _pad(y, (*lead, rows, wide[-1])),
        _pad(jnp.ones((batch, 1), dtype), (rows, 1)),
        [
            _pad(jnp.ones((1, n), dtype), (1, w))
            for n, w in zip(sizes[1:-1], wide[1:-1], strict=True)
        ],
    )
    n_state = len(jax.tree.leaves(args[:2]))
    state_shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args[:2])
    losses = jax.ShapeDtypeStruct((math.prod(lead), 1), dtype)
    call = pl.pallas_call(
        functools.partial(kernel, fused.rule(batch)),
        out_shape=(*state_shape, losses),
        input_output_aliases={i: i for i in range(n_state)},  # update the weights in place
        interpret=fused.interpret,
        compiler_params=pltriton.CompilerParams(num_warps=fused.warps, num_stages=1),
        name=f"jaxbp_fused_{kernel.__name__}",
    )
    try:
        new_params, new_trace, values = call(*args)
    except ValueError as error:
        if "captures constants" not in str(error):
            raise
        cfg = fused.config
        raise ValueError(
            f"a Pallas kernel takes no captured jax arrays, but a function of activation="
            f"{cfg.activation.name!r}, output_activation={cfg.output.name!r} or loss="
            f"{cfg.loss.name!r} closes over {_captured(str(error))}. Write its constants as "
            f"Python numbers (2.0, not jnp.asarray(2.0)), or use grad='manual'."
        ) from None

    def unpad(layers: Layers) -> Layers:
        return [
            {"W": layer["W"][: sizes[l], : sizes[l + 1]], "b": layer["b"][: sizes[l + 1]]}
            for l, layer in enumerate(layers)
        ]

    return unpad(new_params), None if trace is None else unpad(new_trace), values[:, 0]


def _captured(message: str) -> str:
    """The captured arrays Pallas names, e.g. `jax arrays [f32[1]]`."""
    found = re.search(r"captures constants (\[.*\])", message)
    return f"jax arrays {found.group(1)}" if found else "jax arrays"
