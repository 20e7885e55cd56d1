"""Strict settings for the whole suite.

- float64 is enabled, so float64 cases are real float64; float32 cases say so.
- Rank promotion raises: a bias added as `(n,)` to `(batch, n)` without an explicit
  axis is an error here, which catches broadcasting bugs in a handwritten backward pass.
- float32 matmuls run at full precision ("highest"): on a GPU, JAX's default computes
  float32 products with TF32 (about 1e-3 relative), which would drown float32 parity at
  1e-5 in the products' own error. No effect on a CPU, whose float32 products are full.
- Warnings are errors (pyproject.toml), deprecated JAX APIs included.
- One persistent compilation cache for the suite (`pytest_configure`): a program compiled
  by one test, one xdist worker or one subprocess is loaded by the others that need it,
  and by the next run of the suite, instead of compiled again. It lives in pytest's
  cache folder (`.pytest_cache/d/jaxbp-xla`; `pytest --cache-clear` empties it, and it
  is emptied when it outgrows `XLA_CACHE_MAX_BYTES`); with `-p no:cacheprovider`, in a
  temporary folder removed at the session's end. JAX keys each entry by the program, the
  jax and jaxlib versions, the XLA flags and the device: an entry is never stale.
- XLA compiles for compile speed (`FAST_COMPILE`, and `OLDER_EMITTERS` where this XLA
  has them; in this process and every subprocess): the suite's programs are small and run
  a few times, so LLVM's optimisations and the MLIR fusion emitters cost more than they
  save (see docs/performance.md). Every verdict holds either way; flags of your own in
  `XLA_FLAGS` come after these and win: `XLA_FLAGS="--xla_backend_optimization_level=3
  --xla_llvm_disable_expensive_passes=false --xla_cpu_use_fusion_emitters=true"` runs it
  on the machine code a user's run gets.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

from jaxbp import ACTIVATIONS, random_problem
from jaxbp import LOSS_OUTPUTS as _LOSS_OUTPUTS
from jaxbp._files.checkpoint import MAGIC

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

XLA_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": None,  # the suite's folder (_cache_folder)
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAXBP_CACHE_DIR": None,  # what `jaxbp train` uses, in process or not (cli.compile_cache)
}
"""The environment of the suite's compilation cache: every program is kept, however
quick to compile or small. Set in the controller, so the xdist workers and every
subprocess (an experiment, `jaxbp train`) inherit it; nothing reaches a user's cache."""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
"""XLA flags that trade run-time speed for compile speed, which is what the suite's small
programs spend their time on (see the module's docstring)."""
OLDER_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
"""XLA:CPU's elemental emitters instead of its MLIR fusion emitters: a small program
compiles in about half the time (`a + 1`: 12 ms against 25 ms). XLA is retiring them
(openxla/xla#48001) and aborts on a flag it does not know, so the suite takes this one
only where this jaxlib accepts it (`_xla_accepts`)."""
_SUITE_FLAGS = "JAXBP_TESTS_XLA_FLAGS"
"""The environment variable through which the controller hands its resolved flags
(`FAST_COMPILE`, with `OLDER_EMITTERS` where accepted) to the workers and subprocesses."""


def _xla_accepts(flag, config):
    """Whether this jaxlib's XLA starts with `flag`: asked of a fresh interpreter once per
    jaxlib version (an unknown flag aborts the process), the answer kept in pytest's cache."""
    key = f"jaxbp/xla-accepts/{jaxlib.__version__}/{flag}"
    cache = getattr(config, "cache", None)
    accepted = None if cache is None else cache.get(key, None)
    if accepted is None:
        env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
        probe = [sys.executable, "-c", "import jax; jax.devices()"]
        accepted = subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0
        if cache is not None:
            cache.set(key, accepted)
    return accepted


def with_fast_compile(xla_flags):
    """The suite's flags (`FAST_COMPILE`, and `OLDER_EMITTERS` where accepted) then
    `xla_flags`: XLA takes a flag's last value, so the caller's win."""
    return f"{os.environ[_SUITE_FLAGS]} {xla_flags}".strip()


XLA_CACHE_MAX_BYTES = 1 << 30
"""A kept cache larger than this (one run of the suite fills about 75 MiB) is emptied at the start
of a run."""
_CACHE_FOLDER = pytest.StashKey[str]()  # a session's own folder, removed at its end


def _cache_folder(config):
    """The controller's compilation cache folder (see the module's docstring)."""
    if getattr(config, "cache", None) is None:  # -p no:cacheprovider
        folder = tempfile.mkdtemp(prefix="jaxbp-tests-xla-")
        config.stash[_CACHE_FOLDER] = folder
        return folder
    folder = config.cache.mkdir("jaxbp-xla")
    if sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) > XLA_CACHE_MAX_BYTES:
        shutil.rmtree(folder)
        folder.mkdir()
    return str(folder)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        folder = _cache_folder(config)
        os.environ.update({name: value or folder for name, value in XLA_CACHE.items()})
        flags = FAST_COMPILE
        if _xla_accepts(OLDER_EMITTERS, config):
            flags = f"{flags} {OLDER_EMITTERS}"
        os.environ[_SUITE_FLAGS] = flags
        # Before any backend starts (jax reads XLA_FLAGS then); the workers inherit it.
        os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))
    # Two workers may meet at one entry, one reading it while the other writes it: jax
    # then warns and compiles the program itself. A fault of this cache, not of jaxbp.
    for verb in ("reading", "writing"):
        config.addinivalue_line(
            "filterwarnings", f"default:Error {verb} persistent compilation cache entry"
        )
    # jax read the environment when conftest imported it; a worker's is the controller's.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    folder = config.stash.get(_CACHE_FOLDER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


