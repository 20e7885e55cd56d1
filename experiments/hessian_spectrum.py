"""Second order through the manual gradient: the top Hessian eigenvalue during training.

Full-batch gradient descent on digits (64-32-10 tanh, cross-entropy, float32) at three
learning rates eta. Every few steps, the largest eigenvalue of the Hessian of the training
loss (the "sharpness") is found by power iteration on `jaxbp.hvp`, i.e. `jax.jvp` of the
handwritten `manual_grad`, and that of the Gauss-Newton matrix on `jaxbp.gnvp`. Gradient
descent on a quadratic is stable only while sharpness < 2 / eta; Cohen et al. (2021) report
that full-batch training drives the sharpness up to about 2 / eta and holds it there (the
"edge of stability"). As an independent check, on a small network in float64 the power
iteration is compared with the top eigenvalue of the dense `jax.hessian`.

Writes experiments/results/hessian_spectrum.{png,json,md}.

    python experiments/hessian_spectrum.py [--smoke] [--out DIR]
"""

import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp
from _common import log, make_parser, write_results
from jaxbp.app.plots import pyplot

KW = dict(activation="tanh", loss="cross_entropy")


def tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def top_eigenvalue(product, params, key, iterations):
    """The largest eigenvalue of the symmetric map v -> product(params, v), by power
    iteration: first the eigenvalue of largest magnitude, lam; if that is negative, power
    iteration again on the shifted map v -> product(v) - lam v, whose top eigenvalue is
    lam_max - lam >= 0."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v0 = treedef.unflatten([jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])

    def power(shift):
        def apply(v):
            return jax.tree.map(lambda hv, u: hv - shift * u, product(params, v), v)

        def body(_, v):
            return apply(jax.tree.map(lambda t: t / jnp.sqrt(tree_dot(v, v)), v))

        v = jax.lax.fori_loop(0, iterations, body, v0)
        v = jax.tree.map(lambda t: t / jnp.sqrt(tree_dot(v, v)), v)
        return tree_dot(v, apply(v))

    lam = power(0.0)
    return jnp.where(lam >= 0, lam, lam + power(lam))


def dense_check(x, y):
    """float64, 64-6-10: power iteration on jaxbp.hvp against the dense Hessian's spectrum."""
    with jax.enable_x64(True):
        params = jaxbp.init_mlp(jax.random.key(1), [64, 6, 10], dtype=jnp.float64)
        x64, y64 = jnp.asarray(x[:200], jnp.float64), jnp.asarray(y[:200])
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        hessian = jax.hessian(lambda f: jaxbp.loss_fn(unravel(f), x64, y64, **KW))(flat)
        eigs = np.linalg.eigvalsh(np.asarray(hessian))
        product = lambda p, v: jaxbp.hvp(p, x64, y64, v, **KW)  # noqa: E731
        power = float(jax.jit(lambda p: top_eigenvalue(product, p, jax.random.key(2), 300))(params))
    dense = float(eigs[-1])  # the largest eigenvalue
    return {
        "parameters": int(flat.size),
        "power_iteration": power,
        "dense": dense,
        "rel_err": abs(power - dense) / abs(dense),
    }


