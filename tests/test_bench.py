"""`jaxbp bench`: the plain step it times beside jaxbp's is an independent reference that
computes the same loss and update, and the layer-norm and batch-norm rows run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.app import bench


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("grad", bench.GRADS)
def test_plain_step_computes_what_jaxbps_step_computes(grad):
    config = bench.CONFIGS["small"]
    opt = bench.optimizer()
    params = jaxbp.init_mlp(jax.random.key(3), config.sizes)
    x, y = bench.batches(config, 1, jax.random.key(4))[0]
    ours = jaxbp.make_train_step(opt, bench.network(config), grad=grad)
    plain = bench.plain_step(opt)
    p1, _, metrics = ours(copy(params), opt.init(params), x, y)
    p2, _, loss = plain(copy(params), opt.init(params), x, y)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    # and both against a loss written here, in float64
    a = np.asarray(x, np.float64)
    p64 = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in params]
    for layer in p64[:-1]:
        a = np.tanh(a @ layer["W"] + layer["b"])
    z = a @ p64[-1]["W"] + p64[-1]["b"]
    z = z - z.max(1, keepdims=True)
    want = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), np.asarray(y)])
    assert float(loss) == pytest.approx(want, rel=1e-5)
    for u, v in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


def test_bench_runs_the_plain_step_and_the_normalised_rows():
    names = ["small", "small-layernorm", "small-batchnorm"]
    result = bench.run(names, reps=1, scan_steps=2)
    rows = {r["config"]: r for r in result["rows"]}
    assert list(rows) == names
    small = rows["small"]
    assert small["plain_ms"] > 0
    assert small["manual_over_plain"] == small["manual_ms"] / small["plain_ms"]
    assert small["autodiff_over_plain"] == small["autodiff_ms"] / small["plain_ms"]
    for name in names[1:]:
        row = rows[name]
        assert row["norm"] == name.removeprefix("small-").removesuffix("norm")
        assert row["plain_ms"] is None and row["manual_over_plain"] is None
        assert row["manual_ms"] > 0 and row["autodiff_scan_ms"] > 0
        assert row["manual_memory_mib"] > 0 and row["autodiff_memory_mib"] > 0
    table = bench.markdown(result)
    assert "| plain ms | manual / plain | jax.grad / plain |" in table
    assert table.count("| – | – | – |") == 2


def test_the_batch_norm_step_carries_a_train_state():
    config = bench.CONFIGS["small-batchnorm"]
    _, state = bench.init(config)
    assert isinstance(state, jaxbp.TrainState) and len(state.stats) == 2
    assert not isinstance(bench.init(bench.CONFIGS["small-layernorm"])[1], jaxbp.TrainState)
    with pytest.raises(ValueError, match="the plain step is a plain tanh MLP"):
        bench.plain_call(config)
