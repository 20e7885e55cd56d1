"""experiments/remedies.py (issue 12, item 6) runs end to end at its --smoke size and writes
what it promises: every variant at every depth, accuracies in [0, 1], a backward flow
with one norm per layer, and the tables.

The script runs in a fresh interpreter (as a user would run it) into a temporary folder;
the XLA flags trade run-time speed for compile speed, which is what a run this small
spends its time on.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def test_remedies_smoke(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "remedies.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"remedies.py --smoke failed:\n{result.stderr[-3000:]}"
    assert "baseline" in result.stderr, "remedies.py shows no progress on stderr"
    for suffix in ("png", "json", "md"):
        path = tmp_path / f"remedies.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"remedies.py did not write {path.name}"
    assert (tmp_path / "remedies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / "remedies.json").read_text())
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
    rates = {r["lr"] for r in data["lr_check"]}
    assert len(rates) >= 1 and cfg["lr"] not in rates
    assert all(0 <= a <= 1 for r in data["lr_check"] for a in r["test_accuracy"])

    cells = {(r["dataset"], r["activation"], r["variant"], r["depth"]) for r in data["settings"]}
    for dataset in cfg["datasets"]:
        for activation in cfg["activations"]:
            for depth in cfg["depths"]:
                for name in variants:
                    assert (dataset, activation, name, depth) in cells
    assert len(data["settings"]) == len(cells)
    for r in data["settings"]:
        accuracy = r["test_accuracy"]
        assert len(accuracy) == cfg["seeds"]
        assert all(0 <= a <= 1 for a in accuracy)
        summary = r["test_accuracy_summary"]
        assert summary["min"] <= summary["mean"] <= summary["max"]
        for when in ("at_init", "trained"):
            stats = r[when]
            assert len(stats["delta_norms"]) == cfg["seeds"]
            for norms in stats["delta_norms"]:
                assert len(norms) == r["depth"]
                assert all(n >= 0 for n in norms if math.isfinite(n))
            assert len(stats["delta_ratio"]) == cfg["seeds"]
            assert set(stats["delta_ratio_summary"]) == {"geomean", "min", "max", "missing"}
    # the normalised networks pass a gradient back at this small depth: the ratio is finite
    for r in data["settings"]:
        if variants[r["variant"]]["norm"] is not None:
            assert r["at_init"]["delta_ratio_summary"]["missing"] == 0, r["variant"]

    md = (tmp_path / "remedies.md").read_text()
    assert "## Verdict" in md
    assert "| variant | depth |" in md
    assert "| baseline |" in md and "| all, batch norm |" in md
    assert "## Learning-rate check" in md

    (tmp_path / "remedies.png").unlink()  # --replot redraws it from the stored records
    replot = [sys.executable, str(EXPERIMENTS / "remedies.py"), "--replot", "--out", str(tmp_path)]
    result = subprocess.run(replot, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"remedies.py --replot failed:\n{result.stderr[-3000:]}"
    assert (tmp_path / "remedies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
