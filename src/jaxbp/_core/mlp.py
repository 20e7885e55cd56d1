"""The MLP as a differentiable function whose reverse mode is the recursion of eq. 1.4.

`jaxbp.mlp(params, x, activation=..., backward="manual")` returns the last
pre-activation `z_L` and is a `jax.custom_vjp`: wherever it sits inside a larger
program (a user's loss on `z_L`, one MLP feeding another, an MLP among other
parameters), `jax.grad` of that program runs eqs. 1.3-1.4 for the MLP, started from
whatever cotangent `delta_L = dF/dz_L` the rest of the program sends back:

    dF/dW_l = a_{l-1}^T @ delta_l,   dF/db_l = sum_n delta_l                      (1.3)
    delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T)                              (1.4)
    dF/dx   = delta_1 @ W_1^T

The forward pass stores every layer's cache as residuals (memory for time, as in the
chapter). A `custom_vjp` defines reverse mode only: `jax.jvp` and `jax.jacfwd` of a
program that calls the manual `mlp` raise a `TypeError`; use `backward="autodiff"`
there. Forward over reverse (`jax.hessian`, `jax.jvp` of `jax.grad`) works: it
differentiates the handwritten backward pass, which is plain JAX (as `jaxbp.hvp` does
with `manual_grad`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.backprop import backward_flow, cast_like
from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import Flow, forward_flow
from jaxbp._core.layers import Context
from jaxbp._core.network import Network, Params, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array

BACKWARDS = ("manual", "autodiff")


def mlp(
    params: Params,
    x: Array,
    config: Config | Network | None = None,
    *,
    backward: str = "manual",
    **keywords: Unpack[Keywords],
) -> Array:
    """The logits `z_L` of eq. 1.1, `(batch, n_L)`: no output activation.

    **Arguments:**

    - `params`: as `jaxbp.init_mlp` returns; `x: (batch, n_0)` (an integer `x` is cast to
      the dtype of the first parameter).
    - `config` (a `jaxbp.Config` or `jaxbp.Network`), or its keywords: `activation` (the
      hidden layers'), or `layers`; a loss and output activation are accepted and unused.
    - `key`: the dropout masks' key, for a network with dropout (training mode).
    - `backward`: `"manual"` (reverse mode by eqs. 1.3-1.4, for `params` and `x`; no
      forward mode, though forward over reverse works) or `"autodiff"` (plain JAX, every
      transformation).

    Works under `jax.jit`, `jax.vmap` and `jax.grad` of any program built on it; the
    configuration is closed over, never traced.
    """
    net, key = resolve(config, keywords, params, need_loss=False)
    x = net.check_x(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(jax.tree.leaves(params)[0]))
    ctx = net.context(True, key)
    if backward == "autodiff":
        return forward_flow(net, params, x, ctx).z
    if backward != "manual":
        raise ValueError(
            f"backward must be one of {list(BACKWARDS)}: 'manual' for the handwritten "
            f"reverse mode (eq. 1.4), 'autodiff' for plain JAX; got {backward!r}."
        )
    typed = key is not None and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else None
    bits = jax.random.key_data(key) if typed else key  # a uint32 array (or None) for custom_vjp
    return _manual_mlp((net, impl), params, x, bits)


Static = tuple[Network, str | None]
"""The static part of `_manual_mlp`: the network and the key's PRNG impl."""


def _context(static: Static, bits: Array | None) -> Context:
    impl = static[1]
    return Context(True, bits if impl is None else jax.random.wrap_key_data(bits, impl=impl))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _manual_mlp(static: Static, params: Params, x: Array, bits: Array | None) -> Array:
    return forward_flow(static[0], params, x, _context(static, bits)).z


Residuals = tuple[Params, tuple[Any, ...], Array, Any]


def _manual_mlp_fwd(
    static: Static, params: Params, x: Array, bits: Array | None
) -> tuple[Array, Residuals]:
    flow = forward_flow(static[0], params, x, _context(static, bits))
    return flow.z, (params, flow.caches, x, bits)  # residuals: every layer's cache


def _manual_mlp_bwd(
    static: Static, residuals: Residuals, delta_out: Array
) -> tuple[Params, Array, Any]:
    net = static[0]
    params, caches, x, bits = residuals
    flow = Flow(net.layers, net.spread(params), caches, delta_out, delta_out, x)
    back = backward_flow(flow, delta_out)  # eqs. 1.3-1.4; back.dx = delta_1 @ W_1^T
    no_key = None if bits is None else np.zeros(np.shape(bits), jax.dtypes.float0)
    return cast_like(back.grads, params), back.dx.astype(x.dtype), no_key


_manual_mlp.defvjp(_manual_mlp_fwd, _manual_mlp_bwd)
