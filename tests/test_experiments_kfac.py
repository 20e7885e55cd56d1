"""experiments/kfac_depth.py runs end to end at its --smoke size and writes what it
promises: every setting of every optimiser's grid, the best setting of each on every seed,
loss curves of the stated length, test accuracies in [0, 1], backward-flow ratios read at
the stated epochs, times to target that agree with the curves, and compile times apart.

The script runs in a fresh interpreter (as a user would run it) into a temporary folder
(`conftest.run_smoke`). The smoke sizes only exercise the plumbing: no number is
compared with a stored value.
"""

import math

from conftest import run_smoke

METHODS = ["SGD", "Adam", "K-FAC", "K-FAC, clipped"]
RUN_KEYS = {
    "method",
    "setting",
    "label",
    "seed",
    "train_loss",
    "minibatch_loss",
    "epoch_s",
    "final_train_loss",
    "test_accuracy",
    "flow_epochs",
    "ratio",
    "delta_norms_init",
    "delta_norms_final",
    "median_epoch_s",
    "train_s",
    "to_target",
}


def check_run(run, cfg, depth):
    epochs = cfg["epochs"][run["method"]]
    assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
    assert len(run["train_loss"]) == len(run["minibatch_loss"]) == len(run["epoch_s"]) == epochs
    assert all(math.isfinite(v) and v > 0 for v in run["train_loss"])  # no smoke run diverges
    assert math.isclose(run["final_train_loss"], run["train_loss"][-1], rel_tol=1e-3)
    assert 0 <= run["test_accuracy"] <= 1
    assert all(s > 0 for s in run["epoch_s"])
    assert math.isclose(run["train_s"], sum(run["epoch_s"]), rel_tol=1e-3)
    # the flow is read at init, every flow_every epochs and at the end
    every = cfg["flow_every"]
    want = [0, *range(every, epochs + 1, every)]
    assert run["flow_epochs"] == (want if want[-1] == epochs else [*want, epochs])
    assert len(run["ratio"]) == len(run["flow_epochs"])
    assert len(run["delta_norms_init"]) == len(run["delta_norms_final"]) == depth
    first, last = run["delta_norms_init"][0], run["delta_norms_init"][-1]
    assert run["ratio"][0] is not None
    assert math.isclose(run["ratio"][0], first / last, rel_tol=1e-3)
    for target, hit in run["to_target"].items():
        below = [i for i, v in enumerate(run["train_loss"]) if v <= float(target)]
        if below:
            assert hit["epochs"] == below[0] + 1
            assert math.isclose(hit["s"], sum(run["epoch_s"][: below[0] + 1]), rel_tol=1e-3)
        else:
            assert hit == {"epochs": None, "s": None}
    if run["method"].startswith("K-FAC"):
        scales = run["kfac_factor_scales_after_epoch_1"]
        assert len(scales["A"]) == len(scales["G"]) == depth
        assert all(v >= 0 for v in scales["A"] + scales["G"])


def test_kfac_depth(tmp_path):
    result = run_smoke("kfac_depth", tmp_path, "# Curvature against depth", "seed 0")
    keys = {"experiment", "smoke", "config", "compile_s", "epoch_cost", "grid", "best", "verdict"}
    assert keys | {"martens", "diagnostics_check", "wall_s", "jax_version"} <= set(result)
    assert result["experiment"] == "kfac_depth" and result["smoke"] is True
    cfg = result["config"]
    depth = len(cfg["sizes"]) - 1
    assert set(cfg["grids"]) == set(METHODS)
    assert all(v > 0 for v in result["compile_s"].values()) and "SGD" in result["compile_s"]
    cost = result["epoch_cost"]
    assert set(cost) == set(METHODS)
    assert all(0 < c["min_s"] <= c["median_s"] for c in cost.values())
    for init in cfg["inits"]:
        grid = result["grid"][init]
        assert len(grid) == sum(len(cfg["grids"][m]) for m in METHODS)
        for run in grid:
            assert run["seed"] == 0
            check_run(run, cfg, depth)
        for method in METHODS:
            best = result["best"][init][method]
            runs = best["runs"]
            assert [r["seed"] for r in runs] == list(range(cfg["seeds"]))
            assert all(r["setting"] == best["setting"] for r in runs)
            # the best of the grid by final training loss
            mine = [r["final_train_loss"] for r in grid if r["method"] == method]
            assert runs[0]["final_train_loss"] == min(mine)
            for run in runs:
                check_run(run, cfg, depth)
            s = best["summary"]
            assert all(0 <= a <= 1 for a in s["test_accuracy"])
            assert s["test_accuracy_min"] <= s["test_accuracy_mean"] <= s["test_accuracy_max"]
            for t in cfg["targets"]:
                hit = s[f"target_{t:g}"]
                assert hit["of"] == cfg["seeds"] and 0 <= hit["reached"] <= cfg["seeds"]
            assert s["ratio_init"]["geomean"] > 0
        # the two readings of the backward flow at init agree
        check = result["diagnostics_check"][init]
        assert check["max_rel_diff_delta_norm"] < 1e-4
        assert math.isclose(check["ratio_diagnostics"], check["ratio_backprop"], rel_tol=1e-4)
    assert len(result["martens"]) == len(cfg["inits"])
    assert all(line.startswith("- ") for line in result["verdict"] + result["martens"])
