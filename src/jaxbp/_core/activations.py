"""Activations, each with its handwritten derivative beside it.

An activation is the `phi` of eq. 1.1 together with the `sigma'` that eq. 1.4
applies to the stored forward flow. Every derivative has the signature
`deriv(z, a) -> phi'(z)`, where `z` is the pre-activation and `a = phi(z)` the
activation already stored by the forward pass; each one uses whichever is cheaper,
and its docstring line says which.

The record owns every other fact about its activation too: where its derivative jumps
(`kinks`, which `check_parity` needs to read finite differences), and the weight
initialisation it prefers (`init`: He for the rectifiers, Glorot otherwise; section
1.1.3). At a kink (relu, leaky_relu at 0) the derivative is the left one: relu'(0) = 0
and leaky_relu'(0) = 0.01. That is the value `jax.grad` gives for `jax.nn.relu` and for
the `where(z > 0, ...)` forms written here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from jaxbp._core.inits import check_init
from jaxbp._core.records import Record

Array = jax.Array

__all__ = ["ACTIVATIONS", "SOFTMAX", "Activation", "Softmax", "get_activation"]

LEAKY_RELU_SLOPE = 0.01
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def record_owner(kind: str, name: Any) -> str:
    """How errors name a record being built ("Activation 'cube'"); its name must be a str."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str; got {name!r}.")
    return f"{kind} {name!r}"


def check_arity(owner: str, field: str, fn: Any, args: str) -> None:
    """Refuse a `fn` that is not callable with the positional arguments `args` ("z, a")."""
    if not callable(fn):
        raise TypeError(f"{owner}: {field} must be a function of ({args}); got {fn!r}.")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and ufuncs have none: trust them
        return
    try:
        signature.bind(*args.split(", "))
    except TypeError:
        raise TypeError(
            f"{owner}: {field} must take the positional arguments ({args}); got {field}"
            f"{signature}. Write it as `lambda {args}: ...`, ignoring what it does not use."
        ) from None


@dataclasses.dataclass(frozen=True, repr=False)
class Activation(Record):
    """An elementwise nonlinearity `phi`, its handwritten derivative, and its facts.

    **Arguments:**

    - `name`: how it prints.
    - `fn`: `z -> phi(z)`, elementwise; `z` is `(batch, n)`.
    - `deriv`: `(z, a) -> phi'(z)`, elementwise, given `z` and `a = phi(z)` from the
      forward pass. It must not call `jax.grad` or any other autodiff.
    - `kinks`: the points where `phi'` jumps (relu: `(0.0,)`); `check_parity` skips the
      finite differences whose step carries a pre-activation across one of them.
    - `init`: the weight initialisation it prefers (one of `jaxbp.INITS`), used by
      `jaxbp train` when no `--init` is given.
    - `deriv2`: `(z, a) -> phi''(z)`, elementwise, the second derivative (at a kink the
      one-sided value, 0 for the rectifiers), or `None`; `jaxbp.diag_hessian` needs it.
    - `max_deriv`: the largest `|phi'(z)|` (sigmoid 1/4, tanh 1), the scale of the
      saturation measure (`jaxbp.backward_flow_stats`); `None`: found on a grid of `z` in
      `[-40, 40]` when first asked for.

    The signatures of `fn`, `deriv` and `deriv2` are checked when the record is built.
    Example, a user's own activation:

    ```python
    cube = jaxbp.Activation("cube", lambda z: z**3, lambda z, a: 3 * z**2)
    ```
    """

    name: str
    fn: Callable[[Array], Array]
    deriv: Callable[[Array, Array], Array]
    kinks: tuple[float, ...] = ()
    init: str = "glorot_normal"
    deriv2: Callable[[Array, Array], Array] | None = None
    max_deriv: float | None = None

    min_units = 1  # the smallest output layer it makes sense on

    @property
    def _builtin(self) -> bool:
        return ACTIVATIONS.get(self.name) == self

    def __post_init__(self) -> None:
        owner = record_owner("Activation", self.name)
        check_arity(owner, "fn", self.fn, "z")
        check_arity(owner, "deriv", self.deriv, "z, a")
        if self.deriv2 is not None:
            check_arity(owner, "deriv2", self.deriv2, "z, a")
        try:
            kinks = tuple(float(k) for k in self.kinks)
        except (TypeError, ValueError):
            raise TypeError(
                f"{owner}: kinks must be a tuple of numbers (where phi' jumps, e.g. (0.0,)); "
                f"got {self.kinks!r}."
            ) from None
        if not all(math.isfinite(k) for k in kinks):
            raise ValueError(f"{owner}: kinks must be finite; got {kinks!r}.")
        if self.max_deriv is not None and not (
            isinstance(self.max_deriv, (int, float)) and 0 < self.max_deriv < math.inf
        ):
            raise ValueError(f"{owner}: max_deriv must be a number > 0; got {self.max_deriv!r}.")
        object.__setattr__(self, "kinks", kinks)
        check_init(self.init, f"{owner}: init")

    @functools.cached_property
    def slope(self) -> float:
        """`max_deriv`, or the largest `|phi'(z)|` on a grid of `z` in `[-40, 40]`."""
        if self.max_deriv is not None:
            return self.max_deriv
        with jax.ensure_compile_time_eval():
            z = jnp.linspace(-40.0, 40.0, 80_001)
            return float(jnp.max(jnp.abs(self.derivative(z[None, :], self.fn(z[None, :])))))

    def forward(self, z: Array) -> Array:
        """`phi(z)`, checked to keep `z`'s shape (elementwise), at trace time."""
        return _checked(self.fn(z), z.shape, self.name, "fn(z), phi(z) elementwise,")

    def derivative(self, z: Array, a: Array) -> Array:
        """`phi'(z)`, checked to have `z`'s shape (or be a scalar: a constant)."""
        return _checked(self.deriv(z, a), z.shape, self.name, "deriv(z, a), phi'(z),")

    def second_derivative(self, z: Array, a: Array) -> Array | None:
        """`phi''(z)` checked like `derivative`, or `None` without a `deriv2`."""
        if self.deriv2 is None:
            return None
        return _checked(self.deriv2(z, a), z.shape, self.name, "deriv2(z, a), phi''(z),")

    def backward(self, z: Array, a: Array, g: Array) -> Array:
        """`g * phi'(z)`: the backward flow through this activation (eq. 1.4)."""
        return g * self.derivative(z, a)

    def crossings(self, lo: Array, hi: Array) -> Array:
        """Where `lo` and `hi` (same shape) lie on different sides of some kink: a bool mask."""
        crossed = jnp.zeros(jnp.shape(lo), bool)
        for k in self.kinks:
            crossed = crossed | ((lo > k) != (hi > k))
        return crossed


