"""Gradient parity: `manual_grad` against `jax.grad`, and optionally finite differences.

For users' own gradient-parity tests; `jaxbp check` is built on it.

Kinks. relu and leaky_relu are not differentiable at `z = 0`, and a central difference
whose two points put a pre-activation on opposite sides of 0 measures the average of
two slopes, not the derivative both gradients take there. So each finite-difference
check also runs the forward flow at its two points `theta +- eps v` and flags every
pre-activation entry `z_l[n, j]` of a kinked layer whose branch differs between them,
`(z > 0)` at `theta + eps v` against `theta - eps v`: exactly the entries whose piece of
the activation changes within the step. A leaf whose step flags any entry gets its
finite-difference result reported as "skipped (kink)" rather than counted; its
comparison with `jax.grad`, which kinks do not disturb (both take the left derivative),
still counts. An entry that stays on one side, however close to 0, is not flagged:
along the step the loss is then smooth and the difference is meaningful.
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
from jaxbp._mlp import Params, forward_flow, loss_fn
from jaxbp._validate import resolve

Array = jax.Array

DEFAULT_RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}
"""Default bound on `||manual - autodiff|| / ||autodiff||` per leaf, by parameter dtype."""

FD_EPS = 1e-6
FD_RTOL = 1e-6
"""Central finite differences (always in float64): step, and bound on
`|fd - <g, v>| / ||g||` for a unit direction `v` on one leaf."""

KINKED = ("relu", "leaky_relu")
"""Activations (by name) whose derivative jumps at `z = 0`, where finite differences that
straddle 0 are meaningless. elu (alpha 1) is continuously differentiable there."""


@dataclasses.dataclass(frozen=True)
class LeafParity:
    """Parity of one gradient leaf: max abs and relative error (and finite-difference error).

    `fd_kinks` counts the pre-activation entries whose relu/leaky_relu branch differs
    between the two finite-difference points of this leaf; when it is positive the
    finite-difference check is skipped (`fd_skipped`), and `fd_err` is shown for
    information only.
    """

    path: str
    max_abs_err: float
    rel_err: float
    fd_err: float | None = None
    fd_kinks: int = 0

    @property
    def fd_skipped(self) -> bool:
        return self.fd_kinks > 0


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Per-leaf errors of `manual_grad` against `jax.grad`; `passed` when all are within tolerance.

    `kinks` (with finite differences only): per layer, the number of pre-activation
    entries `z_l[n, j]` that some leaf's finite-difference step carried across a
    relu/leaky_relu kink. `print(report)` shows a table.
    """

    leaves: tuple[LeafParity, ...]
    dtype: str
    rtol: float
    fd_rtol: float | None
    passed: bool
    kinks: tuple[int, ...] | None = None

    @property
    def max_rel_err(self) -> float:
        return max(leaf.rel_err for leaf in self.leaves)

    @property
    def max_fd_err(self) -> float | None:
        """The worst finite-difference error among leaves not skipped for a kink."""
        errs = [
            leaf.fd_err for leaf in self.leaves if leaf.fd_err is not None and not leaf.fd_skipped
        ]
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
                if leaf.fd_skipped:
                    row += f"  skipped (kink: {leaf.fd_kinks} across 0)"
            lines.append(row)
        if self.kinks is not None and any(self.kinks):
            skipped = sum(leaf.fd_skipped for leaf in self.leaves)
            lines.append(
                f"note: fd skipped for {skipped} leaves whose step carries a kinked (relu-like) "
                "pre-activation across 0"
            )
            lines.append(
                f"      (entries crossing, per layer: {list(self.kinks)}); "
                "their autodiff parity still counts"
            )
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
      `jax_enable_x64`); the error is `|fd - <g, v>| / ||g||`, bounded by `FD_RTOL`. A
      leaf whose step carries a relu/leaky_relu pre-activation across 0 is reported as
      "skipped (kink)" instead (see the module docstring), and `report.kinks` counts
      those pre-activations per layer.
    - `key`: for the random directions (default `jax.random.key(0)`).

    Relative errors measure disagreement, and both paths round. In float32 a leaf whose
    gradient is a sum of nearly cancelling terms (the output bias of a well-trained
    network, where y_hat is close to y for most samples) can disagree by more than 1e-5
    with neither path wrong; cast to float64 for a strict verdict, as `jaxbp train` does.
    Both gradients are computed with `jax.default_matmul_precision("highest")`, so that
    an accelerator's reduced-precision float32 matmuls do not blur the comparison.
    """
    if finite_differences and not jax.config.jax_enable_x64:
        raise ValueError(
            "finite_differences=True evaluates the loss in float64, which needs x64: call "
            "jax.config.update('jax_enable_x64', True) first."
        )
    kw = dict(
        activation=activation, loss=loss, output_activation=output_activation, reduction=reduction
    )
    # Full-precision matmuls: on GPUs and TPUs float32 products may otherwise run in
    # tf32/bf16 passes, whose error (~1e-3) would drown the comparison. No effect on CPU.
    with jax.default_matmul_precision("highest"):
        manual = manual_grad(params, x, y, **kw)
        auto = jax.grad(loss_fn)(params, x, y, **kw)
    dtype = str(jnp.result_type(*jax.tree.leaves(params)))
    if rtol is None:
        rtol = DEFAULT_RTOL.get(dtype, 1e-5)

    paths = [
        f"params{jax.tree_util.keystr(p)}" for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    fd_errs: list[float | None] = [None] * len(paths)
    fd_kinks = [0] * len(paths)
    kinks = None
    if finite_differences:
        errs, crossings = _finite_difference_errors(params, x, y, manual, key, kw)
        fd_errs = list(errs)
        fd_kinks = [sum(int(np.sum(c)) for c in leaf) for leaf in crossings]
        kinks = tuple(int(np.sum(np.any(layer, axis=0))) for layer in zip(*crossings, strict=True))

    leaves = []
    pairs = zip(
        paths, jax.tree.leaves(manual), jax.tree.leaves(auto), fd_errs, fd_kinks, strict=True
    )
    for path, m, a, fd, n_kinks in pairs:
        m, a = np.asarray(m, np.float64), np.asarray(a, np.float64)
        leaves.append(LeafParity(path, float(np.max(np.abs(m - a))), _rel(m, a), fd, n_kinks))
    passed = all(leaf.rel_err <= rtol for leaf in leaves) and all(
        leaf.fd_err <= FD_RTOL for leaf in leaves if leaf.fd_err is not None and not leaf.fd_skipped
    )
    fd_rtol = FD_RTOL if finite_differences else None
    return ParityReport(tuple(leaves), dtype, rtol, fd_rtol, passed, kinks)


def _rel(m: np.ndarray, a: np.ndarray) -> float:
    diff, ref = np.linalg.norm(m - a), np.linalg.norm(a)
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / ref)


def _finite_difference_errors(
    params: Params, x: Array, y: Array, grads: Params, key: Array | None, kw: dict[str, Any]
) -> tuple[list[float], list[list[np.ndarray]]]:
    """Per leaf, `|fd - <g, v>| / ||g||` for one random unit direction `v` on that leaf,
    and per leaf and layer a `(batch, n_l)` mask of the kink crossings of its step."""
    as64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    flat, treedef = jax.tree.flatten(jax.tree.map(as64, params))
    x, y = as64(x), jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        y = as64(y)
    setup = resolve(kw["activation"], kw["loss"], kw["output_activation"], kw["reduction"])
    kinked = [setup.hidden.name in KINKED] * (len(params) - 1) + [setup.output.name in KINKED]

    def moved(i: int, v: Array, step: float) -> Params:
        leaves = list(flat)
        leaves[i] = flat[i] + step * v
        return treedef.unflatten(leaves)

    def crossings(i: int, v: Array) -> list[np.ndarray]:
        """Per layer, entries of z_l on different sides of 0 at theta - eps v and + eps v."""
        if not any(kinked):
            return [np.zeros((x.shape[0], np.shape(p["W"])[1]), bool) for p in params]
        sides = [
            forward_flow(moved(i, v, step), x, setup.hidden, setup.output)[0]
            for step in (-FD_EPS, FD_EPS)
        ]
        return [
            np.asarray((lo > 0) != (hi > 0)) if kink else np.zeros(lo.shape, bool)
            for lo, hi, kink in zip(*sides, kinked, strict=True)
        ]

    keys = jax.random.split(jax.random.key(0) if key is None else key, len(flat))
    errs, masks = [], []
    for i, (k, g) in enumerate(zip(keys, jax.tree.leaves(grads), strict=True)):
        v = jax.random.normal(k, flat[i].shape, jnp.float64)
        v = v / jnp.linalg.norm(v)
        ends = [float(loss_fn(moved(i, v, step), x, y, **kw)) for step in (FD_EPS, -FD_EPS)]
        fd = (ends[0] - ends[1]) / (2 * FD_EPS)
        g = np.asarray(g, np.float64)
        norm = float(np.linalg.norm(g))
        errs.append(abs(fd - float(np.vdot(g, v))) / (norm if norm > 0 else 1.0))
        masks.append(crossings(i, v))
    return errs, masks
