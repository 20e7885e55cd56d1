"""The `jaxbp` command line: `jaxbp train`, `jaxbp check`, `jaxbp bench`.

Every flag is checked as it is parsed (ranges included: a seed, a width or an epoch
count that makes no sense is refused before anything is allocated). One handler in
`main` turns every expected failure (bad input, a damaged file, an OS error) into one
line on stderr and exit status 2; anything else is a bug in jaxbp: one line, exit status
3, and the traceback only with `--debug`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

__all__ = ["MAX_EPOCHS", "MAX_LAYERS", "MAX_WIDTH", "main"]

MAX_WIDTH = 2**20
"""Widest hidden layer `--hidden` takes."""
MAX_LAYERS = 100
"""Most hidden layers `--hidden` takes."""
MAX_EPOCHS = 10**6
"""Most epochs `--epochs` takes."""
MAX_SEED = 2**32 - 1
"""Seeds run from 0 to this (`jax.random.key` folds larger ones together)."""

EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def int_range(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`, described as `what`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_range(1, 2**63 - 1, "a positive integer")
seed_int = int_range(0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")
epochs_int = int_range(1, MAX_EPOCHS, f"a positive integer up to {MAX_EPOCHS:,}")
width_int = int_range(1, MAX_WIDTH, f"a positive integer up to {MAX_WIDTH:,}")

F32_TINY, F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def float_where(holds: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse type: a number for which `holds` is true, described as `what`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not holds(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_float = float_where(
    lambda v: math.isfinite(v) and F32_TINY <= v <= F32_MAX,
    f"a positive number from {F32_TINY:.1e} to {F32_MAX:.1e} (float32)",
)
"""A learning rate, a DP clip or noise: positive, and held by float32."""
dropout_rate = float_where(
    lambda v: 0 <= v < 1, "a rate from 0 (no dropout) up to but excluding 1, e.g. 0.2"
)
threshold = float_where(
    lambda v: 0 < v < 1,
    "a fraction strictly between 0 and 1 of the activation's largest slope, e.g. 0.01",
)
probability = float_where(
    lambda v: 0 < v < 1, "a probability strictly between 0 and 1, e.g. 1e-5 (a DP delta)"
)


def widths(text: str) -> tuple[int, ...]:
    """`--hidden 128,64` -> (128, 64); an empty string means no hidden layer."""
    if text.strip() == "":
        return ()
    parts = text.split(",")
    try:
        if len(parts) > MAX_LAYERS:
            raise argparse.ArgumentTypeError
        return tuple(width_int(part.strip()) for part in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive widths such as 128,64 (at most {MAX_LAYERS} "
            f"layers, each up to {MAX_WIDTH:,} units), got {text!r}"
        ) from None


def path_arg(text: str) -> Path:
    """An argparse type: a non-empty path without NUL bytes."""
    if text == "" or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return Path(text)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    import jaxbp
    from jaxbp import datasets
    from jaxbp.runs import OPTIMIZERS

    src = parser.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=sorted(datasets.INFO), help="default: digits")
    src.add_argument(
        "--data", type=path_arg, help="a user's .npz (arrays x, y), .csv or IDX images file"
    )
    parser.add_argument("--target", help="the target column of a .csv file")
    parser.add_argument(
        "--labels", type=path_arg, help="the IDX labels file (default: the one beside --data)"
    )
    parser.add_argument("--hidden", type=widths, help="hidden widths, e.g. 128,64")
    parser.add_argument("--activation", choices=list(jaxbp.ACTIVATIONS))
    parser.add_argument(
        "--init", choices=list(jaxbp.INITS), help="default: the activation's preferred one"
    )
    parser.add_argument("--loss", choices=list(jaxbp.LOSSES), help="default: the dataset's")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--epochs", type=epochs_int)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--grad", choices=("manual", "autodiff"), default="manual")
    parser.add_argument(
        "--out", type=path_arg, help="write metrics, summary, checkpoint and curves here"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs between runs (default: JAX's persistent "
        "compilation cache in $JAXBP_CACHE_DIR, else $XDG_CACHE_HOME/jaxbp/xla, else "
        "~/.cache/jaxbp/xla)",
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="log per-layer ||delta_l||, ||dW_l|| and saturated units per epoch (manual gradients)",
    )
    parser.add_argument(
        "--saturation",
        type=threshold,
        metavar="T",
        help="with --diagnostics: a unit is saturated where its slope phi'(z) is below T times "
        "the activation's largest (default: 0.01)",
    )
    parser.add_argument("--devices", type=positive_int, help="split each batch over N devices")
    parser.add_argument(
        "--norm",
        choices=("none", "layer", "batch"),
        default="none",
        help="a layer or batch normalisation after each hidden dense layer (default: none)",
    )
    parser.add_argument(
        "--dropout",
        type=dropout_rate,
        default=0.0,
        metavar="P",
        help="inverted dropout at rate P in [0, 1) after each hidden activation (default: 0)",
    )
    dp = parser.add_argument_group(
        "differential privacy (DP-SGD: clip each example's gradient, add Gaussian noise)"
    )
    dp.add_argument(
        "--dp-clip",
        type=positive_float,
        metavar="C",
        help="bound on each example's gradient norm; needs --dp-noise",
    )
    dp.add_argument(
        "--dp-noise",
        type=positive_float,
        metavar="SIGMA",
        help="noise multiplier: Gaussian noise of std SIGMA x C on the summed gradient",
    )
    dp.add_argument(
        "--dp-delta",
        type=probability,
        metavar="D",
        help="the delta of the (epsilon, delta) reported; default: the largest power of ten "
        "below 1/n_train (1e-4 for digits' 1438 training rows). delta is the chance that "
        "the guarantee fails outright, so it must stay well below 1/n: at 1/n, releasing "
        "one random example whole would qualify",
    )
    dp.add_argument(
        "--dp-sampling",
        choices=("poisson", "shuffle"),
        help="how batches are drawn: poisson (the default: each example in each step's batch "
        "with probability batch_size/n_train, the sampling the accountant analyses, so "
        "epsilon is a guarantee) or shuffle (fixed-size batches of one permutation per "
        "epoch: epsilon is the 'as if Poisson' figure); a resumed run keeps its own",
    )


def compile_cache(enabled: bool) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process, so that a second
    `jaxbp train` of the same shapes loads its programs instead of compiling them; the
    folder is `$JAXBP_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxbp/xla`, else
    `~/.cache/jaxbp/xla`. A folder that cannot be made means no cache, said in one line.
    Returns the folder in use, or `None`."""
    if not enabled:
        return None
    import jax

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(os.environ.get("JAXBP_CACHE_DIR") or Path(base) / "jaxbp" / "xla")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"jaxbp: no compilation cache ({folder}: {err.strerror}).", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder


