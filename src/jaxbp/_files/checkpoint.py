"""Checkpoints of any pytree: one file, written atomically, refused when damaged.

Layout: the magic `b"JAXBPCK1"`, the 32-byte SHA-256 of the payload, then the payload,
an `.npz` archive holding every leaf of the saved pytree (`leaf_0`, `leaf_1`, ...), a
JSON `meta` entry (epoch, configuration, anything JSON) and a JSON `tree` entry: the key
path of each leaf (`jax.tree_util.keystr`, e.g. `['opt_state'][0].mu[0]['W']`) and the
dtype names of leaves numpy cannot store itself (bfloat16, float8, int4: ml_dtypes, kept
as their raw bits). Loading needs a template pytree of the same structure (`like`), as
optimizer states are NamedTuples that a file cannot rebuild by itself; its key paths,
shapes and dtypes are checked against the file leaf by leaf (key paths, not class names,
so an optax version that renames a state class still loads). Files written before the
`tree` entry existed load with shape and dtype checks only. PRNG keys are stored as their
raw key data. Nothing is ever unpickled.

A file whose checksum is right can still be wrong (a buggy writer, another program's
archive): every such content problem is a `CheckpointError` too, never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._files.guard import load_json, open_regular
from jaxbp._files.npz import ArchiveError, read_npz

__all__ = ["CheckpointError", "load_checkpoint", "read_meta", "save_checkpoint"]

MAGIC = b"JAXBPCK1"
NUMERIC_KINDS = "biufc"
"""numpy dtype kinds a leaf may have: bool, signed, unsigned, float, complex."""
EXTENDED = {
    name: np.dtype(getattr(jnp, name))
    for name in (
        "bfloat16",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e4m3b11fnuz",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "int2",
        "int4",
        "uint2",
        "uint4",
    )
    if hasattr(jnp, name)
}
"""The ml_dtypes dtypes JAX uses that `.npy` cannot describe, by name: stored as the
unsigned integers of their width (their raw bits) with the name in the `tree` entry."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the template."""


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _extended_name(dtype: np.dtype) -> str | None:
    return next((name for name, d in EXTENDED.items() if d == dtype), None)


def _bits(dtype: np.dtype) -> np.dtype:
    """The unsigned integer dtype an extended dtype's raw bits are stored as."""
    return np.dtype(f"<u{dtype.itemsize}")


def _storable(dtype: np.dtype) -> bool:
    """Whether `.npy` describes `dtype` exactly (numbers only; not object or text)."""
    if dtype.kind not in NUMERIC_KINDS:
        return False
    try:
        return np.dtype(dtype.str) == dtype
    except TypeError:  # such as float8_e5m2, whose '<f1' numpy cannot read back
        return False


def _shown(path_text: str) -> str:
    """A leaf's key path as messages show it: the root leaf's empty path as "(root)"."""
    return path_text or "(root)"


def _keystr(key_path: tuple[Any, ...]) -> str:
    return _shown(jax.tree_util.keystr(key_path))


def temporary_files(path: str | Path) -> list[Path]:
    """Temporary files that `save_checkpoint(path, ...)` leaves behind only when killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


PROC_STATUS = "/proc/self/status"
"""Where Linux shows a process's umask (its `Umask:` line)."""


def umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux
    4.7 and later: the `Umask:` line of `/proc/self/status`); elsewhere set to 0o077 and
    put back at once (`os.umask`): a file another thread creates in between is the more
    private for it, never less."""
    try:
        with open(PROC_STATUS, "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def new_file_mode(path: str | Path) -> int:
    """The permissions `open(path, "wb")` leaves `path` with: those of the regular file
    already there (its owner chose them), else `0o666` less the umask."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return st.st_mode & 0o777
    return 0o666 & ~umask()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` whole or not at all: a temporary file in the same folder
    (`.NAME.*.tmp`, see `temporary_files`), flushed and fsynced, renamed over `path`, and
    the folder fsynced so that the rename itself survives a crash. The file gets the
    permissions `open` would give it (`new_file_mode`: the umask's, or those of the file it
    replaces), not the temporary's 0600. A failing write raises `OSError` and leaves the
    old file as it was (and no temporary)."""
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where a file has no such bits
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename stands
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, tree: Any, meta: dict[str, Any] | None = None) -> None:
    """Write `tree` (any pytree of arrays and PRNG keys) and `meta` (JSON) to `path`.

    The file appears whole or not at all: it is written to a temporary file in the same
    folder (`.NAME.*.tmp`), flushed and fsynced, then renamed over `path`, and the folder is
    fsynced; it gets the permissions `open` would give it (the umask's, or those of the
    file it replaces). Leaves must hold numbers (bool, integer, float, complex, and the ml_dtypes
    JAX uses: bfloat16, float8, int4, ...) or be PRNG keys; the key path of each leaf is
    stored, so `load_checkpoint` refuses a template of another structure.

    Errors: a `path` that is a folder or whose folder does not exist raises
    `CheckpointError` before anything is written; a bad `tree` or `meta` raises
    `TypeError`; a failing write (disk full, file-size limit, no permission) raises
    `OSError` and leaves the old file as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"path must name a file, not a folder; got {path}, an existing folder. Pass a "
            f"file in it, such as {path / 'checkpoint.jaxbp'}."
        )
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise CheckpointError(
            f"path must be in an existing folder; got {path}, whose folder {path.parent} "
            f"{what}. Create the folder first (Path(path).parent.mkdir(parents=True))."
        )
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of JSON values; got {type(meta).__name__}.")
    try:
        meta_text = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must hold JSON values only: {err}.") from None
    leaves, paths, dtypes = [], [], {}
    for i, (leaf_path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(tree)):
        arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        name = _extended_name(arr.dtype)
        if name is not None:
            dtypes[str(i)] = name
            arr = arr.view(_bits(arr.dtype))
        elif not _storable(arr.dtype):
            raise TypeError(
                f"tree leaf {_keystr(leaf_path)} has dtype {arr.dtype}; a checkpoint stores "
                "numeric arrays (bool, integer, float, complex, bfloat16, float8, int4) and "
                "PRNG keys only. Convert it to one, such as float32, or leave it out of tree."
            )
        leaves.append(arr)
        paths.append(jax.tree_util.keystr(leaf_path))
    tree_text = json.dumps({"paths": paths, "dtypes": dtypes}, sort_keys=True)
    buf = io.BytesIO()
    arrays = {f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    np.savez(
        buf,
        meta=np.frombuffer(meta_text.encode(), np.uint8),
        tree=np.frombuffer(tree_text.encode(), np.uint8),
        **arrays,
    )
    payload = buf.getvalue()
    write_atomic(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}; refusing to load it.")


def _json_entry(path: Path, name: str, raw: np.ndarray | None) -> Any:
    """The JSON object of the archive's `name` entry (uint8 bytes), or `CheckpointError`."""
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise _refuse(path, f"its {name} entry is missing or not JSON bytes")
    try:
        value = load_json(raw.tobytes())
    except ValueError as err:
        raise _refuse(path, f"its {name} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise _refuse(path, f"its {name} is a JSON {type(value).__name__}, not an object")
    return value


def _value(value: Any) -> str:
    """A value read from a file, as a message shows it (at most 60 characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _layout(path: Path, layout: dict[str, Any], stored: list[np.ndarray]) -> list[str]:
    """Check the `tree` entry against the stored arrays, turn the arrays of extended
    dtypes back from their raw bits (in place), and return the leaves' key paths."""
    paths, dtypes = layout.get("paths"), layout.get("dtypes")
    if not (
        isinstance(paths, list)
        and len(paths) == len(stored)
        and all(isinstance(p, str) for p in paths)
    ):
        raise _refuse(path, f"its tree entry does not list the paths of its {len(stored)} arrays")
    if not isinstance(dtypes, dict):
        raise _refuse(path, "its tree entry has no dtypes object")
    for index, name in dtypes.items():
        i = int(index) if re.fullmatch(r"[0-9]{1,9}", index) else -1
        if not 0 <= i < len(stored) or not isinstance(name, str) or name not in EXTENDED:
            raise _refuse(
                path, f"its tree entry gives array {_value(index)} the dtype {_value(name)}"
            )
        if stored[i].dtype != _bits(EXTENDED[name]):
            raise _refuse(
                path, f"array {i} ({name}) is stored as {stored[i].dtype}, not its raw bits"
            )
        stored[i] = stored[i].view(EXTENDED[name])
    return paths


def _read(path: Path) -> tuple[dict[str, Any], list[np.ndarray], list[str] | None]:
    """The meta, stored arrays and leaf key paths (`None` in a file written before they
    were stored) of an intact checkpoint, or `CheckpointError`."""
    try:
        with open_regular(path) as f:
            blob = f.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror}).") from None
    head = len(MAGIC) + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        raise _refuse(path, "not a jaxbp checkpoint (bad header)")
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC) : head]:
        raise _refuse(path, "checksum mismatch, the checkpoint is truncated or corrupted")
    try:
        arrays, _ = read_npz(io.BytesIO(payload))
    except ArchiveError as err:  # not an archive, an object array, a damaged member, ...
        raise _refuse(
            path, f"the checksum is right but the payload is unreadable ({err})"
        ) from None
    raw, raw_tree = arrays.pop("meta", None), arrays.pop("tree", None)
    n = len(arrays)
    if set(arrays) != {f"leaf_{i}" for i in range(n)}:
        raise _refuse(path, f"its arrays are {sorted(arrays)}, not leaf_0 to leaf_{n - 1}")
    stored = [arrays[f"leaf_{i}"] for i in range(n)]
    meta = _json_entry(path, "meta", raw)
    for i, arr in enumerate(stored):
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise _refuse(path, f"array {i} has dtype {arr.dtype}, not numbers")
    if raw_tree is None:  # written before the key paths were stored
        return meta, stored, None
    return meta, stored, _layout(path, _json_entry(path, "tree", raw_tree), stored)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON meta of an intact checkpoint, without a template and without loading its
    arrays: the checksum is checked over the file read in chunks, then only the `meta`
    entry is read (the arrays are checked when loaded: `load_checkpoint`, `read_arrays`)."""
    path = Path(path)
    head = len(MAGIC) + 32
    try:
        with open_regular(path) as f:
            header = f.read(head)
            if len(header) < head or not header.startswith(MAGIC):
                raise _refuse(path, "not a jaxbp checkpoint (bad header)")
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            if digest.digest() != header[len(MAGIC) :]:
                raise _refuse(path, "checksum mismatch, the checkpoint is truncated or corrupted")
            f.seek(head)
            try:
                arrays, _ = read_npz(f, names={"meta"})
            except ArchiveError as err:  # not an archive, a damaged member, ...
                raise _refuse(
                    path, f"the checksum is right but the payload is unreadable ({err})"
                ) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror}).") from None
    return _json_entry(path, "meta", arrays.get("meta"))


def read_arrays(path: str | Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`(meta, leaves)` of an intact checkpoint, the leaves as stored (keys as key data,
    bfloat16 and the other ml_dtypes leaves in their own dtype)."""
    meta, stored, _ = _read(Path(path))
    return meta, stored


def load_checkpoint(path: str | Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like`; return `(tree, meta)`.

    `like` is a pytree of the same structure, shapes and dtypes as the saved one (its
    values are not used); a leaf comes back as a jax array where `like` has one (a PRNG
    key where `like` has a key) and as a numpy array otherwise. Raises `CheckpointError`
    naming the file and what is wrong with it: missing, truncated, corrupted, or written
    for another structure (the first key path that differs, such as `[0]['W']` in the file
    where `like` has `['out']['W']`; a file written before key paths were stored is
    checked by its shapes and dtypes only).
    """
    path = Path(path)
    meta, stored, paths = _read(path)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    template = [leaf for _, leaf in with_paths]
    wanted = [jax.tree_util.keystr(key_path) for key_path, _ in with_paths]
    if paths is not None and paths != wanted:
        i = next(
            (i for i, (a, b) in enumerate(zip(paths, wanted, strict=False)) if a != b),
            min(len(paths), len(wanted)),
        )
        saved = _shown(paths[i]) if i < len(paths) else "no leaf"
        there = _shown(wanted[i]) if i < len(wanted) else "no leaf"
        raise CheckpointError(
            f"{path}: written for another structure: leaf {i} is {saved} in the file but "
            f"{there} in the template (like) ({len(paths)} leaves saved, {len(template)} in "
            "like). Pass a like built as the saved tree was. Refusing to load it."
        )
    if len(stored) != len(template):
        raise CheckpointError(
            f"{path}: holds {len(stored)} arrays but the template (like) has "
            f"{len(template)}; written for another structure? Refusing to load it."
        )
    leaves = []
    for i, (arr, ref) in enumerate(zip(stored, template, strict=True)):
        want = jax.random.key_data(ref) if _is_key(ref) else np.asarray(ref)
        if arr.shape != want.shape or arr.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: array {i} is {arr.dtype}{list(arr.shape)} but the template expects "
                f"{want.dtype}{list(want.shape)}; written for another structure? "
                "Refusing to load it."
            )
        if _is_key(ref):
            leaves.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(ref)))
        elif isinstance(ref, jax.Array):
            leaves.append(jnp.asarray(arr))
        else:
            leaves.append(arr)
    return jax.tree.unflatten(treedef, leaves), meta
