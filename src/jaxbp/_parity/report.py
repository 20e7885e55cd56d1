"""Gradient parity: `manual_grad` against `jax.grad`, and optionally finite differences.

For users' own gradient-parity tests; `jaxbp check` is built on it.

Kinks. relu and leaky_relu are not differentiable at `z = 0` (their records say so:
`Activation.kinks`), and a central difference whose two points put a pre-activation on
opposite sides of a kink measures the average of two slopes, not the derivative both
gradients take there. So each finite-difference check also runs the forward flow at its
two points `theta +- eps v` and flags every pre-activation entry `z_l[n, j]` whose side
of some kink `k` of its activation, `(z > k)`, differs between `theta + eps v` and
`theta - eps v`: exactly the entries whose piece of the activation changes within the
step. A leaf whose step flags any entry gets its
finite-difference result reported as "skipped (kink)" rather than counted; its
comparison with `jax.grad`, which kinks do not disturb (both take the left derivative),
still counts. An entry that stays on one side, however close to 0, is not flagged:
along the step the loss is then smooth and the difference is meaningful.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._core.backprop import cast_like, gradient
from jaxbp._core.config import Config, Keywords
from jaxbp._core.flow import forward_flow, loss_value
from jaxbp._core.network import Network, Params, resolve
from jaxbp._core.validate import check_key, check_real

if TYPE_CHECKING:
    from typing_extensions import Unpack

Array = jax.Array

DEFAULT_RTOL = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}
"""Default bound on `||manual - autodiff|| / ||autodiff||` per leaf, by parameter dtype."""

FD_EPS = 1e-6
FD_RTOL = 1e-6
"""Central finite differences (always in float64): step, and bound on
`|fd - <g, v>| / ||g||` for a unit direction `v` on one leaf."""


@dataclasses.dataclass(frozen=True)
class LeafParity:
    """Parity of one gradient leaf: max abs and relative error (and finite-difference error).

    `abs_err` is `||manual - autodiff||` and `ref_norm` `||autodiff||` (so `rel_err` is
    their ratio). `fd_kinks` counts the pre-activation entries whose side of a kink
    differs between the two finite-difference points of this leaf; when it is positive
    the finite-difference check is skipped (`fd_skipped`), and `fd_err` is shown for
    information only.
    """

    path: str
    max_abs_err: float
    rel_err: float
    fd_err: float | None = None
    fd_kinks: int = 0
    abs_err: float = 0.0
    ref_norm: float = 0.0

    @property
    def fd_skipped(self) -> bool:
        return self.fd_kinks > 0


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Per-leaf errors of `manual_grad` against `jax.grad`; `passed` when all are within tolerance.

    `kinks` (with finite differences only): per layer, the number of pre-activation
    entries `z_l[n, j]` that some leaf's finite-difference step carried across a kink of
    its activation. `print(report)` shows a table; `report.assert_passed()` raises an
    `AssertionError` whose message is that table, for tests.
    """

    leaves: tuple[LeafParity, ...]
    dtype: str
    rtol: float
    fd_rtol: float | None
    passed: bool
    kinks: tuple[int, ...] | None = None
    atol: float = 0.0
    setting: str = ""

    def leaf_passed(self, leaf: LeafParity) -> bool:
        """`||manual - autodiff|| <= atol + rtol ||autodiff||`, and its finite difference."""
        ok = leaf.max_abs_err == 0 or leaf.abs_err <= self.atol + self.rtol * leaf.ref_norm
        if self.fd_rtol is not None and leaf.fd_err is not None and not leaf.fd_skipped:
            ok = ok and leaf.fd_err <= self.fd_rtol
        return ok

    def assert_passed(self) -> None:
        """Raise `AssertionError` with the table (failing leaves marked) unless `passed`."""
        if not self.passed:
            raise AssertionError(f"gradient parity failed{self.setting}:\n{self}")

    @property
    def max_rel_err(self) -> float:
        return max(leaf.rel_err for leaf in self.leaves)

    @property
    def grad_norm(self) -> float:
        """`||jax.grad||` over all leaves: the scale of `atol="auto"` (over `rtol`)."""
        return math.sqrt(sum(leaf.ref_norm**2 for leaf in self.leaves))

    def scaled_err(self, leaf: LeafParity) -> float:
        """`||manual - autodiff|| / (atol / rtol + ||autodiff||)`: the leaf's relative error
        on the scale the verdict uses, which passes it when at most `rtol` (`rel_err` when
        `atol` is 0; `inf` for an error on a leaf whose scale is 0). With `rtol = 0` the
        verdict is absolute and has no relative scale: 0 within `atol`, `inf` beyond."""
        if leaf.abs_err == 0:
            return 0.0
        if self.rtol == 0:
            return 0.0 if leaf.abs_err <= self.atol else math.inf
        scale = gradient_floor(self.atol, self.rtol) + leaf.ref_norm
        return leaf.abs_err / scale if scale > 0 else math.inf

    @property
    def max_scaled_err(self) -> float:
        """The worst leaf's `scaled_err`: the relative error on the verdict's scale
        (`max_rel_err` when `atol` is 0)."""
        return max(self.scaled_err(leaf) for leaf in self.leaves)

    @property
    def max_fd_err(self) -> float | None:
        """The worst finite-difference error among leaves not skipped for a kink."""
        errs = [
            leaf.fd_err for leaf in self.leaves if leaf.fd_err is not None and not leaf.fd_skipped
        ]
        return max(errs) if errs else None

    def __str__(self) -> str:
        head = f"  {'leaf':<16} {'max abs err':>11} {'rel err':>9}"
        if self.fd_rtol is not None:
            head += f" {'fd err':>9}"
        lines = [head]
        for leaf in self.leaves:
            mark = "  " if self.leaf_passed(leaf) else "x "
            row = f"{mark}{leaf.path:<16} {leaf.max_abs_err:>11.2e} {leaf.rel_err:>9.2e}"
            if leaf.fd_err is not None:
                row += f" {leaf.fd_err:>9.2e}"
                if leaf.fd_skipped:
                    row += f"  skipped (kink: {leaf.fd_kinks} across one)"
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
        verdict = "passed" if self.passed else "FAILED (x: the leaves out of tolerance)"
        tol = f"rtol {self.rtol:.0e}"
        tol += f", atol {self.atol:.1e}" if self.atol else ""
        tol += f", fd rtol {self.fd_rtol:.0e}" if self.fd_rtol else ""
        lines.append(f"{verdict} ({self.dtype}, {tol}; worst rel err {self.max_rel_err:.2e})")
        if not self.passed:
            lines.append(f"try: {self.advice}")
        return "\n".join(lines)

    @property
    def advice(self) -> str:
        """What to try after a failure, from how the failing leaves failed."""
        failing = [leaf for leaf in self.leaves if not self.leaf_passed(leaf)]
        if self.atol == 0 and all(leaf.abs_err <= self.rtol * self.grad_norm for leaf in failing):
            return (
                "atol='auto'. The failing leaves are off by less than rtol times the whole "
                "gradient: their own gradients cancel to (nearly) 0, and rounding is all "
                "there is of them. A layer that makes the bias before it exactly 0 (batch "
                "norm) says so with zeroes_preceding_bias = True, and atol=None picks 'auto'."
            )
        if self.dtype != "float64":
            return (
                "the same check in float64 (jax.config.update('jax_enable_x64', True), "
                "params and x cast): float32 rounding of a cancelling sum can exceed rtol."
            )
        return (
            "a leaf off on the scale of the whole gradient in float64 is a wrong "
            "derivative: look at the backward of the layer (or the delta of the loss, the "
            "derivative of the activation) that the leaf belongs to. Unless the network is "
            "well trained: its gradient is then a difference of nearly equal terms (y_hat "
            "close to y), whose rounding alone can exceed rtol on its scale; judge it on the "
            "scale of the gradient at initialisation, atol = rtol * report0.grad_norm (report0 "
            "a check there), as jaxbp train does."
        )


