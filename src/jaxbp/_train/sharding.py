"""Data parallelism on JAX's own sharding: the batch split over a mesh axis, everything
else replicated, the gradient's sum over the batch reduced across devices by XLA.

Why sharded `jit` rather than `shard_map` with an explicit `psum`: the recursion of eq.
1.4 is written over the whole batch, and its only batch contractions are
`dL/dW_l = a_{l-1}^T delta_l`, `dL/db_l = sum_n delta_l` and the loss itself. With the
batch axis sharded, XLA's SPMD partitioner computes each of these as a local product
followed by one all-reduce, which is exactly the `psum` one would write by hand, without a
second, per-device version of the recursion (and of its 1/batch scaling) to keep correct.
The same code runs unchanged on CPU, GPU and TPU, on one host or many.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Array = jax.Array

__all__ = ["Mesh", "data_mesh", "data_parallel"]


class DataParallel(NamedTuple):
    """The shardings of data-parallel training over the first axis of `mesh`."""

    mesh: Mesh
    axis: str
    batch: NamedSharding
    replicated: NamedSharding

    @property
    def size(self) -> int:
        return self.mesh.shape[self.axis]

    def check_batch(self, n: int, what: str) -> None:
        """Refuse a batch that does not split evenly over the batch axis."""
        if n % self.size:
            raise ValueError(
                f"{what} ({n}) must divide evenly over the {self.size} devices of mesh axis "
                f"{self.axis!r}; use a batch size that is a multiple of {self.size}."
            )

    def constrain_batch(self, v: Array) -> Array:
        return jax.lax.with_sharding_constraint(v, self.batch)

    def replicate(self, tree: Any) -> Any:
        """`tree` constrained to be replicated on every device."""
        return jax.tree.map(lambda v: jax.lax.with_sharding_constraint(v, self.replicated), tree)


def data_parallel(mesh: Mesh) -> DataParallel:
    """Shardings for `mesh`: the batch over its first axis, parameters replicated."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "mesh must be a jax.sharding.Mesh whose first axis carries the batch, e.g. "
            f"jaxbp.data_mesh(); got {type(mesh).__name__}."
        )
    axis = mesh.axis_names[0]
    return DataParallel(
        mesh, axis, NamedSharding(mesh, PartitionSpec(axis)), NamedSharding(mesh, PartitionSpec())
    )


def data_mesh(devices: int | Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A one-axis mesh over `devices` (a count of the first ones, a list, or all of them)."""
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} available "
                f"({available[0].platform}); got {devices}."
            )
        chosen = available[:devices]
    else:
        chosen = list(devices)
    return Mesh(chosen, (axis,))