@dataclasses.dataclass(frozen=True, repr=False)
class Softmax(Record):
    """The softmax output link; not elementwise, so it carries a vector-Jacobian product.

    `a_k = exp(z_k) / sum_j exp(z_j)` over the last axis of `z: (batch, K)`, `K >= 2`
    (on one unit it is the constant 1).
    """

    name: str = "softmax"
    kinks: tuple[float, ...] = ()
    min_units = 2

    @property
    def _builtin(self) -> bool:
        return self == SOFTMAX

    def fn(self, z: Array) -> Array:
        return jax.nn.softmax(z, axis=-1)

    def forward(self, z: Array) -> Array:
        return self.fn(z)

    def second_derivative(self, z: Array, a: Array) -> None:
        del z, a  # not elementwise: no diagonal second derivative

    def backward(self, z: Array, a: Array, g: Array) -> Array:
        """`g @ J` with `J = diag(a) - a a^T`, i.e. `a * (g - <g, a>)`; uses `a` only."""
        del z
        return a * (g - jnp.sum(g * a, axis=-1, keepdims=True))

    def crossings(self, lo: Array, hi: Array) -> Array:
        del hi
        return jnp.zeros(jnp.shape(lo), bool)


SOFTMAX = Softmax()


def _checked(value: Any, shape: tuple[int, ...], name: str, what: str) -> Array:
    """A user's activation output, refused unless it has `shape` (a scalar passes where
    it is a derivative: a constant broadcasts correctly; `(batch, 1)` would not)."""
    got = jnp.shape(value)
    if got != shape and not (got == () and what.startswith("deriv")):
        raise ValueError(
            f"Activation {name!r}: {what} must return an array of shape {shape}; got "
            f"shape {got}. Fix that function of the record."
        )
    return value


def _identity(z: Array) -> Array:
    return z


def _identity_deriv(z: Array, a: Array) -> Array:
    """1; uses neither (a constant of `z`'s shape)."""
    del a
    return jnp.ones_like(z)


def _zero(z: Array, a: Array) -> Array:
    """0: a piecewise linear activation (identity, the rectifiers away from 0)."""
    del a
    return jnp.zeros_like(z)


def _sigmoid_deriv(z: Array, a: Array) -> Array:
    """sigma(z) (1 - sigma(z)) = a (1 - a); uses `a` (fig. 1.11: at most 1/4)."""
    del z
    return a * (1 - a)


def _sigmoid_deriv2(z: Array, a: Array) -> Array:
    """a (1 - a) (1 - 2 a); uses `a`."""
    del z
    return a * (1 - a) * (1 - 2 * a)


def _tanh_deriv(z: Array, a: Array) -> Array:
    """1 - tanh(z)^2 = 1 - a^2; uses `a`."""
    del z
    return 1 - a * a


