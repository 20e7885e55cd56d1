"""Issue 13, class 4: nothing is lost whatever fails and wherever it fails.

- a run killed with SIGKILL resumes to bit-identical metrics and checkpoint;
- a second run into the same --out while the first writes is refused at once;
- a write that fails part-way (a file-size limit, a short write) keeps the last good
  checkpoint, and --resume repairs the log and finishes bit-identical;
- parameters that turn non-finite in the last step of an epoch are never checkpointed.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from conftest import metrics_without_timing, x64_off
from jaxbp._files.checkpoint import read_arrays, read_meta
from jaxbp.app.cli import main

EPOCHS = 120
XOR = ["train", "--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def as_a_user_runs_it():
    """In-process runs here must match the subprocess ones: jax's default, 32-bit mode
    (conftest turns 64-bit on for the rest of the suite)."""
    with x64_off():
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every faulty one must end up equal to."""
    out = tmp_path_factory.mktemp("straight")
    assert main([*XOR, "--epochs", str(EPOCHS), "--out", str(out)]) == 0
    return out


def assert_same_run(out, straight):
    got, want = metrics_without_timing(out), metrics_without_timing(straight)
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first is None and len(got) == len(want), (first, len(got), got[first], want[first])
    assert (out / "checkpoint.jaxbp").read_bytes() == (straight / "checkpoint.jaxbp").read_bytes()
    assert not list(out.glob(".*.tmp")), "no temporary file may be left behind"


LIMITED = """import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["jaxbp", *sys.argv[1:]]
runpy.run_module("jaxbp.app.cli", run_name="__main__")
"""


def start(out, limit=None):
    """`jaxbp train` in a fresh interpreter; with `limit`, under `ulimit -f` of that many bytes."""
    head = ["-c", LIMITED.format(limit=limit)] if limit else ["-m", "jaxbp.app.cli"]
    argv = [sys.executable, *head, *XOR, "--epochs", str(EPOCHS), "--out", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged(out):
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_run_resumes_bit_identical_and_a_concurrent_run_is_refused(
    straight, tmp_path, capsys
):
    out = tmp_path / "run"
    proc = start(out)
    deadline = time.monotonic() + 120
    while logged(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    # A second run into the same folder while the first writes: refused at once.
    for extra in ([], ["--resume"], ["--overwrite"]):
        code = main([*XOR, "--epochs", str(EPOCHS), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and f"another jaxbp train (process {proc.pid}) is writing" in err, err
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run must still be running when killed"
    assert logged(out) < EPOCHS
    assert main([*XOR, "--epochs", str(EPOCHS), "--out", str(out), "--resume"]) == 0
    assert_same_run(out, straight)


def test_file_size_limit_keeps_the_last_checkpoint(straight, tmp_path):
    out = tmp_path / "run"
    proc = start(out, limit=12_000)  # metrics.jsonl reaches it after some 40 epochs
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "while saving epoch" in err and len(err.strip().splitlines()) == 1
    epoch = read_meta(out / "checkpoint.jaxbp")["epoch"]
    assert 1 < epoch < EPOCHS and f"the checkpoint of epoch {epoch} is kept" in err
    assert len(metrics_without_timing(out)) in (epoch, epoch + 1)
    assert main([*XOR, "--epochs", str(EPOCHS), "--out", str(out), "--resume"]) == 0
    assert_same_run(out, straight)


def test_short_write_then_torn_line_is_repaired(straight, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_write = os.write

    def short_write(fd, data):  # epoch 3's line gets half written, then the disk is full
        if data.startswith(b'{"epoch": 3,'):
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("jaxbp.runs.folder.os.write", short_write)
    code = main([*XOR, "--epochs", str(EPOCHS), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device while saving epoch 3" in err
    assert "the checkpoint of epoch 2 is kept" in err
    assert read_meta(out / "checkpoint.jaxbp")["epoch"] == 2
    assert (out / "metrics.jsonl").read_bytes().endswith(b"}\n"), "the half line is cut back"
    monkeypatch.undo()
    # A crash that could not cut it back leaves a torn line: --resume drops it.
    line3 = json.dumps(json.loads((straight / "metrics.jsonl").read_text().splitlines()[2]))
    for cut in (1, len(line3) // 2, len(line3)):  # down to the bare newline missing
        with (out / "metrics.jsonl").open("a") as f:
            f.write(line3[:cut])
        assert main([*XOR, "--epochs", "2", "--out", str(out), "--resume"]) == 0
        assert (out / "metrics.jsonl").read_bytes().count(b"\n") == 2
    assert main([*XOR, "--epochs", str(EPOCHS), "--out", str(out), "--resume"]) == 0
    assert_same_run(out, straight)


def test_parameters_turning_nan_in_the_last_step_are_not_checkpointed(
    tmp_path, capsys, monkeypatch
):
    real = jaxbp.make_train_epoch

    class Poisoned:
        """The real compiled epoch, whose second call returns NaN parameters with the
        finite losses of its steps (as when the very last update overflows)."""

        def __init__(self, epoch):
            self.epoch, self.calls = epoch, 0

        def lower(self, *args):
            self.compiled = self.epoch.lower(*args).compile()
            return self

        def compile(self):
            return self

        def __call__(self, *args):
            self.calls += 1
            params, opt_state, step_metrics = self.compiled(*args)
            if self.calls == 2:
                params = jax.tree.map(lambda v: v * jnp.nan, params)
            return params, opt_state, step_metrics

    monkeypatch.setattr(jaxbp, "make_train_epoch", lambda *a, **k: Poisoned(real(*a, **k)))
    out = tmp_path / "run"
    code = main([*XOR, "--epochs", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the parameters became non-finite in the last step of epoch 2" in err
    assert "the last good checkpoint of epoch 1 is kept" in err
    meta, leaves = read_arrays(out / "checkpoint.jaxbp")
    assert meta["epoch"] == 1 and all(jnp.all(jnp.isfinite(leaf)) for leaf in leaves)
    assert len(metrics_without_timing(out)) == 1
