"""Experiments 1-3 of issue 4 run end to end at their smoke size and write their results.

Each script runs in a subprocess, as a user would run it (`python experiments/NAME.py`),
with `--smoke --out <tmp_path>`.
"""

import numpy as np
import pytest

import jaxbp
from conftest import run_smoke


def test_fig_activations(tmp_path):
    data = run_smoke("fig_activations", tmp_path)
    assert set(data) >= {"grid", "activations", "worst_abs_err_vs_jax_grad"}
    assert set(data["activations"]) == set(jaxbp.ACTIVATIONS)
    for name, row in data["activations"].items():
        assert set(row) >= {"max", "argmax", "max_attained_on", "at", "vs_jax_grad"}, name
        assert set(row["at"]) == {"-10", "-5", "0", "5", "10"}, name
    sigmoid = data["activations"]["sigmoid"]
    assert sigmoid["max"] == pytest.approx(0.25) and sigmoid["argmax"] == pytest.approx(0)
    assert data["worst_abs_err_vs_jax_grad"]["float64"] < 1e-12
    assert data["worst_abs_err_vs_jax_grad"]["float32"] < 1e-5


def test_vanishing_gradients(tmp_path):
    data = run_smoke("vanishing_gradients", tmp_path)
    assert set(data) >= {"config", "settings", "verdict"}
    assert set(data["verdict"]) == {"at_init", "trained"}
    depths = data["config"]["depths"]
    seen = {(r["activation"], r["init"], r["depth"]) for r in data["settings"]}
    for activation, (standard, normalised) in data["config"]["inits"].items():
        for depth in depths:
            assert (activation, standard, depth) in seen
            assert (activation, normalised, depth) in seen
    for r in data["settings"]:
        for when in ("at_init", "trained"):
            stats = r[when]
            assert set(stats) >= {"delta_norms", "dW_norms", "delta_ratio", "dW_ratio"}
            assert all(len(norms) == r["depth"] for norms in stats["delta_norms"])
            assert len(stats["delta_ratio"]) == data["config"]["seeds"]
            assert set(stats["delta_ratio_summary"]) >= {"geomean", "min", "max"}
            saturated = np.asarray(stats["saturated"])  # (threshold, hidden layer)
            assert saturated.shape == (2, r["depth"] - 1)
            assert np.all((saturated >= 0) & (saturated <= 1))
            assert np.all(saturated[0] <= saturated[1])  # a stricter threshold counts fewer
        assert len(r["test_accuracy"]) == data["config"]["seeds"]
    md = (tmp_path / "vanishing_gradients.md").read_text()
    assert "## Verdict" in md and "| activation | init | depth |" in md
    assert "## Saturation at depth 3" in md


def test_memory_for_time(tmp_path):
    data = run_smoke("memory_for_time", tmp_path)
    assert set(data) >= {"config", "methods", "records", "fits", "findings"}
    methods = data["methods"]
    assert {"manual", "naive", "checkpoint_each"} <= set(methods)
    assert sorted(int(d) for d in data["records"]) == data["config"]["depths"]
    for depth, rec in data["records"].items():
        for method in methods:
            r = rec[method]
            assert r["median_s"] > 0, (depth, method)
            assert "temp_size_in_bytes" in r["memory"], (depth, method)
            assert r["rel_err_vs_manual"] < data["config"]["rtol"], (depth, method)
    for method in methods:
        assert {"loglog_slope", "linear", "quadratic", "growth"} <= set(
            data["fits"][method]["time"]
        )