def gradient_floor(atol: float, rtol: float) -> float:
    """`atol / rtol`, the gradient norm below which a leaf's error counts as absolute: the
    verdict `err <= atol + rtol ref` is `err / (atol / rtol + ref) <= rtol`. 0 when
    `rtol` is 0."""
    return atol / rtol if rtol > 0 else 0.0


def default_atol(
    params: Params, config: Config | Network | None = None, **keywords: Any
) -> float | str:
    """The `atol` a parity check of this network takes by default (`check_parity`'s
    `atol=None`): "auto", error on the scale of the gradient, when some layer makes a
    gradient leaf exactly 0 (its record's `zeroes_preceding_bias`: the bias before a
    batch norm, whose relative error is rounding over rounding); else 0.0, purely
    relative."""
    return network_atol(resolve(config, keywords, params, need_loss=False)[0])


def network_atol(net: Network) -> float | str:
    """`default_atol` of a network."""
    return "auto" if any(layer.zeroes_preceding_bias for layer in net.layers) else 0.0


def check_parity(
    params: Params,
    x: Array,
    y: Array,
    config: Config | Network | None = None,
    *,
    rtol: float | None = None,
    atol: float | str | None = None,
    finite_differences: bool = False,
    key: Array | None = None,
    compiled: bool = True,
    **keywords: Unpack[Keywords],
) -> ParityReport:
    """Compare `manual_grad` with `jax.grad(loss_fn)` leaf by leaf.

    Takes the arguments of `jaxbp.loss_fn`, plus:

    - `rtol`, `atol`: each leaf passes when `||manual - autodiff|| <= atol + rtol
      ||autodiff||` (the rule of `numpy.allclose`, on the leaf's norm). `rtol` defaults
      by the parameters' dtype (`DEFAULT_RTOL`: 1e-12 float64, 1e-5 float32). `atol=0`
      is purely relative, per leaf. `atol="auto"` is `rtol` times the norm of the whole
      gradient: error judged on the scale of the gradient. Use it where a leaf's
      gradient cancels to (nearly) nothing, so that both paths' rounding is all there is
      of it: the bias before a batch normalisation (exactly 0), a well-trained network's
      output bias. A wrong derivative is off on the scale of the gradient and still
      fails. `atol=None`, the default, picks by the network's layer records
      (`default_atol`): "auto" where a layer makes a leaf exactly 0, else 0. A failing
      report ends with what to try (`ParityReport.advice`).
    - `finite_differences`: also check each leaf's directional derivative along one
      random unit direction against central differences in float64 (needs
      `jax_enable_x64`); the error is `|fd - <g, v>| / ||g||` (with `||g||` at least
      `atol / rtol`, the gradient scale), bounded by `FD_RTOL`. A
      leaf whose step carries a pre-activation across a kink of its activation is
      reported as "skipped (kink)" instead (see the module docstring), and
      `report.kinks` counts those pre-activations per layer.
    - `key`: a `jax.random` key (typed, or raw `uint32` data) for the random directions
      (default `jax.random.key(0)`); a network with dropout draws both gradients' masks
      from it too (folded with 1), the same masks. Checked even when nothing draws from it.
    - `compiled`: both gradients in one compiled program (default: the first check of a
      network compiles once, then repeats are quick). `False` runs them op by op, whose
      small programs are shared by every network of the same shapes: quicker for a grid
      of many networks checked once each (`parity_grid` does so).

    Relative errors measure disagreement, and both paths round. In float32 a leaf whose
    gradient is a sum of nearly cancelling terms (the output bias of a well-trained
    network, where y_hat is close to y for most samples) can disagree by more than 1e-5
    with neither path wrong; cast to float64 for a strict verdict, as `jaxbp train` does.
    Train on, and float64 meets the same wall: each output delta `y_hat - y` rounds on the
    scale of `y` however small it gets (`jaxbp train` on moons: after 600 epochs the
    gradient is 5e-5 of its norm at initialisation, and rounding 31 times `rtol` on its
    scale). Judge a trained network on the scale of the gradient at initialisation, `atol
    = rtol * report0.grad_norm` (`report0` a check there), as `jaxbp train` does; a wrong
    derivative is still off on the trained gradient's scale, far above that.
    Both gradients are computed with `jax.default_matmul_precision("highest")`, so that
    an accelerator's reduced-precision float32 matmuls do not blur the comparison.
    """
    net, _ = resolve(config, keywords, params)
    x = net.check_x(x)
    if not isinstance(finite_differences, (bool, np.bool_)):
        raise TypeError(
            f"finite_differences must be True or False; got {type(finite_differences).__name__} "
            f"{finite_differences!r}. Pass finite_differences=True to add the float64 check."
        )
    if not isinstance(compiled, (bool, np.bool_)):
        raise TypeError(
            f"compiled must be True or False; got {type(compiled).__name__} {compiled!r}. "
            "Pass compiled=False to run a check op by op (quicker for many networks)."
        )
    if rtol is not None:
        meaning = "the bound on each leaf's relative error; or None: by dtype, DEFAULT_RTOL"
        rtol = check_real("rtol", rtol, meaning, "Pass e.g. rtol=1e-5.", low=0)
    if key is not None:
        check_key(key)
    if finite_differences and not jax.config.jax_enable_x64:
        raise ValueError(
            "finite_differences=True evaluates the loss in float64, which needs x64: call "
            "jax.config.update('jax_enable_x64', True) first."
        )
    if atol is None:
        atol = network_atol(net)
    meaning = "0: purely relative; or 'auto': rtol times the gradient's norm; or None"
    if isinstance(atol, str) and atol != "auto":
        raise ValueError(
            f"atol must be a finite real number >= 0 ({meaning}); got {atol!r}. "
            "Pass e.g. atol='auto'."
        )
    if not isinstance(atol, str):
        atol = check_real("atol", atol, meaning, "Pass e.g. atol='auto'.", low=0)
    # Full-precision matmuls: on GPUs and TPUs float32 products may otherwise run in
    # tf32/bf16 passes, whose error (~1e-3) would drown the comparison. No effect on CPU.
    key = jax.random.key(0) if key is None else key
    masks = jax.random.fold_in(key, 1) if net.random else None
    net.context(True, masks)  # checked here, eagerly; the targets too, by their task:
    dtype = jnp.result_type(x, *jax.tree.leaves(params))
    y = net.loss.targets(y, x.shape[0], net.n_out, dtype)
    with jax.default_matmul_precision("highest"):
        manual, auto = (_gradients if compiled else _both_gradients)(net, params, x, y, masks)
    dtype = str(jnp.result_type(*jax.tree.leaves(params)))
    if rtol is None:
        rtol = DEFAULT_RTOL.get(dtype, 1e-5)

    if atol == "auto":
        atol = rtol * float(np.sqrt(sum(np.sum(np.square(a)) for a in jax.tree.leaves(auto))))
    floor = gradient_floor(atol, rtol)

    paths = [
        f"params{jax.tree_util.keystr(p)}" for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    fd_errs: list[float | None] = [None] * len(paths)
    fd_kinks = [0] * len(paths)
    kinks = None
    if finite_differences:
        gaps, crossings = _finite_difference_errors(net, params, x, y, manual, key, masks)
        norms = [float(np.linalg.norm(np.asarray(g, np.float64))) for g in jax.tree.leaves(manual)]
        fd_errs = [gap / (max(norm, floor) or 1.0) for gap, norm in zip(gaps, norms, strict=True)]
        fd_kinks = [sum(int(np.sum(c)) for c in leaf) for leaf in crossings]
        kinks = tuple(int(np.sum(np.any(layer, axis=0))) for layer in zip(*crossings, strict=True))

    leaves = []
    pairs = zip(
        paths, jax.tree.leaves(manual), jax.tree.leaves(auto), fd_errs, fd_kinks, strict=True
    )
    for path, m, a, fd, n_kinks in pairs:
        m, a = np.asarray(m, np.float64), np.asarray(a, np.float64)
        diff, ref = float(np.linalg.norm(m - a)), float(np.linalg.norm(a))
        leaves.append(
            LeafParity(path, float(np.max(np.abs(m - a))), _rel(m, a), fd, n_kinks, diff, ref)
        )
    fd_rtol = FD_RTOL if finite_differences else None
    setting = (
        f" ({net.describe()}, loss {net.loss.name!r}, output {net.output.name!r}, "
        f"reduction {net.config.reduction!r})"
    )
    report = ParityReport(tuple(leaves), dtype, rtol, fd_rtol, True, kinks, float(atol), setting)
    passed = all(report.leaf_passed(leaf) for leaf in leaves)
    return dataclasses.replace(report, passed=passed)


def assert_parity(
    params: Params, x: Array, y: Array, config: Config | Network | None = None, **kwargs: Any
) -> ParityReport:
    """`check_parity(...)`, raising an `AssertionError` with its table unless it passed.

    For pytest: the message names the activation, loss, dtype and tolerances and marks
    each failing leaf with `x`. Returns the report when it passed.
    """
    report = check_parity(params, x, y, config, **kwargs)
    report.assert_passed()
    return report


def _rel(m: np.ndarray, a: np.ndarray) -> float:
    diff, ref = np.linalg.norm(m - a), np.linalg.norm(a)
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / ref)


