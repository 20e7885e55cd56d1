"""Runs as data (issue 14 item 1) and the run folder's lifecycle (issue 13 class 4):
`load_run` gives back what `jaxbp train --out` wrote, a finished run is never replaced
without `--overwrite`, stale temporaries are cleaned up, and the public checkpoint
functions round-trip a user's own pytrees."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp._files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxbp.app.cli import main
from jaxbp.runs import RunError, load_run

XOR = ["train", "--dataset", "xor", "--hidden", "8", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*XOR, "--epochs", "3", "--out", str(out)]) == 0
    return out


def test_load_run_scores_what_the_summary_says(finished):
    run = load_run(finished)
    summary = json.loads((finished / "summary.json").read_text())
    assert run.summary == summary and run.epoch == 3 and run.config == summary["config"]
    assert [m["epoch"] for m in run.metrics] == [1, 2, 3]
    assert jax.tree.structure(run.opt_state) is not None and run.opt_state is not None
    data, info = run.dataset()
    kw = dict(activation=run.config["activation"], loss=run.config["loss"], task=info.task)
    scores = jaxbp.evaluate(run.params, data.x_test, data.y_test, **kw)
    assert float(scores["accuracy"]) == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert float(scores["loss"]) == pytest.approx(summary["test_loss"], rel=1e-5)
    train = jaxbp.evaluate(run.params, data.x_train, data.y_train, **kw)
    assert float(train["loss"]) == pytest.approx(summary["train_loss"], rel=1e-5)


def test_load_run_errors(tmp_path, finished):
    with pytest.raises(RunError, match=r"out_dir .*: no checkpoint\.jaxbp there"):
        load_run(tmp_path)
    shutil.copytree(finished, tmp_path / "r")
    (tmp_path / "r" / "summary.json").write_text("{oops")
    with pytest.raises(RunError, match=r"summary\.json: not readable JSON"):
        load_run(tmp_path / "r")


def test_new_run_into_a_finished_one_is_refused_unless_overwrite(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main([*XOR, "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a finished run of 3 epochs" in err
    assert "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "notes.txt").write_text("mine")  # a user's own file in the folder survives
    assert main([*XOR, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert load_run(out).epoch == 1 and len(load_run(out).metrics) == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_stale_temporaries_are_removed_and_ignored(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    stale = [out / ".checkpoint.jaxbp.k1ll3d.tmp", out / ".metrics.jsonl.4242.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert load_run(out).epoch == 3  # ignored by readers
    assert main([*XOR, "--epochs", "4", "--out", str(out), "--resume"]) == 0
    assert not any(p.exists() for p in stale)
    assert load_run(out).epoch == 4


def test_resume_of_a_finished_run_past_its_epochs_is_refused(finished, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    code = main([*XOR, "--epochs", "2", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "has trained 3 epochs, more than --epochs 2" in err


def test_public_checkpoint_round_trip(tmp_path):
    tree = {
        "w": jnp.arange(6.0).reshape(2, 3),
        "table": np.array([[1, 2], [3, 4]], np.int64),
        "flags": (np.array([True, False]), jnp.zeros((), jnp.int32)),
        "key": jax.random.key(7),
    }
    path = tmp_path / "mine.ckpt"
    save_checkpoint(path, tree, {"step": 5, "note": "ok"})
    back, meta = load_checkpoint(path, tree)
    assert meta == {"step": 5, "note": "ok"}
    assert isinstance(back["table"], np.ndarray) and isinstance(back["w"], jax.Array)
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["table"], tree["table"])
    np.testing.assert_array_equal(
        jax.random.key_data(back["key"]), jax.random.key_data(tree["key"])
    )
    save_checkpoint(path, [np.ones(2)])  # meta is optional
    assert load_checkpoint(path, [np.zeros(2)])[1] == {}
    with pytest.raises(TypeError, match=r"tree leaf \['x'\] has dtype object"):
        save_checkpoint(path, {"x": np.array([{}], dtype=object)})
    with pytest.raises(TypeError, match="meta must hold JSON values only"):
        save_checkpoint(path, [np.ones(2)], {"s": {1, 2}})
    assert load_checkpoint(path, [np.zeros(2)])[1] == {}, "a refused save leaves the file"
    with pytest.raises(CheckpointError, match="array 0 is float64\\[2\\] but the template"):
        load_checkpoint(path, [np.zeros(3)])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing", [np.zeros(2)])


def test_a_loop_of_ones_own_writes_a_run_that_load_run_reads_and_train_resumes(
    finished, tmp_path, capsys
):
    """The `jaxbp.runs` contract: a user's loop holding a `RunFolder` and saving with
    `jaxbp train`'s settings writes a folder that `load_run` reads and `--resume` continues."""
    run = load_run(finished)
    settings, data = run.config, run.dataset()[0]
    sizes = [run.params[0]["W"].shape[0], *(layer["W"].shape[1] for layer in run.params)]
    optimizer = jaxbp.runs.OPTIMIZERS[settings["optimizer"]](settings["lr"])
    key = jax.random.key(settings["seed"])
    params = jaxbp.init_mlp(jax.random.fold_in(key, 0), sizes)
    opt_state = optimizer.init(params)
    step = jaxbp.make_train_step(
        optimizer, activation=settings["activation"], loss=settings["loss"]
    )
    folder = jaxbp.runs.RunFolder.hold(tmp_path / "mine")
    try:
        folder.start_new()
        for epoch in (1, 2):
            params, opt_state, metrics = step(params, opt_state, data.x_train, data.y_train)
            folder.append({"epoch": epoch, "train_loss": float(metrics["loss"])})
            folder.save(epoch, {"params": params, "opt_state": opt_state, "key": key}, settings)
        with pytest.raises(RunError, match=r"another jaxbp train .* is writing"):
            jaxbp.runs.RunFolder.hold(tmp_path / "mine")
    finally:
        folder.close()
    mine = load_run(tmp_path / "mine")
    assert mine.epoch == 2 and [m["epoch"] for m in mine.metrics] == [1, 2]
    jax.tree.map(np.testing.assert_array_equal, mine.params, params)
    resume = [*XOR, "--epochs", "3", "--out", str(tmp_path / "mine"), "--resume"]
    assert main(resume) == 2  # its log lacks what jaxbp train logs: refused, nothing changed
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "epoch 1 lacks samples_per_s, seconds, test_accuracy" in err
    assert load_run(tmp_path / "mine").metrics == mine.metrics
    rows = [{**row, **finished_row} for row, finished_row in zip(mine.metrics, run.metrics)]
    log = "".join(json.dumps(row) + "\n" for row in rows).encode()
    jaxbp.runs.write_atomic(tmp_path / "mine" / jaxbp.runs.METRICS, log)
    assert main(resume) == 0
    assert load_run(tmp_path / "mine").epoch == 3


