"""A run folder is never lost or silently overwritten, and what a run cannot do is
refused up front (issues found by an outside review of `jaxbp train`): a replacing or
resumed run that ends before its first checkpoint gives the folder back as it was, a
resumed run refuses changed data, and a user's own files are not replaced unasked."""

import os
import shutil
import struct

import numpy as np
import pytest

import jaxbp
from conftest import run_train
from jaxbp import runs
from jaxbp.app.cli import expected_message
from jaxbp.runs import folder as run_files

XOR = ["--dataset", "xor", "--hidden", "3", "--batch-size", "50", "--quiet"]


def files(folder):
    """Every file of the folder but the lock, by name: its bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".jaxbp.lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    from jaxbp.app.cli import main

    assert main(["train", *XOR, "--epochs", "2", "--out", str(out), "--diagnostics"]) == 0
    return out


def test_a_replacing_run_that_diverges_gives_the_old_run_back(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = files(out)
    code, _, err = run_train(capsys, *XOR, "--epochs", "2", "--out", str(out), "--overwrite",
                             "--lr", "3e38")  # fmt: skip
    assert code == 1 and "no checkpoint was written" in err
    assert files(out) == before


def test_a_resumed_run_that_diverges_keeps_its_summary(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = files(out)
    code, _, err = run_train(capsys, *XOR, "--epochs", "4", "--out", str(out), "--resume",
                             "--diagnostics", "--lr", "3e38")  # fmt: skip
    assert code == 1 and "epoch 3" in err
    after = files(out)
    del before["metrics.jsonl"], after["metrics.jsonl"]  # may log the diverged epoch
    assert after == before and runs.load_run(out).summary["epochs"] == 2


def test_a_run_killed_before_its_first_checkpoint_is_undone_by_the_next(finished, tmp_path):
    """`kill -9` after --overwrite set the old run aside: the next hold brings it back."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = files(out)
    folder = runs.RunFolder.hold(out)
    folder.start_new(overwrite=True)
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a half-done first epoch
    kill(folder)
    assert (out / run_files.PREVIOUS).is_dir() and not (out / "checkpoint.jaxbp").exists()
    runs.RunFolder.hold(out).close()
    assert files(out) == before


def test_a_resumed_run_whose_data_changed_is_refused(tmp_path, capsys):
    data = tmp_path / "d.csv"
    rows = [f"{i % 7 / 7:.3f},{(i * 3) % 5 / 5:.3f},{i % 2}" for i in range(40)]
    data.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    args = ["--data", str(data), "--target", "y", "--hidden", "2", "--batch-size", "8",
            "--quiet", "--out", str(tmp_path / "r")]  # fmt: skip
    assert run_train(capsys, *args, "--epochs", "1")[0] == 0
    run = runs.load_run(tmp_path / "r")
    split, _ = run.dataset()  # the data it trained on: the split of the run's rows
    assert split.x_train.shape[0] + split.x_test.shape[0] == len(rows)
    data.write_text("a,b,y\n" + "\n".join(rows[::-1]) + "\n")  # same shape, other rows
    code, _, err = run_train(capsys, *args, "--epochs", "2", "--resume")
    assert code == 2 and "d.csv changed since the checkpoint" in err
    assert runs.load_run(tmp_path / "r").epoch == 1
    with pytest.raises(runs.RunError, match=r"d\.csv no longer gives the split this run trained"):
        runs.load_run(tmp_path / "r").dataset()


def test_a_users_figure_in_the_folder_is_not_replaced_unasked(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "curves.png").write_bytes(b"my own figure")
    code, _, err = run_train(capsys, *XOR, "--epochs", "1", "--out", str(out))
    assert code == 2 and "files a run writes (curves.png)" in err and "--overwrite" in err
    assert (out / "curves.png").read_bytes() == b"my own figure"


def test_resuming_without_diagnostics_draws_what_was_logged(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    code, _, err = run_train(capsys, *XOR, "--epochs", "3", "--out", str(out), "--resume")
    assert code == 0, err
    assert (out / "diagnostics.png").is_file() and runs.load_run(out).epoch == 3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--hidden", "", "--norm", "layer"], "--norm layer acts after each hidden layer"),
        (["--hidden", "", "--dropout", "0.5"], "--dropout 0.5 acts after each hidden layer"),
        (["--norm", "batch", "--batch-size", "1"], "needs --batch-size 2 or more (got 1"),
    ],
    ids=["norm-without-hidden", "dropout-without-hidden", "batch-norm-of-one"],
)
def test_layers_that_would_do_nothing_or_harm_are_refused(capsys, args, fragment):
    code, _, err = run_train(capsys, "--dataset", "xor", "--epochs", "1", *args)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_an_unwritable_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(run_files.Path, "write_bytes", refuse)
    code, _, err = run_train(capsys, *XOR, "--epochs", "1", "--out", str(tmp_path / "r"))
    assert code == 2 and "cannot write there (Permission denied" in err and "chmod" in err


def test_an_idx_file_of_no_images_names_the_file(tmp_path, capsys):
    images, labels = tmp_path / "x-images-idx3-ubyte", tmp_path / "x-labels-idx1-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3i", 0, 28, 28))
    labels.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 0))
    code, _, err = run_train(capsys, "--data", str(images), "--epochs", "1")
    assert code == 2 and f"{images}: its IDX header says (0, 28, 28): no images" in err


def test_out_of_memory_from_xla_gets_its_hint():
    err = ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 576000000 bytes.")
    assert expected_message(err) == "out of memory; use a smaller --hidden or --batch-size."


