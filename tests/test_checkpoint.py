"""`jaxbp.save_checkpoint` / `jaxbp.load_checkpoint`: the saved tree's key paths are
checked against the template (a file written before they were stored still loads),
bfloat16 and the other ml_dtypes leaves round-trip, and a `path` that is a folder or lies
in a missing folder is refused up front while a failing write stays an `OSError`."""

import errno
import json
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import archive, sealed
from jaxbp._files.checkpoint import read_arrays, read_meta, temporary_files


def layers():
    """Two dense layers, `[{"W", "b"}, {"W", "b"}]`, with distinct values."""
    return [
        {"W": jnp.arange(6.0).reshape(2, 3), "b": jnp.arange(3.0) + 10},
        {"W": jnp.arange(3.0).reshape(3, 1) + 20, "b": jnp.array([30.0])},
    ]


def assert_same(tree, other):
    assert jax.tree.structure(tree) == jax.tree.structure(other)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(other), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_round_trip_into_the_same_structure(tmp_path):
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, layers(), {"epoch": 3})
    like = jax.tree.map(jnp.zeros_like, layers())
    back, meta = jaxbp.load_checkpoint(path, like)
    assert meta == {"epoch": 3} and read_meta(path) == {"epoch": 3}
    assert_same(back, layers())


# (template, index and key paths of the first difference, leaves in the template)
OTHER_STRUCTURES = {
    "other-names-same-shapes": (
        {
            "layer_norm": {"bias": jnp.zeros((2, 3)), "gain": jnp.zeros(3)},
            "out": [jnp.zeros((3, 1)), jnp.zeros(1)],
        },
        0,
        "[0]['W']",
        "['layer_norm']['bias']",
        4,
    ),
    "one-name-differs-later": (
        [
            {"W": jnp.zeros((2, 3)), "c": jnp.zeros(3)},
            {"W": jnp.zeros((3, 1)), "b": jnp.zeros(1)},
        ],
        1,
        "[0]['b']",
        "[0]['c']",
        4,
    ),
    "template-has-more": (
        [*layers(), {"W": jnp.zeros((1, 1)), "b": jnp.zeros(1)}],
        4,
        "no leaf",
        "[2]['W']",
        6,
    ),
    "template-has-fewer": (layers()[:1], 2, "[1]['W']", "no leaf", 2),
}


@pytest.mark.parametrize("case", list(OTHER_STRUCTURES))
def test_a_template_of_another_structure_is_refused(tmp_path, case):
    like, i, saved, there, n_like = OTHER_STRUCTURES[case]
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, layers())
    expected = (
        f"{path}: written for another structure: leaf {i} is {saved} in the file but "
        f"{there} in the template (like) (4 leaves saved, {n_like} in like). Pass a like "
        "built as the saved tree was. Refusing to load it."
    )
    with pytest.raises(jaxbp.CheckpointError, match=f"^{re.escape(expected)}$"):
        jaxbp.load_checkpoint(path, like)


def test_a_tuple_template_loads_a_saved_list(tmp_path):
    """A list and a tuple both flatten to the key paths [i]: the same structure on disk,
    loaded into the template's container."""
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, layers())
    back, _ = jaxbp.load_checkpoint(path, tuple(jax.tree.map(jnp.zeros_like, layers())))
    assert isinstance(back, tuple)
    assert_same(back, tuple(layers()))


class StateA(NamedTuple):
    count: jax.Array
    mu: jax.Array


class StateB(NamedTuple):  # another class name, the same fields
    count: jax.Array
    mu: jax.Array


def test_key_paths_name_fields_not_classes(tmp_path):
    """An optax state class renamed between versions still loads; its fields are checked."""
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, {"s": StateA(jnp.array(2), jnp.ones(3))})
    back, _ = jaxbp.load_checkpoint(path, {"s": StateB(jnp.array(0), jnp.zeros(3))})
    assert isinstance(back["s"], StateB)
    assert_same(back, {"s": StateB(jnp.array(2), jnp.ones(3))})

    class Renamed(NamedTuple):
        count: jax.Array
        nu: jax.Array

    with pytest.raises(jaxbp.CheckpointError, match=r"leaf 1 is \['s'\]\.mu in the file but "):
        jaxbp.load_checkpoint(path, {"s": Renamed(jnp.array(0), jnp.zeros(3))})


