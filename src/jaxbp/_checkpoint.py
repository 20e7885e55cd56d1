"""Checkpoints: one file, written atomically, refused when damaged.

Layout: the magic `b"JAXBPCK1"`, the 32-byte SHA-256 of the payload, then the payload,
an `.npz` archive holding every leaf of the saved pytree (`leaf_0`, `leaf_1`, ...) and a
JSON `meta` entry (epoch, configuration, anything JSON). Loading needs a template pytree
of the same structure (`like`), as optimizer states are NamedTuples that a file cannot
rebuild by itself; shapes and dtypes are checked against it leaf by leaf. PRNG keys are
stored as their raw key data.
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

MAGIC = b"JAXBPCK1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the template."""


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save_checkpoint(path: str | Path, tree: Any, meta: dict[str, Any]) -> None:
    """Write `tree` (any pytree of arrays and PRNG keys) and `meta` (JSON) to `path`.

    The file appears whole or not at all: it is written to a temporary file in the same
    folder, flushed and fsynced, then renamed over `path`.
    """
    path = Path(path)
    leaves = [
        np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        for leaf in jax.tree.leaves(tree)
    ]
    buf = io.BytesIO()
    arrays = {f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    np.savez(buf, meta=meta_bytes, **arrays)
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


def _read(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The meta and stored arrays of an intact checkpoint, or `CheckpointError`."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror}).") from None
    head = len(MAGIC) + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a jaxbp checkpoint (bad header); refusing to load it.")
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(MAGIC) : head]:
        raise CheckpointError(
            f"{path}: checksum mismatch, the checkpoint is truncated or corrupted; "
            "refusing to load it."
        )
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        stored = [data[f"leaf_{i}"] for i in range(len(data.files) - 1)]
    return meta, stored


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON meta of an intact checkpoint (its integrity checked), without a template."""
    return _read(Path(path))[0]


def load_checkpoint(path: str | Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like`; return `(tree, meta)`.

    Raises `CheckpointError` naming the file and what is wrong with it.
    """
    path = Path(path)
    meta, stored = _read(path)
    template, treedef = jax.tree.flatten(like)
    if len(stored) != len(template):
        raise CheckpointError(
            f"{path}: holds {len(stored)} arrays but the model and optimizer expect "
            f"{len(template)}; was it written with another configuration?"
        )
    leaves = []
    for i, (arr, ref) in enumerate(zip(stored, template, strict=True)):
        want = jax.random.key_data(ref) if _is_key(ref) else np.asarray(ref)
        if arr.shape != want.shape or arr.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: array {i} is {arr.dtype}{list(arr.shape)} but the model expects "
                f"{want.dtype}{list(want.shape)}; was it written with another configuration?"
            )
        if _is_key(ref):
            leaves.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(ref)))
        else:
            leaves.append(jnp.asarray(arr))
    return jax.tree.unflatten(treedef, leaves), meta
