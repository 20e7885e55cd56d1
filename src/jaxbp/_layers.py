"""Layers as records: each owns its initialisation, a forward pass that stores what its
backward pass needs, and a handwritten backward pass (the BackPACK and CS231n pattern).

Index alphabet: `n` batch, `i` a layer's inputs, `o` its outputs.

A layer record has
- `name: str` and `has_params: bool`;
- `init(key, n_in, dtype) -> (params, n_out)`, `params` a dict of arrays (`None` when
  `has_params` is False);
- `check(params, n_in, where) -> n_out`: refuse params of the wrong kind or shape, naming
  `where` (e.g. "params[2]"); `n_in` is `None` for the first layer;
- `forward(params, a, ctx) -> (out, cache)`: `a: (n, i)` -> `out: (n, o)`; `cache` is what
  the backward pass needs (memory for time, as the chapter says); `ctx` is the call's
  `Context` (training or evaluation, a PRNG key);
- `backward(params, cache, g) -> (g_in, grads)`: from `g = dL/d out: (n, o)`, the input
  cotangent `dL/da: (n, i)` and the parameter gradient (a dict shaped like `params`, or
  `None`). No autodiff.
- optionally `random = True` (it draws from `ctx.key` in training, like dropout) and
  `has_state = True` with `init_state(params)` and `next_state(state, cache)` (state
  that training updates, like batch normalisation's running averages);
- `per_example: bool`: whether its parameter gradient is a sum over the batch of terms
  that each depend on one example only (true for dense layers and activations; false
  for batch normalisation, where every example's output depends on the whole batch);
- `per_example_grads(params, cache, g)` -> the gradient's terms, each leaf with a
  leading `(n,)` axis, and `per_example_sq_norms(params, cache, g) -> (n,)` their
  squared norms; only for layers with `per_example` and parameters;
- optionally `min_batch: int`, the fewest examples a training batch may hold (batch
  normalisation: 2); 1 when absent.

A network is a sequence of layers; a parameter pytree holds one entry per layer that
has parameters, in order (a plain MLP: `[{"W", "b"}, ...]`). Backward passes of a whole
network chain these records in reverse (`jaxbp._backprop.backward_flow`, eq. 1.4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import Activation, Softmax, get_activation
from jaxbp._init import check_init, init_weight
from jaxbp._validate import is_int

Array = jax.Array
Params = dict[str, Array]

__all__ = ["Activate", "Context", "Dense", "ParameterFree"]


class Context(NamedTuple):
    """What a layer's forward pass may depend on besides its input.

    `train=False` is evaluation mode (dropout off, batch normalisation with its running
    averages); `key` is this layer's PRNG key (random layers such as dropout); `stats` is
    this layer's state (a batch-norm layer's running averages), or `None`.
    """

    train: bool = True
    key: Array | None = None
    stats: Any = None


def check_floating(params: Any, where: str) -> None:
    for leaf, value in params.items():
        dtype = jnp.result_type(value)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{where}[{leaf!r}] must be floating point; got dtype {dtype}.")


def check_keys(params: Any, keys: set[str], where: str, rule: str) -> None:
    if not isinstance(params, dict) or set(params) != keys:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise TypeError(f"{rule}; {where} is {got!r}.")


DENSE_RULE = (
    "params must be a non-empty list of {'W': (n_in, n_out), 'b': (n_out,)} dicts, "
    "one per layer, as jaxbp.init_mlp returns"
)


@dataclasses.dataclass(frozen=True)
class Dense:
    """The affine map of eq. 1.1, `z = a @ W + b` with `W: (i, o)`, `b: (o,)`.

    Each column of `W` holds one neuron's incoming weights. `width` and `init` are used
    by `init`; a layer built from existing parameters needs neither.
    """

    width: int | None = None
    init_scheme: str = "glorot_normal"

    name = "dense"
    has_params = True
    per_example = True

    def __post_init__(self) -> None:
        if self.width is not None:
            if not is_int(self.width) or self.width < 1:
                raise ValueError(f"Dense width must be an integer >= 1; got {self.width!r}.")
            object.__setattr__(self, "width", int(self.width))
        check_init(self.init_scheme, "Dense init_scheme")

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[Params, int]:
        if self.width is None:
            raise ValueError("Dense(width=None) cannot initialise itself: give it a width.")
        w = init_weight(key, n_in, self.width, self.init_scheme, dtype)
        return {"W": w, "b": jnp.zeros((self.width,), dtype)}, self.width

    def check(self, params: Any, n_in: int | None, where: str) -> int:
        check_keys(params, {"W", "b"}, where, DENSE_RULE)
        check_floating(params, where)
        w_shape, b_shape = np.shape(params["W"]), np.shape(params["b"])
        if len(w_shape) != 2 or len(b_shape) != 1 or b_shape[0] != w_shape[1]:
            raise ValueError(
                f"{where} must hold W of shape (n_in, n_out) and b of shape (n_out,); "
                f"got W {w_shape} and b {b_shape}."
            )
        if n_in is not None and w_shape[0] != n_in:
            raise ValueError(
                f"layers must chain: {where}['W'] has {w_shape[0]} rows but the layer "
                f"before it has {n_in} outputs."
            )
        return w_shape[1]

    def n_in(self, params: Params) -> int:
        return np.shape(params["W"])[0]

    def forward(self, params: Params, a: Array, ctx: Context) -> tuple[Array, Array]:
        """`z = a @ W + b` (eq. 1.1); caches the input `a: (n, i)` for eq. 1.3."""
        del ctx
        return a @ params["W"] + params["b"][None, :], a

    def backward(self, params: Params, a: Array, g: Array) -> tuple[Array, Params]:
        """`(g @ W^T, {"W": a^T @ g, "b": sum_n g})`: the sum of eq. 1.4 over the units
        `a` feeds, and eq. 1.3 (one outer product per example, summed)."""
        return g @ params["W"].T, {"W": a.T @ g, "b": jnp.sum(g, axis=0)}

    def per_example_grads(self, params: Params, a: Array, g: Array) -> Params:
        """`{"W": (n, i, o), "b": (n, o)}`: eq. 1.3's terms `a^(n) (g^(n))^T` before the sum."""
        del params
        return {"W": jnp.einsum("ni,no->nio", a, g), "b": g}

    def per_example_sq_norms(self, params: Params, a: Array, g: Array) -> Array:
        """`(||a^(n)||^2 + 1) ||g^(n)||^2`, `(n,)`: an outer product's norm, never built."""
        del params
        return (jnp.sum(a * a, axis=1) + 1) * jnp.sum(g * g, axis=1)


class ParameterFree:
    """The init and check of a layer without parameters that keeps the width (a mixin)."""

    has_params = False

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[None, int]:
        del key, dtype
        return None, n_in

    def check(self, params: Any, n_in: int | None, where: str) -> int | None:
        del params, where
        return n_in


@dataclasses.dataclass(frozen=True)
class Activate(ParameterFree):
    """An elementwise activation `a = phi(z)` as a layer (or the softmax, at the output).

    Its backward pass is the factor `phi'(z_l)` of eq. 1.4, from the stored `(z, a)`.
    """

    activation: Activation | Softmax

    name = "activation"
    per_example = True

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Softmax):
            object.__setattr__(self, "activation", get_activation(self.activation))

    def forward(self, params: None, z: Array, ctx: Context) -> tuple[Array, tuple[Array, Array]]:
        """`a = phi(z)`; caches `(z, a)`, as the derivative may use either."""
        del params, ctx
        a = self.activation.fn(z)
        return a, (z, a)

    def backward(self, params: None, cache: tuple[Array, Array], g: Array) -> tuple[Array, None]:
        """`phi'(z) * g`: the factor of eq. 1.4."""
        del params
        z, a = cache
        return self.activation.backward(z, a, g), None