def kill(folder):
    """The process dies: its lock goes with it, nothing is settled."""
    os.close(folder._lock_fd)
    folder._lock_fd = None


@pytest.mark.parametrize(
    "moment",
    ["setting-aside", "restoring-half-done", "after-the-new-checkpoint", "discarding-half-done"],
)
def test_a_kill_at_any_step_of_a_set_aside_loses_nothing(finished, tmp_path, moment):
    """Each step of --overwrite's set-aside is a rename: whatever step a `kill -9` interrupts,
    the next hold finishes it, and the folder holds the old run or the new one, whole."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    old = files(out)
    folder = runs.RunFolder.hold(out)
    if moment == "setting-aside":  # killed after moving two files of five
        filling = out / run_files.SETTING_ASIDE
        filling.mkdir()
        (filling / run_files.SET_ASIDE).write_text('{"epoch": null}')
        for name in ("checkpoint.jaxbp", "summary.json"):
            os.replace(out / name, filling / name)
        kill(folder)
        want = old
    else:
        folder.start_new(overwrite=True)
        if moment == "restoring-half-done":  # the decision taken, one file moved back
            os.replace(out / run_files.PREVIOUS, out / run_files.RESTORING)
            os.replace(out / run_files.RESTORING / "checkpoint.jaxbp", out / "checkpoint.jaxbp")
            kill(folder)
            want = old
        else:
            new_state = {"w": np.arange(3.0)}
            jaxbp.save_checkpoint(folder.checkpoint, new_state, {"epoch": 1, "config": {}})
            if moment == "discarding-half-done":
                os.replace(out / run_files.PREVIOUS, out / run_files.DISCARD)
                (out / run_files.DISCARD / run_files.SET_ASIDE).unlink()
            kill(folder)
            want = {**{"metrics.jsonl": b""}, "checkpoint.jaxbp": folder.checkpoint.read_bytes()}
    runs.RunFolder.hold(out).close()
    assert files(out) == want


def test_a_resume_with_no_epoch_left_keeps_the_summary_it_writes(finished, tmp_path, capsys):
    """`--resume --epochs 2` of a run of 2 epochs trains nothing and writes a new summary
    (here with another --lr): that summary stays, the old one does not come back over it."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    old = runs.load_run(out).summary
    code, _, err = run_train(capsys, *XOR, "--epochs", "2", "--out", str(out), "--resume",
                             "--diagnostics", "--lr", "0.25")  # fmt: skip
    assert code == 0, err
    summary = runs.load_run(out).summary
    assert old["config"]["lr"] == 1e-3 and summary["config"]["lr"] == 0.25
    for key in ("epochs", "train_loss", "test_loss", "test_accuracy"):  # the same 2 epochs
        assert summary[key] == old[key]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".jaxbp.lock"]
    assert (out / "curves.png").is_file() and (out / "diagnostics.png").is_file()


@pytest.mark.parametrize("killed", ["replacing", "resuming"])
def test_load_run_puts_back_what_a_killed_run_set_aside(finished, tmp_path, killed):
    """A run killed before its next checkpoint left the old run (--overwrite) or its
    summary and figures (--resume) set aside: `load_run` puts them back first."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = files(out)
    folder = runs.RunFolder.hold(out)
    if killed == "replacing":
        folder.start_new(overwrite=True)
    else:
        assert folder.saved()[0] == 2
        folder.keep_epochs(folder.history()[0], torn=False)
    kill(folder)
    assert (out / run_files.PREVIOUS).is_dir() and not (out / "summary.json").exists()
    run = runs.load_run(out)
    assert run.summary is not None and run.summary["epochs"] == run.epoch == 2
    assert files(out) == before


def test_load_run_refuses_set_aside_files_it_cannot_put_back(finished, tmp_path, monkeypatch):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    folder = runs.RunFolder.hold(out)
    folder.keep_epochs(folder.history()[0], torn=False)
    try:  # the run is alive: its files stay aside until it ends
        with pytest.raises(runs.RunError, match=rf"process {os.getpid()} is writing this run"):
            runs.load_run(out)
    finally:
        kill(folder)

    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(run_files.Path, "write_bytes", refuse)  # a folder this process cannot write
    with pytest.raises(runs.RunError, match=r"left files set aside in .*\.jaxbp\.previous, and "):
        runs.load_run(out)
    monkeypatch.undo()
    assert runs.load_run(out).summary["epochs"] == 2


def test_a_discard_that_cannot_be_deleted_does_not_block_the_next(finished, tmp_path, monkeypatch):
    """A file that survives the delete of the set-aside folder (still open on NFS, say) is
    moved out of the way: the next discard's rename does not fail on it."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    rmtree = shutil.rmtree

    def leaves_one(path, ignore_errors=False):
        stuck = run_files.Path(path) / ".nfs0001"
        rmtree(path, ignore_errors=ignore_errors)
        if run_files.Path(path).name == run_files.DISCARD:
            stuck.parent.mkdir()
            stuck.write_bytes(b"still open")

    monkeypatch.setattr(run_files.shutil, "rmtree", leaves_one)
    for _ in range(2):  # each replaces the run: each save discards the one before
        folder = runs.RunFolder.hold(out)
        try:
            folder.start_new(overwrite=True)
            folder.save(1, {"w": np.arange(3.0)}, {})
        finally:
            folder.close()
    monkeypatch.undo()
    assert runs.RunFolder(out).saved() == (1, {})
    assert not (out / run_files.PREVIOUS).exists() and not (out / run_files.DISCARD).exists()
    assert list(out.glob(f"{run_files.DISCARD}.*/.nfs0001"))
