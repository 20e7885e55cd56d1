"""`jaxbp train`: outputs, resume, refusal of damaged checkpoints, divergence, bad input."""

import json

import numpy as np
import pytest

from conftest import metrics_without_timing, run_train, x64_off

SMALL = ["--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]


def test_outputs(tmp_path, capsys):
    code, out, err = run_train(capsys, *SMALL, "--epochs", "3", "--out", str(tmp_path))
    assert code == 0, err
    assert "accuracy" in out and "parity passed" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".jaxbp.lock",
        "checkpoint.jaxbp",
        "curves.png",
        "metrics.jsonl",
        "summary.json",
    ]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {
        "dataset",
        "grad",
        "epochs",
        "seconds",
        "train_loss",
        "test_loss",
        "train_accuracy",
        "test_accuracy",
        "parity_max_rel_err",
    } <= set(summary)
    assert summary["test_loss"] == lines[-1]["test_loss"]
    assert summary["train_accuracy"] == lines[-1]["train_accuracy"]
    assert summary["parity_dtype"] == "float64" and summary["parity_max_rel_err"] < 1e-12
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_default_run_prints_progress_and_parity(tmp_path, capsys):
    code, out, err = run_train(capsys, "--dataset", "moons", "--hidden", "8", "--epochs", "2")
    assert code == 0
    assert "parity before training (manual_grad vs jax.grad on a batch): worst rel err" in out
    assert "in float64 (rtol 1e-12)" in out and "parity after training" in out
    assert "epoch 2/2" in err and "samples/s" in err


