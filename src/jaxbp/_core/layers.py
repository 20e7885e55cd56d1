"""Layers as records: each owns its initialisation, a forward pass that stores what its
backward pass needs, and a handwritten backward pass (the BackPACK and CS231n pattern).

Index alphabet: `n` batch, `i` a layer's inputs, `o` its outputs.

`Layer` is the base record: it declares every fact a layer may state and every method it
may provide, each with its default (a parameter-free layer that keeps the width). A layer
overrides what applies to it. A user's record that does not inherit from `Layer` is read
once, when its network is built (`as_layer`): what it declares counts, the base's defaults
fill the rest. A network is a sequence of layers; its parameter pytree holds one entry per
layer with parameters, in order (a plain MLP: `[{"W", "b"}, ...]`), and its backward pass
chains these records in reverse (`jaxbp._core.backprop.backward_flow`, eq. 1.4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.activations import Activation, Softmax, get_activation
from jaxbp._core.inits import check_init, init_weight
from jaxbp._core.records import Record
from jaxbp._core.validate import is_int

Array = jax.Array
Params = dict[str, Array]

__all__ = ["Activate", "Context", "Dense", "Layer", "as_layer"]


class Context(NamedTuple):
    """What a layer's forward pass may depend on besides its input.

    `train=False` is evaluation mode (dropout off, batch normalisation with its running
    averages); `key` is this layer's PRNG key (random layers such as dropout); `stats` is
    this layer's state (a batch-norm layer's running averages), or `None`.
    """

    train: bool = True
    key: Array | None = None
    stats: Any = None


class Layer(Record):
    """The base layer record: every fact a layer may declare, with its default.

    **Facts** (class attributes):

    - `name`: how it prints in messages and tables.
    - `has_params`: whether it owns an entry of `params`.
    - `has_state`: whether training updates state of its own (batch normalisation's
      running averages): it then provides `init_state` and `next_state`.
    - `random`: whether it draws from `ctx.key` in training (dropout): a call then needs
      a `key`.
    - `per_example`: whether its parameter gradient is a sum over the batch of terms that
      each depend on one example only (dense layers, activations: `True`; batch
      normalisation: `False`); `None` when it does not say, which per-example gradients,
      their norms and DP-SGD refuse. With `True` and parameters it provides
      `per_example_grads` and `per_example_sq_norms`.
    - `min_batch`: the fewest examples a training batch may hold (batch norm: 2).
    - `zeroes_preceding_bias`: whether it makes the gradient of the bias just before it
      exactly 0 (batch norm's mean removes it): parity then judges errors on the
      gradient's scale (`check_parity(..., atol=None)`).
    - `phi`: the activation record it applies elementwise, if it is the chapter's
      `a_l = phi(z_l)` (`Activate`); the trace's `z_l`, `a_l`, `delta_l` are read there.

    **Methods** (the defaults: a parameter-free layer that keeps the width):

    - `init(key, n_in, dtype) -> (params, n_out)`: `params` a pytree (`None` without
      parameters).
    - `check(params, n_in, where) -> n_out`: refuse parameters of the wrong kind or shape,
      naming `where` (e.g. "params[2]"); `n_in` is `None` for the first layer.
    - `n_in(params) -> int | None`: the input width its parameters fix, if any.
    - `forward(params, a, ctx) -> (out, cache)`: `a: (n, i)` -> `out: (n, o)`; `cache` is
      what the backward pass needs (memory for time, as the chapter says).
    - `backward(params, cache, g) -> (g_in, grads)`: from `g = dL/d out: (n, o)`, the
      input cotangent `dL/da: (n, i)` and the parameter gradient (shaped like `params`,
      or `None`). Written by hand: no autodiff.
    - `init_state(params)`, `next_state(state, cache)`: with `has_state`.
    - `per_example_grads(params, cache, g)`: the gradient's terms, each leaf with a
      leading `(n,)` axis; `per_example_sq_norms(params, cache, g) -> (n,)`: their
      squared norms. With `per_example` and parameters.
    - `squared_terms(params, cache, gs, per_example)`: for cotangent columns `gs: (C, n,
      o)`, the squares of the terms each column gives, summed over the columns and (unless
      `per_example`) the batch: `jaxbp.sum_grad_squared` (`C = 1`), `jaxbp.diag_ggn` (the
      columns of the loss's curvature factor). `batch_dot(params, cache, g) -> (n, n)`:
      the terms' Gram matrix. Both default to what `per_example_grads` gives; a layer
      overrides them with closed forms.
    - `outer_factors(cache, g) -> (a, g)`: for a layer whose weight gradient terms are
      outer products `a^(n) (g^(n))^T` (a dense layer), the two flows; K-FAC needs them.
    - `input_curvature(params, cache, g) -> (n, i) | None`: the second-order term the
      layer adds to the Hessian of the loss in its input, `sum_k g_k d^2 out_k / d in^2`,
      as its diagonal for an elementwise layer (an activation: `phi''(z) * g`), `None`
      for a layer linear in its input (dense, dropout); `jaxbp.diag_hessian` needs it.

    A layer prints as its kind and the fields that differ from their defaults,
    `Dense(width=8)`, `Activate(activation='tanh')` (`jaxbp._core.records`); a dataclass
    layer of one's own prints so too when declared with `repr=False`.
    """

    name: ClassVar[str] = "layer"
    has_params: ClassVar[bool] = False
    has_state: ClassVar[bool] = False
    random: ClassVar[bool] = False
    per_example: ClassVar[bool | None] = None
    min_batch: ClassVar[int] = 1
    zeroes_preceding_bias: ClassVar[bool] = False
    phi: ClassVar[Activation | Softmax | None] = None

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[Any, int]:
        del key, dtype
        return None, n_in

    def check(self, params: Any, n_in: int | None, where: str) -> int | None:
        del params, where
        return n_in

    def n_in(self, params: Any) -> int | None:
        del params
        return None

    def forward(self, params: Any, a: Array, ctx: Context) -> tuple[Array, Any]:
        self._lacks("a forward pass")

    def backward(self, params: Any, cache: Any, g: Array) -> tuple[Array, Any]:
        self._lacks("a backward pass")

    def init_state(self, params: Any) -> Any:
        self._lacks("state")

    def next_state(self, state: Any, cache: Any) -> Any:
        self._lacks("state")

    def per_example_grads(self, params: Any, cache: Any, g: Array) -> Any:
        self._lacks("per-example gradients")

    def per_example_sq_norms(self, params: Any, cache: Any, g: Array) -> Array:
        self._lacks("per-example gradients")

    def squared_terms(self, params: Any, cache: Any, gs: Array, per_example: bool) -> Any:
        terms = jax.vmap(lambda g: self.per_example_grads(params, cache, g))(gs)
        axes = 0 if per_example else (0, 1)
        return jax.tree.map(lambda t: jnp.sum(t * t, axis=axes), terms)

    def batch_dot(self, params: Any, cache: Any, g: Array) -> Array:
        terms = jax.tree.leaves(self.per_example_grads(params, cache, g))
        flat = jnp.concatenate([t.reshape(t.shape[0], -1) for t in terms], axis=1)
        return flat @ flat.T

    def outer_factors(self, cache: Any, g: Array) -> tuple[Array, Array]:
        self._lacks("weight gradient made of outer products (K-FAC)")

    def input_curvature(self, params: Any, cache: Any, g: Array) -> Array | None:
        self._lacks("second derivative in its input (input_curvature)")

    def _lacks(self, what: str) -> NoReturn:
        raise NotImplementedError(f"the layer {self!r} has no {what}")

    def provides(self, method: str) -> bool:
        """Whether this layer provides `method` itself, rather than the base's default."""
        return method in vars(self) or getattr(type(self), method) is not getattr(Layer, method)


FACTS = ("name", "has_params", "has_state", "random", "per_example", "min_batch")
FACTS += ("zeroes_preceding_bias", "phi")
REQUIRED = ("init", "check", "forward", "backward")
OPTIONAL = ("n_in", "init_state", "next_state", "per_example_grads", "per_example_sq_norms")
OPTIONAL += ("squared_terms", "batch_dot", "outer_factors", "input_curvature")


@dataclasses.dataclass(frozen=True, repr=False)
class Declared(Layer):
    """A user's layer record that does not inherit from `Layer`, as a `Layer`: the facts
    and methods it declares, read once, and the base's defaults for the rest."""

    record: Any

    def __post_init__(self) -> None:
        for name in (*FACTS, *REQUIRED, *OPTIONAL):
            if hasattr(self.record, name):
                object.__setattr__(self, name, getattr(self.record, name))

    def __repr__(self) -> str:
        return repr(self.record)


def as_layer(record: Any, i: int) -> Layer:
    """`record` as a `Layer` (itself, or its `Declared` reading), or a `TypeError` naming
    what `layers[i]` lacks."""
    if isinstance(record, Layer):
        return record
    missing = [m for m in REQUIRED if not (hasattr(record, m) and callable(getattr(record, m)))]
    if missing or not hasattr(record, "has_params"):
        raise TypeError(
            f"layers[{i}] must be a layer record with has_params, init, check, forward "
            f"and backward (see jaxbp.Dense); {record!r} lacks "
            f"{missing or ['has_params']}."
        )
    return Declared(record)


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


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(Layer):
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

    def squared_terms(self, params: Params, a: Array, gs: Array, per_example: bool) -> Params:
        """`{"W": (a^2)^T sum_c g_c^2, "b": sum_n sum_c g_c^2}` (or per example): the square
        of an outer product is the outer product of the squares."""
        del params
        g2 = jnp.sum(gs * gs, axis=0)  # (n, o)
        if per_example:
            return {"W": jnp.einsum("ni,no->nio", a * a, g2), "b": g2}
        return {"W": (a * a).T @ g2, "b": jnp.sum(g2, axis=0)}

    def batch_dot(self, params: Params, a: Array, g: Array) -> Array:
        """`(a a^T + 1) * (g g^T)`, `(n, n)`: `<a^(n), a^(m)> <g^(n), g^(m)>`, and the bias."""
        del params
        return (a @ a.T + 1) * (g @ g.T)

    def outer_factors(self, a: Array, g: Array) -> tuple[Array, Array]:
        """`(a_{l-1}, delta_l)`: eq. 1.3's terms are their outer products."""
        return a, g

    def input_curvature(self, params: Params, a: Array, g: Array) -> None:
        """None: `z` is linear in `a`."""
        del params, a, g


@dataclasses.dataclass(frozen=True, repr=False)
class Activate(Layer):
    """An elementwise activation `a = phi(z)` as a layer (or the softmax, at the output).

    Its backward pass is the factor `phi'(z_l)` of eq. 1.4, from the stored `(z, a)`.
    """

    activation: Activation | Softmax

    name = "activation"
    per_example = True

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Softmax):
            object.__setattr__(self, "activation", get_activation(self.activation))

    @property
    def phi(self) -> Activation | Softmax:  # type: ignore[override]
        return self.activation

    def forward(self, params: None, z: Array, ctx: Context) -> tuple[Array, tuple[Array, Array]]:
        """`a = phi(z)`; caches `(z, a)`, as the derivative may use either."""
        del params, ctx
        a = self.activation.forward(z)
        return a, (z, a)

    def backward(self, params: None, cache: tuple[Array, Array], g: Array) -> tuple[Array, None]:
        """`phi'(z) * g`: the factor of eq. 1.4."""
        del params
        z, a = cache
        return self.activation.backward(z, a, g), None

    def input_curvature(self, params: None, cache: tuple[Array, Array], g: Array) -> Array:
        """`phi''(z) * g`, the diagonal second-order term of an elementwise activation;
        refused, naming the activation, where its record has no `deriv2`."""
        del params
        z, a = cache
        second = self.activation.second_derivative(z, a)
        if second is None:
            raise ValueError(
                f"the activation {self.activation.name!r} has no second derivative (deriv2), "
                "which the Hessian needs; give its jaxbp.Activation a deriv2=(z, a) -> "
                "phi''(z), or use jaxbp.diag_ggn, which needs none."
            )
        return second * g
