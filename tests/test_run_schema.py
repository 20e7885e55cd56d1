"""Issue 22 item 2 and the run-folder items of 6: every record a run folder holds has a
schema (`jaxbp.runs.schema`), checked on read and on write.

A resume that finds a bad record refuses before it trains or touches a file (the issue's
`"seconds": null`, which used to train, discard the set-aside summary and crash);
`load_run` refuses a summary or settings that break their rules; `RunFolder` refuses to
write a record that breaks them (epoch 0 among them, which `load_run` would then
refuse). And: `RunFolder.hold` takes a `str`, `Run.dataset()` finds a relative `--data`
from any working directory, and a resumed run reports the parity figure of the
uninterrupted run.
"""

import json
import shutil

import numpy as np
import pytest

from conftest import run_train
from jaxbp import runs
from jaxbp._files.checkpoint import CheckpointError, read_arrays, read_meta
from jaxbp.runs import RunError, RunFolder, load_run, schema

XOR = ["--dataset", "xor", "--hidden", "3", "--batch-size", "50", "--quiet"]


def files(folder):
    """Every file under the folder (set-asides included), by relative path: its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".jaxbp.lock"
    }


def rows_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def write_rows(out, rows):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (out / "metrics.jsonl").write_text(text)


BAD_LINES = {
    "seconds-null": ({"seconds": None}, "seconds is null, not a finite number >= 0"),
    "seconds-text": ({"seconds": "0.5"}, 'seconds is "0.5", not a finite number'),
    "loss-nan": ({"train_loss": float("nan")}, "train_loss is NaN, not a finite number"),
    "loss-huge-int": ({"test_loss": 10**400}, "test_loss is 1000"),
    "accuracy-2": ({"test_accuracy": 2.0}, "test_accuracy is 2.0, not a finite number >= 0"),
    "speed-negative": ({"samples_per_s": -1.0}, "samples_per_s is -1.0"),
    "grad-norm-inf": ({"grad_norm": float("inf")}, "grad_norm is Infinity"),
    "per-layer-null": ({"delta_norm": [None]}, "delta_norm is [null], not a list"),
    "saturated-list": ({"saturated": 0.5}, "saturated is 0.5, not a list"),
    "epoch-true": ({"epoch": True}, "line 1 is not the record of epoch 1"),
    "epoch-float": ({"epoch": 1.0}, "line 1 is not the record of epoch 1"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_resume_refuses_a_bad_record_before_it_trains_or_touches_a_file(
    finished, tmp_path, capsys, case
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    change, fragment = BAD_LINES[case]
    rows = rows_of(out)
    rows[0] |= change
    write_rows(out, rows)
    before = files(out)
    code, _, err = run_train(capsys, *XOR, "--epochs", "4", "--out", str(out), "--resume",
                             "--diagnostics")  # fmt: skip
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert fragment in err and str(out / "metrics.jsonl") in err and "refusing" in err, err
    assert files(out) == before, "nothing may change: no training, no set-aside"
    with pytest.raises(RunError, match=r"metrics\.jsonl: line 1"):
        load_run(out)


def test_the_issues_seconds_null_keeps_the_summary_and_figures(finished, tmp_path, capsys):
    """The report of issue 22: it trained on, discarded the summary and figures, crashed."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    rows = rows_of(out)
    rows[1]["seconds"] = None
    write_rows(out, rows)
    code, _, err = run_train(capsys, *XOR, "--epochs", "4", "--out", str(out), "--resume")
    assert code == 2 and "epoch 2" in err and "seconds is null" in err, err
    for name in ("summary.json", "curves.png", "diagnostics.png"):
        assert (out / name).read_bytes() == (finished / name).read_bytes()
    assert read_meta(out / "checkpoint.jaxbp")["epoch"] == 2


def with_meta(out, **change):
    """Rewrite the run's checkpoint with its meta changed (a valid checksum around it)."""
    from conftest import archive, sealed

    meta, leaves = read_arrays(out / "checkpoint.jaxbp")
    meta = {k: v for k, v in (meta | change).items() if v is not ...}
    (out / "checkpoint.jaxbp").write_bytes(sealed(archive(leaves, meta)))


