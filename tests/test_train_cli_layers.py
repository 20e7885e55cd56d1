"""`jaxbp train --norm {none,layer,batch} --dropout P` (issue 12 item 5): recorded in the
summary and the checkpoint, resumed bit-identically with batch norm and dropout on,
evaluated with the running averages, and loaded back by `load_run` with its TrainState."""

import json

import jax
import numpy as np
import pytest

import jaxbp
from conftest import archive, metrics_without_timing, run_train, sealed
from jaxbp._files.checkpoint import read_arrays, save_checkpoint
from jaxbp.app.cli import main

XOR = ["--dataset", "xor", "--hidden", "8,8", "--batch-size", "50", "--quiet"]
REMEDIES = ["--norm", "batch", "--dropout", "0.2"]


@pytest.fixture(scope="module")
def batchnorm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bn")
    assert main(["train", *XOR, *REMEDIES, "--epochs", "4", "--out", str(out)]) == 0
    return out


def test_resume_is_bit_identical_with_batch_norm_and_dropout(batchnorm_run, tmp_path, capsys):
    split = tmp_path / "split"
    assert run_train(capsys, *XOR, *REMEDIES, "--epochs", "2", "--out", str(split))[0] == 0
    code, _, err = run_train(
        capsys, *XOR, *REMEDIES, "--epochs", "4", "--out", str(split), "--resume"
    )
    assert code == 0, err
    straight = metrics_without_timing(batchnorm_run)
    assert straight == metrics_without_timing(split) and len(straight) == 4
    meta_a, arrays_a = read_arrays(batchnorm_run / "checkpoint.jaxbp")
    meta_b, arrays_b = read_arrays(split / "checkpoint.jaxbp")
    assert meta_a == meta_b and len(arrays_a) == len(arrays_b)
    for a, b in zip(arrays_a, arrays_b, strict=True):
        np.testing.assert_array_equal(a, b)
    # Dropout draws new masks every epoch: the same run without it trains differently.
    plain = tmp_path / "plain"
    assert run_train(capsys, *XOR, "--norm", "batch", "--epochs", "4", "--out", str(plain))[0] == 0
    assert metrics_without_timing(plain) != straight


def test_summary_and_checkpoint_record_norm_and_dropout(batchnorm_run):
    summary = json.loads((batchnorm_run / "summary.json").read_text())
    assert summary["norm"] == "batch" and summary["dropout"] == 0.2
    assert summary["config"]["norm"] == "batch" and summary["config"]["dropout"] == 0.2
    meta, _ = read_arrays(batchnorm_run / "checkpoint.jaxbp")
    assert meta["config"]["norm"] == "batch" and meta["config"]["dropout"] == 0.2
    # The bias before each batch norm has an exactly-zero gradient: the verdict is taken
    # on the gradient's scale (atol = rtol ||g||), and on that scale the error is rounding.
    assert summary["parity_atol"] > 0 and summary["parity_max_scaled_err"] < 1e-12


def numpy_eval(params, stats, x, y, eps=1e-5):
    """Batch-norm network in evaluation mode, by hand in float64: dense, normalise with the
    running averages, gain and bias, tanh; a sigmoid unit under binary cross-entropy."""
    p = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in params]
    a = np.asarray(x, np.float64)
    for dense, norm, st in zip(p[0:-1:2], p[1:-1:2], stats, strict=True):
        z = a @ dense["W"] + dense["b"]
        z = (z - np.asarray(st["mean"])) / np.sqrt(np.asarray(st["var"]) + eps)
        a = np.tanh(norm["gain"] * z + norm["bias"])
    logit = (a @ p[-1]["W"] + p[-1]["b"])[:, 0]
    t = np.asarray(y, np.float64).reshape(-1)
    loss = np.mean(np.logaddexp(0, logit) - t * logit)
    return loss, np.mean((logit > 0) == (t > 0.5))


def test_load_run_rebuilds_the_train_state_and_scores_in_evaluation_mode(batchnorm_run):
    run_ = jaxbp.load_run(batchnorm_run)
    summary = run_.summary
    assert isinstance(run_.opt_state, jaxbp.TrainState)
    assert run_.stats is run_.opt_state.stats and len(run_.stats) == 2
    assert run_.network.norm == "batch" and run_.network.dropout == 0.2
    moved = run_.stats[0]
    assert not np.allclose(moved["mean"], 0) and not np.allclose(moved["var"], 1)
    data, info = run_.dataset()
    want_loss, want_acc = numpy_eval(run_.params, run_.stats, data.x_test, data.y_test)
    assert summary["test_loss"] == pytest.approx(want_loss, rel=1e-5)
    assert summary["test_accuracy"] == pytest.approx(want_acc, abs=1e-6)
    got = jaxbp.evaluate(
        run_.params, data.x_test, data.y_test, run_.network, task=info.task, stats=run_.stats
    )
    assert float(got["loss"]) == pytest.approx(want_loss, rel=1e-5)


