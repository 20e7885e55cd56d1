"""Run by tests/test_sharding.py in subprocesses (XLA_FLAGS and jax.distributed must be set
before JAX starts, so this cannot run inside the pytest process).

    python sharded_worker.py virtual OUT.json            # 1 vs 4 virtual CPU devices
    python sharded_worker.py process PID PORT OUT.json   # one of two processes, 1 device each
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import jaxbp

KW = dict(activation="tanh", loss="cross_entropy")
SIZES, BATCH, STEPS = [8, 16, 16, 3], 32, 6


def data():
    x = jax.random.normal(jax.random.key(1), (STEPS * BATCH, SIZES[0]))
    y = jax.random.randint(jax.random.key(2), (STEPS * BATCH,), 0, SIZES[-1])
    return np.asarray(x), np.asarray(y)


def train_steps(mesh, grad, batch=lambda v: v, norm=None, dropout=0.0):
    """STEPS steps; with batch norm the running averages come back too (after params)."""
    optimizer = optax.sgd(0.1, momentum=0.9)
    config = jaxbp.Config(**KW, norm=norm, dropout=dropout)
    params = jaxbp.init_mlp(jax.random.key(0), SIZES, norm=norm)
    state = jaxbp.init_train_state(optimizer, params, config)
    step = jaxbp.make_train_step(optimizer, config, grad=grad, mesh=mesh)
    x, y = data()
    for i in range(STEPS):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        key = jax.random.key(10 + i) if dropout else None
        params, state, _ = step(params, state, batch(x[rows]), batch(y[rows]), key=key)
    stats = jaxbp.TrainState.of(state).stats
    return [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves((params, stats))]


def train_epoch(mesh, grad):
    optimizer = optax.adam(1e-2)
    params = jaxbp.init_mlp(jax.random.key(0), SIZES)
    epoch = jaxbp.make_train_epoch(optimizer, batch_size=BATCH, grad=grad, mesh=mesh, **KW)
    params, _, _ = epoch(params, optimizer.init(params), jax.random.key(3), *data())
    return [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(params)]


def max_rel(a, b):
    return max(float(np.linalg.norm(u - v) / np.linalg.norm(v)) for u, v in zip(a, b))


def global_rel(a, b):
    """||a - b|| / ||b|| over all leaves at once: the bias before a batch norm gets an
    exactly-zero gradient, so that leaf holds rounding noise alone, of no scale of its own."""
    diff = np.sqrt(sum(float(np.sum(np.square(u - v))) for u, v in zip(a, b)))
    return diff / np.sqrt(sum(float(np.sum(np.square(v))) for v in b))


def virtual(out):
    assert len(jax.devices()) == 4, jax.devices()
    result = {}
    for grad in ("manual", "autodiff"):
        one, four = jaxbp.data_mesh(1), jaxbp.data_mesh(4)
        result[f"step-{grad}"] = max_rel(train_steps(four, grad), train_steps(one, grad))
        result[f"epoch-{grad}"] = max_rel(train_epoch(four, grad), train_epoch(one, grad))
        result[f"unsharded-{grad}"] = max_rel(train_steps(four, grad), train_steps(None, grad))
        # Batch norm's statistics are over the global batch, so they agree across devices;
        # dropout's masks are drawn for the global batch from the step's key.
        layers = dict(norm="batch", dropout=0.2)
        result[f"batchnorm-{grad}"] = global_rel(
            train_steps(four, grad, **layers), train_steps(one, grad, **layers)
        )
    # The compiled sharded step reduces the gradient with an all-reduce (XLA's collective).
    optimizer = optax.sgd(0.1)
    params = jaxbp.init_mlp(jax.random.key(0), SIZES)
    step = jaxbp.make_train_step(optimizer, mesh=jaxbp.data_mesh(4), **KW)
    x, y = data()
    hlo = step.lower(params, optimizer.init(params), x[:BATCH], y[:BATCH]).compile().as_text()
    result["all_reduce_in_hlo"] = "all-reduce" in hlo
    try:
        step(params, optimizer.init(params), x[:30], y[:30])
        result["indivisible_batch_error"] = None
    except ValueError as err:
        result["indivisible_batch_error"] = str(err)
    Path(out).write_text(json.dumps(result))


def process(pid, port, out):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    mesh = jaxbp.data_mesh()
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    half = BATCH // 2

    def local_half(v):  # each process feeds its own half of every global batch
        return jax.make_array_from_process_local_data(
            batch_sharding, v[pid * half : (pid + 1) * half]
        )

    result = {"devices": len(jax.devices())}
    for grad in ("manual", "autodiff"):
        result[grad] = [leaf.tolist() for leaf in train_steps(mesh, grad, local_half)]
    Path(out).write_text(json.dumps(result))
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "virtual":
        virtual(sys.argv[2])
    else:
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
