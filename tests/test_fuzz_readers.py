"""Issue 22 item 1: every reader of a file, fuzzed as trusted parsers are.

Each case starts from a valid file written by jaxbp (or by numpy, or by hand for CSV and
IDX) and damages it with a structured mutation: bytes changed, inserted or cut, the file
truncated, a JSON field given a value of every type (null, a string, a list, a number
past float64, NaN, nesting deeper than Python's stack), zip members dropped, renamed,
duplicated or replaced by something that is not an `.npy` array, `.npy` headers that
declare a huge shape, another dtype or a damaged layout. A checkpoint's payload is sealed
again with a valid checksum, so the mutation reaches the parser behind it.

The only allowed outcomes are a correct read (one that satisfies the format's rules,
checked here independently of the readers) or the documented error: `CheckpointError`
or `RunError` (`ValueError`s) for checkpoints and run folders, `ValueError` for data
files, its message one line naming the file. Anything else is a crash, by class.

The suite runs each reader with a small budget (`JAXBP_FUZZ_EXAMPLES`, default 25).
`python tools/fuzz_readers.py --examples 2000` runs the same cases long and counts the
outcomes by reader and class.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxbp
from jaxbp import datasets
from jaxbp._files.checkpoint import MAGIC, CheckpointError, read_arrays, read_meta
from jaxbp.runs import RunError, RunFolder, load_run, read_metrics

EXAMPLES = int(os.environ.get("JAXBP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

RECORD = False
"""`tools/fuzz_readers.py` sets this: outcomes are tallied in `TALLY` instead of failing
the case (so each reader runs its whole budget)."""
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
EXAMPLE: dict[tuple[str, str], str] = {}
"""One message per (reader, crash class), for the report."""


# --- Judging an outcome ---------------------------------------------------------------


class BadRead(Exception):
    """A read that returned something the format's rules do not allow."""


