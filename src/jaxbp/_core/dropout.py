"""Inverted dropout (section 1.1.3): a regulariser, drawn from an explicit PRNG key."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxbp._core.layers import Context, Layer
from jaxbp._core.validate import is_real

Array = jax.Array

__all__ = ["Dropout"]


@dataclasses.dataclass(frozen=True, repr=False)
class Dropout(Layer):
    """Inverted dropout: in training each entry is kept with probability `1 - rate` and
    scaled by `1 / (1 - rate)`; at evaluation the identity. `a: (n, j) -> (n, j)`.

    The mask is drawn from the key of the call (`key=` of `jaxbp.loss_fn` and its kin,
    split per layer), so the same key gives the same masks: per-example gradients, the
    DP gradient and both gradient paths see the same network. The backward pass
    multiplies by the same scaled mask.
    """

    rate: float = 0.5

    name = "dropout"
    per_example = True
    random = True

    def __post_init__(self) -> None:
        r = self.rate
        if not is_real(r) or not 0 <= r < 1:
            raise ValueError(
                f"Dropout rate must lie in [0, 1) (the probability of dropping a unit); got {r!r}."
            )
        object.__setattr__(self, "rate", float(r))

    def forward(self, params: None, a: Array, ctx: Context) -> tuple[Array, Array | None]:
        del params
        if not ctx.train or self.rate == 0:
            return a, None
        if ctx.key is None:
            raise ValueError(
                "a network with dropout needs a PRNG key in training: pass key= (e.g. "
                "jax.random.key(0)); training steps and epochs draw one per step."
            )
        keep = jax.random.bernoulli(ctx.key, 1 - self.rate, a.shape)
        scale = jnp.where(keep, 1 / (1 - self.rate), 0).astype(a.dtype)
        return a * scale, scale

    def backward(self, params: None, scale: Array | None, g: Array) -> tuple[Array, None]:
        del params
        return (g if scale is None else g * scale), None

    def input_curvature(self, params: None, scale: Array | None, g: Array) -> None:
        """None: a fixed mask is linear."""
        del params, scale, g
