"""The losses of eq. 1.2, each a record that owns every fact about it.

Maximum likelihood (eq. 1.2) pairs each loss with a canonical output link:

    loss                  p(y given x)  link      per-sample l                        delta_L
    mse                   N(y_hat, I)   identity  sum_k (y_hat_k - y_k)^2             2 (y_hat - y)
    binary_cross_entropy  Bernoulli     sigmoid   -sum_k y ln y_hat + (1-y) ln(1-y_hat)   y_hat - y
    cross_entropy         multinomial   softmax   -sum_k y_k ln y_hat_k               y_hat - y
    huber                 (robust)      identity  sum_k h_d(y_hat_k - y_k)            clip(r)

with `h_d(r) = r^2 / 2` for `|r| <= d` and `d (|r| - d / 2)` beyond, and its delta
clipped to `[-d, d]` (`jaxbp.huber(d)`; the built-in has `d = 1`, as `optax.huber_loss`).

(For cross_entropy the delta is `y_hat * sum_k y_k - y`, which is `y_hat - y` when the
target row sums to 1, as labels and probability rows do.)

A loss either accepts any output activation (`any_output=True`: its value and delta
are functions of `y_hat = a_L`, and its delta is the general product
`dl/dy_hat * phi_out'(z_L)`, the chapter's sigmoid-under-squared-error case), or only
its canonical link (`any_output=False`: computed from the logits `z_L` in a numerically
stable form, the Jacobian of the link cancelled by hand).

Shapes: `z`, `a = y_hat` and the prepared target `y` are `(batch, n_L)`; `value`
returns `(batch,)`, `delta` returns `(batch, n_L)`, both per sample, before the
reduction over the batch. `curvature(z, a, y, u)` returns `H u`, `(batch, n_L)`, with
`H` the per-sample Hessian of `l` in `y_hat` (any_output) or in `z_L` (link-bound):
the output curvature of the Gauss-Newton matrix (`jaxbp.gnvp`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp._core.activations import (
    ACTIVATIONS,
    SOFTMAX,
    Activation,
    Softmax,
    check_arity,
    record_owner,
)
from jaxbp._core.records import Record
from jaxbp._core.tasks import TASKS, Task
from jaxbp._core.validate import is_real

Array = jax.Array
OutputActivation = Activation | Softmax

__all__ = ["LOSSES", "REDUCTIONS", "Loss", "huber"]

REDUCTIONS = ("mean", "sum")


def get_output_activation(output_activation: Any) -> OutputActivation:
    """An output activation: any activation record or name, or "softmax"."""
    if isinstance(output_activation, (Activation, Softmax)):
        return output_activation
    if output_activation == "softmax":
        return SOFTMAX
    if isinstance(output_activation, str) and output_activation in ACTIVATIONS:
        return ACTIVATIONS[output_activation]
    raise ValueError(
        f"output_activation must be 'softmax', one of the activations "
        f"{sorted(ACTIVATIONS)} or a jaxbp.Activation; got {output_activation!r}."
    )


@dataclasses.dataclass(frozen=True, repr=False)
class Loss(Record):
    """A per-sample loss of eq. 1.2 with everything jaxbp needs to know about it.

    **Arguments:**

    - `name`: how it prints.
    - `value(z, a, y) -> (batch,)`: the loss of each sample.
    - `delta(z, a, y, output) -> (batch, n_L)`: `dl/dz_L` of each sample, written by hand:
      the source of the backward flow of eq. 1.4. `output` is the output activation in
      use; a loss with `any_output=True` returns `output.backward(z, a, dl/dy_hat)`.
    - `link`: the canonical output activation (a name, "softmax", or a record), used
      when `output_activation=None`.
    - `any_output`: whether other output activations are allowed (see the module
      docstring); `False` means value and delta are written for the link's logits.
    - `task`: a `jaxbp.Task` or its name: how targets are checked and prepared, and what
      `jaxbp.evaluate` reports.
    - `curvature(z, a, y, u) -> (batch, n_L)`: `H u` per sample (module docstring), or
      `None`; `jaxbp.gnvp` and the curvature quantities need it.
    - `curvature_sqrt(z, a, y) -> (batch, n_L, C)`: a factor `S` with `H = S S^T` per
      sample, or `None` (then one is built from `curvature` by `eigh`): the columns
      `jaxbp.diag_ggn` and K-FAC push back through eq. 1.4.
    - `curvature_sample(z, a, y, key) -> (batch, n_L)`: one Monte Carlo column `v` with
      `E[v v^T] = H` per sample (the built-in cross-entropies: the output delta at a target
      drawn from the model), or `None` (then `S e`, `e ~ N(0, I)`).

    The signatures are checked when the record is built. Example, a user's own robust
    regression loss (log-cosh):

    ```python
    logcosh = jaxbp.Loss(
        "logcosh",
        value=lambda z, a, y: jnp.sum(jnp.logaddexp(a - y, y - a) - jnp.log(2.0), axis=-1),
        delta=lambda z, a, y, output: output.backward(z, a, jnp.tanh(a - y)),
        curvature=lambda z, a, y, u: (1 - jnp.tanh(a - y) ** 2) * u,
    )
    ```
    """

    name: str
    value: Callable[[Array, Array, Array], Array]
    delta: Callable[[Array, Array, Array, OutputActivation], Array]
    link: Any = "identity"
    any_output: bool = True
    task: Any = "regression"
    curvature: Callable[[Array, Array, Array, Array], Array] | None = None
    curvature_sqrt: Callable[[Array, Array, Array], Array] | None = None
    curvature_sample: Callable[[Array, Array, Array, Array], Array] | None = None

    def __post_init__(self) -> None:
        owner = record_owner("Loss", self.name)
        check_arity(owner, "value", self.value, "z, a, y")
        check_arity(owner, "delta", self.delta, "z, a, y, output")
        optional = (
            ("curvature", "z, a, y, u"),
            ("curvature_sqrt", "z, a, y"),
            ("curvature_sample", "z, a, y, key"),
        )
        for field, args in optional:
            if getattr(self, field) is not None:
                check_arity(owner, field, getattr(self, field), args)
        try:
            link = get_output_activation(self.link)
        except ValueError as err:
            raise ValueError(f"{owner}: link: {err}") from None
        object.__setattr__(self, "link", link)
        task = self.task
        if isinstance(task, str):
            if task not in TASKS:
                raise ValueError(
                    f"{owner}: task must be one of {sorted(TASKS)} or a jaxbp.Task; got {task!r}."
                )
            task = TASKS[task]
        if not isinstance(task, Task):
            raise TypeError(
                f"{owner}: task must be a name or a jaxbp.Task; got {type(task).__name__}."
            )
        object.__setattr__(self, "task", task)
        if not isinstance(self.any_output, bool):
            raise TypeError(f"{owner}: any_output must be a bool; got {self.any_output!r}.")

    @property
    def _builtin(self) -> bool:
        return LOSSES.get(self.name) == self

    def targets(self, y: Any, batch: int, n_out: int, dtype: Any) -> Array:
        """`y` checked and prepared by the task: float `(batch, n_L)` of `dtype`."""
        return self.task.prepare(y, batch, n_out, dtype, f"loss={self.name!r}")

    def sample_losses(self, z: Array, a: Array, y: Array) -> Array:
        """`value(z, a, y)`, checked to be one loss per sample, `(batch,)`."""
        losses = self.value(z, a, y)
        if jnp.shape(losses) != z.shape[:1]:
            raise ValueError(
                f"{record_owner('Loss', self.name)}: value must return one loss per sample, "
                f"shape {z.shape[:1]}; it returned shape {jnp.shape(losses)}. Sum over the "
                "output axis only, e.g. jnp.sum(..., axis=-1), not over the batch."
            )
        return losses

    def output_delta(self, z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
        """`delta(z, a, y, output)`, checked to be `dl/dz_L` per sample, `(batch, n_L)`."""
        delta = self.delta(z, a, y, output)
        if jnp.shape(delta) != z.shape:
            raise ValueError(
                f"{record_owner('Loss', self.name)}: delta must return dl/dz_L per sample, "
                f"shape {z.shape} (that of z_L); it returned shape {jnp.shape(delta)}."
            )
        return delta

    def accepts(self, output: OutputActivation) -> bool:
        """Whether this loss may sit on `output`."""
        return self.any_output or output == self.link

    def curvature_times(self, z: Array, a: Array, y: Array, u: Array) -> Array:
        """`curvature(z, a, y, u)`, checked to be `H u` per sample, of `u`'s shape."""
        hu = self.curvature(z, a, y, u)
        return self._checked(hu, u.shape, "curvature(z, a, y, u), H u per sample,")

    def _checked(self, value: Any, shape: tuple[int, ...], what: str) -> Array:
        """A user's output, refused (naming the record) unless it has `shape`."""
        if jnp.shape(value) != shape:
            raise ValueError(
                f"{record_owner('Loss', self.name)}: {what} must return shape {shape}; it "
                f"returned shape {jnp.shape(value)}. Fix that function of the record."
            )
        return value

    def sqrt_curvature(self, z: Array, a: Array, y: Array) -> Array:
        """`S: (batch, n_L, C)` with `H = S S^T` per sample, `H` the output curvature of
        `curvature` (module docstring): the record's `curvature_sqrt`, or, without one, a
        symmetric square root of `H` built from `curvature` column by column (`eigh`,
        negative eigenvalues of rounding clipped to 0)."""
        if self.curvature_sqrt is not None:
            s = self.curvature_sqrt(z, a, y)
            columns = jnp.shape(s)[-1] if jnp.ndim(s) == 3 else 0
            return self._checked(s, (*z.shape, columns), "curvature_sqrt(z, a, y), S per sample,")
        if self.curvature is None:
            raise ValueError(
                f"{record_owner('Loss', self.name)} has no curvature, so the Gauss-Newton "
                "matrix and its approximations are undefined for it: give it curvature(z, a, "
                "y, u) -> H u (and, for speed, curvature_sqrt(z, a, y) -> S with H = S S^T)."
            )
        columns = jnp.broadcast_to(
            jnp.eye(z.shape[1], dtype=z.dtype), (z.shape[0], *z.shape[1:], z.shape[1])
        )
        h = jax.vmap(lambda u: self.curvature_times(z, a, y, u), in_axes=2, out_axes=2)(columns)
        w, v = jnp.linalg.eigh((h + jnp.swapaxes(h, 1, 2)) / 2)
        return v * jnp.sqrt(jnp.maximum(w, 0))[:, None, :]

    def sample_curvature(self, z: Array, a: Array, y: Array, key: Array, samples: int) -> Array:
        """`V: (batch, n_L, samples)` whose columns `v` have `E[v v^T] = H` per sample (the
        Monte Carlo factor): the record's `curvature_sample` (one column a key), or `S e`
        with `e ~ N(0, I)` and `S` of `sqrt_curvature`."""
        keys = jax.random.split(key, samples)
        if self.curvature_sample is not None:
            what = "curvature_sample(z, a, y, key), one column v per sample,"
            draw = lambda k: self._checked(self.curvature_sample(z, a, y, k), z.shape, what)  # noqa: E731
            return jax.vmap(draw, out_axes=2)(keys)
        s = self.sqrt_curvature(z, a, y)
        e = jax.random.normal(key, (z.shape[0], s.shape[2], samples), z.dtype)
        return s @ e