def judge(reader: str, call: Any, names: tuple[Path, ...], errors: tuple[type, ...]) -> Any:
    """Run `call()`; a correct read (its checks raise `BadRead` otherwise) or one of
    `errors` whose message is one line naming one of `names` passes. Anything else is a
    crash: tallied by class under `RECORD`, else a failed case."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning is a second line on stderr
            result = call()
    except BadRead as err:
        return _crash(reader, f"bad read: {err.args[0]}", str(err.args[1:]))
    except errors as err:
        message = str(err)
        if not any(str(name) in message for name in names):
            return _crash(reader, f"{type(err).__name__} not naming the file", message)
        if "\n" in message:
            return _crash(reader, f"{type(err).__name__} of several lines", message)
        TALLY[reader]["refused"] += 1
        return None
    except RecursionError as err:
        return _crash(reader, "RecursionError", str(err))
    except Exception as err:
        return _crash(reader, type(err).__name__, str(err))
    TALLY[reader]["read"] += 1
    return result


def _crash(reader: str, kind: str, message: str) -> None:
    TALLY[reader][f"crash: {kind}"] += 1
    EXAMPLE.setdefault((reader, kind), message[:300])
    if not RECORD:
        pytest.fail(f"{reader}: {kind}: {message[:2000]}")


def finite_real(value: Any) -> bool:
    """A JSON number float64 holds, finite (an integer past its range is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def expect(ok: bool, what: str, value: Any = None) -> None:
    if not ok:
        raise BadRead(what, repr(value)[:200])


NONNEG = ("seconds", "samples_per_s", "grad_norm")
UNIT = ("train_accuracy", "test_accuracy", "clipped")
REAL = ("train_loss", "test_loss", "train_r2", "test_r2")
PER_LAYER = ("delta_norm", "grad_W_norm", "saturated")


def check_row(i: int, row: Any) -> None:
    """The rules of an epoch's line of `metrics.jsonl` (issue 22 item 2)."""
    expect(isinstance(row, dict), "a metrics line that is not an object", row)
    expect(count(row.get("epoch")) and row["epoch"] == i, "a wrong epoch", row.get("epoch"))
    for name in (*NONNEG, *UNIT, *REAL):
        if name in row:
            value = row[name]
            expect(finite_real(value), f"metrics {name} not a finite number", value)
            expect(name not in NONNEG or value >= 0, f"metrics {name} negative", value)
            expect(name not in UNIT or 0 <= value <= 1, f"metrics {name} outside [0, 1]", value)
    for name in PER_LAYER:
        if name in row:
            value = row[name]
            expect(
                isinstance(value, list) and all(finite_real(v) and v >= 0 for v in value),
                f"metrics {name} not a list of finite numbers",
                value,
            )


def check_summary(summary: Any) -> None:
    """The rules of `summary.json`: its epochs, and each field it holds of its type."""
    if summary is None:
        return
    expect(isinstance(summary, dict), "a summary that is not an object", summary)
    epochs = summary.get("epochs")
    expect(count(epochs), "summary epochs not an integer >= 1", epochs)
    for name in ("seconds", "train_loss", "test_loss", "parity_atol"):
        if name in summary:
            expect(finite_real(summary[name]), f"summary {name} not finite", summary[name])
    for name in ("seconds", "parity_atol"):
        if name in summary:
            expect(summary[name] >= 0, f"summary {name} negative", summary[name])
    for name in ("parity_max_rel_err", "parity_max_scaled_err"):
        if name in summary:
            value = summary[name]
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            expect(real and not value < 0, f"summary {name} not a number >= 0", value)
    if "config" in summary:
        check_config(summary["config"], partial=True)
    for name in ("dataset", "grad", "parity_dtype"):
        if name in summary:
            expect(isinstance(summary[name], str), f"summary {name} not text", summary[name])
    if "test_accuracy" in summary:
        value = summary["test_accuracy"]
        expect(finite_real(value) and 0 <= value <= 1, "summary test_accuracy", value)
    if summary.get("dp") is not None:
        expect(isinstance(summary["dp"], dict), "summary dp not an object", summary["dp"])


def check_config(config: Any, partial: bool = False) -> None:
    """What `load_run` and `Run.dataset` read of a run's settings (`partial`: only those
    it holds, as a summary's copy is checked)."""
    expect(isinstance(config, dict), "config not an object", config)
    hidden, seed = config.get("hidden"), config.get("seed")
    if not partial or "hidden" in config:
        expect(isinstance(hidden, list) and all(count(h) for h in hidden), "hidden", hidden)
    if not partial or "seed" in config:
        expect(count(seed, 0) and seed < 2**32, "config seed", seed)
    for name in ("activation", "loss"):
        if not partial or name in config:
            expect(isinstance(config.get(name), str), f"config {name} not text", config.get(name))
    for name in ("optimizer", "dataset", "data", "target", "labels", "data_sha256", "norm"):
        value = config.get(name)
        expect(value is None or isinstance(value, str), f"config {name} not text", value)
    if "lr" in config:
        expect(finite_real(config["lr"]) and config["lr"] > 0, "config lr", config["lr"])
    if "test_fraction" in config:
        value = config["test_fraction"]
        expect(finite_real(value) and 0 < value < 1, "config test_fraction", value)


def check_tree(tree: Any, like: Any) -> None:
    expect(jax.tree.structure(tree) == jax.tree.structure(like), "another structure")
    for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(like), strict=True):
        expect(np.shape(got) == np.shape(want), "another shape", np.shape(got))
        expect(jnp.asarray(got).dtype == jnp.asarray(want).dtype, "another dtype")


# --- Valid files to start from ----------------------------------------------------------


