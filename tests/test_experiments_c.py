"""The benchmark, the Hessian experiment and the default-settings run at their --smoke size."""

import json

from conftest import run_script


def test_hessian_spectrum(tmp_path):
    run_script("hessian_spectrum", "--smoke", "--out", str(tmp_path))
    result = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    # Power iteration on jaxbp.hvp finds the dense Hessian's top eigenvalue.
    assert result["dense_check"]["rel_err"] < 1e-6
    assert result["runs"][0]["rows"][0]["sharpness"] > 0
    assert (tmp_path / "hessian_spectrum.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark(tmp_path):
    run_script("benchmark", "--smoke", "--out", str(tmp_path))
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
    out = run_script("default_settings", "--smoke").stderr
    assert out.count("seed 100") == 6  # 3 datasets x 2 gradient paths
