"""What the experiments share: progress on stderr, rounding for the JSON, the `--smoke` /
`--out` command line and the result files.

The scripts run as `python experiments/NAME.py`, so this folder is on `sys.path` and
they import it as `from _common import ...`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
"""Where a full run writes its files by default (the committed results)."""


def log(message):
    """One line of progress on stderr, flushed at once (stdout is left to the tables)."""
    print(message, file=sys.stderr, flush=True)


def rounded(values, digits=6):
    """A nested list of floats at `digits` significant digits, to keep the JSON readable."""
    to_digits = np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])
    return to_digits(np.asarray(values)).tolist()


def make_parser(doc, smoke_help=None):
    """An argument parser described by the first paragraph of the script's `doc`, with
    `--smoke` (`smoke_help`: what it shrinks) and `--out` (default `RESULTS`); a script
    adds its own options to it."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    return parser


def write_results(out, name, result, markdown=None, indent=1):
    """`out/NAME.json` (`json.dumps(result, indent=indent)` and a newline) and, when
    `markdown` is given, `out/NAME.md` with that text; `out` is made if missing."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=indent) + "\n")
    if markdown is not None:
        (out / f"{name}.md").write_text(markdown)


def markdown_table(header, rows):
    """A Markdown table: the `header` cells, the separator, then one line per row of cells
    (each as `str` writes it); every line ends in a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mean_sd(record, key, decimals=3):
    """The table cell `mean ± sd` of `record[KEY_mean]` and `record[KEY_sd]`."""
    return f"{record[f'{key}_mean']:.{decimals}f} ± {record[f'{key}_sd']:.{decimals}f}"


def spread(values: list[float | None]) -> dict:
    """Geometric mean, min and max over the seeds with a positive finite value, and how
    many seeds had none (`missing`: the first layer's norm underflowed float32 to 0, or
    a ratio 0/0 or inf)."""
    good = np.array([v for v in values if v is not None], np.float64)
    if good.size == 0:
        return {"geomean": None, "min": None, "max": None, "missing": len(values)}
    return {
        "geomean": float(np.exp(np.mean(np.log(good)))),
        "min": float(good.min()),
        "max": float(good.max()),
        "missing": len(values) - int(good.size),
    }


def fmt_spread(s: dict) -> str:
    """A `spread` as `geomean [min, max]`, and how many seeds it leaves out as `zero/nan`
    (as vanishing_gradients.py labels them)."""
    if s["geomean"] is None:
        return f"n/a ({s['missing']} zero/nan)"
    text = f"{s['geomean']:.1e} [{s['min']:.0e}, {s['max']:.0e}]"
    return text + (f" ({s['missing']} zero/nan)" if s["missing"] else "")