@cache
def scratch() -> Path:
    """A folder for this process's base files, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="jaxbp-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def case_dir() -> Path:
    """A fresh folder for one case (its files are removed with `scratch`)."""
    return Path(tempfile.mkdtemp(dir=scratch()))


def tree_like() -> dict[str, Any]:
    """A pytree with every kind of leaf a checkpoint stores: float, int, bool, complex,
    bfloat16 and int4 (raw bits with a `dtypes` entry) and a PRNG key."""
    return {
        "W": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3),
        "b": jnp.zeros(3, jnp.bfloat16),
        "n": np.array([1, 2], np.int64),
        "q": jnp.array([1, -2, 3], jnp.int4),
        "mask": np.array([True, False]),
        "z": np.array([1 + 2j], np.complex64),
        "key": jax.random.key(0),
    }


CONFIG = {
    "dataset": "xor",
    "data": None,
    "target": None,
    "labels": None,
    "hidden": [3],
    "activation": "tanh",
    "init": "glorot_normal",
    "loss": "binary_cross_entropy",
    "optimizer": "adam",
    "lr": 0.01,
    "batch_size": 50,
    "seed": 0,
    "grad": "manual",
    "test_fraction": 0.2,
    "norm": None,
    "dropout": 0.0,
    "dp_clip": None,
    "dp_noise": None,
    "dp_delta": None,
    "data_sha256": None,
}


def row(epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "seconds": 0.25,
        "samples_per_s": 3200.0,
        "train_loss": 0.6 / epoch,
        "train_accuracy": 0.7,
        "test_loss": 0.65 / epoch,
        "test_accuracy": 0.675,
        "grad_norm": 0.31,
    }


SUMMARY = {
    "dataset": "xor",
    "grad": "manual",
    "epochs": 2,
    "seconds": 0.5,
    "train_loss": 0.3,
    "test_loss": 0.325,
    "test_accuracy": 0.675,
    "parity_max_rel_err": 1e-16,
    "parity_atol": 0.0,
    "parity_max_scaled_err": 1e-16,
    "parity_dtype": "float64",
    "devices": None,
    "norm": None,
    "dropout": 0.0,
    "dp": None,
    "config": CONFIG,
}


def run_state() -> dict[str, Any]:
    """The state `jaxbp train` checkpoints for `CONFIG` (no training: its initial values)."""
    model = jaxbp.Config(activation="tanh", loss="binary_cross_entropy")
    params = jaxbp.init_mlp(jax.random.key(1), [2, 3, 1])
    opt = jaxbp.init_train_state(jaxbp.runs.OPTIMIZERS["adam"](0.01), params, model)
    return {"params": params, "opt_state": opt, "key": jax.random.key(0)}


@cache
def base_run() -> Path:
    """A finished two-epoch run folder, written through `RunFolder` as `jaxbp train` does."""
    out = scratch() / "run"
    folder = RunFolder.hold(out)
    folder.start_new()
    state = run_state()
    for epoch in (1, 2):
        folder.append(row(epoch))
        folder.save(epoch, state, CONFIG)
    folder.write_summary(SUMMARY)
    folder.close()
    return out


@cache
def base_checkpoint() -> bytes:
    path = scratch() / "tree.jaxbp"
    jaxbp.save_checkpoint(path, tree_like(), {"epoch": 3, "note": ["any", {"json": 1.5}]})
    return path.read_bytes()


# --- Mutations ----------------------------------------------------------------------------

SLOT = "\x00slot\x00"
"""A string no record holds: stands for the raw JSON text a mutation puts in its place."""

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "1", "nan", "sgd", "xor", "bfloat16", "int4", "leaf_0"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


def _deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


RAW_JSON = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.builds(_deep, st.integers(1, 200_000), st.sampled_from(["list", "object"])),
    st.integers(300, 20_000).map(lambda n: "1" * n),  # past int's 4300-digit limit
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-0", "1e-400", "1.0", "true"]),
    st.text(max_size=12),  # not JSON at all, often
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths_of(v, (*prefix, i))
    return found


def _put(value: Any, path: tuple, new: Any, delete: bool = False) -> Any:
    if not path:
        return new
    value = json.loads(json.dumps(value))  # a copy
    *head, last = path
    target = value
    for step in head:
        target = target[step]
    if delete:
        del target[last]
    else:
        target[last] = new
    return value


@st.composite
def json_texts(draw: Any, record: Any) -> bytes:
    """`record` as JSON text with one field (or the whole) replaced, deleted or added."""
    op = draw(st.sampled_from(["replace", "replace", "delete", "add", "whole"]))
    if op == "whole":
        return draw(RAW_JSON).encode()
    path = draw(st.sampled_from(paths_of(record)))
    if op == "delete" and path:
        return json.dumps(_put(record, path, None, delete=True)).encode()
    if op == "add":
        parent = _put(record, (), record)
        while path and not isinstance(_get(parent, path), dict):
            path = path[:-1]
        if not isinstance(_get(parent, path), dict):
            return draw(RAW_JSON).encode()
        path = (*path, draw(st.text(max_size=6)))
    text = json.dumps(_put(record, path, SLOT))
    return text.replace(json.dumps(SLOT), draw(RAW_JSON), 1).encode()


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def byte_edits(draw: Any, blob: bytes) -> bytes:
    """`blob` with a few bytes changed, inserted or deleted, or truncated."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header(descr: str, shape: str, fortran: bool, version: int) -> bytes:
    """A hand-written `.npy` header (so it can declare anything)."""
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    head = 10 if version == 1 else 12
    pad = -(head + len(text) + 1) % 64
    text = (text + " " * pad + "\n").encode("latin1")
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text


