"""The MLP as a differentiable function whose reverse mode is the recursion of eq. 1.4.

`jaxbp.mlp(params, x, activation=..., backward="manual")` returns the last
pre-activation `z_L` and is a `jax.custom_vjp`: wherever it sits inside a larger
program (a user's loss on `z_L`, one MLP feeding another, an MLP among other
parameters), `jax.grad` of that program runs eqs. 1.3-1.4 for the MLP, started from
whatever cotangent `delta_L = dF/dz_L` the rest of the program sends back:

    dF/dW_l = a_{l-1}^T @ delta_l,   dF/db_l = sum_n delta_l                      (1.3)
    delta_l = phi'(z_l) * (delta_{l+1} @ W_{l+1}^T)                              (1.4)
    dF/dx   = delta_1 @ W_1^T

The forward pass stores `z_l` and `a_l` as residuals (memory for time, as in the
chapter). A `custom_vjp` defines reverse mode only: `jax.jvp` and `jax.jacfwd` of a
program that calls the manual `mlp` raise a `TypeError`; use `backward="autodiff"`
there. Forward over reverse (`jax.hessian`, `jax.jvp` of `jax.grad`) works: it
differentiates the handwritten backward pass, which is plain JAX (as `jaxbp.hvp` does
with `manual_grad`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxbp._activations import ACTIVATIONS, Activation, get_activation
from jaxbp._backprop import backward_flow, cast_like
from jaxbp._mlp import Params, forward_flow
from jaxbp._validate import check_params, check_x

Array = jax.Array

BACKWARDS = ("manual", "autodiff")
_IDENTITY = ACTIVATIONS["identity"]


def mlp(
    params: Params, x: Array, *, activation: str | Activation, backward: str = "manual"
) -> Array:
    """The logits `z_L` of eq. 1.1, `(batch, n_L)`: no output activation.

    **Arguments:**

    - `params`: as `jaxbp.init_mlp` returns; `x: (batch, n_0)` (an integer `x` is cast to
      the dtype of `params[0]["W"]`).
    - `activation`: the hidden layers' activation, a name or a `jaxbp.Activation`.
    - `backward`: `"manual"` (reverse mode by eqs. 1.3-1.4, for `params` and `x`; no
      forward mode, though forward over reverse works) or `"autodiff"` (plain JAX, every
      transformation).

    Works under `jax.jit` (keywords static), `jax.vmap` and `jax.grad` of any program
    built on it; `activation` and `backward` are closed over, never traced.
    """
    hidden = get_activation(activation)
    x = check_x(x, check_params(params))
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(params[0]["W"]))
    if backward == "manual":
        return _manual_mlp(hidden, params, x)
    if backward == "autodiff":
        return _logits(hidden, params, x)
    raise ValueError(
        f"backward must be one of {list(BACKWARDS)}: 'manual' for the handwritten "
        f"reverse mode (eq. 1.4), 'autodiff' for plain JAX; got {backward!r}."
    )


def _logits(hidden: Activation, params: Params, x: Array) -> Array:
    return forward_flow(params, x, hidden, _IDENTITY)[0][-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _manual_mlp(hidden: Activation, params: Params, x: Array) -> Array:
    return _logits(hidden, params, x)


def _manual_mlp_fwd(
    hidden: Activation, params: Params, x: Array
) -> tuple[Array, tuple[Params, list[Array], list[Array]]]:
    zs, acts = forward_flow(params, x, hidden, _IDENTITY)
    return zs[-1], (params, zs[:-1], acts[:-1])  # residuals: z_1..z_{L-1}, a_0..a_{L-1}


def _manual_mlp_bwd(
    hidden: Activation, residuals: tuple[Params, list[Array], list[Array]], delta_out: Array
) -> tuple[Params, Array]:
    params, zs, acts = residuals
    grads, deltas = backward_flow(params, zs, acts, hidden, delta_out)  # eqs. 1.3-1.4
    dx = deltas[0] @ params[0]["W"].T  # dF/dx = delta_1 @ W_1^T
    return cast_like(grads, params), dx.astype(acts[0].dtype)


_manual_mlp.defvjp(_manual_mlp_fwd, _manual_mlp_bwd)
