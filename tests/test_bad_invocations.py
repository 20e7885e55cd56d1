"""Issue 13, classes 1 and 2: every bad invocation of `jaxbp` ends in one line on stderr
and exit status 2, naming the flag or file, before anything is trained or allocated.

Most rows run in-process (`conftest.run_cli`); a few run the console script as a user would.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from jaxbp.app import cli

XOR = ["train", "--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]


def files(tmp_path):
    """Degenerate and hostile data files, written fresh for each case."""
    rng = np.random.default_rng(0)
    (tmp_path / "header.csv").write_text("a,b,y\n")
    (tmp_path / "only-target.csv").write_text("y\n0\n1\n0\n1\n")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0))
    np.savez(tmp_path / "no-features.npz", x=np.zeros((5, 0)), y=np.arange(5) % 2)
    (tmp_path / "huge-field.csv").write_text("a,y\n" + "1" * 200_000 + ",0\n1,1\n")
    (tmp_path / "dup.csv").write_text("y,a,y\n0,1,5\n1,2,6\n0,3,7\n")
    (tmp_path / "latin1.csv").write_bytes("é,y\n1,0\n2,1\n".encode("latin-1"))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.csv").write_bytes(b"a,y\n1\x00,0\n")
    (tmp_path / "file").write_text("not a folder")
    x = rng.normal(size=(40, 2))
    x[:, 1] = 1e-150 * (np.arange(40) % 2)  # training std ~5e-151
    x[np.random.default_rng(0).permutation(40)[0], 1] = 1.0  # a test row, 2e150 std away
    np.savez(tmp_path / "tiny-std.npz", x=x, y=np.arange(40) % 2)
    return tmp_path


BAD = [
    # class 1: absurd numbers, refused while parsing
    (["train", "--seed", "1e23"], "argument --seed: expected an integer from 0 to 4294967295"),
    (["train", "--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295"),
    (["train", "--seed", "4294967296"], "argument --seed: expected an integer"),
    (["train", "--hidden", "100000000000"], "argument --hidden: expected comma-separated"),
    (["train", "--hidden", ",".join(["4"] * 101)], "at most 100 layers"),
    (["train", "--epochs", "10000000"], "argument --epochs: expected a positive integer up to"),
    (["train", "--epochs", "2.5"], "argument --epochs: expected a positive integer"),
    (["train", "--batch-size", str(2**70)], "argument --batch-size: expected a positive integer"),
    (["train", "--lr", "1e-45"], "argument --lr: expected a positive number"),
    (["train", "--lr", "1e39"], "argument --lr: expected a positive number"),
    (["train", "--lr", "inf"], "argument --lr: expected a positive number"),
    (["train", "--devices", "0"], "argument --devices: expected a positive integer"),
    (["train", "--out", ""], "argument --out: expected a path, got ''"),
    (["train", "--data", ""], "argument --data: expected a path"),
    (["check", "--depths", "0"], "argument --depths: expected a depth from 1 to 32"),
    (["check", "--seed", "-3"], "argument --seed: expected an integer from 0"),
    (["check", "--depths", "2", "2"], "--depths 2 2: 2 given twice"),
    (["check", "--dtypes", "float32", "float32"], "--dtypes float32 float32: float32 given twice"),
    (["bench", "--reps", "0"], "argument --reps: expected a positive integer"),
    # class 1: too big to build, refused before anything is allocated
    ([*XOR, "--hidden", "1000000,1000000"], "parameters, over jaxbp train's limit"),
    (
        ["train", "--dataset", "digits", "--hidden", "1000000", "--batch-size", "1400"],
        "values per batch",
    ),
    # flags that do not go together
    ([*XOR, "--resume", "--overwrite", "--out", "{tmp}/r"], "--resume continues the run"),
    ([*XOR, "--overwrite"], "--overwrite needs --out DIR"),
    ([*XOR, "--resume"], "--resume needs --out DIR"),
    ([*XOR, "--labels", "{tmp}/l"], "--labels names the labels file"),
    (["train", "--data", "{tmp}/dup.csv", "--labels", "x"], "--labels names the labels file"),
    ([*XOR, "--loss", "cross_entropy"], "--loss cross_entropy"),  # 2 classes, fine: control
    # class 1: OS errors on --out and --data
    ([*XOR, "--out", "{tmp}/file"], "--out {tmp}/file: is a file, not a folder"),
    ([*XOR, "--out", "{tmp}/file/sub"], "--out {tmp}/file/sub: cannot create or write there"),
    ([*XOR, "--out", "/proc/jaxbp-run"], "--out /proc/jaxbp-run: cannot create or write there"),
    (["train", "--data", "{tmp}"], "is a folder; a data file must be"),
    (["train", "--data", "{tmp}/missing.csv", "--target", "y"], "missing.csv: no such data file"),
    (["bench", "--json", "{tmp}/nowhere/b.json"], "--json {tmp}/nowhere/b.json: its folder"),
    (["bench", "--json", "{tmp}"], "is a folder; name a file"),
    # class 1: degenerate data
    (["train", "--data", "{tmp}/header.csv", "--target", "y"], "header.csv: 0 data rows"),
    (["train", "--data", "{tmp}/only-target.csv", "--target", "y"], "no feature columns"),
    (["train", "--data", "{tmp}/empty.npz"], "empty.npz: 0 data rows"),
    (["train", "--data", "{tmp}/no-features.npz"], "no-features.npz: no feature columns"),
    (["train", "--data", "{tmp}/huge-field.csv", "--target", "y"], "field larger than field limit"),
    (
        ["train", "--data", "{tmp}/nul.csv", "--target", "y"],
        "nul.csv: line 2, column 'a': '1\\x00'",
    ),
    # class 2: data accepted when it should not be, or reported badly
    (
        ["train", "--data", "{tmp}/dup.csv", "--target", "y"],
        "2 columns are named 'y' (columns [1, 3])",
    ),
    (["train", "--data", "{tmp}/latin1.csv", "--target", "y"], "latin1.csv: not UTF-8 text"),
    (["train", "--data", "{tmp}/binary.csv", "--target", "y"], "binary.csv: not UTF-8 text"),
    (["train", "--data", "{tmp}/tiny-std.npz"], "tiny-std.npz: feature column 1 of sample"),
    (["train", "--data", "{tmp}/empty.npz", "--target", "y"], "--target names the label column"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_invocation(tmp_path, capsys, argv, fragment):
    tmp = str(files(tmp_path))
    argv = [a.replace("{tmp}", tmp) for a in argv]
    if argv[-1] == "cross_entropy":  # the control row trains (1 epoch): it must succeed
        assert run_cli(capsys, [*argv, "--epochs", "1"])[0] == 0
        return
    code, out, err = run_cli(capsys, argv)
    assert code == 2, err
    assert fragment.replace("{tmp}", tmp) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_bom_and_huge_values_are_read_right(tmp_path):
    """Class 2: a byte-order mark is not part of the first column's name, and values near
    1e308 standardise to finite numbers (not NaN) equal to those of the rescaled data."""
    from jaxbp import datasets

    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 2))
    y = (x[:, 0] > 0).astype(int)
    text = (
        "a,b,label\n"
        + "\n".join(f"{float(a)!r},{float(b)!r},{t}" for (a, b), t in zip(x, y))
        + "\n"
    )
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    data, _ = datasets.load_file(tmp_path / "bom.csv", target="label")
    with pytest.raises(ValueError, match=r"columns are \['a', 'b', 'label'\]"):
        datasets.load_file(tmp_path / "bom.csv", target="missing")
    np.savez(tmp_path / "big.npz", x=x * 1e307, y=y)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    big, _ = datasets.load_file(tmp_path / "big.npz")
    plain, _ = datasets.load_file(tmp_path / "plain.npz")
    for a, b, c in zip(big, plain, data):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 4294967295; got -1"):
        datasets.load("xor", seed=-1)


def test_unexpected_failure_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(settings):
        raise RuntimeError("something jaxbp did not expect")

    monkeypatch.setattr("jaxbp.app.train.run", broken)
    code, _, err = run_cli(capsys, XOR)
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError: something jaxbp did not expect" in err
    assert "--debug" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, ["train", "--debug"])
    assert code == 3 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("jaxbp train: internal error")
    code, _, err = run_cli(capsys, ["--debug", "train"])
    assert code == 3 and "Traceback" in err


def test_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr("jaxbp.app.train.run", interrupted)
    code, _, err = run_cli(capsys, ["train"])
    assert code == 130 and err == "jaxbp train: interrupted.\n"


CONSOLE = [
    (["train", "--seed", "-1"], "argument --seed"),
    (["train", "--data", "{tmp}/header.csv", "--target", "y"], "0 data rows"),
    (["train", "--out", "{tmp}/file", "--dataset", "xor"], "is a file, not a folder"),
]


@pytest.mark.parametrize(("argv", "fragment"), CONSOLE, ids=["seed", "header-only", "out-file"])
def test_console_script(tmp_path, argv, fragment):
    """As a user runs it: the installed `jaxbp` script (or `python -m jaxbp.app.cli`)."""
    tmp = str(files(tmp_path))
    exe = shutil.which("jaxbp")
    command = [exe] if exe else [sys.executable, "-m", "jaxbp.app.cli"]
    argv = [a.replace("{tmp}", tmp) for a in argv]
    result = subprocess.run([*command, *argv], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_limits_are_the_documented_ones():
    assert (cli.MAX_WIDTH, cli.MAX_LAYERS, cli.MAX_EPOCHS, cli.MAX_SEED) == (
        2**20,
        100,
        10**6,
        2**32 - 1,
    )