DESCRS = [
    "'<f8'", "'>f8'", "'<f4'", "'|u1'", "'|b1'", "'<c16'", "'<i8'", "'>i2'", "'<f2'",
    "'<f16'", "'|O'", "'<U3'", "'|S0'", "'|V8'", "'<M8[s]'", "[('a', '<f8')]",
    "[('a', '|O')]", "'bogus'", "1", "[" * 150 + "]" * 150,
]  # fmt: skip
SHAPES = [
    "()", "(3,)", "(2, 3)", "(0,)", "(3, 0)", "(1000000000000,)", "(2**40,)",
    "(9223372036854775808,)", "(-1,)", "('a',)", "(3, 3, 3, 3)", "(" * 150 + ")" * 150,
]  # fmt: skip


@st.composite
def npy_members(draw: Any) -> bytes:
    """Bytes a member of an `.npz` might hold: an array of any dtype (object arrays
    pickled), a hand-written header declaring anything, or not `.npy` at all."""
    kind = draw(st.sampled_from(["array", "header", "junk"]))
    if kind == "array":
        dtype = draw(
            st.sampled_from(
                [
                    "f8",
                    ">f8",
                    "f4",
                    "f2",
                    "u1",
                    "i8",
                    "?",
                    "c16",
                    "U2",
                    "S3",
                    "M8[s]",
                    "O",
                    "V4",
                    "longdouble",
                    "f8,i4",
                ]
            )
        )
        shape = draw(st.sampled_from([(), (3,), (2, 3), (0,), (4, 1)]))
        if dtype == "O":
            return npy(np.array([{"x": 1}] * max(1, math.prod(shape)), dtype=object))
        raw = draw(st.binary(min_size=64, max_size=64))
        count = math.prod(shape)
        arr = np.frombuffer((raw * (1 + count))[: count * np.dtype(dtype).itemsize], dtype)
        return npy(arr.reshape(shape))
    if kind == "header":
        head = npy_header(
            draw(st.sampled_from(DESCRS)),
            draw(st.sampled_from(SHAPES)),
            draw(st.booleans()),
            draw(st.sampled_from([1, 2, 3])),
        )
        return head + draw(st.binary(max_size=64))
    return draw(st.binary(max_size=64))