def test_optax_state_and_keys_round_trip_and_another_optimizer_is_refused(tmp_path):
    params = layers()
    state = {
        "params": params,
        "opt_state": optax.adam(1e-3).init(params),
        "key": jax.random.key(5),
        "raw_key": jax.random.PRNGKey(6),
    }
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, state)
    fresh = {
        "params": jax.tree.map(jnp.zeros_like, params),
        "opt_state": optax.adam(1e-3).init(params),
        "key": jax.random.key(0),
        "raw_key": jax.random.PRNGKey(0),
    }
    back, _ = jaxbp.load_checkpoint(path, fresh)
    assert jnp.issubdtype(back["key"].dtype, jax.dtypes.prng_key)
    assert_same(jax.random.key_data(back["key"]), jax.random.key_data(state["key"]))
    del back["key"], state["key"]
    assert_same(back, state)
    sgd = {**fresh, "opt_state": optax.sgd(1e-3, momentum=0.9).init(params)}
    with pytest.raises(jaxbp.CheckpointError, match=r"leaf 1 is \['opt_state'\]\[0\]\.count"):
        jaxbp.load_checkpoint(path, sgd)


def test_a_file_written_before_key_paths_were_stored_still_loads(tmp_path):
    """The old layout (leaves and meta only) loads with shape and dtype checks only."""
    path = tmp_path / "old.jaxbp"
    leaves = [np.arange(6.0).reshape(2, 3), np.arange(3.0)]
    path.write_bytes(sealed(archive(leaves, {"epoch": 1})))
    back, meta = jaxbp.load_checkpoint(path, {"W": np.zeros((2, 3)), "b": np.zeros(3)})
    assert meta == {"epoch": 1}
    assert_same(back, {"W": leaves[0], "b": leaves[1]})
    with pytest.raises(jaxbp.CheckpointError, match=r"array 1 is float64\[3\] but the template"):
        jaxbp.load_checkpoint(path, {"W": np.zeros((2, 3)), "b": np.zeros(4)})


EXTENDED = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4"]


def test_bfloat16_and_other_ml_dtypes_round_trip(tmp_path):
    values = np.array([[0.5, 1.5, 2.0], [3.0, 0.0, 4.0]])  # uint4 holds them
    tree = {name: jnp.asarray(values, getattr(jnp, name)) for name in EXTENDED}
    tree["numpy_bf16"] = np.asarray(values, jnp.bfloat16)
    tree["f32"] = jnp.asarray(values, jnp.float32)
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, tree, {"epoch": 1})
    back, meta = jaxbp.load_checkpoint(path, jax.tree.map(lambda a: a * 0, tree))
    assert meta == {"epoch": 1}
    assert_same(back, tree)
    assert back["bfloat16"].dtype == jnp.bfloat16 and isinstance(back["bfloat16"], jax.Array)
    assert isinstance(back["numpy_bf16"], np.ndarray)
    assert np.asarray(back["bfloat16"], np.float32).tolist() == values.tolist()
    assert read_arrays(path)[1][0].dtype == np.dtype(jnp.bfloat16)
    with pytest.raises(
        jaxbp.CheckpointError, match=r"array 0 is bfloat16\[2, 3\] but the template expects"
    ):
        jaxbp.load_checkpoint(path, {**tree, "bfloat16": jnp.zeros((2, 3), jnp.float32)})


