"""Experiments 4-6 run end to end at their --smoke size and write what they promise.

Each script runs in a fresh interpreter (as a user would run it) into a temporary folder
(`conftest.run_smoke`). The smoke sizes only exercise the plumbing.
"""

from conftest import run_smoke

MD_STARTS = ("|", "Median")
"""How these scripts' tables begin."""


def test_two_paths(tmp_path):
    result = run_smoke("two_paths", tmp_path, MD_STARTS)
    assert {"experiment", "optimizer", "batch_size", "seeds", "smoke", "wall_s", "datasets"} <= set(
        result
    )
    assert result["smoke"] is True and result["datasets"]
    for d in result["datasets"]:
        for key in (
            "test_score_manual_mean",
            "test_score_autodiff_mean",
            "float32_max_abs_diff_final",
            "float32_max_rel_diff_final",
            "float64_max_abs_diff_final",
            "manual_float32_vs_float64_max_abs_diff_final",
        ):
            assert key in d, key
        assert set(d["per_epoch"]) == {"float32", "float64"}
        assert len(d["per_epoch"]["float32"]["max_abs_diff"]) == d["epochs"]
        # the two paths compute the same gradient: apart by rounding only
        assert d["float64_max_abs_diff_final"] < 1e-12
        assert d["float32_max_abs_diff_final"] < 1e-4


def test_why_cross_entropy(tmp_path):
    result = run_smoke("why_cross_entropy", tmp_path, MD_STARTS)
    keys = {"experiment", "smoke", "wall_s", "settings", "unit_deltas", "sigmoid_delta_at_z"}
    assert keys | {"training"} <= set(result)
    deltas = result["unit_deltas"]
    assert deltas["max_rel_err_vs_jax_grad_and_backprop"] < 1e-9  # float64
    at = result["sigmoid_delta_at_z"]["-10"]
    assert abs(at["mse + sigmoid"]) < 1e-3 < 0.99 < abs(at["cross-entropy"])
    row = result["training"][0]
    for key in (
        "dataset",
        "optimizer",
        "loss",
        "saturation",
        "initial_delta_norm",
        "epochs_to_target",
        "median_epochs_to_target",
        "final_train_accuracy",
        "final_test_accuracy",
        "train_accuracy_per_epoch",
    ):
        assert key in row, key
    assert {r["loss"] for r in result["training"]} == {"mse + sigmoid", "cross-entropy"}


def test_capacity(tmp_path):
    result = run_smoke("capacity", tmp_path, MD_STARTS)
    assert {"experiment", "smoke", "wall_s", "settings", "results"} <= set(result)
    names = {r["dataset"] for r in result["results"]}
    assert names == {"xor", "moons", "spirals"}
    for r in result["results"]:
        for key in ("hidden", "parameters", "train_accuracy_mean", "test_accuracy_mean"):
            assert key in r, key
        assert 0 <= r["test_accuracy_mean"] <= 1