def members_of(payload: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def zip_of(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of some cases
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                if not info.filename:  # "/" or a NUL byte: zipfile's name is empty
                    info = zipfile.ZipInfo("m", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = compression
                z.writestr(info, data)
    return buf.getvalue()


MEMBER_NAMES = st.one_of(
    st.sampled_from(
        [
            "meta",
            "tree",
            "leaf_0",
            "leaf_1",
            "x",
            "y",
            "dir/",
            "leaf_00.npy",
            "meta.npy",
            "x.npy",
            "y.npy",
            "../x.npy",
            "leaf_99.npy",
        ]
    ),
    st.text(max_size=8),
)


@st.composite
def archive_edits(draw: Any, members: list[tuple[str, bytes]]) -> bytes:
    """An `.npz` payload with its members dropped, renamed, added or replaced."""
    members = list(members)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "rename", "replace", "replace", "add", "edit"]))
        i = draw(st.integers(0, max(len(members) - 1, 0)))
        if op == "add" or not members:
            members.insert(i, (draw(MEMBER_NAMES) or "m", draw(npy_members())))
        elif op == "drop":
            del members[i]
        elif op == "rename":
            name = members[i][0]
            new = draw(
                st.sampled_from([name.removesuffix(".npy"), name + "/", name.upper()])
                | MEMBER_NAMES
            )
            members[i] = (new or "m", members[i][1])
        elif op == "replace":
            members[i] = (members[i][0], draw(npy_members()))
        else:
            members[i] = (members[i][0], draw(byte_edits(members[i][1])))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    return zip_of(members, compression)


def seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).digest() + payload


def json_member(text: bytes) -> bytes:
    return npy(np.frombuffer(text, np.uint8))


@st.composite
def checkpoint_files(draw: Any, blob: bytes) -> bytes:
    """A damaged checkpoint, most often with a valid checksum around its payload."""
    payload = blob[len(MAGIC) + 32 :]
    members = members_of(payload)
    how = draw(st.sampled_from(["meta", "meta", "tree", "tree", "archive", "archive",
                                "payload", "file"]))  # fmt: skip
    if how == "file":  # the checksum left as it was
        return draw(byte_edits(blob))
    if how == "payload":
        return seal(draw(byte_edits(payload)))
    if how == "archive":
        return seal(draw(archive_edits(members)))
    name = f"{how}.npy"
    raw = np.load(io.BytesIO(dict(members)[name]))
    record = json.loads(raw.tobytes().decode())
    text = draw(json_texts(record))
    return seal(zip_of([(n, json_member(text) if n == name else d) for n, d in members]))


