"""Runs as data, polished (item 3): a run's metrics flatten to columns, one value an epoch
(`Run.columns`, `jaxbp.runs.columns`), a per-layer metric as `NAME_1 ... NAME_L`, NaN
where an epoch lacks a metric; `Run.frame` gives them as a pandas DataFrame, pandas
imported only then (an optional extra), and one clear `ImportError` without it."""

import shutil
import sys

import numpy as np
import pytest

from jaxbp import runs
from jaxbp.runs import load_run

XOR = ["train", "--dataset", "xor", "--hidden", "4,3", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run of one epoch without diagnostics, resumed to three with them: its first
    epoch lacks the per-layer metrics."""
    from jaxbp.app.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main([*XOR, "--epochs", "1", "--out", str(out)]) == 0
    assert main([*XOR, "--epochs", "3", "--out", str(out), "--resume", "--diagnostics"]) == 0
    return out


def test_columns_by_hand():
    rows = [
        {"epoch": 1, "loss": 0.5, "delta_norm": [3.0, 2.0], "note": "warm-up"},
        {"epoch": 2, "loss": 2, "delta_norm": [1.0, 4.0, 5.0], "flag": True},
        {"epoch": 3, "delta_norm": [], "extra": 10**400},
    ]
    got = runs.columns(rows)
    assert list(got) == [
        "epoch",
        "loss",
        "delta_norm_1",
        "delta_norm_2",
        "note",
        "delta_norm_3",
        "flag",
        "extra",
    ]
    assert got["epoch"].dtype == np.int64 and got["epoch"].tolist() == [1, 2, 3]
    nan = np.nan
    for name, want in {
        "loss": [0.5, 2.0, nan],
        "delta_norm_1": [3.0, 1.0, nan],
        "delta_norm_2": [2.0, 4.0, nan],
        "delta_norm_3": [nan, 5.0, nan],
        "extra": [nan, nan, np.inf],
    }.items():
        assert got[name].dtype == np.float64
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["note"].dtype == object and got["note"].tolist() == ["warm-up", None, None]
    assert got["flag"].tolist() == [None, True, None]
    assert runs.columns([]) == {}


def test_a_column_two_metrics_would_share_is_refused():
    with pytest.raises(ValueError, match=r"column 'grad_1' would hold both metric 'grad_1'") as e:
        runs.columns([{"epoch": 1, "grad_1": 0.5, "grad": [1.0]}])
    assert "\n" not in str(e.value) and "rename one of them" in str(e.value)


def test_a_resumed_runs_columns(resumed):
    run = load_run(resumed)
    cols = run.columns()
    n = len(run.metrics)
    assert n == 3 and all(len(v) == n for v in cols.values())
    assert cols["epoch"].tolist() == [1, 2, 3]
    layers = {"delta_norm": 3, "grad_W_norm": 3, "saturated": 2}  # L = 3, two hidden
    for name, count in layers.items():
        assert f"{name}_{count}" in cols and f"{name}_{count + 1}" not in cols and name not in cols
        for layer in range(1, count + 1):
            column = cols[f"{name}_{layer}"]
            assert np.isnan(column[0]), "epoch 1 trained without diagnostics"
            want = [row[name][layer - 1] for row in run.metrics[1:]]
            np.testing.assert_array_equal(column[1:], want)
    np.testing.assert_array_equal(cols["train_loss"], [r["train_loss"] for r in run.metrics])


def test_frame_without_pandas_says_how_to_get_it(resumed, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas: ImportError
    with pytest.raises(ImportError) as err:
        load_run(resumed).frame()
    message = str(err.value)
    assert "\n" not in message and "need pandas, which is not installed" in message
    assert "pip install 'jaxbp[frame]'" in message and "Run.columns()" in message


def test_pandas_is_not_imported_by_jaxbp(tmp_path):
    import subprocess

    code = "import jaxbp, sys; jaxbp.runs.columns([{'epoch': 1}]); print('pandas' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def test_frame_with_pandas(resumed, tmp_path):
    pandas = pytest.importorskip("pandas")
    out = tmp_path / "r"
    shutil.copytree(resumed, out)
    run = load_run(out)
    frame = run.frame()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 3
    assert list(frame.columns) == list(run.columns())
    assert frame["delta_norm_1"].isna().tolist() == [True, False, False]
    np.testing.assert_array_equal(frame["epoch"].to_numpy(), [1, 2, 3])
