"""The comparison with BackPACK and curvlinops, and the curvature bench, at their --smoke
size. They need the peers (`pip install -e ".[peers]"`), which the main test command does
not install: without them the full runs are skipped, and the scripts must say so and
exit 0."""

import importlib.util
import json

import pytest

from conftest import run_script


def installed(*names):
    return all(importlib.util.find_spec(name) is not None for name in names)


PEERS = installed("torch", "backpack", "curvlinops")
BENCH_PEERS = installed("torch", "backpack")


@pytest.mark.skipif(not PEERS, reason="needs torch, backpack-for-pytorch, curvlinops-for-pytorch")
def test_curvature_peers(tmp_path):
    run_script("curvature_peers", "--smoke", "--out", str(tmp_path), progress="comparisons")
    result = json.loads((tmp_path / "curvature_peers.json").read_text())
    assert result["disagreements"] == []
    rows = [r for case in result["cases"] for r in case["rows"]]
    quantities = {r["quantity"] for r in rows}
    assert {"sum_grad_squared", "diag_hessian", "kfac G", "ekfac_mvp (random v)"} <= quantities
    assert max(r["rel_err"] for r in rows) < 1e-10  # float64: all peers agree to rounding
    mc = [r for case in result["cases"] for r in case["mc_rows"]]
    assert all(0 < r[lib] < 2 for r in mc for lib in ("jaxbp", "BackPACK", "curvlinops"))
    assert (tmp_path / "curvature_peers.md").read_text().startswith("## jaxbp against")


@pytest.mark.skipif(not BENCH_PEERS, reason="needs torch and backpack-for-pytorch")
def test_curvature_bench(tmp_path):
    run_script("curvature_bench", "--smoke", "--out", str(tmp_path), progress="BackPACK")
    result = json.loads((tmp_path / "curvature_bench.json").read_text())
    rows = result["quantities"]
    assert [r["quantity"] for r in rows] == [
        "sum_grad_squared",
        "grad_variance",
        "batch_dot_grad",
        "diag_ggn",
    ]
    assert all(r["jaxbp_ms"] > 0 and r["vmap_ms"] > 0 and r["backpack_ms"] > 0 for r in rows)
    assert max(r["vmap_rel_diff"] for r in rows) < 1e-4  # the two routes agree (float32)
    runs = result["kfac"]["runs"]
    assert {"sgd", "jaxbp_kfac"} <= set(runs)
    assert all(r["ms_per_step"] > 0 and r["loss_last5_mean"] > 0 for r in runs.values())
    assert (tmp_path / "curvature_bench.md").read_text().startswith("## jaxbp curvature bench")


@pytest.mark.skipif(PEERS, reason="the peers are installed: the full runs are tested")
@pytest.mark.parametrize("name", ["curvature_peers", "curvature_bench"])
def test_skips_without_peers(tmp_path, name):
    result = run_script(name, "--smoke", "--out", str(tmp_path), progress="skipped")
    assert "not installed" in result.stderr
    assert not (tmp_path / f"{name}.json").exists()