def plot(runs, path):
    """Sharpness (Hessian and Gauss-Newton, 2/eta dashed) and loss against the step."""
    plt = pyplot()
    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(runs):
        t = [row["step"] for row in r["rows"]]
        ax_s.plot(
            t,
            [row["sharpness"] for row in r["rows"]],
            color=f"C{i}",
            label=f"Hessian, eta={r['lr']}",
        )
        ax_s.plot(
            t,
            [row["gauss_newton"] for row in r["rows"]],
            color=f"C{i}",
            ls=":",
            label=f"Gauss-Newton, eta={r['lr']}",
        )
        ax_s.axhline(r["two_over_lr"], color=f"C{i}", ls="--", lw=0.8)
        ax_l.plot(t, [row["loss"] for row in r["rows"]], color=f"C{i}", label=f"eta={r['lr']}")
    for ax, ylabel, title in (
        (ax_s, "top eigenvalue", "sharpness (dashed: 2/eta)"),
        (ax_l, "training loss", "full-batch loss"),
    ):
        ax.set(xlabel="gradient-descent step", ylabel=ylabel, yscale="log", title=title)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Top Hessian eigenvalue by power iteration on jaxbp.hvp (jvp of manual_grad), digits"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = make_parser(__doc__, "20 steps at lr 0.5, 10 power iterations")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.5, 2.0, 8.0])
    args = parser.parse_args()
    start = time.perf_counter()
    steps, every, iterations = (20, 10, 10) if args.smoke else (300, 5, 40)
    lrs = (0.5,) if args.smoke else tuple(args.lrs)
    x, y, _, _ = jaxbp.datasets.load("digits", seed=0)
    sizes = [64, 32, 10]

    log("dense check of the power iteration (float64)")
    check = dense_check(np.asarray(x), np.asarray(y))
    log(f"  power iteration {check['power_iteration']:.6g}, dense {check['dense']:.6g}")

    hvp = jax.jit(lambda p, v: jaxbp.hvp(p, x, y, v, **KW))
    gnvp = jax.jit(lambda p, v: jaxbp.gnvp(p, x, y, v, **KW))
    sharpness = jax.jit(lambda p, k: top_eigenvalue(hvp, p, k, iterations))
    gn_sharpness = jax.jit(lambda p, k: top_eigenvalue(gnvp, p, k, iterations))
    runs = []
    for lr in lrs:
        optimizer = optax.sgd(lr)
        step = jaxbp.make_train_step(optimizer, **KW)
        params = jaxbp.init_mlp(jax.random.key(0), sizes)
        opt_state = optimizer.init(params)
        rows = []
        for t in range(steps + 1):
            if t % every == 0:
                key = jax.random.key(t)
                rows.append(
                    {
                        "step": t,
                        "loss": float(jaxbp.loss_fn(params, x, y, **KW)),
                        "sharpness": float(sharpness(params, key)),
                        "gauss_newton": float(gn_sharpness(params, key)),
                    }
                )
            if t < steps:
                params, opt_state, _ = step(params, opt_state, x, y)
        last = rows[-len(rows) // 4 :] or rows[-1:]
        below = next((row["step"] for row in rows if row["sharpness"] < 2 / lr), None)
        runs.append(
            {
                "lr": lr,
                "two_over_lr": 2 / lr,
                "rows": rows,
                "final_loss": rows[-1]["loss"],
                "initial_sharpness": rows[0]["sharpness"],
                "first_step_below_2_over_lr": below,
                "evaluations_above_2_over_lr_after_it": sum(
                    row["sharpness"] >= 2 / lr
                    for row in rows
                    if below is not None and row["step"] > below
                ),
                "late_mean_sharpness": float(np.mean([row["sharpness"] for row in last])),
                "final_accuracy": float(jaxbp.evaluate(params, x, y, **KW)["accuracy"]),
            }
        )
        r = runs[-1]
        log(
            f"lr {lr}: sharpness {r['initial_sharpness']:.3g} at step 0, below 2/lr = {2 / lr:.3g}"
            f" from step {below}, late {r['late_mean_sharpness']:.3g}, loss {r['final_loss']:.3g}"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "hessian_spectrum.png")

    lines = [
        "| eta | 2 / eta | sharpness at step 0 | first step below 2 / eta | evaluations above "
        "2 / eta after it | mean sharpness, last quarter | final loss | final train accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['lr']} | {r['two_over_lr']:.2f} | {r['initial_sharpness']:.3f} | "
        f"{r['first_step_below_2_over_lr']} | {r['evaluations_above_2_over_lr_after_it']} | "
        f"{r['late_mean_sharpness']:.3f} | {r['final_loss']:.4f} | {r['final_accuracy']:.4f} |"
        for r in runs
    ]
    lines.append(
        f"\nPower iteration on jaxbp.hvp against the dense jax.hessian (float64, "
        f"{check['parameters']} parameters): {check['power_iteration']:.6g} vs "
        f"{check['dense']:.6g}, relative error {check['rel_err']:.1e}."
    )
    result = {
        "smoke": args.smoke,
        "sizes": sizes,
        "steps": steps,
        "power_iterations": iterations,
        "dense_check": check,
        "runs": runs,
        "wall_s": time.perf_counter() - start,
    }
    write_results(args.out, "hessian_spectrum", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