def _train(args: argparse.Namespace) -> int:
    from jaxbp.app import train
    from jaxbp.app.settings import Settings

    compile_cache(not args.no_compile_cache)
    return train.run(Settings.from_args(args))


def _check(args: argparse.Namespace) -> int:
    from jaxbp.app import check_table
    from jaxbp.app.settings import JobError

    for flag in ("dtypes", "depths", "norms", "dropouts"):
        values = list(getattr(args, flag))
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise JobError(
                f"--{flag} {' '.join(map(str, values))}: {', '.join(map(str, repeated))} "
                "given twice; each configuration is checked once, name each value once."
            )
    return check_table.run(
        tuple(args.dtypes),
        tuple(args.depths),
        args.seed,
        args.json,
        norms=tuple(args.norms),
        dropouts=tuple(args.dropouts),
    )


def _bench(args: argparse.Namespace) -> int:
    from jaxbp.app import bench
    from jaxbp.app.settings import JobError
    from jaxbp.runs import write_atomic

    out = args.json
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        problem = "is a folder" if out.is_dir() else f"its folder {out.parent} does not exist"
        raise JobError(f"--json {out}: {problem}; name a file in an existing folder.")
    result = bench.run(args.configs, args.reps)
    print(bench.markdown(result))
    if out is not None:
        write_atomic(out, (json.dumps(result, indent=1) + "\n").encode())
    return 0


def parser() -> argparse.ArgumentParser:
    """The `jaxbp` argument parser (subcommands train, check, bench)."""
    from jaxbp.app.bench import CONFIGS

    top = _Parser(
        prog="jaxbp", description="Multilayer perceptrons with handwritten back-propagation."
    )
    top.add_argument("--debug", action="store_true", help="show the traceback of any failure")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    debug = dict(action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    train = sub.add_parser("train", help="train an MLP (default: digits, manual gradients)")
    _add_train_arguments(train)
    train.add_argument("--debug", **debug)
    train.set_defaults(run=_train)

    check = sub.add_parser("check", help="gradient parity grid: manual_grad vs jax.grad")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument("--seed", type=seed_int, default=0)
    check.add_argument(
        "--depths",
        type=int_range(1, 32, "a depth from 1 to 32"),
        nargs="+",
        default=[1, 2, 3, 4, 5],
    )
    check.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    check.add_argument(
        "--norms",
        nargs="*",
        choices=["layer", "batch"],
        default=["layer", "batch"],
        help="normalisations to check, each alone, at depths >= 2 (default: layer batch; "
        "none given: no normalisation rows)",
    )
    check.add_argument(
        "--dropouts",
        nargs="*",
        type=dropout_rate,
        default=[0.2],
        metavar="P",
        help="dropout rates to check, each alone, at depths >= 2 (default: 0.2; none given "
        "or 0: no dropout rows)",
    )
    check.add_argument("--debug", **debug)
    check.set_defaults(run=_check)

    bench = sub.add_parser("bench", help="training-step speed: manual_grad vs jax.grad")
    bench.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    bench.add_argument(
        "--reps",
        type=int_range(1, 10**6, "a positive integer up to 1,000,000"),
        default=200,
        help="timed steps for the small config",
    )
    bench.add_argument("--json", type=path_arg, help="also write the numbers here")
    bench.add_argument("--debug", **debug)
    bench.set_defaults(run=_bench)
    return top


def expected_message(err: BaseException) -> str | None:
    """The one line for a failure a user can cause or fix, or `None` for a bug."""
    from jaxbp.app.settings import JobError

    if isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err):  # XLA's: ValueError
        return "out of memory; use a smaller --hidden or --batch-size."
    if isinstance(err, (JobError, ValueError)):
        return str(err)
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `jaxbp ARGS`; returns the exit status (0 ok, 1 a failed verdict, 2 bad input
    or a damaged file or an OS error, 3 a bug in jaxbp, 130 interrupted)."""
    args = parser().parse_args(argv)
    name = f"jaxbp {args.command}"
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        message = expected_message(err)
        if message is not None:
            print(f"{name}: error: {' '.join(message.splitlines())}", file=sys.stderr)
            return EXIT_BAD_INPUT
        text = " ".join(str(err).splitlines())[:500]
        print(
            f"{name}: internal error: {type(err).__name__}: {text} (a bug in jaxbp; rerun "
            "with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
