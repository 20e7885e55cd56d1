"""The `jaxbp` command line."""

import json
import subprocess
import sys

import jax.numpy as jnp

import jaxbp
from jaxbp.app.cli import main


def test_check_json_passes(capsys):
    assert main(["check", "--depths", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True
    assert len(out["configurations"]) == 2 * len(jaxbp.ACTIVATIONS) * len(jaxbp.LOSS_OUTPUTS)
    f32 = [r["max_rel_err"] for r in out["configurations"] if r["dtype"] == "float32"]
    f64 = [r["max_rel_err"] for r in out["configurations"] if r["dtype"] == "float64"]
    assert max(f32) <= 1e-5 and max(f64) <= 1e-12


def test_check_fails_on_a_wrong_derivative(monkeypatch, capsys):
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1 - a)  # wrong on purpose
    monkeypatch.setitem(jaxbp.ACTIVATIONS, "tanh", bad)
    assert main(["check", "--depths", "2", "--dtypes", "float64"]) == 1
    out = capsys.readouterr().out
    assert "float64  tanh" in out and "FAIL" in out and "FAILED" in out.splitlines()[-1]


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
