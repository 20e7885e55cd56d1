"""jaxbp's per-example statistics and curvature against BackPACK and curvlinops, in float64.

The same small MLPs (8-16-12-4, tanh and sigmoid; cross-entropy and squared error; mean
and sum reduction; batch 32) are built twice, in jaxbp and as a torch `nn.Sequential` of
`Linear` and `Tanh`/`Sigmoid` with the same weights (jaxbp's `W` is `(n_in, n_out)` with
`z = a @ W + b`, torch's `Linear.weight` is its transpose) and the same data. Every
quantity of jaxbp's public API is compared with what BackPACK and curvlinops compute on
the torch copy (first-order statistics also with `torch.func.vmap(grad)`), as the largest
relative error `||jaxbp - peer|| / ||peer||` over the parameter tensors (or over the whole
matrix, for the dense K-FAC / EKFAC matrices and the Gram matrix). In float64 anything
near 1e-13 is rounding; a quantity that misses BOTH its peers by more than 1e-10 is a
disagreement, and is listed as such.

Conventions (read from the peers' sources, and checked by the table):

- jaxbp's "mse" is the per-sample SUM of squared errors; torch's `MSELoss` with
  `reduction="mean"` divides by `N * K`, jaxbp's mean by `N` only. In the mean/mse cases
  jaxbp's loss is therefore `K` times torch's: the peers' curvature is multiplied by `K`,
  their squared per-example gradients (sum of squares, variance, Gram matrix) by `K^2`.
- K-FAC (weight block `kron(A, G)` for jaxbp's row-major `(n_in, n_out)` `W`; BackPACK's
  `[G, A]` acts on torch's `(n_out, n_in)` weight, so the same matrix):
  `A = (1/N) sum_n a_n a_n^T` in all three; `G = sum_n sum_c g_{n,c} g_{n,c}^T` with `g` the
  loss-Hessian square-root columns carried back, scaled by the reduction, i.e.
  `G = (1/N) sum_n sum_c delta delta^T` under "mean" and `sum_n sum_c delta delta^T` under
  "sum" (`delta` the unscaled per-example columns). BackPACK's KFLR scales the loss's
  square root by `1/sqrt(N)` ("mean"); curvlinops' `KFACLinearOperator(fisher_type=
  "type-2")` scales the columns by `1/N` and the covariance by `N^2 / N_data` (= `N` on one
  batch), and divides `A` by `N_data`: the same factors.
- BackPACK 1.7 has no `BatchDotGrad`: the Gram matrix is formed from its `BatchGrad`.
- Monte Carlo quantities (diag_ggn with `mc_samples`, K-FAC with `kind="mc"`) draw their
  own samples in each library and cannot match sample for sample: the second table gives
  each library's relative error to the exact value for `m` samples (it should fall like
  `1/sqrt(m)`, at the same rate for all).

Writes curvature_peers.{json,md} under --out (default experiments/results).
Needs the peers: pip install -e ".[peers]" (skips with a message without them).
Usage: python experiments/curvature_peers.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import time
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from _common import log, make_parser, markdown_table, write_results

jax.config.update("jax_enable_x64", True)

PEERS = ("torch", "backpack", "curvlinops")
SIZES = (8, 16, 12, 4)
BATCH = 32
TOL = 1e-10
"""Relative error above which a quantity disagrees with a peer (float64)."""


# --- layouts -------------------------------------------------------------------------------


def to_torch_flat(tree):
    """A params-shaped tree as one vector in torch's parameter order (`W.T`, then `b`)."""
    return jnp.concatenate([jnp.concatenate([t["W"].T.ravel(), t["b"]]) for t in tree])


def from_torch_flat(v, sizes=SIZES):
    """The inverse of `to_torch_flat`."""
    out, i = [], 0
    for n_in, n_out in itertools.pairwise(sizes):
        w = v[i : i + n_in * n_out].reshape(n_out, n_in).T
        i += n_in * n_out
        out.append({"W": w, "b": v[i : i + n_out]})
        i += n_out
    return out