def _mse_value(z: Array, a: Array, y: Array) -> Array:
    del z
    return jnp.sum((a - y) ** 2, axis=-1)


def _mse_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # The general product: dl/dy_hat = 2 (y_hat - y), through the output's derivative.
    return output.backward(z, a, 2 * (a - y))


def _mse_curvature(z: Array, a: Array, y: Array, u: Array) -> Array:
    del z, a, y
    return 2 * u  # d^2 l / dy_hat^2 = 2 I


def _diagonal(d: Array) -> Array:
    """`(batch, K) -> (batch, K, K)`: each row on a diagonal."""
    return d[:, :, None] * jnp.eye(d.shape[1], dtype=d.dtype)[None]


def _mse_sqrt(z: Array, a: Array, y: Array) -> Array:
    del z, y
    return _diagonal(jnp.full_like(a, 2**0.5))  # sqrt(2) I


def _mse_sample(z: Array, a: Array, y: Array, key: Array) -> Array:
    del z, y
    return 2**0.5 * jax.random.normal(key, a.shape, a.dtype)  # E[v v^T] = 2 I


def _bce_value(z: Array, a: Array, y: Array) -> Array:
    # -(y ln sigma(z) + (1 - y) ln(1 - sigma(z))) = softplus(z) - y z, stable for any z.
    del a
    return jnp.sum(jax.nn.softplus(z) - y * z, axis=-1)


