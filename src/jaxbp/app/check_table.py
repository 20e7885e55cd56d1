"""`jaxbp check`: the gradient-parity grid as a table (or JSON), and its verdict.

The plain grid (every activation x every loss and output x the depths and dtypes) comes
first, in the table's original rows. Then the chapter's remedies, each alone: layer
norm, batch norm and dropout (`--norms`, `--dropouts`), over every activation and every
loss with its canonical output, at the depths with a hidden layer (2 and more: a network
of depth 1 has nowhere to put them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from jaxbp import LOSS_OUTPUTS, LOSSES, parity_grid

__all__ = ["CANONICAL", "layers_text", "remedies", "run"]

CANONICAL = tuple((loss, out) for loss, out in LOSS_OUTPUTS if LOSSES[loss].link.name == out)
"""The loss and output pairs the remedy rows use: each loss with its canonical link (a
normalisation or dropout sits between hidden layers; the output's kind is the plain
grid's concern)."""


def remedies(norms: Sequence[str], dropouts: Sequence[float]) -> list[tuple[str | None, float]]:
    """The `(norm, dropout)` settings of the remedy rows: each normalisation and each
    dropout rate alone (a rate of 0 adds nothing). `jaxbp check` refuses a value given
    twice, so each setting comes once."""
    return [(n, 0.0) for n in norms] + [(None, float(d)) for d in dropouts if d > 0]


def _records(
    dtypes: tuple[str, ...],
    depths: tuple[int, ...],
    seed: int,
    settings: list[tuple[str | None, float]],
) -> Iterator[dict[str, Any]]:
    yield from parity_grid(dtypes=dtypes, depths=depths, seed=seed)
    deep = tuple(d for d in depths if d >= 2)
    for norm, rate in settings if deep else ():
        yield from parity_grid(
            losses=CANONICAL,
            dtypes=dtypes,
            depths=deep,
            norms=(norm,),
            dropouts=(rate,),
            seed=seed,
        )


def layers_text(norm: str | None, dropout: float) -> str:
    """The remedies a network has between its hidden layers, as `jaxbp check`'s table and
    `jaxbp train`'s progress line name them: "layer norm, dropout 0.2" ("" for none)."""
    parts = [f"{norm} norm"] if norm else []
    return ", ".join(parts + ([f"dropout {dropout:g}"] if dropout else []))


def run(
    dtypes: tuple[str, ...],
    depths: tuple[int, ...],
    seed: int,
    as_json: bool,
    norms: Sequence[str] = ("layer", "batch"),
    dropouts: Sequence[float] = (0.2,),
) -> int:
    """Print the grid's table (or JSON); returns 0 if every configuration passed, else 1."""
    jax.config.update("jax_enable_x64", True)  # the float64 half of the grid needs it
    settings = remedies(norms, dropouts)
    records = []
    for rec in _records(dtypes, depths, seed, settings):
        records.append(rec)
        if not as_json and sys.stderr.isatty():
            print(f"\rchecked {len(records)} configurations", end="", file=sys.stderr, flush=True)
    ok = all(rec["passed"] for rec in records)
    if as_json:
        json.dump({"passed": ok, "configurations": records}, sys.stdout, indent=1)
        print()
        return 0 if ok else 1

    plain = [r for r in records if not r["norm"] and not r["dropout"]]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for rec in plain:
        loss = f"{rec['loss']} ({rec['output_activation']})"
        groups.setdefault((rec["dtype"], rec["activation"], loss), []).append(rec)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{'dtype':<8} {'activation':<11} {'loss (output)':<32} {'worst rel err':>13}  pass")
    for (dtype, activation, loss), recs in groups.items():
        worst = max(r["max_rel_err"] for r in recs)
        verdict = "ok" if all(r["passed"] for r in recs) else "FAIL"
        print(f"{dtype:<8} {activation:<11} {loss:<32} {worst:>13.2e}  {verdict}")
    _remedy_table([r for r in records if r["norm"] or r["dropout"]], settings, depths)
    failed = sum(not r["passed"] for r in records)
    print(
        f"{len(records)} configurations (depths {','.join(map(str, depths))}; manual_grad vs "
        "jax.grad, rtol 1e-5 float32, 1e-12 float64): "
        + ("all passed" if ok else f"{failed} FAILED")
    )
    return 0 if ok else 1


def _remedy_table(
    records: list[dict[str, Any]], settings: list[tuple[str | None, float]], depths: tuple[int, ...]
) -> None:
    """The remedy rows: one per dtype and setting, worst over activations, losses and
    depths, with each failing case named below its row."""
    if not settings:
        return
    if not records:
        print(
            "\nnormalisation and dropout: no rows; they sit between hidden layers, so they need "
            "--depths 2 or more."
        )
        return
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["dtype"], layers_text(rec["norm"], rec["dropout"])), []).append(rec)
    deep = ",".join(str(d) for d in depths if d >= 2)
    print(
        f"\nnormalisation and dropout, each alone (every activation; each loss with its "
        f"canonical output; depths {deep}):"
    )
    print(f"{'dtype':<8} {'layers':<20} {'cases':>6} {'worst rel err':>13}  pass")
    scaled = False
    for (dtype, layers), recs in groups.items():
        worst = max(r["max_scaled_err"] for r in recs)
        verdict = "ok" if all(r["passed"] for r in recs) else "FAIL"
        # Where the grid judged on the gradient's scale, the leaf-relative error differs.
        mark = "*" if any(r["max_scaled_err"] != r["max_rel_err"] for r in recs) else " "
        scaled = scaled or mark == "*"
        print(f"{dtype:<8} {layers:<20} {len(recs):>6} {worst:>13.2e}{mark} {verdict}")
        for r in recs:
            if not r["passed"]:
                print(
                    f"    FAIL {r['activation']} {r['loss']} ({r['output_activation']}) "
                    f"depth {r['depth']}: rel err {r['max_scaled_err']:.2e}"
                )
    if scaled:
        print(
            "* judged on the gradient's scale, atol = rtol x ||grad|| (check_parity's "
            "atol='auto'): batch norm removes the batch mean, so the bias before it has an "
            "exactly-zero gradient, whose relative error alone is rounding over rounding."
        )