def from_torch_list(tensors):
    """A list `[w0, b0, w1, b1, ...]` of torch-shaped arrays (leading axes allowed) as a
    jaxbp tree: each weight's last two axes swapped."""
    arrays = [np.asarray(t.detach().numpy() if hasattr(t, "detach") else t) for t in tensors]
    return [{"W": np.swapaxes(w, -1, -2), "b": b} for w, b in zip(arrays[0::2], arrays[1::2])]


def dense(linear, sizes=SIZES):
    """The matrix, in torch's parameter order, of a linear map of params-shaped trees."""
    d = sum(a * b + b for a, b in itertools.pairwise(sizes))
    columns = jax.vmap(lambda e: to_torch_flat(linear(from_torch_flat(e, sizes))))
    return np.asarray(jax.jit(columns)(jnp.eye(d))).T


def rel(a, b):
    """||a - b|| / ||b|| (Frobenius), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tree_rel(a, b):
    """The largest `rel` over the leaves of two params-shaped trees."""
    return max(rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def scaled(tree, factor):
    return jax.tree.map(lambda t: np.asarray(t) * factor, tree)


# --- the torch side ------------------------------------------------------------------------


def torch_setup(params, x, y, activation, loss, reduction):
    """`(model, loss_func, X, Y)`: the torch copy of the jaxbp network and data."""
    import torch
    from torch import nn

    act = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    layers = []
    for i, p in enumerate(params):
        w = np.asarray(p["W"])
        linear = nn.Linear(*w.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
        layers.append(linear)
        if i < len(params) - 1:
            layers.append(act())
    model = nn.Sequential(*layers)
    if loss == "cross_entropy":
        loss_func = nn.CrossEntropyLoss(reduction=reduction)
        Y = torch.from_numpy(np.asarray(y).astype(np.int64))
    else:
        loss_func = nn.MSELoss(reduction=reduction)
        Y = torch.from_numpy(np.asarray(y).copy())
    return model, loss_func, torch.from_numpy(np.asarray(x).copy()), Y


def backpack_run(params, x, y, case, extension):
    """A fresh BackPACK-extended copy, one backward pass with `extension`; the copy's
    parameters (each carrying the extension's field)."""
    from backpack import backpack, extend

    model, loss_func, X, Y = torch_setup(params, x, y, *case)
    model, loss_func = extend(model), extend(loss_func)
    loss = loss_func(model(X), Y)
    with backpack(extension), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    return list(model.parameters())


def torch_func_terms(model, loss_func, X, Y, reduction):
    """`(N, D)` per-example gradient terms (torch order), from `torch.func.vmap(grad)`:
    example n's share of the reduced loss (`1/N` of its loss under "mean")."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    weight = 1.0 / X.shape[0] if reduction == "mean" else 1.0

    def one(p, xn, yn):
        return weight * loss_func(functional_call(model, p, (xn[None],)), yn[None])

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, X, Y)
    return torch.cat([g.reshape(X.shape[0], -1) for g in grads.values()], dim=1).numpy()


def terms_to_tree(flat):
    """Per-parameter sums of a `(D,)` torch-order vector as a jaxbp tree."""
    return [{k: np.asarray(v) for k, v in t.items()} for t in from_torch_flat(jnp.asarray(flat))]


def curvlinops_dense(op_class, model, loss_func, X, Y, **kw):
    """The dense matrix of a curvlinops operator on one batch (torch order); the data is
    one fixed batch and the model deterministic, so curvlinops' check of that is skipped."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    op = op_class(model, loss_func, params, [(X, Y)], check_deterministic=False, **kw)
    d = sum(p.numel() for p in params)
    return (op @ torch.eye(d, dtype=torch.float64)).detach().numpy()


def kron_dense(factors_by_layer, with_bias=True):
    """The block-diagonal matrix (torch order) of per-layer `(G, A)` Kronecker factors:
    weight block `kron(G, A)` for torch's `(n_out, n_in)` weight, bias block `G`."""
    from scipy.linalg import block_diag

    blocks = []
    for g, a in factors_by_layer:
        blocks += [np.kron(g, a), g] if with_bias else [np.kron(g, a)]
    return block_diag(*blocks)


# --- one case ------------------------------------------------------------------------------


def compare_case(index, case, mc_samples):
    """Every quantity of one case against its peers: `(rows, mc_rows)`."""
    import torch
    from backpack import extensions as bx
    from curvlinops import (
        EKFACLinearOperator,
        FisherMCLinearOperator,
        GGNLinearOperator,
        HessianLinearOperator,
        KFACLinearOperator,
    )

    activation, loss, reduction = case
    params, x, y = jaxbp.random_problem(index, SIZES, BATCH, loss, jnp.float64)
    cfg = jaxbp.Config(activation=activation, loss=loss, reduction=reduction)
    key = jax.random.key(index)
    n, k = BATCH, SIZES[-1]
    # jaxbp's loss over torch's: K for the mean squared error, else 1 (module docstring)
    s1 = float(k) if (loss == "mse" and reduction == "mean") else 1.0
    s2 = s1**2
    rows = []

    def row(quantity, peer, error, note=""):
        rows.append(dict(quantity=quantity, peer=peer, rel_err=error, note=note))

    model, loss_func, X, Y = torch_setup(params, x, y, *case)
    torch_loss = loss_func(model(X), Y)
    torch_grads = torch.autograd.grad(torch_loss, list(model.parameters()))
    row("loss", "torch", rel(jaxbp.loss_fn(params, x, y, cfg), s1 * torch_loss.item()))
    row(
        "manual_grad",
        "torch autograd",
        tree_rel(jaxbp.manual_grad(params, x, y, cfg), scaled(from_torch_list(torch_grads), s1)),
    )

    # first-order statistics: BackPACK and torch.func.vmap(grad)
    terms = torch_func_terms(model, loss_func, X, Y, reduction) * s1
    ref_sgs = terms_to_tree((terms**2).sum(0))
    ref_var = terms_to_tree((terms**2).sum(0) / n - (terms.sum(0) / n) ** 2)
    ref_gram = terms @ terms.T
    sgs = jaxbp.sum_grad_squared(params, x, y, cfg)
    var = jaxbp.grad_variance(params, x, y, cfg)
    gram = jaxbp.batch_dot_grad(params, x, y, cfg)
    for name, ours, extension, field, ref in (
        ("sum_grad_squared", sgs, bx.SumGradSquared(), "sum_grad_squared", ref_sgs),
        ("grad_variance", var, bx.Variance(), "variance", ref_var),
    ):
        bp = backpack_run(params, x, y, case, extension)
        theirs = scaled(from_torch_list([getattr(p, field) for p in bp]), s2)
        row(name, "BackPACK", tree_rel(ours, theirs))
        row(name, "torch.func", tree_rel(ours, ref))
    bp = backpack_run(params, x, y, case, bx.BatchGrad())
    batch = np.concatenate([p.grad_batch.detach().numpy().reshape(n, -1) for p in bp], axis=1)
    row("batch_dot_grad", "BackPACK", rel(gram, s2 * batch @ batch.T), "Gram of BatchGrad")
    row("batch_dot_grad", "torch.func", rel(gram, ref_gram))

    # curvature diagonals: BackPACK and curvlinops' dense matrices
    ggn = s1 * curvlinops_dense(GGNLinearOperator, model, loss_func, X, Y)
    hess = s1 * curvlinops_dense(HessianLinearOperator, model, loss_func, X, Y)
    dggn = jaxbp.diag_ggn(params, x, y, cfg)
    bp = backpack_run(params, x, y, case, bx.DiagGGNExact())
    bp_exact = np.concatenate([p.diag_ggn_exact.detach().numpy().ravel() for p in bp]) * s1
    row("diag_ggn", "BackPACK", tree_rel(dggn, terms_to_tree(bp_exact)), "DiagGGNExact")
    row(
        "diag_ggn",
        "curvlinops",
        tree_rel(dggn, terms_to_tree(np.diag(ggn))),
        "diag of GGNLinearOperator",
    )
    per = jaxbp.per_example_diag_ggn(params, x, y, cfg)
    bp = backpack_run(params, x, y, case, bx.BatchDiagGGNExact())
    row(
        "per_example_diag_ggn",
        "BackPACK",
        tree_rel(per, scaled(from_torch_list([p.diag_ggn_exact_batch for p in bp]), s1)),
        "BatchDiagGGNExact",
    )
    share = 1.0 / n if reduction == "mean" else 1.0  # one example's GGN on the batch's scale
    per_cl = [
        np.diag(curvlinops_dense(GGNLinearOperator, model, loss_func, X[i : i + 1], Y[i : i + 1]))
        for i in range(n)
    ]
    per_cl = jax.vmap(from_torch_flat)(jnp.asarray(np.stack(per_cl) * share * s1))
    row(
        "per_example_diag_ggn", "curvlinops", tree_rel(per, per_cl), "GGNLinearOperator per example"
    )
    dh = jaxbp.diag_hessian(params, x, y, cfg)
    bp = backpack_run(params, x, y, case, bx.DiagHessian())
    row(
        "diag_hessian",
        "BackPACK",
        tree_rel(dh, scaled(from_torch_list([p.diag_h for p in bp]), s1)),
        "DiagHessian",
    )
    row(
        "diag_hessian",
        "curvlinops",
        tree_rel(dh, terms_to_tree(np.diag(hess))),
        "diag of HessianLinearOperator",
    )

    # K-FAC: BackPACK's KFLR factors, curvlinops' type-2 KFAC matrix
    factors = jaxbp.kfac(params, x, y, cfg)
    bp = backpack_run(params, x, y, case, bx.KFLR())
    kflr = [(p.kflr[0].detach().numpy() * s1, p.kflr[1].detach().numpy()) for p in bp[0::2]]
    row("kfac A", "BackPACK", max(rel(f.A, a) for f, (_, a) in zip(factors, kflr)), "KFLR")
    row("kfac G", "BackPACK", max(rel(f.G, g) for f, (g, _) in zip(factors, kflr)), "KFLR")
    kfac_jaxbp = dense(partial(jaxbp.kfac_mvp, factors))
    kfac_cl = s1 * curvlinops_dense(
        KFACLinearOperator,
        model,
        loss_func,
        X,
        Y,
        fisher_type="type-2",
        separate_weight_and_bias=True,
    )
    row("kfac (dense, via kfac_mvp)", "BackPACK", rel(kfac_jaxbp, kron_dense(kflr)), "kron of KFLR")
    row(
        "kfac (dense, via kfac_mvp)",
        "curvlinops",
        rel(kfac_jaxbp, kfac_cl),
        "KFACLinearOperator type-2",
    )
    v = jax.tree.map(lambda t: jax.random.normal(jax.random.fold_in(key, t.size), t.shape), params)
    vt = np.asarray(to_torch_flat(v))
    mvp = to_torch_flat(jaxbp.kfac_mvp(factors, v))
    row("kfac_mvp (random v)", "BackPACK", rel(mvp, kron_dense(kflr) @ vt))
    row("kfac_mvp (random v)", "curvlinops", rel(mvp, kfac_cl @ vt))
    eigen = jaxbp.ekfac(params, x, y, cfg)
    ekfac_cl = s1 * curvlinops_dense(
        EKFACLinearOperator,
        model,
        loss_func,
        X,
        Y,
        fisher_type="type-2",
        separate_weight_and_bias=True,
    )
    row(
        "ekfac (dense, via ekfac_mvp)",
        "curvlinops",
        rel(dense(partial(jaxbp.ekfac_mvp, eigen)), ekfac_cl),
        "EKFACLinearOperator type-2",
    )
    row(
        "ekfac_mvp (random v)",
        "curvlinops",
        rel(to_torch_flat(jaxbp.ekfac_mvp(eigen, v)), ekfac_cl @ vt),
    )

    # Monte Carlo: each library's relative error to its own exact value
    mc_rows = []
    exact_diag = np.asarray(to_torch_flat(dggn))
    for m in mc_samples:
        est = jaxbp.diag_ggn(params, x, y, cfg, mc_samples=m, key=key)
        bp = backpack_run(params, x, y, case, bx.DiagGGNMC(mc_samples=m))
        bp_flat = np.concatenate([p.diag_ggn_mc.detach().numpy().ravel() for p in bp]) * s1
        fisher = s1 * curvlinops_dense(FisherMCLinearOperator, model, loss_func, X, Y, mc_samples=m)
        mc_rows.append(
            dict(
                quantity="diag_ggn mc",
                m=m,
                jaxbp=rel(to_torch_flat(est), exact_diag),
                BackPACK=rel(bp_flat, bp_exact),
                curvlinops=rel(np.diag(fisher), np.diag(ggn)),
                note="BackPACK DiagGGNMC; curvlinops diag of FisherMCLinearOperator",
            )
        )
        mc = jaxbp.kfac(params, x, y, cfg, kind="mc", mc_samples=m, key=key)
        bp = backpack_run(params, x, y, case, bx.KFAC(mc_samples=m))
        bp_mc = [(p.kfac[0].detach().numpy() * s1, p.kfac[1].detach().numpy()) for p in bp[0::2]]
        cl_mc = s1 * curvlinops_dense(
            KFACLinearOperator,
            model,
            loss_func,
            X,
            Y,
            fisher_type="mc",
            mc_samples=m,
            separate_weight_and_bias=True,
        )
        mc_rows.append(
            dict(
                quantity="kfac mc (dense)",
                m=m,
                jaxbp=rel(dense(partial(jaxbp.kfac_mvp, mc)), kfac_jaxbp),
                BackPACK=rel(kron_dense(bp_mc), kron_dense(kflr)),
                curvlinops=rel(cl_mc, kfac_cl),
                note="BackPACK KFAC vs KFLR; curvlinops KFAC mc vs type-2",
            )
        )
    return rows, mc_rows


# --- the run -------------------------------------------------------------------------------


def cell(error):
    return "n/a" if error is None else f"{error:.1e}"


def tables(result):
    """The two Markdown tables: exact quantities (max over cases per peer, and each
    case), and the Monte Carlo errors."""
    cases = [c["case"] for c in result["cases"]]
    quantities = list(
        dict.fromkeys((r["quantity"], r["peer"]) for c in result["cases"] for r in c["rows"])
    )
    header = ["quantity", "peer", "max over cases", *cases]
    body = []
    for quantity, peer in quantities:
        errs = [
            next(
                (r["rel_err"] for r in c["rows"] if (r["quantity"], r["peer"]) == (quantity, peer)),
                None,
            )
            for c in result["cases"]
        ]
        worst = max(e for e in errs if e is not None)
        flag = " **(> 1e-10)**" if worst > TOL else ""
        body.append([quantity, peer, f"{worst:.1e}{flag}", *map(cell, errs)])
    text = (
        "## jaxbp against BackPACK and curvlinops (float64)\n\n"
        f"{'-'.join(map(str, SIZES))} MLP, batch {BATCH}; cell: max relative error "
        "||jaxbp - peer|| / ||peer|| over the parameter tensors (whole matrix for dense K-FAC,"
        " EKFAC and the Gram matrix). Case: activation/loss/reduction. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".\n\n"
    )
    text += markdown_table(header, body)
    libraries = ("jaxbp", "BackPACK", "curvlinops")
    mc_header = ["quantity", "m samples", *(f"{lib} mean (max)" for lib in libraries)]
    groups = {}
    for c in result["cases"]:
        for r in c["mc_rows"]:
            groups.setdefault((r["quantity"], r["m"]), []).append(r)
    mc_body = [
        [
            quantity,
            m,
            *(
                f"{np.mean([r[lib] for r in rs]):.1e} ({max(r[lib] for r in rs):.1e})"
                for lib in libraries
            ),
        ]
        for (quantity, m), rs in groups.items()
    ]
    text += (
        "\n## Monte Carlo: each library's relative error to its own exact value\n\n"
        "diag_ggn with `mc_samples=m` (BackPACK DiagGGNMC, curvlinops diagonal of "
        'FisherMCLinearOperator) against the exact diagonal; K-FAC `kind="mc"` (BackPACK '
        'KFAC, curvlinops fisher_type="mc") against the exact (KFLR / type-2) K-FAC matrix; '
        f"mean (and max) over the {len(cases)} cases, one draw each. The libraries draw their "
        "own samples, so the estimates cannot agree sample for sample; the errors should be "
        "alike and fall like 1/sqrt(m) (per-case values in the JSON).\n\n"
    )
    text += markdown_table(mc_header, mc_body)
    text += "\n" + CONVENTIONS
    if result["disagreements"]:
        text += "\n## Disagreements (jaxbp misses every peer by more than 1e-10)\n\n"
        text += "".join(f"- {d}\n" for d in result["disagreements"])
    else:
        worst = max(r["rel_err"] for c in result["cases"] for r in c["rows"])
        every = "every peer" if worst <= TOL else "at least one peer"
        text += (
            f"\nNo disagreement: every exact quantity matches {every} in every case "
            f"(largest relative error to any peer: {worst:.1e}).\n"
        )
    return text


CONVENTIONS = """## Conventions

- jaxbp's `mse` is the per-sample sum of squared errors; torch's `MSELoss(reduction="mean")`
  divides by N*K, jaxbp's mean by N: in the `mse/mean` cases the peers' curvature is
  multiplied by K = 4 and their squared per-example gradients by K^2 before comparing.
- K-FAC: A = (1/N) sum_n a_n a_n^T in jaxbp, BackPACK (KFLR: `[G, A]`, input outer product
  / N) and curvlinops (input covariance / N_data). G = sum over examples and loss-Hessian
  square-root columns of the back-propagated columns' outer products, the columns scaled
  by the reduction: G = (1/N) sum_n sum_c delta delta^T under "mean", sum_n sum_c delta
  delta^T under "sum". BackPACK gets the 1/N from its loss square root scaled by 1/sqrt(N);
  curvlinops (type-2) scales the columns by 1/N and the covariance by N^2/N_data (= N on
  one batch). Weight block kron(A, G) on jaxbp's row-major (n_in, n_out) W is kron(G, A) on
  torch's (n_out, n_in) weight; the bias block is G (separate_weight_and_bias=True).
- BackPACK 1.7 has no BatchDotGrad any more: its Gram matrix is formed from BatchGrad;
  its Variance is sum_grad_squared / N - (grad / N)^2, as jaxbp's.
"""


def main():
    args = make_parser(__doc__, "two cases, fewer Monte Carlo sample sizes").parse_args()
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        log(
            f"curvature_peers: skipped, {', '.join(missing)} not installed "
            "(pip install -e '.[peers]')"
        )
        return
    import torch

    torch.set_default_dtype(torch.float64)
    cases = [
        (act, loss, red)
        for act in ("tanh", "sigmoid")
        for loss in ("cross_entropy", "mse")
        for red in ("mean", "sum")
    ]
    mc_samples = (1, 16, 256)
    if args.smoke:
        cases, mc_samples = [("tanh", "cross_entropy", "mean"), ("sigmoid", "mse", "mean")], (4,)
    versions = {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "backpack-for-pytorch": importlib.metadata.version("backpack-for-pytorch"),
        "curvlinops-for-pytorch": importlib.metadata.version("curvlinops-for-pytorch"),
    }
    start = time.perf_counter()
    results = []
    for index, case in enumerate(cases):
        rows, mc_rows = compare_case(index, case, mc_samples)
        name = "/".join(case)
        worst = max(r["rel_err"] for r in rows)
        log(
            f"{name}: {len(rows)} comparisons, worst rel err {worst:.1e} "
            f"({time.perf_counter() - start:.1f} s)"
        )
        results.append(dict(case=name, rows=rows, mc_rows=mc_rows))
    disagreements = []
    for c in results:
        by_quantity = {}
        for r in c["rows"]:
            by_quantity.setdefault(r["quantity"], []).append(r)
        for quantity, rs in by_quantity.items():
            if all(r["rel_err"] > TOL for r in rs):
                peers = ", ".join(f"{r['peer']} {r['rel_err']:.2e}" for r in rs)
                disagreements.append(f"{quantity}, {c['case']}: {peers}")
    result = {
        "experiment": "curvature_peers",
        "sizes": list(SIZES),
        "batch": BATCH,
        "dtype": "float64",
        "tolerance": TOL,
        "versions": versions,
        "smoke": args.smoke,
        "wall_s": time.perf_counter() - start,
        "cases": results,
        "disagreements": disagreements,
    }
    text = tables(result)
    write_results(args.out, "curvature_peers", result, text)
    log(text)
    log(f"wrote curvature_peers.{{json,md}} in {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