@st.composite
def metrics_files(draw: Any) -> bytes:
    rows = [row(1), row(2)]
    how = draw(st.sampled_from(["field", "field", "field", "line", "bytes", "lines"]))
    if how == "bytes":
        return draw(byte_edits(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
    if how == "lines":
        lines = [json.dumps(r).encode() for r in rows]
        op = draw(st.sampled_from(["duplicate", "drop", "swap", "torn", "blank"]))
        if op == "duplicate":
            lines.insert(1, lines[0])
        elif op == "drop":
            lines.pop(0)
        elif op == "swap":
            lines.reverse()
        elif op == "blank":
            lines.insert(1, b"")
        tail = b"" if op != "torn" else lines.pop()[:-3]
        return b"".join(line + b"\n" for line in lines) + tail
    i = draw(st.integers(0, 1))
    text = draw(json_texts(rows[i])) if how == "field" else draw(RAW_JSON).encode()
    lines = [json.dumps(r).encode() for r in rows]
    lines[i] = text.replace(b"\n", b" ")
    return b"".join(line + b"\n" for line in lines)


@st.composite
def summary_files(draw: Any) -> bytes:
    how = draw(st.sampled_from(["field", "field", "field", "bytes"]))
    if how == "bytes":
        return draw(byte_edits(json.dumps(SUMMARY, indent=1).encode()))
    return draw(json_texts(SUMMARY))


# --- The readers, fuzzed ------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_checkpoint_readers(data):
    """`jaxbp.load_checkpoint`, `read_meta` and `read_arrays` of a damaged checkpoint."""
    path = case_dir() / "c.jaxbp"
    path.write_bytes(data.draw(checkpoint_files(base_checkpoint())))
    like = tree_like()

    def load():
        tree, meta = jaxbp.load_checkpoint(path, like)
        check_tree(tree, like)
        expect(isinstance(meta, dict), "meta not an object", meta)
        return meta

    def meta_only():
        meta = read_meta(path)
        expect(isinstance(meta, dict), "meta not an object", meta)

    def arrays():
        meta, leaves = read_arrays(path)
        expect(isinstance(meta, dict), "meta not an object", meta)
        for leaf in leaves:
            expect(isinstance(leaf, np.ndarray), "a leaf that is not an array", type(leaf))
            expect(leaf.dtype.kind in "biufcV" or leaf.dtype.name in str(jnp.int4), "dtype")

    judge("load_checkpoint", load, (path,), (CheckpointError,))
    judge("read_meta", meta_only, (path,), (CheckpointError,))
    judge("read_arrays", arrays, (path,), (CheckpointError,))


def copy_run() -> Path:
    out = case_dir() / "run"
    shutil.copytree(base_run(), out)
    return out


def check_run(run: Any) -> None:
    expect(count(run.epoch), "epoch", run.epoch)
    check_config(run.config)
    expect(isinstance(run.metrics, list), "metrics")
    for i, r in enumerate(run.metrics, start=1):
        check_row(i, r)
    check_summary(run.summary)
    for leaf in jax.tree.leaves(run.params):
        expect(bool(np.all(np.isfinite(np.asarray(leaf)))), "params not finite")


@FUZZ
@given(data=st.data())
def test_run_folder_checkpoint(data):
    """`load_run` and a held folder's `saved`/`load` of a run with a damaged checkpoint."""
    out = copy_run()
    ckpt = out / "checkpoint.jaxbp"
    ckpt.write_bytes(data.draw(checkpoint_files(ckpt.read_bytes())))
    judge(
        "load_run (checkpoint)",
        lambda: check_run(load_run(out)),
        (out,),
        (RunError, CheckpointError),
    )

    def held():
        folder = RunFolder.hold(out)
        try:
            found = folder.saved()
            if found is not None:
                expect(count(found[0]), "saved epoch", found[0])
                check_config(found[1], partial=True)
                folder.load(run_state())
        finally:
            folder.close()

    judge("RunFolder.saved/load", held, (out,), (RunError, CheckpointError))


@FUZZ
@given(data=st.data())
def test_metrics_log(data):
    """`runs.read_metrics` and `load_run` of a damaged `metrics.jsonl`."""
    out = copy_run()
    (out / "metrics.jsonl").write_bytes(data.draw(metrics_files()))

    def read():
        rows, _ = read_metrics(out / "metrics.jsonl")
        for i, r in enumerate(rows, start=1):
            check_row(i, r)

    judge("read_metrics", read, (out / "metrics.jsonl",), (RunError,))
    judge(
        "load_run (metrics)", lambda: check_run(load_run(out)), (out,), (RunError, CheckpointError)
    )


@FUZZ
@given(data=st.data())
def test_summary(data):
    """`load_run` of a damaged `summary.json`."""
    out = copy_run()
    (out / "summary.json").write_bytes(data.draw(summary_files()))
    judge(
        "load_run (summary)", lambda: check_run(load_run(out)), (out,), (RunError, CheckpointError)
    )


def check_split(result: Any) -> None:
    split, info = result
    expect(split.x_train.ndim == 2 and split.x_train.dtype == jnp.float32, "x_train")
    for a in split:
        expect(bool(np.all(np.isfinite(np.asarray(a)))), "a value that is not finite")
    expect(info.task in ("classification", "regression"), "task", info.task)


def load(path: Path, **kw: Any) -> Any:
    return check_split(datasets.load_file(path, **kw))


NPZ_X = np.linspace(-1, 1, 40).reshape(20, 2)
NPZ_Y = np.arange(20) % 2


@FUZZ
@given(data=st.data())
def test_npz_data(data):
    """`jaxbp.datasets.load_file` of a damaged `.npz` data file."""
    blob = zip_of([("x.npy", npy(NPZ_X)), ("y.npy", npy(NPZ_Y))])
    how = data.draw(st.sampled_from(["archive", "archive", "bytes"]))
    if how == "bytes":
        blob = data.draw(byte_edits(blob))
    else:
        blob = data.draw(archive_edits(members_of(blob)))
    path = case_dir() / "d.npz"
    path.write_bytes(blob)
    judge("load_file (.npz)", lambda: load(path), (path,), (ValueError,))


CSV = "a,b,y\n" + "".join(f"{i / 7:.3f},{-i},{i % 3}\n" for i in range(12))
CELLS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "1e999",
            "1e308",
            "-0",
            "0x10",
            "1_0",
            "",
            " 1 ",
            "\x00",
            '"',
            "1" * 400,
            "١",
            "1e-400",
            "True",
        ]
    ),
)


