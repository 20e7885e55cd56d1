"""Issue 13, class 3 (and the metrics log of class 4): checkpoints whose checksum is right
but whose content is not, and damaged metrics logs. `jaxbp train --resume` refuses each
with one `CheckpointError`-style line and exit status 2, and changes nothing on disk."""

import io
import json
import shutil
import struct
import zipfile

import numpy as np
import pytest

from conftest import archive, sealed
from jaxbp._files.checkpoint import read_arrays
from jaxbp.app.cli import main

XOR = ["train", "--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run, copied by each case."""
    out = tmp_path_factory.mktemp("run")
    assert main([*XOR, "--epochs", "2", "--out", str(out)]) == 0
    return out


def npy_bytes():
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def with_meta(meta, **change):
    return {k: v for k, v in (meta | change).items() if v is not ...}


def nan_params(leaves):
    leaves = list(leaves)
    leaves[-4] = np.full_like(leaves[-4], np.nan)  # W_1: params come last, W before b
    return leaves


def with_member(payload, name, data):
    """An `.npz` payload with a member added as it is: any name, any bytes."""
    buf = io.BytesIO(payload)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr(name, data)
    return buf.getvalue()


def huge_npy():
    """An `.npy` member that declares 10^12 float64 values and holds none."""
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def tree_entry(n, dtypes):
    """A `tree` entry for `n` leaves whose `dtypes` object is `dtypes`."""
    text = json.dumps({"paths": [f"[{i}]" for i in range(n)], "dtypes": dtypes})
    return np.frombuffer(text.encode(), np.uint8)


DEEP = b"[" * 100_000 + b"]" * 100_000


def deep_config(meta):
    text = json.dumps(with_meta(meta, config="<deep>"))
    return text.replace('"<deep>"', '{"a":' * 5000 + "1" + "}" * 5000).encode()


CHECKPOINTS = {
    "payload-not-archive": (lambda m, l: b"hello", "payload is unreadable"),
    "payload-npy": (lambda m, l: npy_bytes(), "payload is unreadable"),
    "no-meta": (lambda m, l: archive(l, None), "meta entry is missing"),
    "meta-not-json": (lambda m, l: archive(l, b"{oops"), "its meta is not JSON"),
    "meta-not-utf8": (lambda m, l: archive(l, b"\xff\xfe"), "its meta is not JSON"),
    "meta-list": (lambda m, l: archive(l, [1, 2]), "its meta is a JSON list, not an object"),
    "meta-floats": (lambda m, l: archive(l, np.zeros(3)), "missing or not JSON bytes"),
    "no-config": (lambda m, l: archive(l, with_meta(m, config=...)), "its config is NoneType"),
    "config-list": (lambda m, l: archive(l, with_meta(m, config=[])), "its config is list"),
    "no-epoch": (lambda m, l: archive(l, with_meta(m, epoch=...)), "its epoch is None"),
    "epoch-string": (lambda m, l: archive(l, with_meta(m, epoch="2")), "its epoch is '2'"),
    "epoch-bool": (lambda m, l: archive(l, with_meta(m, epoch=True)), "its epoch is True"),
    "epoch-zero": (lambda m, l: archive(l, with_meta(m, epoch=0)), "its epoch is 0, not a"),
    "epoch-negative": (lambda m, l: archive(l, with_meta(m, epoch=-1)), "its epoch is -1"),
    "epoch-float": (lambda m, l: archive(l, with_meta(m, epoch=2.0)), "its epoch is 2.0"),
    "epoch-past-log": (
        lambda m, l: archive(l, with_meta(m, epoch=3)),
        "logs 2 epochs, the checkpoint 3",
    ),
    "leaf-missing": (
        lambda m, l: archive([], m, **{f"leaf_{i}": a for i, a in enumerate(l) if i != 1}),
        "not leaf_0 to leaf_",
    ),
    "leaf-extra": (lambda m, l: archive([*l, np.zeros(2)], m), "arrays but the template"),
    "leaf-object": (
        lambda m, l: archive([np.array([{"x": 1}], dtype=object), *l[1:]], m),
        "payload is unreadable",
    ),
    "leaf-strings": (
        lambda m, l: archive([np.array(["a"]), *l[1:]], m),
        "has dtype <U1, not numbers",
    ),
    "leaf-shape": (lambda m, l: archive([*l[:-1], l[-1][:0]], m), "but the template expects"),
    "params-nan": (lambda m, l: archive(nan_params(l), m), "holds NaN or inf"),
    # Issue 22: found by fuzzing (tests/test_fuzz_readers.py), each a traceback before.
    "meta-deep": (lambda m, l: archive(l, DEEP), "its meta is not JSON (nested 100000 levels"),
    "config-deep": (lambda m, l: archive(l, deep_config(m)), "its meta is not JSON (nested"),
    "meta-not-npy": (
        lambda m, l: with_member(archive(l, None), "meta", json.dumps(m).encode()),
        "its member 'meta' is not an .npy array",
    ),
    "leaf-not-npy": (
        lambda m, l: with_member(
            archive([], m, **{f"leaf_{i}": a for i, a in enumerate(l) if i}), "leaf_0", b"\0"
        ),
        "its member 'leaf_0' is not an .npy array",
    ),
    "leaf-huge": (
        lambda m, l: with_member(
            archive([], m, **{f"leaf_{i}": a for i, a in enumerate(l) if i}),
            "leaf_0.npy",
            huge_npy(),
        ),
        "declares float64[1000000000000] (8,000,000,000,000 bytes) but holds 0 bytes",
    ),
    "dtypes-list": (
        lambda m, l: archive(l, m, tree=tree_entry(len(l), {"0": ["bfloat16"]})),
        "its tree entry gives array '0' the dtype ['bfloat16']",
    ),
    "dtypes-superscript": (
        lambda m, l: archive(l, m, tree=tree_entry(len(l), {"\u00b2": "bfloat16"})),
        "its tree entry gives array '\u00b2' the dtype 'bfloat16'",
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_damaged_checkpoint_is_refused(finished, tmp_path, capsys, case):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    meta, leaves = read_arrays(out / "checkpoint.jaxbp")
    make, fragment = CHECKPOINTS[case]
    (out / "checkpoint.jaxbp").write_bytes(sealed(make(meta, leaves)))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main([*XOR, "--epochs", "4", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and ("refusing" in err.lower() or "do not belong to one run" in err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "nothing may change"


def lines(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


METRICS = {
    "middle-line-garbage": (
        lambda r: b"{oops\n" + lines(r[1:]),
        "line 1 is not the record of epoch 1",
    ),
    "interleaved-runs": (
        lambda r: lines([r[0], r[0], r[1]]),
        "line 2 is not the record of epoch 2",
    ),
    "not-utf8": (lambda r: b"\xff\xfe\n" + lines(r[1:]), "line 1 is not the record"),
    "not-an-object": (lambda r: b"[1]\n" + lines(r[1:]), "line 1 is not the record"),
    "far-past-checkpoint": (
        lambda r: lines([*r, r[1] | {"epoch": 3}, r[1] | {"epoch": 4}]),
        "logs 4 epochs, the checkpoint 2",
    ),
    "short-of-checkpoint": (lambda r: lines(r[:1]), "logs 1 epochs, the checkpoint 2"),
    # Issue 22: a traceback (RecursionError), or a record trusted by its keys.
    "deep-line": (lambda r: DEEP + b"\n" + lines(r[1:]), "line 1 is not the record of epoch 1"),
    "epoch-true": (lambda r: lines([r[0] | {"epoch": True}, r[1]]), "line 1 is not the record"),
    "seconds-null": (
        lambda r: lines([r[0], r[1] | {"seconds": None}]),
        "line 2 (epoch 2): seconds is null, not a finite number >= 0",
    ),
}


@pytest.mark.parametrize("case", list(METRICS))
def test_damaged_metrics_log_is_refused(finished, tmp_path, capsys, case):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    make, fragment = METRICS[case]
    (out / "metrics.jsonl").write_bytes(make(rows))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main([*XOR, "--epochs", "4", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