def test_a_leaf_of_text_is_refused_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "c.jaxbp"
    expected = (
        "tree leaf ['names'] has dtype <U1; a checkpoint stores numeric arrays (bool, "
        "integer, float, complex, bfloat16, float8, int4) and PRNG keys only. Convert it to "
        "one, such as float32, or leave it out of tree."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        jaxbp.save_checkpoint(path, {"names": np.array(["a", "b"])})
    assert not path.exists() and not temporary_files(path)


DAMAGED_TREE = {
    "not-json": (b"{oops", "its tree is not JSON"),
    "a-list": (json.dumps([]).encode(), "its tree is a JSON list, not an object"),
    "paths-short": (
        json.dumps({"paths": ["['a']"], "dtypes": {}}).encode(),
        "its tree entry does not list the paths of its 2 arrays",
    ),
    "no-dtypes": (
        json.dumps({"paths": ["['a']", "['b']"]}).encode(),
        "its tree entry has no dtypes object",
    ),
    "unknown-dtype": (
        json.dumps({"paths": ["['a']", "['b']"], "dtypes": {"0": "object"}}).encode(),
        "its tree entry gives array '0' the dtype 'object'",
    ),
    "dtype-index-out-of-range": (
        json.dumps({"paths": ["['a']", "['b']"], "dtypes": {"2": "bfloat16"}}).encode(),
        "its tree entry gives array '2' the dtype 'bfloat16'",
    ),
    "bits-of-another-width": (
        json.dumps({"paths": ["['a']", "['b']"], "dtypes": {"0": "bfloat16"}}).encode(),
        "array 0 (bfloat16) is stored as float64, not its raw bits",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_TREE))
def test_a_damaged_tree_entry_is_refused(tmp_path, case):
    raw, fragment = DAMAGED_TREE[case]
    path = tmp_path / "c.jaxbp"
    tree = np.frombuffer(raw, np.uint8)
    path.write_bytes(sealed(archive([np.zeros(2), np.zeros(3)], {}, tree=tree)))
    with pytest.raises(jaxbp.CheckpointError, match=re.escape(f"{path}: {fragment}")):
        jaxbp.load_checkpoint(path, {"a": np.zeros(2), "b": np.zeros(3)})


def test_a_path_in_a_missing_folder_is_refused_up_front(tmp_path):
    path = tmp_path / "nowhere" / "c.jaxbp"
    expected = (
        f"path must be in an existing folder; got {path}, whose folder {path.parent} does "
        "not exist. Create the folder first (Path(path).parent.mkdir(parents=True))."
    )
    with pytest.raises(jaxbp.CheckpointError, match=f"^{re.escape(expected)}$"):
        jaxbp.save_checkpoint(path, layers())
    assert not path.parent.exists()


def test_a_path_under_a_file_is_refused_up_front(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    path = tmp_path / "notes.txt" / "c.jaxbp"
    with pytest.raises(jaxbp.CheckpointError, match=r"notes\.txt is not a folder\. Create"):
        jaxbp.save_checkpoint(path, layers())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_path_that_is_a_folder_is_refused_up_front(tmp_path):
    expected = (
        f"path must name a file, not a folder; got {tmp_path}, an existing folder. Pass a "
        f"file in it, such as {tmp_path / 'checkpoint.jaxbp'}."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$") as info:
        jaxbp.save_checkpoint(tmp_path, layers())
    assert isinstance(info.value, jaxbp.CheckpointError)
    assert list(tmp_path.iterdir()) == [], "nothing is written"


def test_a_failing_write_stays_an_oserror_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.jaxbp"
    jaxbp.save_checkpoint(path, layers(), {"epoch": 1})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("jaxbp._files.checkpoint.os.fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        jaxbp.save_checkpoint(path, layers(), {"epoch": 2})
    assert not isinstance(info.value, jaxbp.CheckpointError)
    monkeypatch.undo()
    assert path.read_bytes() == before and not temporary_files(path)
    assert read_meta(path) == {"epoch": 1}


def test_a_big_endian_leaf_loads_as_its_values(tmp_path):
    """Another writer's big-endian array is the same numbers: read in native order."""
    from conftest import archive, sealed

    path = tmp_path / "c.jaxbp"
    w = np.arange(6.0).reshape(2, 3)
    path.write_bytes(sealed(archive([w.astype(">f8")], {"epoch": 1})))
    back, _ = jaxbp.load_checkpoint(path, [np.zeros((2, 3))])
    assert back[0].dtype == np.float64 and back[0].dtype.isnative
    np.testing.assert_array_equal(back[0], w)
