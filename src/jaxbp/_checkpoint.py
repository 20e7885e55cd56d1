"""Checkpoints of any pytree: one file, written atomically, refused when damaged.

Layout: the magic `b"JAXBPCK1"`, the 32-byte SHA-256 of the payload, then the payload,
an `.npz` archive holding every leaf of the saved pytree (`leaf_0`, `leaf_1`, ...) and a
JSON `meta` entry (epoch, configuration, anything JSON). Loading needs a template pytree
of the same structure (`like`), as optimizer states are NamedTuples that a file cannot
rebuild by itself; shapes and dtypes are checked against it leaf by leaf. PRNG keys are
stored as their raw key data. Nothing is ever unpickled.

A file whose checksum is right can still be wrong (a buggy writer, another program's
archive): every such content problem is a `CheckpointError` too, never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "load_checkpoint", "read_meta", "save_checkpoint"]

MAGIC = b"JAXBPCK1"
NUMERIC_KINDS = "biufc"
"""numpy dtype kinds a leaf may have: bool, signed, unsigned, float, complex."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the template."""


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def temporary_files(path: str | Path) -> list[Path]:
    """Temporary files that `save_checkpoint(path, ...)` leaves behind only when killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def save_checkpoint(path: str | Path, tree: Any, meta: dict[str, Any] | None = None) -> None:
    """Write `tree` (any pytree of arrays and PRNG keys) and `meta` (JSON) to `path`.

    The file appears whole or not at all: it is written to a temporary file in the same
    folder (`.NAME.*.tmp`), flushed and fsynced, then renamed over `path`, and the folder is
    fsynced. A failing write (disk full, file-size limit) leaves the old file as it was.
    Leaves must hold numbers (bool, integer, float, complex) or be PRNG keys.
    """
    path = Path(path)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of JSON values; got {type(meta).__name__}.")
    try:
        meta_text = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must hold JSON values only: {err}.") from None
    leaves = []
    for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(
                f"tree leaf {jax.tree_util.keystr(leaf_path) or '(root)'} has dtype "
                f"{arr.dtype}; a checkpoint stores numeric arrays and PRNG keys only."
            )
        leaves.append(arr)
    buf = io.BytesIO()
    arrays = {f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    np.savez(buf, meta=np.frombuffer(meta_text.encode(), np.uint8), **arrays)
    payload = buf.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}; refusing to load it.")


def _read(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The meta and stored arrays of an intact checkpoint, or `CheckpointError`."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror}).") from None
    head = len(MAGIC) + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        raise _refuse(path, "not a jaxbp checkpoint (bad header)")
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC) : head]:
        raise _refuse(path, "checksum mismatch, the checkpoint is truncated or corrupted")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            names = set(data.files)
            raw = data["meta"] if "meta" in names else None
            n = len(names - {"meta"})
            if names - {"meta"} != {f"leaf_{i}" for i in range(n)}:
                raise _refuse(
                    path,
                    f"its arrays are {sorted(names - {'meta'})}, not leaf_0 to leaf_{n - 1}",
                )
            stored = [data[f"leaf_{i}"] for i in range(n)]
    except CheckpointError:
        raise
    except Exception as err:  # not an archive, an object array, a damaged member, ...
        raise _refuse(
            path,
            f"the checksum is right but the payload is unreadable ({type(err).__name__}: {err})",
        ) from None
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise _refuse(path, "its meta entry is missing or not JSON bytes")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise _refuse(path, f"its meta is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _refuse(path, f"its meta is a JSON {type(meta).__name__}, not an object")
    for i, arr in enumerate(stored):
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise _refuse(path, f"array {i} has dtype {arr.dtype}, not numbers")
    return meta, stored


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON meta of an intact checkpoint (its integrity checked), without a template."""
    return _read(Path(path))[0]


def read_arrays(path: str | Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """`(meta, leaves)` of an intact checkpoint, the leaves as stored (keys as key data)."""
    return _read(Path(path))


def load_checkpoint(path: str | Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like`; return `(tree, meta)`.

    `like` is a pytree of the same structure, shapes and dtypes as the saved one (its
    values are not used); a leaf comes back as a jax array where `like` has one (a PRNG
    key where `like` has a key) and as a numpy array otherwise. Raises `CheckpointError`
    naming the file and what is wrong with it: missing, truncated, corrupted, or written
    for another structure.
    """
    path = Path(path)
    meta, stored = _read(path)
    template, treedef = jax.tree.flatten(like)
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