def _bce_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # sigma'(z) cancels the 1 / (y_hat (1 - y_hat)) of dl/dy_hat.
    del z, output
    return a - y


def _bce_curvature(z: Array, a: Array, y: Array, u: Array) -> Array:
    del z, y
    return a * (1 - a) * u  # d^2 l / dz^2 = diag(sigma (1 - sigma))


def _bce_sqrt(z: Array, a: Array, y: Array) -> Array:
    del z, y
    return _diagonal(jnp.sqrt(a * (1 - a)))


def _bce_sample(z: Array, a: Array, y: Array, key: Array) -> Array:
    # the output delta at a target drawn from the model: E[(a - t)(a - t)^T] = diag(a (1 - a))
    del z, y
    return a - jax.random.bernoulli(key, a).astype(a.dtype)


def _ce_value(z: Array, a: Array, y: Array) -> Array:
    # -sum_k y_k (z_k - logsumexp(z)), stable for any z.
    del a
    lse = jax.nn.logsumexp(z, axis=-1)
    return lse * jnp.sum(y, axis=-1) - jnp.sum(y * z, axis=-1)


def _ce_delta(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
    # The softmax Jacobian cancels 1 / y_hat; equals y_hat - y when the row of y sums to 1.
    del z, output
    return a * jnp.sum(y, axis=-1, keepdims=True) - y


def _ce_curvature(z: Array, a: Array, y: Array, u: Array) -> Array:
    # d^2 l / dz^2 = (sum_k y_k) (diag(y_hat) - y_hat y_hat^T)
    del z
    mass = jnp.sum(y, axis=-1, keepdims=True)
    return mass * a * (u - jnp.sum(a * u, axis=-1, keepdims=True))


def _ce_sqrt(z: Array, a: Array, y: Array) -> Array:
    # column k: sqrt(y_hat_k) (e_k - y_hat); S S^T = diag(y_hat) - y_hat y_hat^T (sum y_hat = 1)
    del z
    root = jnp.sqrt(a)
    s = _diagonal(root) - a[:, :, None] * root[:, None, :]
    return jnp.sqrt(jnp.sum(y, axis=-1))[:, None, None] * s


def _ce_sample(z: Array, a: Array, y: Array, key: Array) -> Array:
    # the output delta at a label drawn from the model: E[v v^T] = diag(y_hat) - y_hat y_hat^T
    drawn = jax.nn.one_hot(jax.random.categorical(key, z), a.shape[1], dtype=a.dtype)
    return jnp.sqrt(jnp.sum(y, axis=-1, keepdims=True)) * (a - drawn)


def huber(delta: float = 1.0) -> Loss:
    """The Huber loss, robust regression: `h_d(r) = r^2 / 2` for `|r| <= d`, else
    `d (|r| - d / 2)`, summed over the outputs; `r = y_hat - y`, `d = delta > 0`.

    Its delta is `dl/dy_hat = clip(r, -d, d)` through the output's derivative (any output
    activation), its curvature in `y_hat` is `1{|r| <= d}`.
    """
    if not is_real(delta):
        raise TypeError(f"huber delta must be a number > 0; got {delta!r}.")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"huber delta must be finite and > 0, e.g. 1.0; got {delta!r}.")
    d = float(delta)
    return LOSSES["huber"] if d == 1.0 else _huber(d)  # the built-in record at d = 1


