"""Figure 1.11: the sigmoid and its derivative, beside the derivatives of every activation.

Every curve is drawn from the library's own handwritten derivative,
`act.deriv(z, act.fn(z))` for each `act` in `jaxbp.ACTIVATIONS`, and each is checked
against `jax.grad(act.fn)` on the plotted grid, in float32 and float64.

Writes under `--out` (default experiments/results): fig_activations.png, .json, .md.
Numbers: each derivative's maximum and where it is attained, its value at 0, at
z = +-5 and +-10 (how fast it vanishes), and the worst gap to jax.grad.

Usage: python experiments/fig_activations.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the numbers are float64; float32 is checked too

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxbp  # noqa: E402
from _common import log, make_parser, write_results  # noqa: E402
from jaxbp.app.plots import pyplot  # noqa: E402

PROBES = (-10.0, -5.0, 0.0, 5.0, 10.0)


def handwritten(act: jaxbp.Activation, z: jax.Array) -> jax.Array:
    """phi'(z) by the library's handwritten derivative, given z and the stored a = phi(z)."""
    return act.deriv(z, act.fn(z))


def autodiff(act: jaxbp.Activation, z: jax.Array) -> jax.Array:
    """phi'(z) by jax.grad, point by point."""
    return jax.vmap(jax.grad(act.fn))(z)


def summarise(act: jaxbp.Activation, z: np.ndarray) -> dict:
    """Max and argmax of phi' on the grid `z` (float64), its values at PROBES, and the
    worst |handwritten - jax.grad| on the grid in float32 and float64."""
    d = np.asarray(handwritten(act, jnp.asarray(z, jnp.float64)))
    top = float(d.max())
    at_top = z[d >= top - 1e-9 * max(abs(top), 1.0)]  # a plateau (relu, identity) is a range
    probes = np.asarray(handwritten(act, jnp.asarray(PROBES, jnp.float64)))
    check = {}
    for dtype in (jnp.float32, jnp.float64):
        zz = jnp.asarray(z, dtype)
        err = np.abs(np.asarray(handwritten(act, zz), np.float64) - np.asarray(autodiff(act, zz)))
        worst = int(np.argmax(err))
        check[jnp.dtype(dtype).name] = {"max_abs_err": float(err[worst]), "at_z": float(z[worst])}
    return {
        "max": top,
        "argmax": float(z[int(np.argmax(d))]),
        "max_attained_on": [float(at_top.min()), float(at_top.max())],
        "at": {f"{p:g}": float(v) for p, v in zip(PROBES, probes)},
        "vs_jax_grad": check,
    }


SATURATING = ("identity", "sigmoid", "tanh", "softplus")
"""Drawn in the second panel; the rest (the rectifier family) in the third."""