BAD_SETTINGS = {
    "lr-text": ("lr", "0.01", 'its config.lr is "0.01", not a finite number > 0'),
    "lr-huge": ("lr", 10**400, "its config.lr is 1000"),
    "seed-negative": ("seed", -1, "its config.seed is -1, not an integer from 0 to 4294967295"),
    "hidden-zero": ("hidden", [0], "its config.hidden is [0], not a list"),
    "optimizer-list": ("optimizer", ["sgd"], 'its config.optimizer is ["sgd"], not text'),
    "data-number": ("data", 3, "its config.data is 3, not null or text"),
    "fraction-one": ("test_fraction", 1.0, "its config.test_fraction is 1.0"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_load_run_and_resume_refuse_settings_that_break_their_rules(
    finished, tmp_path, capsys, case
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    name, value, fragment = BAD_SETTINGS[case]
    config = read_meta(out / "checkpoint.jaxbp")["config"]
    with_meta(out, config=config | {name: value})
    with pytest.raises(CheckpointError, match="refusing to load it") as err:
        load_run(out)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    before = files(out)
    code, _, err = run_train(capsys, *XOR, "--epochs", "4", "--out", str(out), "--resume")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert files(out) == before


PARITY_FIELDS = [
    ("max_rel_err", -1.0, "not a number (inf or NaN included) >= 0"),
    ("grad_norm", -1.0, "not a finite number >= 0"),
    ("grad_norm", "1", "not a finite number >= 0"),
]


@pytest.mark.parametrize(("field", "value", "rule"), PARITY_FIELDS)
def test_a_checkpoints_parity_record_is_checked(finished, tmp_path, field, value, rule):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    parity = read_meta(out / "checkpoint.jaxbp")["parity"]
    with_meta(out, parity=parity | {field: value})
    with pytest.raises(CheckpointError) as err:
        load_run(out)
    assert f"its parity.{field} is {json.dumps(value)}, {rule}; refusing" in str(err.value)


def test_a_checkpoint_from_before_the_parity_scale_resumes(finished, tmp_path, capsys):
    """A checkpoint whose parity record has no `grad_norm` (written before it did) resumes,
    and judges the trained network on its own gradient's scale: 0, which it carries on."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    parity = read_meta(out / "checkpoint.jaxbp")["parity"]
    assert parity["grad_norm"] > 0
    with_meta(out, parity={k: v for k, v in parity.items() if k != "grad_norm"})
    code, out_, err = run_train(capsys, *XOR[:-1], "--epochs", "3", "--out", str(out), "--resume")
    assert code == 0 and "at initialisation, from the checkpoint" in out_, err
    assert read_meta(out / "checkpoint.jaxbp")["parity"]["grad_norm"] == 0.0


BAD_SUMMARIES = {
    "not-an-object": ([1, 2], "the record is a list, not an object"),
    "epochs-text": ({"epochs": "2"}, 'epochs is "2", not a positive integer'),
    "epochs-missing": ({"seconds": 1.0}, "epochs is missing"),
    "seconds-null": ({"epochs": 2, "seconds": None}, "seconds is null"),
    "accuracy-nan": ({"epochs": 2, "test_accuracy": float("nan")}, "test_accuracy is NaN"),
    "dp-list": ({"epochs": 2, "dp": []}, "dp is a list, not null or an object"),
    "config-text": ({"epochs": 2, "config": "x"}, "config is text, not an object"),
    "deep": ("[" * 5000 + "]" * 5000, "nested 5000 levels deep"),
}


@pytest.mark.parametrize("case", list(BAD_SUMMARIES))
def test_load_run_refuses_a_summary_that_breaks_its_rules(finished, tmp_path, case):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    summary, fragment = BAD_SUMMARIES[case]
    text = summary if isinstance(summary, str) else json.dumps(summary)
    (out / "summary.json").write_text(text)
    with pytest.raises(RunError, match=r"summary\.json: ") as err:
        load_run(out)
    assert fragment in str(err.value) and "\n" not in str(err.value), err.value


def test_a_run_folder_refuses_to_write_a_record_that_breaks_its_rules(tmp_path):
    out = tmp_path / "mine"
    folder = RunFolder.hold(out)
    try:
        folder.start_new()
        with pytest.raises(RunError, match=r"metrics line whose seconds is NaN, not a finite"):
            folder.append({"epoch": 1, "seconds": float("nan")})
        with pytest.raises(RunError, match=r"metrics line whose epoch is 0, not a positive"):
            folder.append({"epoch": 0})
        assert (out / "metrics.jsonl").read_bytes() == b"", "nothing may be logged"
        with pytest.raises(RunError, match=r"checkpoint meta whose epoch is 0, not a positive"):
            folder.save(0, {"w": np.zeros(2)}, {})  # load_run would refuse the folder
        with pytest.raises(RunError, match=r"checkpoint meta whose config\.lr is -1"):
            folder.save(1, {"w": np.zeros(2)}, {"lr": -1})
        assert not (out / "checkpoint.jaxbp").exists(), "nothing may be saved"
        with pytest.raises(RunError, match=r"summary whose epochs is 0, not a positive integer"):
            folder.write_summary({"epochs": 0})
        assert not (out / "summary.json").exists()
        folder.append({"epoch": 1, "seconds": 0.5, "mine": [1, "any JSON"]})
        folder.save(1, {"w": np.zeros(2)}, {"lr": 0.1})
        folder.write_summary({"epochs": 1, "mine": None})
    finally:
        folder.close()
    assert runs.read_metrics(out / "metrics.jsonl")[0][0]["mine"] == [1, "any JSON"]


def test_the_schema_names_every_field_jaxbp_train_writes(finished):
    """A record `jaxbp train` writes keeps the schema, field by field, with no field the
    schema does not know (so each one's type and range is checked)."""
    rows = rows_of(finished)
    summary = json.loads((finished / "summary.json").read_text())
    meta = read_meta(finished / "checkpoint.jaxbp")
    for record, rules in [
        *((row, schema.METRICS_LINE) for row in rows),
        (summary, schema.SUMMARY),
        (meta, schema.META),
        (meta["config"], schema.CONFIG),
        (meta["parity"], schema.PARITY),
    ]:
        assert schema.problem(record, rules) is None
        assert set(record) <= set(rules), set(record) - set(rules)


def test_hold_takes_a_str_path(tmp_path):
    folder = RunFolder.hold(str(tmp_path / "mine"))
    try:
        folder.start_new()
        folder.append({"epoch": 1})
        assert folder.history() == ([{"epoch": 1}], False)
    finally:
        folder.close()


def test_run_dataset_finds_a_relative_data_file_from_another_folder(tmp_path, capsys, monkeypatch):
    trained, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    trained.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    lines = ["a,b,y", *(f"{a:.6f},{b:.6f},{int(a * b > 0)}" for a, b in x)]
    (trained / "data.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(trained)
    data = ["--data", "data.csv", "--target", "y", "--hidden", "3", "--batch-size", "16"]
    code, _, err = run_train(capsys, *data, "--epochs", "1", "--out", "run", "--quiet")
    assert code == 0, err
    monkeypatch.chdir(elsewhere)
    run = load_run(trained / "run")
    assert run.config["data"] == str(trained / "data.csv")
    split, info = run.dataset()
    assert split.x_train.shape[1] == 2 and info.task == "classification"
    monkeypatch.chdir(trained)  # --resume from where it was trained still matches
    code, _, err = run_train(capsys, *data, "--epochs", "2", "--out", "run", "--quiet", "--resume")
    assert code == 0, err


PARITY = ("parity_max_rel_err", "parity_atol", "parity_max_scaled_err")


def test_a_resumed_run_reports_the_parity_figure_of_the_uninterrupted_run(tmp_path, capsys):
    """The figure is taken at initialisation; a run resumed from another run's checkpoint
    (a copied folder) reports that one, not one taken where it resumed."""
    first, resumed, whole = tmp_path / "first", tmp_path / "resumed", tmp_path / "whole"
    assert run_train(capsys, *XOR, "--epochs", "1", "--out", str(first))[0] == 0
    shutil.copytree(first, resumed)
    code, out, _ = run_train(capsys, *XOR[:-1], "--epochs", "3", "--out", str(resumed), "--resume")
    assert code == 0 and "at initialisation, from the checkpoint" in out
    assert run_train(capsys, *XOR, "--epochs", "3", "--out", str(whole))[0] == 0
    meta = {p: read_meta(p / "checkpoint.jaxbp") for p in (first, resumed, whole)}
    assert meta[first]["parity"] == meta[resumed]["parity"] == meta[whole]["parity"]
    summary = {p: json.loads((p / "summary.json").read_text()) for p in (resumed, whole)}
    assert [summary[resumed][k] for k in PARITY] == [summary[whole][k] for k in PARITY]


def test_a_failure_after_training_loses_no_set_aside_file(finished, tmp_path, capsys, monkeypatch):
    """A resume with no epoch left sets the summary and figures aside and writes them
    again; a failure after that (here: drawing the figures) gives back what it set aside,
    and a later resume writes the summary again."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {name: (out / name).read_bytes() for name in ("curves.png", "diagnostics.png")}

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "curves.png"))

    monkeypatch.setattr("jaxbp.app.train._figures", fails)
    code, _, err = run_train(capsys, *XOR, "--epochs", "2", "--out", str(out), "--resume",
                             "--diagnostics")  # fmt: skip
    assert code == 2 and "No space left" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert not list(out.glob(".jaxbp.*/")), "no set-aside folder is left behind"
    monkeypatch.undo()
    code, _, err = run_train(capsys, *XOR, "--epochs", "3", "--out", str(out), "--resume")
    assert code == 0, err
    assert load_run(out).summary["epochs"] == 3