def _huber(d: float) -> Loss:
    """The record of `huber(d)`, `d` checked."""

    def value(z: Array, a: Array, y: Array) -> Array:
        del z
        r = jnp.abs(a - y)
        quadratic = jnp.minimum(r, d)  # the part of |r| within d
        return jnp.sum(0.5 * quadratic**2 + d * (r - quadratic), axis=-1)

    def dl(z: Array, a: Array, y: Array, output: OutputActivation) -> Array:
        return output.backward(z, a, jnp.clip(a - y, -d, d))

    def curvature(z: Array, a: Array, y: Array, u: Array) -> Array:
        del z
        return jnp.where(jnp.abs(a - y) <= d, u, jnp.zeros_like(u))

    def sqrt(z: Array, a: Array, y: Array) -> Array:
        del z
        return _diagonal((jnp.abs(a - y) <= d).astype(a.dtype))

    name = "huber" if d == 1.0 else f"huber(delta={d:g})"
    return Loss(name, value, dl, "identity", True, "regression", curvature, sqrt)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "mse",
            _mse_value,
            _mse_delta,
            "identity",
            True,
            "regression",
            _mse_curvature,
            _mse_sqrt,
            _mse_sample,
        ),
        Loss(
            "binary_cross_entropy",
            _bce_value,
            _bce_delta,
            "sigmoid",
            False,
            "binary",
            _bce_curvature,
            _bce_sqrt,
            _bce_sample,
        ),
        Loss(
            "cross_entropy",
            _ce_value,
            _ce_delta,
            "softmax",
            False,
            "classification",
            _ce_curvature,
            _ce_sqrt,
            _ce_sample,
        ),
        _huber(1.0),
    )
}
"""The built-in losses by name."""


def get_loss(loss: Any) -> Loss:
    """Look up a loss by name, or pass a `Loss` record through."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"loss must be a name (str) or a jaxbp.Loss; got {type(loss).__name__} {loss!r}."
        )
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(
            f"loss must be one of {sorted(LOSSES)} or a jaxbp.Loss; got {loss!r}."
        ) from None
