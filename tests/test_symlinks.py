"""Issue 22 item 4: nothing is followed out of a run folder.

Every name a run folder uses (the lock, the temporaries of atomic writes, the metrics
log, the checkpoint, the summary, the figures, the set-aside folders, the files set
aside in them and their record) is planted as a symbolic link to a file or folder
outside, or as a hard link to one. `jaxbp train` (a resume, or a replacing run) refuses
the folder with one line naming the planted file, and the outside file is untouched:
not emptied, not written, not moved. Files that are not regular (a FIFO) are refused by
every reader instead of blocking it.
"""

import json
import os
import shutil
import threading

import numpy as np
import pytest

import jaxbp
from conftest import run_train
from jaxbp import datasets, runs

XOR = ["--dataset", "xor", "--hidden", "3", "--batch-size", "50", "--quiet"]


def snapshot(path):
    """What the outside file or folder holds (a folder: each file's bytes, by name)."""
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


def outside_file(tmp_path, data=b"the user's own file\n"):
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def outside_folder(tmp_path, epoch):
    """A folder elsewhere that looks like a set-aside: its record and a summary."""
    path = tmp_path / "elsewhere" / "aside"
    path.mkdir(parents=True)
    (path / "set_aside.json").write_text(json.dumps({"epoch": epoch}))
    (path / "summary.json").write_text('{"epochs": 1, "mine": true}')
    return path


def link(out, name, target):
    """Replace `out/name` by a symbolic link to `target`."""
    where = out / name
    if where.is_dir() and not where.is_symlink():
        shutil.rmtree(where)
    elif os.path.lexists(where):
        where.unlink()
    where.symlink_to(target)
    return where


def aside(out, record=None, **files):
    """A real `.jaxbp.previous` folder holding `files` (name: path to link to, or bytes)
    and its record (`record`: bytes, or a path to link to)."""
    folder = out / ".jaxbp.previous"
    folder.mkdir()
    for name, content in {"set_aside.json": record, **files}.items():
        if content is None:
            (folder / name).write_text(json.dumps({"epoch": 2}))
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).symlink_to(content)
    return folder


def plant(case, out, tmp_path):
    """Plant case `case` in run folder `out`; return `(planted path, outside path)`."""
    if case in ("lock", "temporary", "checkpoint-temporary", "metrics", "checkpoint",
                "summary", "curves", "diagnostics"):  # fmt: skip
        name = {
            "lock": ".jaxbp.lock",
            "temporary": ".metrics.jsonl.k3j2x9.tmp",
            "checkpoint-temporary": ".checkpoint.jaxbp.a1b2c3.tmp",
            "metrics": "metrics.jsonl",
            "checkpoint": "checkpoint.jaxbp",
            "summary": "summary.json",
            "curves": "curves.png",
            "diagnostics": "diagnostics.png",
        }[case]
        original = out / name
        data = original.read_bytes() if original.is_file() else b"the user's own file\n"
        target = outside_file(tmp_path, data)
        return link(out, name, target), target
    if case in ("previous", "setting-aside", "restoring", "discard"):
        target = outside_folder(tmp_path, epoch=2)
        name = f".jaxbp.{case}"
        return link(out, name, target), target
    if case == "set-aside-copy":  # a resumed run's summary, set aside: a link out
        (out / "summary.json").unlink()
        target = outside_file(tmp_path, b'{"epochs": 1}')
        folder = aside(out, **{"summary.json": target})
        return folder / "summary.json", target
    if case == "set-aside-record":
        (out / "summary.json").unlink()
        target = outside_file(tmp_path, json.dumps({"epoch": 2}).encode())
        folder = aside(out, record=target, **{"summary.json": b'{"epochs": 1}'})
        return folder / "set_aside.json", target
    if case in ("hard-linked-metrics", "hard-linked-lock"):
        name = "metrics.jsonl" if case == "hard-linked-metrics" else ".jaxbp.lock"
        target = tmp_path / "elsewhere" / "shared.txt"
        target.parent.mkdir()
        os.link(out / name, target)
        return out / name, target
    raise AssertionError(case)


CASES = [
    "lock",
    "temporary",
    "checkpoint-temporary",
    "metrics",
    "checkpoint",
    "summary",
    "curves",
    "diagnostics",
    "previous",
    "setting-aside",
    "restoring",
    "discard",
    "set-aside-copy",
    "set-aside-record",
    "hard-linked-metrics",
    "hard-linked-lock",
]


@pytest.mark.parametrize("how", ["--resume", "--overwrite"])
@pytest.mark.parametrize("case", CASES)
def test_a_link_out_of_the_run_folder_is_refused_and_not_followed(
    finished, tmp_path, capsys, case, how
):
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    planted, target = plant(case, out, tmp_path)
    before = snapshot(target)
    code, _, err = run_train(capsys, *XOR, "--epochs", "3", "--out", str(out), how)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(planted) in err and ("Remove it" in err or "file of its own" in err), err
    assert snapshot(target) == before, "the file outside the run folder changed"
    assert os.path.lexists(planted), "the planted link was moved or removed"


def test_load_run_refuses_a_set_aside_folder_that_links_out(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    target = outside_folder(tmp_path, epoch=2)
    link(out, ".jaxbp.restoring", target)
    before = snapshot(target)
    with pytest.raises(runs.RunError, match=r"\.jaxbp\.restoring is a symbolic link") as err:
        runs.load_run(out)
    assert "\n" not in str(err.value)
    assert snapshot(target) == before


def test_a_run_folder_refuses_a_fifo_where_its_log_is(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "metrics.jsonl").unlink()
    os.mkfifo(out / "metrics.jsonl")
    err = returns_within(10, lambda: runs.RunFolder.hold(out)).get("error")
    assert isinstance(err, runs.RunError), err
    assert "metrics.jsonl is a FIFO, not a regular file" in str(err)


def returns_within(seconds, call):
    """`call()`'s outcome (its value or its exception), or a failure if it blocks."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"blocked for {seconds} s (reading a FIFO)"
    return outcome


@pytest.mark.parametrize("kind", ["csv", "npz", "idx", "checkpoint", "metrics", "summary"])
def test_a_fifo_is_refused_by_every_reader_not_waited_on(finished, tmp_path, kind):
    if kind in ("metrics", "summary"):
        out = tmp_path / "run"
        shutil.copytree(finished, out)
        fifo = out / ("metrics.jsonl" if kind == "metrics" else "summary.json")
        fifo.unlink()
        call = lambda: runs.load_run(out)  # noqa: E731
    else:
        fifo = tmp_path / {"csv": "d.csv", "npz": "d.npz", "idx": "d-images-idx3-ubyte",
                           "checkpoint": "c.jaxbp"}[kind]  # fmt: skip
        if kind == "checkpoint":
            call = lambda: jaxbp.load_checkpoint(fifo, [np.zeros(2)])  # noqa: E731
        else:
            call = lambda: datasets.load_file(fifo, target="y" if kind == "csv" else None)  # noqa: E731
    os.mkfifo(fifo)
    outcome = returns_within(10, call)
    err = outcome.get("error")
    assert isinstance(err, ValueError), outcome
    assert str(fifo) in str(err) and "FIFO" in str(err) and "\n" not in str(err)
