"""Contracts for a user's records: every output checked against the shape it must have,
when it is traced (a shape check in Python; nothing at run time).

A record of one's own (an activation, a loss, a layer) returns arrays that the library
multiplies, sums and broadcasts: a derivative of shape `(batch, 1)` instead of `(batch, n)`
would broadcast into a wrong gradient, a parameter gradient of the wrong shape into a
wrong update. So each output is compared with the shape its contract states, and a
mismatch is one `ValueError` naming the record, the method, the shape wanted and the
shape got. The built-in layers are trusted as they are; a user's layer is wrapped in
`Checked` when its network is built (`jaxbp.Network`), with the widths it was built for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._core.layers import FACTS, Layer

Array = jax.Array

__all__ = ["Checked", "check_output"]


def check_output(value: Any, shape: tuple[Any, ...], owner: str, what: str) -> Any:
    """`value` if its shape is `shape` (a `None` in `shape` matches any length), else a
    `ValueError`: "{owner}: {what} must return shape {shape}; it returned shape ...".
    `value` may be a pytree: then `shape` is the tree of leaf shapes it must have."""
    got, want = _shapes(value), shape
    if not _matches(got, want):
        raise ValueError(
            f"{owner}: {what} must return shape {_shown(want)}; it returned "
            f"{_shown(got)}. Fix that method of the record."
        )
    return value


def _shapes(value: Any) -> Any:
    if value is None or hasattr(value, "shape") or isinstance(value, (int, float)):
        return None if value is None else tuple(jnp.shape(value))
    return jax.tree.map(lambda v: tuple(jnp.shape(v)), value)


def _matches(got: Any, want: Any) -> bool:
    if isinstance(want, tuple) and all(w is None or isinstance(w, int) for w in want):
        return (
            isinstance(got, tuple)
            and len(got) == len(want)
            and all(w is None or g == w for g, w in zip(got, want, strict=False))
        )
    if want is None or got is None:
        return got is want
    try:
        pairs = jax.tree.map(lambda g, w: (g, w), got, want, is_leaf=_is_shape)
    except (TypeError, ValueError):
        return False
    return all(_matches(g, w) for g, w in jax.tree.leaves(pairs, is_leaf=_is_pair))


def _is_shape(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(n, int) or n is None for n in v)


def _is_pair(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and all(_is_shape(p) for p in v)


def _shown(shape: Any) -> str:
    return "nothing (None)" if shape is None else str(shape).replace("None", "n")


@dataclasses.dataclass(frozen=True, repr=False)
class Checked(Layer):
    """A user's layer whose every output is checked against its contract at trace time:
    the forward pass's output `(n, n_out)`, the backward pass's input cotangent
    `(n, n_in)` and parameter gradient (shaped like its params), and the per-example
    hooks. `width_in` is `None` where no parameter fixes the input width."""

    layer: Layer
    width_in: int | None
    width_out: int | None

    def __post_init__(self) -> None:
        for name in FACTS:
            object.__setattr__(self, name, getattr(self.layer, name))

    def __repr__(self) -> str:
        return repr(self.layer)

    @property
    def owner(self) -> str:
        return f"layer {self.name!r} ({self.layer!r})"

    def provides(self, method: str) -> bool:
        return self.layer.provides(method)

    def init(self, key: Array, n_in: int, dtype: Any) -> tuple[Any, int]:
        return self.layer.init(key, n_in, dtype)

    def check(self, params: Any, n_in: int | None, where: str) -> int | None:
        return self.layer.check(params, n_in, where)

    def n_in(self, params: Any) -> int | None:
        return self.layer.n_in(params)

    def forward(self, params: Any, a: Array, ctx: Any) -> tuple[Array, Any]:
        out, cache = self.layer.forward(params, a, ctx)
        check_output(out, (a.shape[0], self.width_out), self.owner, "forward(params, a, ctx)[0]")
        return out, cache

    def backward(self, params: Any, cache: Any, g: Array) -> tuple[Array, Any]:
        g_in, grads = self.layer.backward(params, cache, g)
        what = "backward(params, cache, g)"
        check_output(g_in, (g.shape[0], self.width_in), self.owner, f"{what}[0], dL/d input,")
        check_output(grads, _shapes(params), self.owner, f"{what}[1], the gradient of its params,")
        return g_in, grads

    def per_example_grads(self, params: Any, cache: Any, g: Array) -> Any:
        terms = self.layer.per_example_grads(params, cache, g)
        want = jax.tree.map(lambda s: (g.shape[0], *s), _shapes(params), is_leaf=_is_shape)
        return check_output(terms, want, self.owner, "per_example_grads(params, cache, g)")

    def per_example_sq_norms(self, params: Any, cache: Any, g: Array) -> Array:
        norms = self.layer.per_example_sq_norms(params, cache, g)
        return check_output(norms, (g.shape[0],), self.owner, "per_example_sq_norms")

    def squared_terms(self, params: Any, cache: Any, gs: Array, per_example: bool) -> Any:
        squares = self.layer.squared_terms(params, cache, gs, per_example)
        lead = (gs.shape[1],) if per_example else ()
        want = jax.tree.map(lambda s: (*lead, *s), _shapes(params), is_leaf=_is_shape)
        return check_output(squares, want, self.owner, "squared_terms")

    def batch_dot(self, params: Any, cache: Any, g: Array) -> Array:
        gram = self.layer.batch_dot(params, cache, g)
        return check_output(gram, (g.shape[0], g.shape[0]), self.owner, "batch_dot")

    def outer_factors(self, cache: Any, g: Array) -> tuple[Array, Array]:
        a, out = self.layer.outer_factors(cache, g)
        check_output(a, (g.shape[-2], self.width_in), self.owner, "outer_factors(cache, g)[0]")
        check_output(out, g.shape, self.owner, "outer_factors(cache, g)[1]")
        return a, out

    def input_curvature(self, params: Any, cache: Any, g: Array) -> Array | None:
        r = self.layer.input_curvature(params, cache, g)
        if r is None:
            return None
        return check_output(r, (g.shape[0], self.width_in), self.owner, "input_curvature")

    def init_state(self, params: Any) -> Any:
        return self.layer.init_state(params)

    def next_state(self, state: Any, cache: Any) -> Any:
        return self.layer.next_state(state, cache)
