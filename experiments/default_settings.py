"""`jaxbp train` with its default settings on 10 seeds it is not tested on, both gradients.

Writes experiments/results/default_settings.{json,md}: per dataset and gradient path the
min, mean and max test score over seeds 100-109 (each seed its own split and init), the
wall time of a run, and, on the same splits, a linear reference from scikit-learn
(LogisticRegression, RidgeCV) that shows how hard each split is.
Usage: python experiments/default_settings.py [--smoke]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV

from _common import RESULTS, log, write_results
from jaxbp import datasets
from jaxbp.app.cli import main as jaxbp_main

TARGETS = {"digits": 0.97, "breast_cancer": 0.95, "diabetes": 0.40}


def run(dataset, grad, seed, extra):
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        args = ["train", "--dataset", dataset, "--grad", grad, "--seed", str(seed), "--quiet"]
        code = jaxbp_main([*args, "--out", out, *extra])
        wall = time.perf_counter() - start
        summary = json.loads((Path(out) / "summary.json").read_text())
    assert code == 0, (dataset, grad, seed)
    score = summary.get("test_accuracy", summary.get("test_r2"))
    return {
        "dataset": dataset,
        "grad": grad,
        "seed": seed,
        "score": score,
        "wall_s": wall,
        "parity_max_rel_err": summary["parity_max_rel_err"],
    }


def linear_reference(dataset, seed):
    """Test score of a linear model on the same split (accuracy, or R^2 for diabetes)."""
    x_train, y_train, x_test, y_test = map(np.asarray, datasets.load(dataset, seed=seed))
    model = RidgeCV() if dataset == "diabetes" else LogisticRegression(max_iter=5000)
    return float(model.fit(x_train, y_train).score(x_test, y_test))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one seed, one epoch, no files")
    args = parser.parse_args()
    seeds = [100] if args.smoke else range(100, 110)
    extra = ["--epochs", "1"] if args.smoke else []
    rows = []
    for dataset in TARGETS:
        for grad in ("manual", "autodiff"):
            for seed in seeds:
                rows.append(run(dataset, grad, seed, extra))
                r = rows[-1]
                log(f"{dataset:<14} {grad:<8} seed {seed}: {r['score']:.4f} ({r['wall_s']:.1f} s)")
    if args.smoke:
        return
    table = [
        "| dataset | gradient | target | min | mean | max | runs >= target | wall time per run (s) "
        "| linear reference: min / mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, target in TARGETS.items():
        for grad in ("manual", "autodiff"):
            scores = [r["score"] for r in rows if (r["dataset"], r["grad"]) == (dataset, grad)]
            walls = [r["wall_s"] for r in rows if (r["dataset"], r["grad"]) == (dataset, grad)]
            hits = sum(s >= target for s in scores)
            linear = [linear_reference(dataset, seed) for seed in seeds]
            table.append(
                f"| {dataset} | {grad} | {target} | {min(scores):.4f} | "
                f"{statistics.mean(scores):.4f} | {max(scores):.4f} | {hits}/{len(scores)} | "
                f"{statistics.median(walls):.1f} | {min(linear):.4f} / "
                f"{statistics.mean(linear):.4f} |"
            )
    write_results(RESULTS, "default_settings", rows, "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