def figure(z: np.ndarray, path: Path) -> None:
    plt = pyplot()
    zz = jnp.asarray(z, jnp.float64)
    sigmoid = jaxbp.ACTIVATIONS["sigmoid"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    (ax_sig, ax_sat), (ax_rect, ax_log) = axes

    ax_sig.plot(z, np.asarray(sigmoid.fn(zz)), label=r"sigmoid $\sigma(z)$", color="C0")
    ax_sig.plot(
        z, np.asarray(handwritten(sigmoid, zz)), label=r"$\sigma'(z)=\sigma(1-\sigma)$", color="C3"
    )
    ax_sig.axhline(0.25, color="grey", lw=0.8, ls=":")
    ax_sig.annotate(
        "max 1/4 at z = 0", (0, 0.25), (2.0, 0.4), arrowprops={"arrowstyle": "->", "lw": 0.8}
    )
    ax_sig.set(xlabel="z", title="fig. 1.11: sigmoid and its derivative", ylim=(-0.05, 1.05))
    ax_sig.legend(loc="upper left")

    n = len(jaxbp.ACTIVATIONS)
    for i, act in enumerate(jaxbp.ACTIVATIONS.values()):
        d = np.asarray(handwritten(act, zz))
        # earlier curves drawn wider, so that coinciding pieces (relu, leaky_relu and
        # identity at z > 0) stay visible
        style = {"color": f"C{i}", "lw": 1.2 + 2.4 * (n - 1 - i) / (n - 1), "label": act.name}
        (ax_sat if act.name in SATURATING else ax_rect).plot(z, d, **style)
        positive = np.where(d > 0, d, np.nan)  # log scale: zeros and negatives not drawn
        ax_log.plot(z, positive, **style)
    for ax, family in ((ax_sat, "identity and saturating"), (ax_rect, "rectifier family")):
        ax.set(
            xlabel="z",
            ylabel=r"$\varphi'(z)$ = act.deriv(z, act.fn(z))",
            title=f"handwritten derivatives: {family}",
            ylim=(-0.1, 1.25),
        )
        ax.legend(fontsize=9, loc="upper left")
    ax_log.set(
        xlabel="z",
        ylabel=r"$\varphi'(z)$, log scale (values <= 0 not drawn)",
        title="all derivatives, log scale: how fast they vanish",
        yscale="log",
        ylim=(1e-6, 3),
    )
    ax_log.legend(fontsize=8, ncol=3, loc="lower center")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: dict) -> str:
    head = (
        "| activation | max phi' | attained at z | phi'(0) | phi'(-5) | phi'(5) | phi'(-10) "
        "| phi'(10) | worst abs err vs jax.grad, float32 | float64 |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in rows.items():
        lo, hi = r["max_attained_on"]
        where = f"{lo:g}" if lo == hi else f"[{lo:g}, {hi:g}]"
        at = r["at"]
        lines.append(
            f"| {name} | {r['max']:.4g} | {where} | {at['0']:.4g} | {at['-5']:.3g} | "
            f"{at['5']:.3g} | {at['-10']:.3g} | {at['10']:.3g} | "
            f"{r['vs_jax_grad']['float32']['max_abs_err']:.1e} | "
            f"{r['vs_jax_grad']['float64']['max_abs_err']:.1e} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = make_parser(__doc__, "a coarse grid, for tests").parse_args(argv)
    z_max, n_points = 10.0, 201 if args.smoke else 4001  # step 0.1 or 0.005; both hit 0, +-5
    start = time.perf_counter()

    z = np.linspace(-z_max, z_max, n_points)
    rows = {}
    for name, act in jaxbp.ACTIVATIONS.items():
        rows[name] = summarise(act, z)
        r = rows[name]
        log(
            f"{name:<10} max {r['max']:.4f} at z={r['argmax']:g}, phi'(0)={r['at']['0']:.4f}, "
            f"worst |err| vs jax.grad {r['vs_jax_grad']['float32']['max_abs_err']:.1e} (f32)"
        )
    worst = {
        dt: max(r["vs_jax_grad"][dt]["max_abs_err"] for r in rows.values())
        for dt in ("float32", "float64")
    }
    args.out.mkdir(parents=True, exist_ok=True)
    figure(z, args.out / "fig_activations.png")
    result = {
        "experiment": "fig_activations",
        "grid": {"z_min": -z_max, "z_max": z_max, "n_points": n_points},
        "activations": rows,
        "worst_abs_err_vs_jax_grad": worst,
        "jax_version": jax.__version__,
        "wall_s": time.perf_counter() - start,
    }
    md = (
        "# Figure 1.11: activation derivatives (handwritten `act.deriv`)\n\n"
        f"Grid: {n_points} points on [-{z_max:g}, {z_max:g}]. Where the maximum is a plateau "
        "(identity, relu, leaky_relu, elu) the range of z attaining it is shown; softplus' "
        "supremum 1 is approached only as z -> infinity, so its maximum sits at the grid "
        "edge.\n\n" + table(rows) + "\nWorst |handwritten - jax.grad| over every activation on "
        f"the grid: {worst['float32']:.1e} (float32), {worst['float64']:.1e} (float64).\n"
    )
    write_results(args.out, "fig_activations", result, md)
    log(f"wrote {args.out}/fig_activations.{{png,json,md}} in {result['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
