"""Runs as data, polished (item 4): the files jaxbp writes honour the umask, as `open`
would: a new file gets `0o666 & ~umask` (not the temporary file's 0600), a replaced file
keeps the permissions its owner gave it, and the replace stays atomic. The umask is read
without changing it where Linux shows it, else set and put back."""

import contextlib
import os
import stat

import numpy as np
import pytest

from jaxbp._files import checkpoint
from jaxbp._files.checkpoint import save_checkpoint, write_atomic
from jaxbp.runs import RunFolder

UMASKS = [0o022, 0o077, 0o002]


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_the_umask_is_read_as_set(mask, monkeypatch):
    with umask(mask):
        assert checkpoint.umask() == mask
        monkeypatch.setattr(checkpoint, "PROC_STATUS", "/nonexistent/status")  # elsewhere
        assert checkpoint.umask() == mask
    assert checkpoint.umask() == os.umask(os.umask(0o022))  # put back as it was


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_new_files_get_the_umasks_mode(mask, tmp_path):
    with umask(mask):
        write_atomic(tmp_path / "a.json", b"{}")
        save_checkpoint(tmp_path / "c.jaxbp", {"w": np.ones(3)}, {"epoch": 1})
        with open(tmp_path / "by-open", "wb"):  # the reference: what open() gives
            pass
    want = 0o666 & ~mask
    assert mode(tmp_path / "by-open") == want
    assert mode(tmp_path / "a.json") == want and mode(tmp_path / "c.jaxbp") == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "by-open", "c.jaxbp"]


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_a_replaced_file_keeps_its_owners_mode(mask, tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with umask(mask):
        write_atomic(path, b"new")
        save_checkpoint(tmp_path / "c.jaxbp", [np.zeros(2)])
        (tmp_path / "c.jaxbp").chmod(0o600)
        save_checkpoint(tmp_path / "c.jaxbp", [np.ones(2)])
    assert path.read_bytes() == b"new" and mode(path) == 0o640
    assert mode(tmp_path / "c.jaxbp") == 0o600


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_a_run_folders_files_get_the_umasks_mode(mask, tmp_path):
    with umask(mask):
        folder = RunFolder.hold(tmp_path / "run")
        try:
            folder.start_new()
            folder.append({"epoch": 1, "train_loss": 0.5})
            folder.save(1, {"params": [np.ones(2)]}, {"hidden": [2]})
            folder.write_summary({"epochs": 1})
        finally:
            folder.close()
    want = 0o666 & ~mask
    names = ["metrics.jsonl", "checkpoint.jaxbp", "summary.json", ".jaxbp.lock"]
    assert {n: oct(mode(tmp_path / "run" / n)) for n in names} == {n: oct(want) for n in names}


def test_a_jaxbp_train_run_honours_the_umask(tmp_path):
    from jaxbp.app.cli import main

    out = tmp_path / "run"
    args = ["train", "--dataset", "xor", "--hidden", "3", "--batch-size", "50", "--quiet"]
    with umask(0o002):
        assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    files = {p.name: oct(mode(p)) for p in out.iterdir() if p.is_file()}
    assert {"metrics.jsonl", "checkpoint.jaxbp", "summary.json", "curves.png"} <= set(files)
    assert set(files.values()) == {"0o664"}, files
