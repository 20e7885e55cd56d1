"""One prepared check of the accelerator path, for a lent GPU machine.

    PYTHONPATH=src python3 experiments/gpu_check.py --out DIR

Runs, on whatever `jax.devices()` offers: the parity grid (depths 1 and 3, float32 and
float64; matmuls at "highest" precision, as check_parity uses); `jaxbp bench` on the four
configurations; the training job on digits (manual gradients) and on a one-device mesh;
and the per-example / hvp / custom_vjp / DP timings of experiments/benchmark.py at the
medium size. Writes gpu_check.json and gpu_check.md to DIR.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from _common import log, write_results
from jaxbp import parity_grid
from jaxbp.app import bench as _bench
from jaxbp.app.cli import main as jaxbp_main

sys.path.insert(0, str(Path(__file__).parent))
from benchmark import extras


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
    log(f"devices: {result['devices']}")

    start = time.perf_counter()
    jax.config.update("jax_enable_x64", True)
    grid = list(parity_grid(depths=(1, 3)))
    jax.config.update("jax_enable_x64", False)
    result["parity"] = {
        dtype: {
            "configurations": sum(r["dtype"] == dtype for r in grid),
            "worst_rel_err": max(r["max_rel_err"] for r in grid if r["dtype"] == dtype),
            "all_passed": all(r["passed"] for r in grid if r["dtype"] == dtype),
        }
        for dtype in ("float32", "float64")
    }
    log(f"parity: {result['parity']} ({time.perf_counter() - start:.0f} s)")

    result["bench"] = _bench.run(list(_bench.CONFIGS), args.reps)
    log(_bench.markdown(result["bench"]))

    for name, extra in (("train", []), ("train_one_device_mesh", ["--devices", "1"])):
        out = args.out / name
        start = time.perf_counter()
        code = jaxbp_main(["train", "--quiet", "--out", str(out), *extra])
        summary = json.loads((out / "summary.json").read_text())
        result[name] = {
            "exit": code,
            "wall_s": time.perf_counter() - start,
            **{k: summary[k] for k in ("test_accuracy", "seconds", "parity_max_rel_err")},
        }
        log(f"{name}: {result[name]}")

    result["extras"] = extras([784, 512, 512, 10], 256, 30)
    lines = [
        "# GPU check",
        "",
        f"Devices: {', '.join(result['devices'])}; jax {result['jax']}.",
        "",
        "Parity grid (depths 1 and 3, every activation and loss/output):",
        "",
    ]
    for dtype, p in result["parity"].items():
        lines.append(
            f"- {dtype}: {p['configurations']} configurations, worst rel err "
            f"{p['worst_rel_err']:.1e}, all passed: {p['all_passed']}"
        )
    lines += [
        "",
        _bench.markdown(result["bench"]),
        "",
        "| quantity | jaxbp ms | reference ms | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['quantity']} | {r['jaxbp_ms']:.3f} | {r['reference_ms']:.3f} | {r['speedup']:.2f}x |"
        for r in result["extras"]
    ]
    for name in ("train", "train_one_device_mesh"):
        r = result[name]
        lines.append(
            f"\n`jaxbp train` ({name}): exit {r['exit']}, test accuracy {r['test_accuracy']:.4f}, "
            f"{r['seconds']:.2f} s of training, {r['wall_s']:.1f} s wall, parity "
            f"{r['parity_max_rel_err']:.1e}"
        )
    write_results(args.out, "gpu_check", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
