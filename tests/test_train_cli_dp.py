"""`jaxbp train --dp-clip C --dp-noise SIGMA [--dp-delta D]` (issue 14 item 5): DP-SGD
through `make_dp_train_epoch`, the privacy spent in summary.json and the final table,
and every combination that makes no sense refused in one line."""

import json

import numpy as np
import pytest

from conftest import metrics_without_timing, run_train
from jaxbp.app.job import default_delta

XOR = ["--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]
N_TRAIN = 800  # xor: 1000 samples, 20% held out
DP = ["--dp-clip", "1", "--dp-noise", "1.1"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rdp_epsilon(sigma, q, steps, delta):
    """The reference: Google's RDP accountant called directly, Poisson-sampled Gaussian."""
    import dp_accounting
    from dp_accounting import rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return accountant.get_epsilon(delta)


def test_default_delta_is_the_largest_power_of_ten_below_one_over_n():
    assert [default_delta(n) for n in (1438, 1000, 999, 800, 60_000, 9)] == [
        1e-4,
        1e-4,
        1e-3,
        1e-3,
        1e-5,
        1e-1,
    ]
    for n in (1438, 1000, 999, 800, 60_000, 9):
        assert default_delta(n) < 1 / n <= 10 * default_delta(n)


@pytest.mark.parametrize("sampling", [None, "poisson", "shuffle"])
def test_dp_run_writes_epsilon_delta_sampling_and_clipped_fraction(tmp_path, capsys, sampling):
    """Poisson sampling unless asked otherwise; epsilon after every epoch in the log and
    the summary, each the RDP accountant's for the steps taken so far."""
    chosen = [] if sampling is None else ["--dp-sampling", sampling]
    code, out, err = run_train(
        capsys, *XOR, *DP, *chosen, "--norm", "layer", "--epochs", "3", "--out", str(tmp_path)
    )
    assert code == 0, err
    dp = json.loads((tmp_path / "summary.json").read_text())["dp"]
    per_epoch = -(-N_TRAIN // 50)
    steps = 3 * per_epoch
    assert (dp["steps"], dp["sample_rate"], dp["delta"]) == (steps, 50 / N_TRAIN, 1e-3)
    assert dp["epsilon"] == pytest.approx(rdp_epsilon(1.1, 50 / N_TRAIN, steps, 1e-3), rel=1e-9)
    want = [rdp_epsilon(1.1, 50 / N_TRAIN, e * per_epoch, 1e-3) for e in (1, 2, 3)]
    logged = rows(tmp_path)
    assert [r["epsilon"] for r in logged] == pytest.approx(want, rel=1e-9)
    assert dp["epsilon_per_epoch"] == pytest.approx(want, rel=1e-9)
    assert dp["epsilon_per_epoch"][-1] == dp["epsilon"]
    method = sampling or "poisson"
    assert dp["accountant"] == "rdp" and dp["batch_sampling"] == method
    meaning = {"poisson": "the run's guarantee", "shuffle": "as if Poisson-sampled"}[method]
    if method == "poisson":  # each step's batch size K ~ Binomial(800, 1/16): mean 50
        assert "guarantee" in dp["sampling"]
        assert all(40 < r["batch"] < 60 for r in logged)
    else:
        assert "shuffled" in dp["sampling"] and all("batch" not in r for r in logged)
    assert all({"clipped", "grad_norm"} <= set(r) for r in logged)
    assert dp["clipped_fraction"] == pytest.approx(np.mean([r["clipped"] for r in logged]))
    assert dp["clipped_fraction_last_epoch"] == logged[-1]["clipped"]
    line = next(x for x in out.splitlines() if x.startswith("DP-SGD: epsilon"))
    assert f"epsilon {dp['epsilon']:.3g} at delta 0.001" in line and "clipped" in line
    assert meaning in line
    assert out.splitlines()[-1].endswith("parity passed")


def test_progress_shows_the_epsilon_spent(tmp_path, capsys):
    args = [a for a in XOR if a != "--quiet"]
    code, _, err = run_train(capsys, *args, *DP, "--epochs", "2", "--out", str(tmp_path))
    assert code == 0, err
    shown = [line for line in err.splitlines() if line.startswith("epoch ")]
    logged = [f"epsilon {r['epsilon']:.3g}" for r in rows(tmp_path)]
    assert len(shown) == 2 and all(e in s for e, s in zip(logged, shown, strict=True))


def test_a_resumed_run_keeps_its_sampling_unless_told(tmp_path, capsys):
    """A run resumed without --dp-sampling samples as its checkpoint did (runs from before
    the flag shuffled: `completed`); asking for another sampling is refused."""
    from jaxbp.app.settings import completed

    assert completed({"dp_clip": 1.0})["dp_sampling"] == "shuffle"
    assert completed({"dp_clip": None})["dp_sampling"] is None
    assert completed({"dp_clip": 1.0, "dp_sampling": "poisson"})["dp_sampling"] == "poisson"
    out = str(tmp_path)
    args = [*XOR, *DP, "--out", out]
    assert run_train(capsys, *args, "--dp-sampling", "shuffle", "--epochs", "1")[0] == 0
    code, _, err = run_train(capsys, *args, "--epochs", "2", "--resume")
    assert code == 0, err
    dp = json.loads((tmp_path / "summary.json").read_text())["dp"]
    assert dp["batch_sampling"] == "shuffle" and len(dp["epsilon_per_epoch"]) == 2
    code, _, err = run_train(capsys, *args, "--dp-sampling", "poisson", "--epochs", "3", "--resume")
    assert code == 2 and "dp_sampling: 'shuffle' in the checkpoint, 'poisson' now" in err


def test_clipped_fraction_is_all_or_nothing_at_extreme_clips(tmp_path, capsys):
    for clip, want in (("1e-6", 1.0), ("1e6", 0.0)):
        out = tmp_path / clip
        args = [*XOR, "--dp-clip", clip, "--dp-noise", "1", "--epochs", "1", "--out", str(out)]
        assert run_train(capsys, *args)[0] == 0
        assert json.loads((out / "summary.json").read_text())["dp"]["clipped_fraction"] == want


def test_without_clipping_or_noise_dp_sgd_is_plain_sgd(tmp_path, capsys):
    """A clip no example reaches and noise of std 1e-30 x 1e6: the DP-SGD gradient is the
    mean gradient, so the run must follow the plain run epoch by epoch (same batches)."""
    plain, dp = tmp_path / "plain", tmp_path / "dp"
    args = [*XOR, "--optimizer", "sgd", "--lr", "0.1", "--epochs", "3"]
    assert run_train(capsys, *args, "--out", str(plain))[0] == 0
    args += ["--dp-sampling", "shuffle"]  # the plain run's batches
    assert (
        run_train(capsys, *args, "--dp-clip", "1e6", "--dp-noise", "1e-30", "--out", str(dp))[0]
        == 0
    )
    for a, b in zip(rows(plain), rows(dp), strict=True):
        for key in ("train_loss", "test_loss", "train_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_dp_resume_is_bit_identical_and_keeps_the_noise(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert (
        run_train(capsys, *XOR, *DP, "--dropout", "0.1", "--epochs", "3", "--out", str(straight))[0]
        == 0
    )
    assert (
        run_train(capsys, *XOR, *DP, "--dropout", "0.1", "--epochs", "1", "--out", str(split))[0]
        == 0
    )
    code, _, err = run_train(
        capsys, *XOR, *DP, "--dropout", "0.1", "--epochs", "3", "--out", str(split), "--resume"
    )
    assert code == 0, err
    assert metrics_without_timing(straight) == metrics_without_timing(split)
    assert (straight / "checkpoint.jaxbp").read_bytes() == (split / "checkpoint.jaxbp").read_bytes()
    assert json.loads((split / "summary.json").read_text())["dp"]["steps"] == 3 * 16
    changed = [*XOR, "--dp-clip", "1", "--dp-noise", "2", "--epochs", "4", "--out", str(split)]
    code, _, err = run_train(capsys, *changed, "--resume")
    assert code == 2 and "dp_noise: 1.1 in the checkpoint, 2.0 now" in err
    # delta only says where epsilon is read off: it may change on resume
    code, _, err = run_train(
        capsys,
        *XOR,
        *DP,
        "--dropout",
        "0.1",
        "--dp-delta",
        "1e-5",
        "--epochs",
        "4",
        "--out",
        str(split),
        "--resume",
    )
    assert code == 0, err
    dp = json.loads((split / "summary.json").read_text())["dp"]
    assert dp["delta"] == 1e-5 and dp["epsilon"] == pytest.approx(
        rdp_epsilon(1.1, 50 / N_TRAIN, 4 * 16, 1e-5), rel=1e-9
    )


BAD = [
    (["--dp-clip", "1"], "--dp-clip needs --dp-noise SIGMA too"),
    (["--dp-noise", "1"], "--dp-noise needs --dp-clip C too"),
    ([*DP, "--norm", "batch"], "--norm batch cannot train with DP-SGD: batch normalisation mixes"),
    ([*DP, "--grad", "autodiff"], "--grad autodiff cannot train with DP-SGD"),
    ([*DP, "--diagnostics"], "--diagnostics is not available with DP-SGD"),
    ([*DP, "--devices", "1"], "--devices cannot split a DP-SGD run"),
    (["--dp-delta", "1e-5"], "--dp-delta sets the delta of a DP-SGD run's epsilon; it needs"),
    (["--dp-sampling", "poisson"], "--dp-sampling sets how a DP-SGD run samples its batches; it"),
    ([*DP, "--dp-sampling", "uniform"], "argument --dp-sampling: invalid choice: 'uniform'"),
    ([*DP, "--dp-delta", "0.01"], "--dp-delta 0.01: at least 1/n_train = 1/800"),
    ([*DP, "--dp-delta", "1"], "argument --dp-delta: expected a probability strictly between"),
    (["--dp-clip", "0", "--dp-noise", "1"], "argument --dp-clip: expected a positive number"),
    (["--dp-clip", "1", "--dp-noise", "0"], "argument --dp-noise: expected a positive number"),
    (["--dp-clip", "1", "--dp-noise", "-1"], "argument --dp-noise: expected a positive number"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_dp_flags_are_one_line_and_status_2(tmp_path, capsys, args, fragment):
    code, out, err = run_train(capsys, *XOR, *args, "--out", str(tmp_path / "r"))
    assert code == 2 and fragment in err and out == "", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.jaxbp").exists()


def test_missing_accountant_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dp_accounting(name, *args, **kwargs):
        if name.startswith("dp_accounting"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dp_accounting)
    code, _, err = run_train(capsys, *XOR, *DP, "--out", str(tmp_path))
    assert code == 2 and "pip install 'jaxbp[privacy]'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoint.jaxbp").exists()