def _both_gradients(
    net: Network, params: Params, x: Array, y: Array, masks: Any
) -> tuple[Any, Any]:
    """Eqs. 1.3-1.4 by hand, and `jax.grad` of the same loss."""
    manual = cast_like(gradient(net, params, x, y, masks)[2].grads, params)
    auto = jax.grad(loss_value, argnums=1)(net, params, x, y, net.context(True, masks))
    return manual, auto


_gradients = jax.jit(_both_gradients)
"""Both gradients in one compiled program (a parity check of the same network and shapes
compiles once)."""


@jax.jit
def _loss(net: Network, params: Params, x: Array, y: Array, masks: Any) -> Array:
    return loss_value(net, params, x, y, net.context(True, masks))


def _finite_difference_errors(
    net: Network, params: Params, x: Array, y: Array, grads: Params, key: Array, masks: Any
) -> tuple[list[float], list[list[np.ndarray]]]:
    """Per leaf, `|fd - <g, v>|` for one random unit direction `v` on that leaf, and per
    leaf and layer a `(batch, n_l)` mask of the kink crossings of its step."""
    as64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    flat, treedef = jax.tree.flatten(jax.tree.map(as64, params))
    x, y = as64(x), jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        y = as64(y)

    def moved(i: int, v: Array, step: float) -> Params:
        leaves = list(flat)
        leaves[i] = flat[i] + step * v
        return treedef.unflatten(leaves)

    def pre_activations(p: Params) -> list[tuple[Array, Any]]:
        """`(z_l, its activation)` for every activation of the body, then `(z_L, output)`."""
        flow = forward_flow(net, p, x, net.context(True, masks))
        hidden = [
            (cache[0], layer.phi)
            for layer, cache in zip(net.layers, flow.caches, strict=True)
            if layer.phi is not None
        ]
        return [*hidden, (flow.z, net.output)]

    kinked = any(act.kinks for _, act in pre_activations(treedef.unflatten(flat)))

    def crossings(i: int, v: Array) -> list[np.ndarray]:
        """Per layer, entries of z_l on different sides of a kink at theta -+ eps v."""
        if not kinked:
            return [np.zeros(z.shape, bool) for z, _ in pre_activations(treedef.unflatten(flat))]
        lo, hi = (pre_activations(moved(i, v, step)) for step in (-FD_EPS, FD_EPS))
        return [
            np.asarray(act.crossings(z0, z1)) for (z0, act), (z1, _) in zip(lo, hi, strict=True)
        ]

    keys = jax.random.split(key, len(flat))
    errs, kink_masks = [], []
    for i, (k, g) in enumerate(zip(keys, jax.tree.leaves(grads), strict=True)):
        v = jax.random.normal(k, flat[i].shape, jnp.float64)
        v = v / jnp.linalg.norm(v)
        ends = [float(_loss(net, moved(i, v, step), x, y, masks)) for step in (FD_EPS, -FD_EPS)]
        fd = (ends[0] - ends[1]) / (2 * FD_EPS)
        errs.append(abs(fd - float(np.vdot(np.asarray(g, np.float64), v))))
        kink_masks.append(crossings(i, v))
    return errs, kink_masks