def test_resume_is_bit_identical(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train(capsys, *SMALL, "--epochs", "4", "--out", str(straight))[0] == 0
    assert run_train(capsys, *SMALL, "--epochs", "2", "--out", str(split))[0] == 0
    assert run_train(capsys, *SMALL, "--epochs", "4", "--out", str(split), "--resume")[0] == 0
    assert metrics_without_timing(straight) == metrics_without_timing(split)
    assert (straight / "checkpoint.jaxbp").read_bytes() == (split / "checkpoint.jaxbp").read_bytes()


def test_resume_refuses_damaged_or_mismatched_checkpoints(tmp_path, capsys):
    assert run_train(capsys, *SMALL, "--epochs", "1", "--out", str(tmp_path))[0] == 0
    ckpt = tmp_path / "checkpoint.jaxbp"
    good = ckpt.read_bytes()

    ckpt.write_bytes(good[: len(good) // 2])
    code, _, err = run_train(capsys, *SMALL, "--epochs", "2", "--out", str(tmp_path), "--resume")
    assert code == 2 and "checksum mismatch" in err and "refusing" in err
    assert ckpt.read_bytes() == good[: len(good) // 2], "a damaged checkpoint must not be replaced"

    ckpt.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert "checksum mismatch" in run_train(capsys, *SMALL, "--out", str(tmp_path), "--resume")[2]
    ckpt.write_bytes(b"garbage")
    assert (
        "not a jaxbp checkpoint" in run_train(capsys, *SMALL, "--out", str(tmp_path), "--resume")[2]
    )

    ckpt.write_bytes(good)
    code, _, err = run_train(capsys, *SMALL, "--hidden", "9", "--out", str(tmp_path), "--resume")
    assert code == 2 and "settings differ" in err and "hidden" in err
    code, _, err = run_train(capsys, *SMALL, "--out", str(tmp_path / "none"), "--resume")
    assert code == 2 and "no checkpoint" in err


def test_divergence_stops_with_a_message(tmp_path, capsys):
    args = ["--dataset", "diabetes", "--hidden", "16", "--optimizer", "sgd", "--quiet"]
    assert run_train(capsys, *args, "--epochs", "1", "--lr", "1e-3", "--out", str(tmp_path))[0] == 0
    good = (tmp_path / "checkpoint.jaxbp").read_bytes()
    code, _, err = run_train(
        capsys, *args, "--epochs", "3", "--lr", "1e30", "--out", str(tmp_path), "--resume"
    )
    assert code == 1
    assert "at epoch 2, step" in err and "the last good checkpoint of epoch 1 is kept" in err
    assert (tmp_path / "checkpoint.jaxbp").read_bytes() == good


def test_user_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    rows = "\n".join(f"{a},{b},{c},{int(a + b > 0)}" for a, b, c in x)
    (tmp_path / "d.csv").write_text("a,b,c,label\n" + rows + "\n")
    code, out, err = run_train(
        capsys, "--data", str(tmp_path / "d.csv"), "--target", "label", "--epochs", "30", "--quiet"
    )
    assert code == 0, err
    test_accuracy = float(out.splitlines()[-2].split()[-1])
    assert test_accuracy > 0.9


BAD = [
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    (["--activation", "swish"], "argument --activation: invalid choice"),
    (["--hidden", "0,5"], "argument --hidden: expected comma-separated positive widths"),
    (["--hidden", "abc"], "argument --hidden: expected comma-separated positive widths"),
    (
        ["--lr", "-1"],
        "argument --lr: expected a positive number from 1.2e-38 to 3.4e+38 (float32), got '-1'",
    ),
    (["--lr", "nan"], "argument --lr: expected a positive number"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer up to 1,000,000, got '0'"),
    (["--batch-size", "-3"], "argument --batch-size: expected a positive integer, got '-3'"),
    (["--grad", "numeric"], "argument --grad: invalid choice"),
    (["--data", "/nonexistent/d.csv", "--target", "y"], "/nonexistent/d.csv: no such data file"),
    (["--dataset", "diabetes", "--loss", "cross_entropy"], "does not fit a regression target"),
    (
        ["--dataset", "digits", "--loss", "binary_cross_entropy"],
        "needs two classes; this data has 10",
    ),
    (["--dataset", "xor", "--batch-size", "5000"], "fewer than one batch (--batch-size 5000)"),
    (["--target", "y"], "--target names the label column"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(capsys, args, fragment):
    code, _, err = run_train(capsys, *args)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_data_file(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("a,y\n1,0\nzz,1\n")
    code, _, err = run_train(capsys, "--data", str(tmp_path / "d.csv"), "--target", "y")
    assert code == 2 and "line 3, column 'a': 'zz' is not a number" in err


def test_diagnostics_logged_and_plotted(tmp_path, capsys):
    args = ["--dataset", "xor", "--hidden", "8,8", "--activation", "sigmoid", "--epochs", "2"]
    code, _, err = run_train(capsys, *args, "--diagnostics", "--out", str(tmp_path))
    assert code == 0
    assert err.count("||delta_l||") == 2 and "saturated" in err
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines[-1]["delta_norm"]) == 3 and len(lines[-1]["saturated"]) == 2
    assert all(v > 0 for v in lines[-1]["grad_W_norm"])
    assert (tmp_path / "diagnostics.png").read_bytes().startswith(b"\x89PNG")
    code, _, err = run_train(capsys, *args, "--diagnostics", "--grad", "autodiff")
    assert code == 2 and "use --grad manual" in err


def test_saturation_threshold_is_a_flag_and_changes_no_step(tmp_path, capsys):
    """--saturation T counts units whose slope is below T x the activation's largest: a
    larger T counts at least as many, and the training is the same."""
    args = ["--dataset", "xor", "--hidden", "8,8", "--activation", "sigmoid", "--epochs", "2"]
    logged = {}
    for t in ("0.1", "0.9"):
        out = tmp_path / t
        code, _, err = run_train(
            capsys, *args, "--quiet", "--diagnostics", "--saturation", t, "--out", str(out)
        )
        assert code == 0, err
        logged[t] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((out / "summary.json").read_text())["config"]
        assert config["saturation"] == float(t)
    for low, high in zip(logged["0.1"], logged["0.9"], strict=True):
        assert low["train_loss"] == high["train_loss"]
        assert all(a <= b for a, b in zip(low["saturated"], high["saturated"], strict=True))
    assert sum(logged["0.9"][-1]["saturated"]) > sum(logged["0.1"][-1]["saturated"])
    # a threshold only changes what is counted: a resumed run may change it
    more = [*args, "--quiet", "--diagnostics", "--epochs", "3", "--out", str(tmp_path / "0.1")]
    code, _, err = run_train(capsys, *more, "--saturation", "0.5", "--resume")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--saturation", "0.1"], "--saturation 0.1 sets the threshold of the saturated-units"),
        (["--diagnostics", "--saturation", "0"], "argument --saturation: expected a fraction"),
        (["--diagnostics", "--saturation", "1"], "argument --saturation: expected a fraction"),
    ],
    ids=["without-diagnostics", "zero", "one"],
)
def test_bad_saturation_is_one_line(capsys, args, fragment):
    code, out, err = run_train(capsys, *SMALL, *args)
    assert code == 2 and fragment in err and out == "", err
    assert len(err.strip().splitlines()) == 1


def test_devices(capsys):
    assert run_train(capsys, *SMALL, "--epochs", "1", "--devices", "1")[0] == 0
    code, _, err = run_train(capsys, *SMALL, "--devices", "4")
    assert code == 2 and "only 1 cpu device(s) available" in err
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in err


def test_well_trained_run_passes_parity_and_a_wrong_gradient_still_fails(capsys, monkeypatch):
    """Issue 13 class 6: after 300 epochs of moons the gradient is tiny and its float64
    relative error (~4e-12) passes only on the scale of the whole gradient (atol = rtol
    ||g||); a wrong derivative is still caught. Run in jax's default 32-bit mode, as a
    user runs it."""
    import jax.numpy as jnp

    import jaxbp

    with x64_off():
        code, out, err = run_train(capsys, "--dataset", "moons", "--epochs", "300", "--quiet")
        assert code == 0, err
        assert out.splitlines()[-1].endswith("parity passed")
        bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - 0.9 * a * a)  # wrong
        monkeypatch.setitem(jaxbp.ACTIVATIONS, "tanh", bad)
        code, out, _ = run_train(capsys, *SMALL, "--epochs", "1")
        assert code == 1 and out.splitlines()[-1].endswith("parity FAILED")


# (arguments, epochs): each correct run reported "parity FAILED" when judged on the
# trained gradient's own scale.
LONG_RUNS = [
    pytest.param(["--dataset", "moons"], 1200, id="moons-1200"),
    pytest.param(["--dataset", "moons", "--norm", "layer"], 1200, id="moons-layer-1200"),
    pytest.param(["--dataset", "breast_cancer"], 600, id="breast_cancer-600"),
]


@pytest.mark.parametrize(("run", "epochs"), LONG_RUNS)
def test_a_long_trained_run_is_judged_on_the_scale_of_the_gradient_at_initialisation(
    capsys, run, epochs
):
    """After 1200 epochs of moons the gradient is 1e-7 of its norm at initialisation, and
    each output delta y_hat - y still rounds on the scale of y: on the trained gradient's
    own scale rounding alone was 2.7e-8 against rtol 1e-12, so a correct run reported
    "parity FAILED". On the scale of the gradient at initialisation it passes, and says
    so. 32-bit mode, as a user runs it."""
    with x64_off():
        code, out, err = run_train(capsys, *run, "--epochs", str(epochs))
    assert code == 0, err
    assert out.splitlines()[-1].endswith("parity passed")
    after = next(line for line in out.splitlines() if line.startswith("parity after training"))
    assert "= rtol x ||grad at initialisation||: worst error on that scale" in after


def test_a_wrong_derivative_still_fails_after_training(capsys, monkeypatch, tmp_path):
    """On the scale of the gradient at initialisation, a wrong derivative on a trained
    network (resumed from its checkpoint, so that the check at initialisation is the
    correct one) still fails."""
    import jax.numpy as jnp

    import jaxbp

    args = ["--dataset", "moons", "--out", str(tmp_path), "--quiet"]
    with x64_off():
        assert run_train(capsys, *args, "--epochs", "600")[0] == 0
        bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - 0.9 * a * a)  # wrong
        monkeypatch.setitem(jaxbp.ACTIVATIONS, "tanh", bad)
        code, out, _ = run_train(capsys, *args, "--epochs", "601", "--resume")
    assert code == 1 and out.splitlines()[-1].endswith("parity FAILED")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parity_atol"] > 1e-13 and summary["parity_max_scaled_err"] > 1e-12
