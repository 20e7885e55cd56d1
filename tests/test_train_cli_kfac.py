"""`jaxbp train --optimizer kfac`: the K-FAC path under `optax.sgd(lr, momentum=0.9)`,
its factors checkpointed with the run, resumed bit for bit, loaded back by `load_run`,
and refused with the flags it does not go with."""

import jax
import numpy as np
import pytest

import jaxbp
from conftest import metrics_without_timing, run_train
from jaxbp._files.checkpoint import read_arrays

XOR = ["--dataset", "xor", "--hidden", "8,8", "--batch-size", "50", "--quiet"]
KFAC = ["--optimizer", "kfac", "--lr", "0.05"]


@pytest.fixture(scope="module")
def kfac_run(tmp_path_factory):
    from jaxbp.app.cli import main

    out = tmp_path_factory.mktemp("kfac")
    assert main(["train", *XOR, *KFAC, "--epochs", "4", "--out", str(out)]) == 0
    return out


def test_kfac_trains_and_resumes_bit_identical(kfac_run, tmp_path, capsys):
    split = tmp_path / "split"
    assert run_train(capsys, *XOR, *KFAC, "--epochs", "2", "--out", str(split))[0] == 0
    code, _, err = run_train(capsys, *XOR, *KFAC, "--epochs", "4", "--out", str(split), "--resume")
    assert code == 0, err
    straight = metrics_without_timing(kfac_run)
    assert straight == metrics_without_timing(split) and len(straight) == 4
    assert straight[-1]["train_loss"] < straight[0]["train_loss"]
    _, a = read_arrays(kfac_run / "checkpoint.jaxbp")
    _, b = read_arrays(split / "checkpoint.jaxbp")
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_load_run_rebuilds_the_factors(kfac_run):
    run = jaxbp.load_run(kfac_run)
    factors = run.opt_state.path_state
    steps = -(-jaxbp.datasets.load("xor").x_train.shape[0] // 50)
    assert isinstance(factors, jaxbp.KFACState) and int(factors.count) == 4 * steps
    assert [a.shape for a in factors.A] == [(2, 2), (8, 8), (8, 8)]
    assert all(bool(jax.numpy.all(jax.numpy.isfinite(g))) for g in factors.inv_G)


@pytest.mark.parametrize(
    "flags",
    [
        ["--grad", "autodiff"],
        ["--norm", "layer"],
        ["--diagnostics"],
        ["--dp-clip", "1", "--dp-noise", "1"],
    ],
    ids=["autodiff", "norm", "diagnostics", "dp"],
)
def test_kfac_refuses_what_it_does_not_precondition(flags, capsys):
    code, _, err = run_train(capsys, *XOR, *KFAC, "--epochs", "1", *flags)
    assert code == 2 and "--optimizer kfac preconditions the manual gradient" in err
    assert len(err.strip().splitlines()) == 1