def test_load_run_keeps_the_running_averages_without_the_optimizer(batchnorm_run, tmp_path):
    """An optimizer this version cannot rebuild: parameters and averages still load."""
    meta, arrays = read_arrays(batchnorm_run / "checkpoint.jaxbp")
    meta["config"]["optimizer"] = "lion"
    out = tmp_path / "r"
    out.mkdir()
    save_checkpoint(out / "checkpoint.jaxbp", list(arrays), meta)
    loaded, full = jaxbp.load_run(out), jaxbp.load_run(batchnorm_run)
    assert loaded.opt_state is None
    # one {"mean", "var"} per batch norm, as the full run's TrainState holds them
    assert [sorted(s) for s in loaded.stats] == [["mean", "var"]] * 2
    assert jax.tree.structure(loaded.stats) == jax.tree.structure(full.stats)
    assert jax.tree.structure(loaded.params) == jax.tree.structure(full.params)
    for a, b in zip(
        jax.tree.leaves((loaded.params, loaded.stats)),
        jax.tree.leaves((full.params, full.stats)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_layer_norm_run_loads_and_scores(tmp_path, capsys):
    code, out, err = run_train(
        capsys, *XOR, "--norm", "layer", "--epochs", "2", "--out", str(tmp_path)
    )
    assert code == 0 and out.splitlines()[-1].endswith("parity passed"), err
    run_ = jaxbp.load_run(tmp_path)
    assert run_.stats is None and run_.network.norm == "layer"
    assert [sorted(p) for p in run_.params] == [["W", "b"], ["bias", "gain"]] * 2 + [["W", "b"]]
    data, info = run_.dataset()
    got = jaxbp.evaluate(run_.params, data.x_test, data.y_test, run_.network, task=info.task)
    assert float(got["loss"]) == pytest.approx(run_.summary["test_loss"], rel=1e-5)


def test_resume_with_other_norm_or_dropout_is_refused(tmp_path, capsys):
    args = [*XOR, "--norm", "layer", "--dropout", "0.1", "--out", str(tmp_path)]
    assert run_train(capsys, *args, "--epochs", "1")[0] == 0
    good = (tmp_path / "checkpoint.jaxbp").read_bytes()
    for flag, value, name in (("--norm", "batch", "norm"), ("--dropout", "0.3", "dropout")):
        changed = [*args, flag, value, "--epochs", "2", "--resume"]
        code, _, err = run_train(capsys, *changed)
        assert code == 2 and "settings differ" in err and f"{name}:" in err, err
        assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "checkpoint.jaxbp").read_bytes() == good


def test_a_checkpoint_from_before_these_settings_resumes(tmp_path, capsys):
    """Checkpoints written before --norm and --dropout existed lack them: they were runs
    without either, and resume as such."""
    assert run_train(capsys, *XOR, "--epochs", "1", "--out", str(tmp_path))[0] == 0
    path = tmp_path / "checkpoint.jaxbp"
    meta, arrays = read_arrays(path)
    for name in ("norm", "dropout", "dp_clip", "dp_noise", "dp_delta", "data_sha256"):
        del meta["config"][name]
    path.write_bytes(sealed(archive(arrays, meta)))  # that version's layout: no key paths
    assert run_train(capsys, *XOR, "--epochs", "2", "--out", str(tmp_path), "--resume")[0] == 0
    code, _, err = run_train(
        capsys, *XOR, "--dropout", "0.1", "--epochs", "3", "--out", str(tmp_path), "--resume"
    )
    assert code == 2 and "dropout: 0.0 in the checkpoint, 0.1 now" in err


BAD = [
    (
        ["--dropout", "1"],
        "argument --dropout: expected a rate from 0 (no dropout) up to but excluding 1",
    ),
    (["--dropout", "-0.1"], "argument --dropout: expected a rate"),
    (["--dropout", "nan"], "argument --dropout: expected a rate"),
    (["--dropout", "x"], "argument --dropout: expected a rate"),
    (["--norm", "group"], "argument --norm: invalid choice: 'group'"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_norm_or_dropout_is_one_line_and_status_2(capsys, args, fragment):
    code, out, err = run_train(capsys, *XOR, *args)
    assert code == 2 and fragment in err and out == ""
    assert len(err.strip().splitlines()) == 1
