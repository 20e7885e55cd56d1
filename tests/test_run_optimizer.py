"""Runs as data, polished (item 1): a run records its optimizer as a spec (name and every
hyperparameter, `config["optimizer_spec"]`), from which `Run.optimizer()` and
`Run.grad_path()` rebuild what it trained with, so that training continues exactly as
`jaxbp train --resume` continues it. Runs saved before specs were recorded load and
resume from their `optimizer` and `lr`; a spec this version cannot rebuild leaves the
parameters loadable and says why."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import run_train
from jaxbp._files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxbp.runs import OPTIMIZERS, RunError, RunFolder, load_run

XOR = ["--dataset", "xor", "--hidden", "4", "--batch-size", "50", "--quiet"]
LR = 0.05

REFERENCE = {  # what jaxbp train trained with before specs were recorded, written out
    "sgd": (lambda lr: optax.sgd(lr), None),
    "momentum": (lambda lr: optax.sgd(lr, momentum=0.9), None),
    "adam": (lambda lr: optax.adam(lr), None),
    "kfac": (lambda lr: optax.sgd(lr, momentum=0.9), jaxbp.KFAC()),
}


FLAGS = {
    **{name: ["--optimizer", name, "--lr", str(LR)] for name in OPTIMIZERS},
    "dp-sgd": ["--optimizer", "sgd", "--lr", str(LR), "--dp-clip", "1", "--dp-noise", "1.1"],
}
"""The runs: one per optimizer, and a DP-SGD one (its own gradient path)."""


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A run of one epoch for each of `FLAGS`, its folder by name."""
    from jaxbp.app.cli import main

    runs = {}
    for name, flags in FLAGS.items():
        out = tmp_path_factory.mktemp(name)
        assert main(["train", *XOR, *flags, "--epochs", "1", "--out", str(out)]) == 0
        runs[name] = out
    return runs


def rewrite_config(out, change):
    """Rewrite the run's checkpoint with `change(config)` as its settings, as an older or
    another writer would have saved it."""
    run = load_run(out)
    like = {"params": run.params, "opt_state": run.opt_state, "key": jax.random.key(0)}
    state, meta = load_checkpoint(out / "checkpoint.jaxbp", like)
    meta["config"] = change(dict(meta["config"]))
    save_checkpoint(out / "checkpoint.jaxbp", state, meta)


def without_spec(config):
    config.pop("optimizer_spec")
    return config


def test_the_spec_names_every_hyperparameter_the_run_used(one_epoch):
    specs = {name: load_run(out).config["optimizer_spec"] for name, out in one_epoch.items()}
    assert specs["sgd"] == {"name": "sgd", "learning_rate": LR, "momentum": None, "nesterov": False}
    assert specs["momentum"] == {**specs["sgd"], "name": "momentum", "momentum": 0.9}
    assert specs["adam"] == {
        "name": "adam",
        "learning_rate": LR,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "eps_root": 0.0,
    }
    kfac = {"damping": 0.1, "every": 10, "decay": 0.95, "kind": "mc"}
    assert specs["kfac"] == {**specs["momentum"], "name": "kfac", **kfac}
    stored = json.loads((one_epoch["adam"] / "summary.json").read_text())["config"]
    assert stored["optimizer_spec"] == specs["adam"]  # JSON, in the summary too


@pytest.mark.parametrize("name", list(REFERENCE))
def test_the_rebuilt_optimizer_updates_the_loaded_state_as_the_reference(one_epoch, name):
    run = load_run(one_epoch[name])
    make, path = REFERENCE[name]
    assert run.grad_path() == (path or "manual")
    inner = jaxbp.TrainState.of(run.opt_state).opt_state  # K-FAC: inside a TrainState
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), run.params)
    got = run.optimizer().update(grads, inner, run.params)
    want = make(LR).update(grads, inner, run.params)
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("name", list(FLAGS))
def test_training_continues_exactly_as_resume_does(one_epoch, tmp_path, name):
    """Epoch 2 from `run.optimizer()`, `run.grad_path()` and the loaded state, against
    `jaxbp train --resume` to epoch 2, bit for bit: built with the metrics `jaxbp train`
    computes (`grad_norm=True`), the epoch is the program `--resume` runs. (One with other
    metrics is another program, which XLA may fuse and round otherwise: the DP-SGD run
    then differed by an ulp with XLA:CPU's older emitters.)"""
    from jaxbp.app.cli import main

    out = tmp_path / "r"
    shutil.copytree(one_epoch[name], out)
    run = load_run(out)
    data, _ = run.dataset()
    epoch = jaxbp.make_train_epoch(
        run.optimizer(), run.network, batch_size=50, grad=run.grad_path(), grad_norm=True
    )
    key = jax.random.fold_in(jax.random.key(run.config["seed"]), 2)
    params, _, _ = epoch(run.params, run.opt_state, key, data.x_train, data.y_train)
    assert main(["train", *XOR, *FLAGS[name], "--epochs", "2", "--out", str(out), "--resume"]) == 0
    jax.tree.map(np.testing.assert_array_equal, load_run(out).params, params)


