"""The `jaxbp` command line."""

import json
import subprocess
import sys

import jax.numpy as jnp

import jaxbp
from jaxbp.app import check_table
from jaxbp.app.cli import main


def test_check_json_passes(capsys):
    assert main(["check", "--depths", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True
    plain = [r for r in out["configurations"] if r["norm"] is None and r["dropout"] == 0]
    assert len(plain) == 2 * len(jaxbp.ACTIVATIONS) * len(jaxbp.LOSS_OUTPUTS)
    f32 = [r["max_rel_err"] for r in plain if r["dtype"] == "float32"]
    f64 = [r["max_rel_err"] for r in plain if r["dtype"] == "float64"]
    assert max(f32) <= 1e-5 and max(f64) <= 1e-12
    # The remedies, each alone: every activation, each loss with its canonical output.
    canonical = [("mse", "identity"), ("binary_cross_entropy", "sigmoid")]
    canonical += [("cross_entropy", "softmax"), ("huber", "identity")]
    assert [tuple(pair) for pair in check_table.CANONICAL] == canonical
    for norm, rate in (("layer", 0.0), ("batch", 0.0), (None, 0.2)):
        recs = [r for r in out["configurations"] if (r["norm"], r["dropout"]) == (norm, rate)]
        assert len(recs) == 2 * len(jaxbp.ACTIVATIONS) * len(canonical)
        assert {r["depth"] for r in recs} == {2} and all(r["passed"] for r in recs)
        if norm != "batch":  # batch norm is judged on the gradient's scale (atol="auto")
            assert max(r["max_rel_err"] for r in recs if r["dtype"] == "float64") <= 1e-12
    assert len(out["configurations"]) == len(plain) + 3 * 2 * len(jaxbp.ACTIVATIONS) * 4


def test_check_remedy_flags(capsys):
    argv = ["check", "--depths", "2", "--dtypes", "float64", "--json"]
    assert main([*argv, "--norms", "batch", "--dropouts"]) == 0
    recs = json.loads(capsys.readouterr().out)["configurations"]
    assert {(r["norm"], r["dropout"]) for r in recs} == {(None, 0.0), ("batch", 0.0)}
    assert main([*argv, "--norms", "--dropouts", "0", "0.5"]) == 0
    recs = json.loads(capsys.readouterr().out)["configurations"]
    assert {(r["norm"], r["dropout"]) for r in recs} == {(None, 0.0), (None, 0.5)}


def test_check_fails_on_a_wrong_derivative(monkeypatch, capsys):
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - a)  # wrong on purpose
    monkeypatch.setitem(jaxbp.ACTIVATIONS, "tanh", bad)
    assert main(["check", "--depths", "2", "--dtypes", "float64"]) == 1
    out = capsys.readouterr().out
    assert "float64  tanh" in out and "FAIL" in out and "FAILED" in out.splitlines()[-1]
    remedies = out[out.index("normalisation and dropout") :]
    for layers in ("layer norm", "batch norm", "dropout 0.2"):
        row = next(line for line in remedies.splitlines() if line.startswith(f"float64  {layers}"))
        assert row.endswith("FAIL")
    assert "    FAIL tanh mse (identity) depth 2: rel err" in remedies
    assert "    FAIL relu" not in remedies


def test_console_script_table():
    result = subprocess.run(
        [sys.executable, "-m", "jaxbp.app.cli", "check", "--depths", "1", "--dtypes", "float32"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "dtype",
        "activation",
        "loss",
        "(output)",
        "worst",
        "rel",
        "err",
        "pass",
    ]
    assert lines[-1].endswith("all passed")
    assert "normalisation and dropout: no rows" in result.stdout and "--depths 2" in result.stdout


def test_bench_prints_the_table(tmp_path, capsys):
    assert (
        main(["bench", "--configs", "small", "--reps", "5", "--json", str(tmp_path / "b.json")])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("| config | FLOP floor ms | jax.grad ms | manual ms")
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["config"] == "small" and row["manual_ms"] > 0 and row["autodiff_ms"] > 0
    assert row["ratio"] == row["manual_ms"] / row["autodiff_ms"]