def _tanh_deriv2(z: Array, a: Array) -> Array:
    """-2 a (1 - a^2); uses `a`."""
    del z
    return -2 * a * (1 - a * a)


def _relu_deriv(z: Array, a: Array) -> Array:
    """1 where z > 0, else 0 (0 at the kink); uses `z`."""
    del a
    return (z > 0).astype(z.dtype)


def _leaky_relu(z: Array) -> Array:
    return jnp.where(z > 0, z, LEAKY_RELU_SLOPE * z)


def _leaky_relu_deriv(z: Array, a: Array) -> Array:
    """1 where z > 0, else 0.01 (0.01 at the kink); uses `z`."""
    del a
    return jnp.where(z > 0, 1, LEAKY_RELU_SLOPE).astype(z.dtype)


def _elu(z: Array) -> Array:
    # expm1 sees only z <= 0, so large positive z cannot overflow in the unused branch
    # (an inf there would turn the gradient into nan).
    return jnp.where(z > 0, z, jnp.expm1(jnp.where(z > 0, 0, z)))


def _elu_deriv(z: Array, a: Array) -> Array:
    """1 where z > 0, else exp(z) = a + 1 (alpha = 1); uses both."""
    return jnp.where(z > 0, 1, a + 1).astype(z.dtype)


def _elu_deriv2(z: Array, a: Array) -> Array:
    """0 where z > 0, else exp(z) = a + 1 (the left value at 0, where it jumps); uses both."""
    return jnp.where(z > 0, 0, a + 1).astype(z.dtype)


def _softplus_deriv(z: Array, a: Array) -> Array:
    """sigma(z); uses `z`."""
    del a
    return jax.nn.sigmoid(z)


def _softplus_deriv2(z: Array, a: Array) -> Array:
    """sigma(z) (1 - sigma(z)); uses `z`."""
    del a
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _gelu(z: Array) -> Array:
    return jax.nn.gelu(z, approximate=False)


def _gelu_deriv(z: Array, a: Array) -> Array:
    """Phi(z) + z phi(z) for the exact (erf) GELU, Phi and phi the normal cdf and pdf; uses `z`."""
    del a
    cdf = 0.5 * erfc(-z * _INV_SQRT2)  # erfc keeps the left tail accurate
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return cdf + z * pdf


def _gelu_deriv2(z: Array, a: Array) -> Array:
    """phi(z) (2 - z^2), phi the normal pdf; uses `z`."""
    del a
    return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z) * (2 - z * z)


def _silu_deriv(z: Array, a: Array) -> Array:
    """s (1 + z (1 - s)) with s = sigma(z); uses `z`."""
    del a
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_deriv2(z: Array, a: Array) -> Array:
    """s (1 - s) (2 + z (1 - 2 s)) with s = sigma(z); uses `z`."""
    del a
    s = jax.nn.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("identity", _identity, _identity_deriv, (), "glorot_normal", _zero, 1.0),
        Activation(
            "sigmoid", jax.nn.sigmoid, _sigmoid_deriv, (), "glorot_normal", _sigmoid_deriv2, 0.25
        ),
        Activation("tanh", jnp.tanh, _tanh_deriv, (), "glorot_normal", _tanh_deriv2, 1.0),
        Activation("relu", jax.nn.relu, _relu_deriv, (0.0,), "he_normal", _zero, 1.0),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_deriv, (0.0,), "he_normal", _zero, 1.0),
        Activation("elu", _elu, _elu_deriv, (), "he_normal", _elu_deriv2, 1.0),  # C^1 at 0
        Activation(
            "softplus", jax.nn.softplus, _softplus_deriv, (), "glorot_normal", _softplus_deriv2, 1.0
        ),
        # the exact GELU's slope peaks at z = sqrt(2): Phi(sqrt 2) + sqrt(2) phi(sqrt 2)
        Activation("gelu", _gelu, _gelu_deriv, (), "he_normal", _gelu_deriv2, 1.1289041451469775),
        # SiLU's at z ~ 2.3994, where s (1 + z (1 - s)) is largest
        Activation(
            "silu", jax.nn.silu, _silu_deriv, (), "he_normal", _silu_deriv2, 1.0998393200453496
        ),
    )
}
"""The built-in hidden activations by name. GELU is the exact (erf) form."""


def get_activation(activation: str | Activation, *, argument: str = "activation") -> Activation:
    """Look up a hidden activation by name, or pass an `Activation` record through."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation]
        except KeyError:
            raise ValueError(
                f"{argument} must be one of {sorted(ACTIVATIONS)} or a jaxbp.Activation; "
                f"got {activation!r}."
            ) from None
    raise TypeError(
        f"{argument} must be a name (str) or a jaxbp.Activation; "
        f"got {type(activation).__name__} {activation!r}."
    )
