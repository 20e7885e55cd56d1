"""experiments/remedies.py (issue 12, item 6) runs end to end at its --smoke size and writes
what it promises: every variant at every depth, the momentum variant at a tenth of the
rate, ratios that are the first over the last layer's ||delta_l||, summaries of the
numbers stored, and verdict lines that follow from the records by the stated rules.

The script runs in a fresh interpreter (as a user would run it) into a temporary folder
(`conftest.run_smoke`).
"""

import math
from collections import Counter

import numpy as np
import pytest

from conftest import run_script, run_smoke
from jaxbp import datasets

SEED = 0
"""The data split remedies.py draws (its `seed`)."""


def chance(name):
    """Majority class of the training split, scored on the test split."""
    d = datasets.load(name, seed=SEED)
    y_train, y_test = np.asarray(d.y_train), np.asarray(d.y_test)
    majority = Counter(y_train.tolist()).most_common(1)[0][0]
    return float(np.mean(y_test == majority)), y_test.size


def expected_verdict(data):
    """The verdict lines, recomputed from the records: at the deepest depth, a variant has
    a level flow at init when every seed has a positive finite ||delta_1|| / ||delta_L||
    and their geometric mean lies within [1/LEVEL, LEVEL]; it learns when its mean test
    accuracy is at least chance + 0.1."""
    cfg = data["config"]
    level_factor, deep, names = cfg["level_factor"], max(cfg["depths"]), list(cfg["variants"])
    lines = []
    for dataset in cfg["datasets"]:
        chance_acc = data["chance_accuracy"][dataset]
        for activation in cfg["activations"]:
            level, learns = [], []
            for name in names:
                (r,) = [
                    r
                    for r in data["settings"]
                    if (r["dataset"], r["activation"], r["variant"], r["depth"])
                    == (dataset, activation, name, deep)
                ]
                ratios = r["at_init"]["delta_ratio"]
                if all(v is not None for v in ratios):
                    g = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                    if 1 / level_factor <= g <= level_factor:
                        level.append(name)
                if sum(r["test_accuracy"]) / len(r["test_accuracy"]) >= chance_acc + 0.1:
                    learns.append(name)
            lines.append(
                f"- {dataset}, {activation}, depth {deep}: level flow at init "
                f"({1 / level_factor:g} <= ratio <= {level_factor:g}): "
                f"{', '.join(level) or 'none'}; learns (mean test accuracy >= chance "
                f"{chance_acc:.2f} + 0.1): {', '.join(learns) or 'none'}."
            )
    return lines


def check_ratios(stats, seeds):
    """Each seed's ratio is its first over its last layer's norm (both stored to 4
    significant digits, so to 2e-3), None exactly where that is not positive and finite;
    the summary is over the seeds that have one."""
    ratios = stats["delta_ratio"]
    assert len(ratios) == len(stats["delta_norms"]) == seeds
    for ratio, norms in zip(ratios, stats["delta_norms"], strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            want = np.float64(norms[0]) / np.float64(norms[-1])
        if ratio is None:
            assert not (np.isfinite(want) and want > 0), norms
        else:
            assert ratio == pytest.approx(want, rel=2e-3), norms
    good = [v for v in ratios if v is not None]
    summary = stats["delta_ratio_summary"]
    assert summary["missing"] == seeds - len(good)
    if good:
        assert summary["geomean"] == pytest.approx(math.exp(np.mean(np.log(good))), rel=1e-12)
        assert (summary["min"], summary["max"]) == (min(good), max(good))
    else:
        assert summary["geomean"] is summary["min"] is summary["max"] is None


def test_remedies_smoke(tmp_path):
    data = run_smoke("remedies", tmp_path, "# Remedies", progress="baseline")
    cfg = data["config"]
    assert data["smoke"] is True
    variants = cfg["variants"]
    assert variants["baseline"] == {
        "init": "standard",
        "standardise": False,
        "norm": None,
        "dropout": 0.0,
        "momentum": 0.0,
        "lr_scale": 1.0,
    }
    for name in ("glorot init", "standardised inputs", "layer norm", "batch norm", "dropout"):
        assert name in variants, name
    assert variants["momentum"]["momentum"] > 0
    assert {v["norm"] for v in variants.values()} == {None, "layer", "batch"}

    cells = {(r["dataset"], r["activation"], r["variant"], r["depth"]) for r in data["settings"]}
    for dataset in cfg["datasets"]:
        for activation in cfg["activations"]:
            for depth in cfg["depths"]:
                for name in variants:
                    assert (dataset, activation, name, depth) in cells
    assert len(data["settings"]) == len(cells)

    # chance is the majority class of the training split, scored on the test split
    n_test = {}
    for dataset in cfg["datasets"]:
        want, n_test[dataset] = chance(dataset)
        assert data["chance_accuracy"][dataset] == pytest.approx(want, rel=1e-12)

    for r in data["settings"]:
        variant = variants[r["variant"]]
        # "momentum, lr x0.1" keeps plain SGD's effective step lr / (1 - momentum)
        if r["variant"] == "momentum, lr x0.1":
            assert r["lr"] / (1 - variant["momentum"]) == pytest.approx(cfg["lr"], rel=1e-12)
        else:
            assert r["lr"] == cfg["lr"], r["variant"]
        accuracy = r["test_accuracy"]
        assert len(accuracy) == cfg["seeds"]
        # a fraction of the test split: k / n_test (float32 rounding aside)
        hits = np.asarray(accuracy) * n_test[r["dataset"]]
        assert np.all(np.abs(hits - np.round(hits)) < 1e-3), accuracy
        summary = r["test_accuracy_summary"]
        assert summary["mean"] == pytest.approx(np.mean(accuracy), rel=1e-12)
        assert (summary["min"], summary["max"]) == (min(accuracy), max(accuracy))
        assert r["diverged"] == sum(not math.isfinite(v) for v in r["final_train_loss"])
        for when in ("at_init", "trained"):
            stats = r[when]
            assert all(len(norms) == r["depth"] for norms in stats["delta_norms"])
            check_ratios(stats, cfg["seeds"])
    assert any(r["lr"] != cfg["lr"] for r in data["settings"])  # the x0.1 variant ran

    # the normalised networks pass a gradient back at this small depth: the ratio is finite
    for r in data["settings"]:
        if variants[r["variant"]]["norm"] is not None:
            assert r["at_init"]["delta_ratio_summary"]["missing"] == 0, r["variant"]

    rates = {r["lr"] for r in data["lr_check"]}
    assert len(rates) >= 1 and cfg["lr"] not in rates
    for r in data["lr_check"]:
        assert r["test_accuracy_summary"]["mean"] == pytest.approx(
            np.mean(r["test_accuracy"]), rel=1e-12
        )

    assert data["verdict"] == expected_verdict(data)
    md = (tmp_path / "remedies.md").read_text()
    assert "## Verdict" in md and all(line in md for line in data["verdict"])
    assert "| variant | depth |" in md
    assert "| baseline |" in md and "| all, batch norm |" in md
    assert "## Learning-rate check" in md

    (tmp_path / "remedies.png").unlink()  # --replot redraws it from the stored records
    run_script("remedies", "--replot", "--out", str(tmp_path), timeout=120)
    assert (tmp_path / "remedies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
