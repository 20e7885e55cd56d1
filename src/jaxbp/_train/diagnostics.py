"""The backward flow made visible: per-layer statistics from one back-propagation pass."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxbp._core.activations import Activation, Softmax
from jaxbp._core.backprop import Trace
from jaxbp._core.network import Params

Array = jax.Array

SATURATION_THRESHOLD = 0.01
"""A hidden unit counts as saturated on a sample where `|phi'(z)|` is below this fraction
of its activation's largest slope (`Activation.slope`: 1/4 for the sigmoid, 1 for tanh and
relu): a flat sigmoid or tanh, a relu at or below zero."""


PER_LAYER = ("delta_norm", "grad_W_norm", "saturated")
"""The metrics `backward_flow_stats` adds to a step's: each ends in a layer axis (every
other metric of a step is a scalar)."""


def backward_flow_stats(
    trace: Trace,
    grads: Params,
    hidden: Activation | Sequence[Activation | Softmax],
    threshold: float = SATURATION_THRESHOLD,
) -> dict[str, Array]:
    """Per-layer statistics of eqs. 1.3-1.4, read from a `backprop` trace, no extra pass.

    `hidden` is the hidden activation, or one per hidden layer (`Activate` layers of a
    `Config(layers=...)` network, in order).

    - `delta_norm`: `(L,)`, the Frobenius norm of `delta_l` over the batch.
    - `grad_W_norm`: the norm of `dL/dW_l`, one per layer whose parameters hold a `W`.
    - `saturated`: `(L - 1,)`, for each hidden layer the fraction of (sample, unit) pairs
      where `|phi'(z_l)| < threshold * phi.slope`, the slope relative to the activation's
      own largest one: the units that pass (almost) nothing back (eq. 1.4). A sigmoid at
      its steepest passes back 1/4 and counts as unsaturated: a deep sigmoid network's
      gradient vanishes through the 1/4s themselves (fig. 1.11), saturated or not. A
      hidden softmax has no elementwise `phi'`: its entry is NaN.
    """
    n_hidden = len(trace.z) - 1
    records = [hidden] * n_hidden if isinstance(hidden, (Activation, Softmax)) else list(hidden)
    if len(records) != n_hidden:
        raise ValueError(
            f"hidden must be one activation, or one per hidden layer ({n_hidden}); got "
            f"{len(records)}."
        )
    layers = zip(records, trace.z[:-1], trace.a[1:-1], strict=True)
    saturated = [
        jnp.mean(jnp.abs(phi.derivative(z, a)) < threshold * phi.slope)
        if isinstance(phi, Activation)
        else jnp.full((), jnp.nan, z.dtype)
        for phi, z, a in layers
    ]
    return {
        "delta_norm": jnp.stack([jnp.linalg.norm(d) for d in trace.delta]),
        "grad_W_norm": jnp.stack([jnp.linalg.norm(g["W"]) for g in grads if "W" in g]),
        "saturated": jnp.stack(saturated) if saturated else jnp.zeros((0,)),
    }
