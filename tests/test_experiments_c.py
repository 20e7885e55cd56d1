"""The benchmark, the Hessian experiment and the default-settings run at their --smoke size."""

import json
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def run(name, *args):
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{name}.py --smoke failed:\n{result.stderr[-3000:]}"
    assert result.stderr.strip(), f"{name}.py shows no progress on stderr"
    return result


def test_hessian_spectrum(tmp_path):
    run("hessian_spectrum", "--out", str(tmp_path))
    result = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    # Power iteration on jaxbp.hvp finds the dense Hessian's top eigenvalue.
    assert result["dense_check"]["rel_err"] < 1e-6
    assert result["runs"][0]["rows"][0]["sharpness"] > 0
    assert (tmp_path / "hessian_spectrum.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark(tmp_path):
    run("benchmark", "--out", str(tmp_path))
    result = json.loads((tmp_path / "benchmark.json").read_text())
    row = result["bench"]["rows"][0]
    assert row["config"] == "small" and row["manual_ms"] > 0 and row["autodiff_memory_mib"] > 0
    assert [r["devices"] for r in result["sharded"]] == [1, 1, 2, 2, 4, 4]
    assert {r["quantity"] for r in result["extras"]} >= {"per-example gradient norms"}
    assert [(r["models"], r["shared_order"]) for r in result["sweeps"]] == [
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    ]
    assert [r["n"] for r in result["shuffle"]] == [100, 1000]
    assert all(r["jaxbp_ms"] > 0 and r["jax_ms"] > 0 for r in result["shuffle"])
    assert (tmp_path / "benchmark.md").read_text().startswith("## jaxbp bench")


def test_default_settings():
    out = run("default_settings").stderr
    assert out.count("seed 100") == 6  # 3 datasets x 2 gradient paths