LOSS_OUTPUTS = list(_LOSS_OUTPUTS)
"""Every loss with the kinds of output it takes: the one case table of `jaxbp check`."""

ACTIVATION_NAMES = list(ACTIVATIONS)

RTOL = {jnp.float64: 1e-12, jnp.float32: 1e-5}
"""Per-leaf bound on ||manual - jax.grad|| / ||jax.grad||, by dtype (the project's promise)."""


def make_problem(seed, sizes, batch, loss, dtype=jnp.float64, *, x_scale=1.0, norm=None):
    """Random `(params, x, y)` for `sizes` with targets for `loss` (see `random_problem`)."""
    return random_problem(seed, sizes, batch, loss, dtype, x_scale=x_scale, norm=norm)


def random_like(seed, tree):
    """Standard normal float64 arrays shaped like the leaves of `tree`."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=np.shape(leaf))), tree)


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff, ref = np.linalg.norm(a - b), np.linalg.norm(b)
    return 0.0 if diff == 0 else float(diff / ref)


def run_cli(capsys, argv):
    """`jaxbp ARGV` in this process: `(exit status, stdout, stderr)`."""
    from jaxbp.app.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own exit
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run_train(capsys, *args):
    """`jaxbp train ARGS` in this process: `(exit status, stdout, stderr)`."""
    return run_cli(capsys, ["train", *args])


TIMING = frozenset({"seconds", "samples_per_s"})
"""The fields of a metrics.jsonl record that differ between two runs of the same epochs."""


def metrics_without_timing(out):
    """The records of `out`/metrics.jsonl, one dict an epoch, without their `TIMING`."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@contextlib.contextmanager
def x64_off():
    """jax's default 32-bit mode inside the block, as a user runs it (this suite turns
    64-bit on above); 64-bit comes back on however the block ends."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def sealed(payload):
    """A checkpoint file around `payload` with the right checksum."""
    return MAGIC + hashlib.sha256(payload).digest() + payload


def archive(leaves, meta, **entries):
    """An `.npz` checkpoint payload written by hand, as an older or a buggy writer might:
    `leaf_i` for each of `leaves`, raw `entries`, and a `meta` entry that is `meta` as JSON
    (a dict or a list), its bytes as they are (`bytes`), an array stored as it is, or no
    `meta` entry at all (None)."""
    arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)} | entries
    if isinstance(meta, (dict, list)):
        meta = json.dumps(meta).encode()
    if isinstance(meta, bytes):
        meta = np.frombuffer(meta, np.uint8)
    if meta is not None:
        arrays["meta"] = meta
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def fast_compile_env(xla_flags):
    """The environment for a fresh interpreter whose `XLA_FLAGS` are the suite's then
    `xla_flags` in place of this process's (a subprocess that is given no environment
    inherits this process's, which start with the suite's: `pytest_configure`)."""
    return {**os.environ, "XLA_FLAGS": with_fast_compile(xla_flags)}


def run_script(name, *args, timeout=300, progress=""):
    """`python experiments/NAME.py ARGS` in a fresh interpreter, as a user runs it (with
    the suite's XLA flags): it must exit 0 and report its progress on stderr (containing
    `progress`). Returns the `subprocess.CompletedProcess`."""
    result = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    shown = " ".join([f"{name}.py", *args])
    assert result.returncode == 0, f"{shown} failed:\n{result.stderr[-3000:]}"
    assert result.stderr.strip(), f"{shown} shows no progress on stderr"
    assert progress in result.stderr, f"{shown} does not report {progress!r} on stderr"
    return result


def run_smoke(name, out, md_starts=None, progress=""):
    """`experiments/NAME.py --smoke --out OUT` (`run_script`): it writes NAME.png (a PNG),
    NAME.json and NAME.md (starting with `md_starts`, a string or a tuple of them, where
    given), none empty. Returns the parsed JSON."""
    run_script(name, "--smoke", "--out", str(out), progress=progress)
    for suffix in ("png", "json", "md"):
        path = out / f"{name}.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"{name}.py did not write {path.name}"
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if md_starts is not None:
        md = (out / f"{name}.md").read_text()
        assert md.startswith(md_starts), f"{name}.md starts {md[:60]!r}"
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch `jaxbp train` run with diagnostics (per-layer lists in its log)
    and both figures."""
    from jaxbp.app.cli import main

    out = tmp_path_factory.mktemp("run")
    args = ["--dataset", "xor", "--hidden", "3", "--batch-size", "50", "--quiet"]
    assert main(["train", *args, "--epochs", "2", "--out", str(out), "--diagnostics"]) == 0
    return out
