"""The `jaxbp` command line: `jaxbp train`, `jaxbp check`, `jaxbp bench`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn


def _check(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the float64 half of the grid needs it
    from jaxbp._check import parity_grid

    records = []
    for rec in parity_grid(dtypes=tuple(args.dtypes), depths=tuple(args.depths), seed=args.seed):
        records.append(rec)
        if not args.json and sys.stderr.isatty():
            print(f"\rchecked {len(records)} configurations", end="", file=sys.stderr, flush=True)
    ok = all(rec["passed"] for rec in records)
    if args.json:
        json.dump({"passed": ok, "configurations": records}, sys.stdout, indent=1)
        print()
        return 0 if ok else 1

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for rec in records:
        loss = f"{rec['loss']} ({rec['output_activation']})"
        groups.setdefault((rec["dtype"], rec["activation"], loss), []).append(rec)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{'dtype':<8} {'activation':<11} {'loss (output)':<32} {'worst rel err':>13}  pass")
    for (dtype, activation, loss), recs in groups.items():
        worst = max(r["max_rel_err"] for r in recs)
        verdict = "ok" if all(r["passed"] for r in recs) else "FAIL"
        print(f"{dtype:<8} {activation:<11} {loss:<32} {worst:>13.2e}  {verdict}")
    depths = ",".join(map(str, args.depths))
    failed = sum(not r["passed"] for r in records)
    print(
        f"{len(records)} configurations (depths {depths}; manual_grad vs jax.grad, "
        f"rtol 1e-5 float32, 1e-12 float64): " + ("all passed" if ok else f"{failed} FAILED")
    )
    return 0 if ok else 1


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def widths(text: str) -> tuple[int, ...]:
    """`--hidden 128,64` -> (128, 64); an empty string means no hidden layer."""
    if text.strip() == "":
        return ()
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 128,64, got {text!r}"
        ) from None


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxbp import datasets
    from jaxbp._activations import ACTIVATIONS
    from jaxbp._job_setup import OPTIMIZERS
    from jaxbp._losses import LOSSES
    from jaxbp._mlp import INITS
    from jaxbp._train import GRADS

    src = parser.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=sorted(datasets.INFO), help="default: digits")
    src.add_argument("--data", type=Path, help="a user's .npz (arrays x, y) or .csv file")
    parser.add_argument("--target", help="the target column of a .csv file")
    parser.add_argument("--hidden", type=widths, help="hidden widths, e.g. 128,64")
    parser.add_argument("--activation", choices=list(ACTIVATIONS))
    parser.add_argument(
        "--init", choices=list(INITS), help="default: he_normal for relu-like, else glorot_normal"
    )
    parser.add_argument("--loss", choices=list(LOSSES), help="default: the dataset's")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad", choices=GRADS, default="manual")
    parser.add_argument(
        "--out", type=Path, help="write metrics, summary, checkpoint and curves here"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="log per-layer ||delta_l||, ||dW_l|| and saturated units per epoch (manual gradients)",
    )
    parser.add_argument("--devices", type=positive_int, help="split each batch over N devices")


def _train(args: argparse.Namespace) -> int:
    from jaxbp._train_job import JobError, run

    try:
        return run(args)
    except JobError as err:  # bad input: one line, no traceback
        print(f"jaxbp train: error: {err}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    from jaxbp import _bench

    result = _bench.run(args.configs, args.reps)
    print(_bench.markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="jaxbp", description="Multilayer perceptrons with handwritten back-propagation."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train an MLP (default: digits, manual gradients)")
    _add_train_arguments(train)
    train.set_defaults(run=_train)

    check = sub.add_parser("check", help="gradient parity grid: manual_grad vs jax.grad")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    check.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    check.set_defaults(run=_check)

    from jaxbp._bench import CONFIGS

    bench = sub.add_parser("bench", help="training-step speed: manual_grad vs jax.grad")
    bench.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    bench.add_argument("--reps", type=int, default=200, help="timed steps for the small config")
    bench.add_argument("--json", type=Path, help="also write the numbers here")
    bench.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