def test_start_new_refuses_a_folder_holding_a_run_unless_overwrite(finished, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = jaxbp.runs.RunFolder.hold(out)
    try:
        with pytest.raises(
            RunError, match=r"already holds a finished run of 3 epochs; start_new\(overwrite=True\)"
        ):
            folder.start_new()
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        folder.start_new(overwrite=True)  # set aside until the first checkpoint
    finally:
        folder.close()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # none saved: it is back


def test_a_resume_reads_the_checkpoints_arrays_once(finished, tmp_path, monkeypatch):
    """`--resume` learns the epoch from the meta entry (`saved`, checksum streamed) and
    loads the arrays once (`load`); the set-asides ask the folder, not the file again."""
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    from jaxbp._files import checkpoint as _checkpoint

    calls = {"_read": 0, "read_meta": 0}

    def counted(name):
        real = getattr(_checkpoint, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(_checkpoint, "_read", counted("_read"))
    monkeypatch.setattr(jaxbp.runs.folder, "read_meta", counted("read_meta"))
    folder = jaxbp.runs.RunFolder.hold(out)
    try:
        epoch, _ = folder.saved()
        history, torn = folder.history()
        folder.keep_epochs(history[:epoch], torn)  # sets the summary and figures aside
    finally:
        folder.close()  # no checkpoint since: they come back
    assert calls == {"_read": 0, "read_meta": 1}
    assert main([*XOR, "--epochs", "4", "--out", str(out), "--resume"]) == 0
    assert calls == {"_read": 1, "read_meta": 2} and load_run(out).epoch == 4