def test_the_spec_decides_over_the_table(one_epoch, tmp_path):
    """A recorded hyperparameter other than this version's default is the one used."""
    out = tmp_path / "r"
    shutil.copytree(one_epoch["momentum"], out)
    spec = {**OPTIMIZERS["momentum"].spec(LR), "momentum": 0.5, "nesterov": True}
    rewrite_config(out, lambda c: {**c, "optimizer_spec": spec})
    run = load_run(out)
    grads = jax.tree.map(jnp.ones_like, run.params)
    got = run.optimizer().update(grads, run.opt_state, run.params)
    want = optax.sgd(LR, momentum=0.5, nesterov=True).update(grads, run.opt_state, run.params)
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("name", ["adam", "kfac"])
def test_a_run_saved_before_specs_loads_and_resumes(one_epoch, tmp_path, capsys, name):
    out = tmp_path / "r"
    shutil.copytree(one_epoch[name], out)
    rewrite_config(out, without_spec)
    run = load_run(out)
    assert "optimizer_spec" not in run.config and run.opt_state is not None
    assert run.optimizer_spec == OPTIMIZERS[name].spec(LR)
    make, path = REFERENCE[name]
    assert run.grad_path() == (path or "manual")
    inner = jaxbp.TrainState.of(run.opt_state).opt_state
    grads = jax.tree.map(jnp.ones_like, run.params)
    want = make(LR).update(grads, inner, run.params)
    jax.tree.map(
        np.testing.assert_array_equal, run.optimizer().update(grads, inner, run.params), want
    )
    flags = [*XOR, "--optimizer", name, "--lr", "0.02", "--epochs", "2", "--out", str(out)]
    code, _, err = run_train(capsys, *flags, "--resume")  # --lr may change on --resume
    assert code == 0, err
    assert load_run(out).config["optimizer_spec"] == OPTIMIZERS[name].spec(0.02)


def test_a_resume_whose_recorded_hyperparameters_differ_is_refused(one_epoch, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(one_epoch["adam"], out)
    spec = {**OPTIMIZERS["adam"].spec(LR), "b2": 0.99}
    rewrite_config(out, lambda c: {**c, "optimizer_spec": spec})
    before = (out / "checkpoint.jaxbp").read_bytes()
    flags = [*XOR, "--optimizer", "adam", "--lr", str(LR), "--epochs", "2", "--out", str(out)]
    code, _, err = run_train(capsys, *flags, "--resume")
    assert code == 2 and "the settings differ from the checkpoint's (optimizer_spec:" in err
    assert "'b2': 0.99" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoint.jaxbp").read_bytes() == before


UNBUILDABLE = {
    "unknown-name": (
        lambda c: {
            **c,
            "optimizer": "lion",
            "optimizer_spec": {"name": "lion", "learning_rate": LR},
        },
        "optimizer_spec names 'lion', not one of ['adam', 'kfac', 'momentum', 'sgd']",
    ),
    "extra-hyperparameter": (
        lambda c: {**c, "optimizer_spec": {**c["optimizer_spec"], "weight_decay": 0.1}},
        "optimizer_spec holds weight_decay; 'adam' takes exactly b1, b2, eps, eps_root,",
    ),
    "missing-hyperparameter": (
        lambda c: {
            **c,
            "optimizer_spec": {k: v for k, v in c["optimizer_spec"].items() if k != "eps"},
        },
        "optimizer_spec lacks eps; 'adam' takes exactly",
    ),
    "contradicts-the-name": (
        lambda c: {**c, "optimizer": "sgd"},
        "optimizer_spec.name is 'adam' but optimizer is 'sgd'",
    ),
    "contradicts-the-lr": (
        lambda c: {**c, "lr": 0.5},
        "optimizer_spec.learning_rate is 0.05 but lr is 0.5",
    ),
    "no-optimizer-at-all": (
        lambda c: {k: v for k, v in c.items() if k not in ("optimizer", "lr", "optimizer_spec")},
        "its settings record no optimizer_spec, and optimizer None",
    ),
}


@pytest.mark.parametrize("case", list(UNBUILDABLE))
def test_a_spec_this_version_cannot_rebuild_loads_the_parameters_and_says_why(
    one_epoch, tmp_path, case
):
    change, why = UNBUILDABLE[case]
    out = tmp_path / "r"
    shutil.copytree(one_epoch["adam"], out)
    params = load_run(out).params
    rewrite_config(out, change)
    run = load_run(out)
    assert run.opt_state is None
    jax.tree.map(np.testing.assert_array_equal, run.params, params)
    for method in (run.optimizer, run.grad_path):
        with pytest.raises(RunError, match="cannot rebuild the run's optimizer") as err:
            method()
        assert why in str(err.value) and "\n" not in str(err.value)


def test_a_spec_that_breaks_its_schema_is_refused_on_read_and_write(one_epoch, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(one_epoch["adam"], out)
    bad = {**OPTIMIZERS["adam"].spec(LR), "b1": 2}
    rewrite_config(out, lambda c: {**c, "optimizer_spec": bad})
    with pytest.raises(CheckpointError, match=r"config\.optimizer_spec\.b1 is 2, not a finite"):
        load_run(out)
    folder = RunFolder.hold(tmp_path / "w")
    try:
        folder.start_new()
        settings = {**load_run(one_epoch["adam"]).config, "optimizer_spec": bad}
        with pytest.raises(RunError, match=r"refusing to write a checkpoint meta whose config"):
            folder.save(1, {"x": np.zeros(2)}, settings)
    finally:
        folder.close()


def test_grad_path_of_a_dp_sgd_run(one_epoch):
    """A DP-SGD run continues on its path: clipped and noised per-example gradients, its
    batches Poisson-sampled (jaxbp train's default)."""
    assert load_run(one_epoch["dp-sgd"]).grad_path() == jaxbp.DPSGD(1.0, 1.1, "poisson")
    assert load_run(one_epoch["sgd"]).grad_path() == "manual"


def test_a_run_prints_in_one_short_line(one_epoch):
    text = repr(load_run(one_epoch["kfac"]))
    assert text.startswith("Run(") and "epoch=1, finished" in text and "'kfac 0.05'" in text
    assert "Config(activation='tanh', loss='binary_cross_entropy'" in text
    assert len(text) < 300 and " at 0x" not in text and "\n" not in text
