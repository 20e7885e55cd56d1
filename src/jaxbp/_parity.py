"""Gradient parity: `manual_grad` against `jax.grad`, and optionally finite differences.

For users' own gradient-parity tests; `jaxbp check` is built on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._activations import Activation
from jaxbp._backprop import manual_grad
from jaxbp._losses import OutputActivation
from jaxbp._mlp import Params, loss_fn

Array = jax.Array

DEFAULT_RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}
"""Default bound on `||manual - autodiff|| / ||autodiff||` per leaf, by parameter dtype."""

FD_EPS = 1e-6
FD_RTOL = 1e-6
"""Central finite differences (always in float64): step, and bound on
`|fd - <g, v>| / ||g||` for a unit direction `v` on one leaf."""


@dataclasses.dataclass(frozen=True)
class LeafParity:
    """Parity of one gradient leaf: max abs and relative error (and finite-difference error)."""

    path: str
    max_abs_err: float
    rel_err: float
    fd_err: float | None = None


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Per-leaf errors of `manual_grad` against `jax.grad`; `passed` when all are within tolerance.

    `print(report)` shows a table.
    """

    leaves: tuple[LeafParity, ...]
    dtype: str
    rtol: float
    fd_rtol: float | None
    passed: bool

    @property
    def max_rel_err(self) -> float:
        return max(leaf.rel_err for leaf in self.leaves)

    @property
    def max_fd_err(self) -> float | None:
        errs = [leaf.fd_err for leaf in self.leaves if leaf.fd_err is not None]
        return max(errs) if errs else None

    def __str__(self) -> str:
        head = f"{'leaf':<16} {'max abs err':>11} {'rel err':>9}"
        if self.fd_rtol is not None:
            head += f" {'fd err':>9}"
        lines = [head]
        for leaf in self.leaves:
            row = f"{leaf.path:<16} {leaf.max_abs_err:>11.2e} {leaf.rel_err:>9.2e}"
            if leaf.fd_err is not None:
                row += f" {leaf.fd_err:>9.2e}"
            lines.append(row)
        verdict = "passed" if self.passed else "FAILED"
        tol = f"rtol {self.rtol:.0e}" + (f", fd rtol {self.fd_rtol:.0e}" if self.fd_rtol else "")
        lines.append(f"{verdict} ({self.dtype}, {tol}; worst rel err {self.max_rel_err:.2e})")
        return "\n".join(lines)


def check_parity(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Activation,
    loss: str,
    output_activation: str | OutputActivation | None = None,
    reduction: str = "mean",
    rtol: float | None = None,
    finite_differences: bool = False,
    key: Array | None = None,
) -> ParityReport:
    """Compare `manual_grad` with `jax.grad(loss_fn)` leaf by leaf.

    Takes the arguments of `jaxbp.loss_fn`, plus:

    - `rtol`: bound on each leaf's `||manual - autodiff|| / ||autodiff||`; defaults by
      the parameters' dtype (`DEFAULT_RTOL`: 1e-12 float64, 1e-5 float32).
    - `finite_differences`: also check each leaf's directional derivative along one
      random unit direction against central differences in float64 (needs
      `jax_enable_x64`); the error is `|fd - <g, v>| / ||g||`, bounded by `FD_RTOL`.
    - `key`: for the random directions (default `jax.random.key(0)`).

    Relative errors measure disagreement, and both paths round. In float32 a leaf whose
    gradient is a sum of nearly cancelling terms (the output bias of a well-trained
    network, where y_hat is close to y for most samples) can disagree by more than 1e-5
    with neither path wrong; cast to float64 for a strict verdict, as `jaxbp train` does.
    """
    if finite_differences and not jax.config.jax_enable_x64:
        raise ValueError(
            "finite_differences=True evaluates the loss in float64, which needs x64: call "
            "jax.config.update('jax_enable_x64', True) first."
        )
    kw = dict(
        activation=activation, loss=loss, output_activation=output_activation, reduction=reduction
    )
    manual = manual_grad(params, x, y, **kw)
    auto = jax.grad(loss_fn)(params, x, y, **kw)
    dtype = str(jnp.result_type(*jax.tree.leaves(params)))
    if rtol is None:
        rtol = DEFAULT_RTOL.get(dtype, 1e-5)

    paths = [
        f"params{jax.tree_util.keystr(p)}" for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    fd_errs: list[float | None] = [None] * len(paths)
    if finite_differences:
        fd_errs = list(_finite_difference_errors(params, x, y, manual, key, kw))

    leaves = []
    pairs = zip(paths, jax.tree.leaves(manual), jax.tree.leaves(auto), fd_errs, strict=True)
    for path, m, a, fd in pairs:
        m, a = np.asarray(m, np.float64), np.asarray(a, np.float64)
        leaves.append(LeafParity(path, float(np.max(np.abs(m - a))), _rel(m, a), fd))
    passed = all(leaf.rel_err <= rtol for leaf in leaves) and all(
        e <= FD_RTOL for e in fd_errs if e is not None
    )
    return ParityReport(tuple(leaves), dtype, rtol, FD_RTOL if finite_differences else None, passed)


def _rel(m: np.ndarray, a: np.ndarray) -> float:
    diff, ref = np.linalg.norm(m - a), np.linalg.norm(a)
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / ref)


def _finite_difference_errors(
    params: Params, x: Array, y: Array, grads: Params, key: Array | None, kw: dict[str, Any]
) -> list[float]:
    """Per leaf, `|fd - <g, v>| / ||g||` for one random unit direction `v` on that leaf."""
    as64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    flat, treedef = jax.tree.flatten(jax.tree.map(as64, params))
    x, y = as64(x), jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        y = as64(y)

    def loss_along(i: int, v: Array, step: float) -> float:
        leaves = list(flat)
        leaves[i] = flat[i] + step * v
        return float(loss_fn(treedef.unflatten(leaves), x, y, **kw))

    keys = jax.random.split(jax.random.key(0) if key is None else key, len(flat))
    errs = []
    for i, (k, g) in enumerate(zip(keys, jax.tree.leaves(grads), strict=True)):
        v = jax.random.normal(k, flat[i].shape, jnp.float64)
        v = v / jnp.linalg.norm(v)
        fd = (loss_along(i, v, FD_EPS) - loss_along(i, v, -FD_EPS)) / (2 * FD_EPS)
        g = np.asarray(g, np.float64)
        norm = float(np.linalg.norm(g))
        errs.append(abs(fd - float(np.vdot(g, v))) / (norm if norm > 0 else 1.0))
    return errs