@FUZZ
@given(data=st.data())
def test_csv_data(data):
    """`jaxbp.datasets.load_file` of a damaged `.csv` data file."""
    how = data.draw(st.sampled_from(["cell", "cell", "bytes", "row"]))
    lines = CSV.splitlines()
    if how == "cell":
        i = data.draw(st.integers(0, len(lines) - 1))
        cells = lines[i].split(",")
        cells[data.draw(st.integers(0, len(cells) - 1))] = data.draw(CELLS)
        lines[i] = ",".join(cells)
        blob = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    elif how == "row":
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(st.text(max_size=20))
        blob = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    else:
        blob = data.draw(byte_edits(CSV.encode()))
    path = case_dir() / "d.csv"
    path.write_bytes(blob)
    judge("load_file (.csv)", lambda: load(path, target="y"), (path,), (ValueError,))


def idx(array: np.ndarray, code: int) -> bytes:
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return (
        bytes([0, 0, code, array.ndim])
        + dims
        + array.astype(array.dtype.newbyteorder(">")).tobytes()
    )


IMAGES = (np.arange(10 * 16) % 251).astype(np.uint8).reshape(10, 4, 4)
LABELS = (np.arange(10) % 3).astype(np.uint8)


@st.composite
def idx_files(draw: Any, blob: bytes) -> bytes:
    how = draw(st.sampled_from(["header", "header", "bytes", "gzip", "gzip-bytes"]))
    if how == "header":
        data = bytearray(blob)
        at = draw(st.integers(0, min(len(data), 16) - 1))
        data[at] = draw(st.sampled_from([0, 1, 3, 8, 9, 0x0B, 0x0D, 0x0E, 0xFF, 0x80]))
        return bytes(data)
    if how == "bytes":
        return draw(byte_edits(blob))
    packed = gzip.compress(blob if how == "gzip" else draw(byte_edits(blob)))
    return packed if how == "gzip" else draw(byte_edits(packed))


@FUZZ
@given(data=st.data())
def test_idx_data(data):
    """`jaxbp.datasets.load_file` of damaged IDX images or labels."""
    folder = case_dir()
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    images_blob, labels_blob = idx(IMAGES, 0x08), idx(LABELS, 0x08)
    which = data.draw(st.sampled_from(["images", "labels", "huge"]))
    if which == "images":
        images_blob = data.draw(idx_files(images_blob))
    elif which == "labels":
        labels_blob = data.draw(idx_files(labels_blob))
    else:  # a header that promises more than any file holds
        dims = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
        code = data.draw(st.sampled_from([0x08, 0x0C, 0x0E]))
        images_blob = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
        images_blob += data.draw(st.binary(max_size=32))
    images.write_bytes(images_blob)
    labels.write_bytes(labels_blob)
    judge("load_file (IDX)", lambda: load(images), (images, labels), (ValueError,))


FUZZ_TESTS = [
    test_checkpoint_readers,
    test_run_folder_checkpoint,
    test_metrics_log,
    test_summary,
    test_npz_data,
    test_csv_data,
    test_idx_data,
]
"""Every fuzzed reader, for `tools/fuzz_readers.py`."""


@contextlib.contextmanager
def recording():
    """Tally outcomes instead of failing (`tools/fuzz_readers.py`)."""
    global RECORD
    RECORD = True
    try:
        yield TALLY
    finally:
        RECORD = False
