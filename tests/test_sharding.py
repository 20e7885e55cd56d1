"""Data-parallel training: 1 vs 4 virtual devices, and two processes in lockstep."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jaxbp
from conftest import fast_compile_env

WORKER = str(Path(__file__).with_name("sharded_worker.py"))


def test_one_and_four_devices_train_alike(tmp_path):
    out = tmp_path / "virtual.json"
    env = fast_compile_env("--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, WORKER, "virtual", str(out)], env=env, check=True, timeout=300)
    result = json.loads(out.read_text())
    for grad in ("manual", "autodiff"):
        # Only the order of the batch sum differs: float32 rounding.
        assert result[f"step-{grad}"] < 1e-5, result
        assert result[f"epoch-{grad}"] < 1e-5, result
        assert result[f"unsharded-{grad}"] < 1e-5, result
        assert result[f"batchnorm-{grad}"] < 1e-5, result
    assert result["all_reduce_in_hlo"]
    assert "(30) must divide evenly over the 4 devices" in result["indivisible_batch_error"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_in_lockstep(tmp_path):
    """Two CPU processes (coordinator on 127.0.0.1, gloo collectives), one device each,
    each feeding half of every batch, end with the single-process parameters."""
    port = free_port()
    env = fast_compile_env("")  # one device a process: no virtual ones
    outs = [tmp_path / f"p{pid}.json" for pid in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "process", str(pid), str(port), str(out)], env=env
        )
        for pid, out in enumerate(outs)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    results = [json.loads(out.read_text()) for out in outs]
    assert results[0]["devices"] == results[1]["devices"] == 2
    sys.path.insert(0, str(Path(WORKER).parent))
    from sharded_worker import train_steps

    for grad in ("manual", "autodiff"):
        with jax.enable_x64(False):  # as in the workers
            single = train_steps(None, grad)
        for r in results:
            for got, want in zip(r[grad], single):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_mesh_type_error():
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        jaxbp.make_train_step(optax.sgd(0.1), activation="tanh", loss="mse", mesh="data")
    with pytest.raises(ValueError, match="devices must be between 1 and the 1 available"):
        jaxbp.data_mesh(4)
