"""The fused Pallas training step and epoch (`jaxbp._fused`), in interpret mode on the CPU.

Reference: `jaxbp.manual_grad` (eqs. 1.3-1.4) followed by `optax.sgd(lr, momentum)` in plain
JAX, i.e. an independent path through the library's unfused code and optax's own update.
Every comparison is per leaf, `||fused - reference|| / ||reference||`.
"""

import copy
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from conftest import rel_err
from jaxbp import fused_epoch_fn, fused_step_fn
from jaxbp._fused import support as _fused
from jaxbp._fused.support import (
    MAX_BATCH,
    MAX_WIDTH,
    Explained,
    check_fused_supported,
    probe_gpu_lowering,
)

LR = 0.1
SIZES = [5, 12, 9, 3]  # hidden widths that the GPU layout pads to 16
BATCH = 8


@dataclasses.dataclass(frozen=True)
class Case:
    activation: str
    loss: str
    output: str
    momentum: float | None = 0.9
    reduction: str = "mean"
    pad: bool = False
    sizes: tuple[int, ...] = tuple(SIZES)

    @property
    def id(self):
        mom = "sgd" if self.momentum is None else f"mom{self.momentum}"
        depth = f"depth{len(self.sizes) - 1}"
        pad = "-pad" if self.pad else ""
        return f"{self.activation}-{self.loss}-{self.output}-{mom}-{self.reduction}-{depth}{pad}"

    def config(self):
        return jaxbp.Config(
            activation=self.activation,
            loss=self.loss,
            output_activation=self.output,
            reduction=self.reduction,
        )


# Every activation once and every loss with every output it takes (jaxbp.LOSS_OUTPUTS),
# with momentum on and off, both reductions, depths 1-3, and the GPU padding (every width
# and the batch padded to 16 and masked) exercised in interpret mode.
_PAIRS = list(jaxbp.LOSS_OUTPUTS)
CASES = [
    Case(
        activation,
        *_PAIRS[i % len(_PAIRS)],
        momentum=None if i % 3 == 2 else 0.9,
        reduction="sum" if i % 4 == 3 else "mean",
        pad=i % 2 == 0,
        sizes=(tuple(SIZES), (5, 3), (5, 12, 3))[i % 3],
    )
    for i, activation in enumerate(jaxbp.ACTIVATIONS)
]
assert {c.activation for c in CASES} == set(jaxbp.ACTIVATIONS)
assert {(c.loss, c.output) for c in CASES} == set(_PAIRS)


def reference_run(config, params, xs, ys, momentum):
    """`len(xs)` steps of manual_grad + optax.sgd, jitted as one scan: (params, trace, losses)."""
    opt = optax.sgd(LR, momentum)

    def body(carry, batch):
        p, state = carry
        value = jaxbp.loss_fn(p, *batch, config)
        updates, state = opt.update(jaxbp.manual_grad(p, *batch, config), state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, state), losses = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), (xs, ys)))(
        params, opt.init(params)
    )
    return params, (None if momentum is None else state[0].trace), losses


def fused_run(case_or_config, sizes, params, xs, ys, momentum, **kw):
    """The same steps through the fused step kernel, one call per step."""
    step = fused_step_fn(sizes, case_or_config, learning_rate=LR, momentum=momentum, **kw)
    trace = None if momentum is None else jax.tree.map(jnp.zeros_like, params)
    losses = []
    for x, y in zip(xs, ys):
        params, trace, value = step(params, trace, x, y)
        losses.append(value)
    return params, trace, jnp.stack(losses)


def problem(case, dtype, steps, seed=0):
    """Random params and `steps` batches for `case` (targets suited to its loss)."""
    params, _, _ = jaxbp.random_problem(seed, list(case.sizes), BATCH, case.loss, dtype)
    batches = [
        jaxbp.random_problem(seed + 1 + s, list(case.sizes), BATCH, case.loss, dtype)[1:]
        for s in range(steps)
    ]
    xs, ys = (jnp.stack(v) for v in zip(*batches))
    return params, xs, ys


def worst(fused, reference):
    """The largest per-leaf relative error over (params, trace) and the losses."""
    pairs = zip(jax.tree.leaves(fused), jax.tree.leaves(reference), strict=True)
    return max(rel_err(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    ("case", "dtype", "rtol"),
    [
        pytest.param(case, dtype, rtol, id=f"{case.id}-{jnp.dtype(dtype).name}")
        for case in CASES
        for dtype, rtol in ((jnp.float32, 1e-5), (jnp.float64, 1e-12))
    ],
)
def test_two_steps_match_manual_path(case, dtype, rtol):
    """Two steps (so the momentum trace is used, not only filled): params, trace, losses."""
    params, xs, ys = problem(case, dtype, steps=2)
    got = fused_run(case.config(), case.sizes, params, xs, ys, case.momentum, pad=case.pad)
    want = reference_run(case.config(), params, xs, ys, case.momentum)
    assert jax.tree.map(lambda p: p.dtype, got[0]) == jax.tree.map(lambda p: p.dtype, params)
    assert worst(got, want) < rtol


LOSS_PAIRS = [(name, loss.link.name) for name, loss in jaxbp.LOSSES.items()]  # canonical links


@pytest.mark.parametrize(
    ("loss", "output"), LOSS_PAIRS, ids=[f"{loss}-{out}" for loss, out in LOSS_PAIRS]
)
def test_fifty_float32_steps_stay_within_rounding(loss, output):
    """50 float32 steps of momentum SGD through the padded epoch kernel (the GPU's layout)
    against the manual path. Padding changes the order of the batch sums, and the rounding
    compounds over the steps: measured worst 3.3e-6 (mse; 0 unpadded), bound 3e-5."""
    case = Case("tanh", loss, output)
    params, xs, ys = problem(case, jnp.float32, steps=50, seed=7)
    epoch = fused_epoch_fn(SIZES, case.config(), learning_rate=LR, momentum=0.9, pad=True)
    got = epoch(params, jax.tree.map(jnp.zeros_like, params), xs, ys)
    want = reference_run(case.config(), params, xs, ys, 0.9)
    assert worst(got, want) < 3e-5


@pytest.mark.parametrize(
    ("momentum", "pad"), [(None, False), (0.5, True)], ids=["sgd-unpadded", "mom0.5-padded"]
)
def test_epoch_kernel_equals_iterated_step_kernel(momentum, pad):
    case = Case("sigmoid", "cross_entropy", "softmax", momentum=momentum, pad=pad)
    params, xs, ys = problem(case, jnp.float64, steps=5, seed=3)
    kw = dict(learning_rate=LR, momentum=momentum, pad=pad)
    trace = None if momentum is None else jax.tree.map(jnp.zeros_like, params)
    got = fused_epoch_fn(SIZES, case.config(), **kw)(params, trace, xs, ys)
    want = fused_run(case.config(), SIZES, params, xs, ys, momentum, pad=pad)
    assert worst(got, want) < 1e-14
    assert got[2].shape == (5,)


def test_label_and_probability_targets_agree():
    """cross_entropy takes integer labels or probability rows; the kernel sees the same rows
    (bit for bit, traced or not) and takes the same step. The reported loss comes from two
    differently compiled programs (labels one-hot encoded inside, rows given) and may round
    differently in its last bit."""
    case = Case("tanh", "cross_entropy", "softmax")
    params, xs, ys = problem(case, jnp.float64, steps=1)
    rows = jax.nn.one_hot(ys, SIZES[-1], dtype=jnp.float64)
    loss = case.config().loss
    prepare = lambda y: loss.targets(y, BATCH, SIZES[-1], jnp.float64)  # noqa: E731
    for fn in (prepare, jax.jit(prepare)):
        np.testing.assert_array_equal(fn(ys[0]), fn(rows[0]))
    (p_a, t_a, loss_a), (p_b, t_b, loss_b) = (
        fused_run(case.config(), SIZES, params, xs, y, 0.9) for y in (ys, rows)
    )
    assert worst((p_a, t_a), (p_b, t_b)) == 0
    np.testing.assert_array_max_ulp(loss_a, loss_b, maxulp=1)


def test_keywords_and_config_build_the_same_step():
    params, xs, ys = problem(Case("tanh", "mse", "identity"), jnp.float64, steps=1)
    by_kw = fused_step_fn(SIZES, activation="tanh", loss="mse", learning_rate=LR)
    by_cfg = fused_step_fn(SIZES, jaxbp.Config(activation="tanh", loss="mse"), learning_rate=LR)
    assert worst(by_kw(params, None, xs[0], ys[0]), by_cfg(params, None, xs[0], ys[0])) == 0


def test_triton_lowering_of_the_small_configuration():
    """The GPU path lowers (JAX -> Triton IR) for the benchmark's small network on any
    machine; Triton's own compile to PTX needs the GPU and is checked by
    experiments/gpu_fused.py."""
    fused = check_fused_supported(
        [64, 128, 128, 10], activation="tanh", loss="cross_entropy", learning_rate=LR, momentum=0.9
    )
    probe_gpu_lowering(dataclasses.replace(fused, sizes=(64, 128, 128, 10)))
    gelu = check_fused_supported([4, 3], activation="gelu", loss="mse", learning_rate=LR)
    with pytest.raises(ValueError, match=r"activation='gelu'.*erfc.*grad='manual'"):
        probe_gpu_lowering(gelu)


# Shared memory Triton asked for on an H200 (compute capability 9.0, 232,448 bytes a block)
# at float32, default precision: the three it refused (experiments/results/gpu_fused.json)
# and the one it launched, as Nsight Compute read it (gpu_fused_ncu.txt: 196.61 KB).
H200_SHARED_MEMORY = [
    ([64, 128, 128, 10], 256, 327_680),
    ([64, 256, 256, 10], 128, 524_288),
    ([64, 128, 128, 10], 512, 589_824),
    ([64, 128, 128, 10], 128, 196_608),
]


@pytest.mark.parametrize(("sizes", "batch", "measured"), H200_SHARED_MEMORY)
def test_shared_memory_model_gives_what_triton_asked_for(sizes, batch, measured):
    fused = check_fused_supported(sizes, activation="tanh", loss="cross_entropy", learning_rate=LR)
    fused = dataclasses.replace(fused, pad=True)
    assert fused.modelled("float32")
    assert fused.shared_memory(batch, itemsize=4) == measured


def gpu_trace(sizes, batch, dtype=jnp.float32, epoch=False, **options):
    """Trace (not run) the compiled-for-GPU step or epoch on this machine."""
    fused = check_fused_supported(
        sizes, activation="tanh", loss="cross_entropy", learning_rate=LR, momentum=0.9, **options
    )
    fused = dataclasses.replace(fused, interpret=False, pad=True)
    params = jaxbp.init_mlp(jax.random.key(0), sizes, dtype=dtype)
    x = jax.ShapeDtypeStruct((3, batch, sizes[0]) if epoch else (batch, sizes[0]), dtype)
    y = jax.ShapeDtypeStruct(x.shape[:-1], jnp.int32)
    run = _fused._epoch if epoch else _fused._step
    return jax.eval_shape(lambda *a: run(fused, *a), params, params, x, y)


@pytest.mark.parametrize("epoch", [False, True], ids=["step", "epoch"])
def test_refuses_at_trace_time_a_batch_the_gpu_cannot_hold(monkeypatch, epoch):
    monkeypatch.setattr(_fused, "_shared_memory_limit", lambda: ("9.0", 232_448))
    gpu_trace([64, 128, 128, 10], 128, epoch=epoch)  # 196,608 bytes: fits
    gpu_trace([64, 128, 128, 10], 100, epoch=epoch)  # padded to 128: fits
    shape = r"\(3, 129, 64\) \(batch axis 1\)" if epoch else r"\(129, 64\) \(batch axis 0\)"
    match = (
        rf"x has shape {shape}, and sizes=\[64, 128, 128, 10\] with a batch of 129 in float32 "
        r"need 327,680 bytes of shared memory .* padded to \[64, 128, 128, 16\] and 256\), "
        r"more than the 232,448 this GPU offers \(compute capability 9.0\)\. Use a batch of at "
        r"most 128 \(batch_size\), narrower layers, or grad='manual'\."
    )
    with pytest.raises(ValueError, match=match):
        gpu_trace([64, 128, 128, 10], 129, epoch=epoch)
    with pytest.raises(ValueError, match=r"need 524,288 bytes .* Use narrower layers, or"):
        gpu_trace([64, 256, 256, 10], 128, epoch=epoch)  # no batch fits at width 256


def test_shared_memory_check_keeps_to_what_it_models(monkeypatch):
    """Measured: float32 at default precision and 8 warps. float64 and precision="highest"
    take Triton's other matrix-product path, whose needs the model does not give (an H200
    asked for less than it in float64), and other warps were not measured: no refusal at
    trace time there (a compile that does not fit is told by `Explained` instead), none in
    interpret mode, and only a lower bound for the first layer, which has no product
    through `W_1` in eq. 1.4."""
    monkeypatch.setattr(_fused, "_shared_memory_limit", lambda: ("9.0", 232_448))
    with jax.enable_x64(True):
        gpu_trace([64, 128, 128, 10], 256, jnp.float64)
    gpu_trace([64, 128, 128, 10], 256, precision="highest")
    gpu_trace([64, 128, 128, 10], 256, num_warps=4)
    gpu_trace([256, 128, 10], 128)  # x and delta_1: 196,608 bytes (W_1 would add 131,072)
    with pytest.raises(ValueError, match=r"need 262,144 bytes"):
        gpu_trace([256, 256, 10], 128)
    monkeypatch.setattr(_fused, "_shared_memory_limit", lambda: ("7.5", 65_536))
    with pytest.raises(ValueError, match=r"capability 7.5\)\. Use a batch of at most 64 "):
        gpu_trace([64, 64, 64, 10], 128)
    monkeypatch.setattr(_fused, "_shared_memory_limit", lambda: ("tiny", 1))
    fused = check_fused_supported(SIZES, activation="tanh", loss="mse", learning_rate=LR)
    params = jaxbp.init_mlp(jax.random.key(0), SIZES)
    fused_run = fused_step_fn(SIZES, activation="tanh", loss="mse", learning_rate=LR)
    assert fused.interpret and fused.modelled("float32")
    fused_run(params, None, jnp.ones((BATCH, SIZES[0])), jnp.ones((BATCH, SIZES[-1])))


def test_unknown_gpus_get_the_largest_shared_memory(monkeypatch):
    class Device:
        compute_capability = "99.9"

    monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
    assert _fused._shared_memory_limit() == ("99.9", max(_fused.SHARED_MEMORY.values()))


def test_explained_names_a_kernel_that_does_not_fit():
    fused = check_fused_supported(SIZES, activation="tanh", loss="mse", learning_rate=LR)
    failure = (  # what an H200 said for 64-128-128-10, batch 128, float64
        "RESOURCE_EXHAUSTED: Shared memory size limit exceeded: requested 344064, "
        "available: 232448, context: []"
    )

    def compile_fails(*args):
        raise jax.errors.JaxRuntimeError(failure)

    match = (
        r"the fused kernel for sizes=\[5, 12, 9, 3\] does not fit on one GPU multiprocessor: "
        r"Triton asks for 344,064 bytes of shared memory and this GPU offers 232,448\. Use a "
        r"smaller batch_size or narrower layers .*grad='manual'\.$"
    )
    with pytest.raises(ValueError, match=match):
        Explained(compile_fails, fused)(1, 2)

    def other_failure(*args):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        Explained(other_failure, fused)()


def test_explained_is_the_jitted_function_otherwise():
    """Results, `lower` and the name pass through; grad="fused" steps and epochs are wrapped."""
    jitted = jax.jit(lambda v: 2 * v)
    wrapped = Explained(jitted)
    assert wrapped(3.0) == 6.0
    assert "mul" in wrapped.lower(1.0).as_text()
    assert wrapped.__name__ == jitted.__name__
    opt, net = jaxbp.fused_sgd(LR), dict(activation="tanh", loss="mse")
    assert isinstance(jaxbp.make_train_step(opt, grad="fused", **net), Explained)
    assert isinstance(jaxbp.make_train_epoch(opt, batch_size=4, grad="fused", **net), Explained)
    assert not isinstance(jaxbp.make_train_step(optax.sgd(LR), **net), Explained)
    assert isinstance(fused_step_fn(SIZES, **KW), Explained)
    assert isinstance(fused_epoch_fn(SIZES, **KW), Explained)
    assert copy.copy(wrapped)(3.0) == 6.0  # no recursion through __getattr__


KW = dict(activation="tanh", loss="cross_entropy", learning_rate=LR)
REFUSALS = [
    ("width", dict(sizes=[5, MAX_WIDTH + 1, 3]), ValueError, r"sizes\[1\] is 257.*grad='manual'"),
    ("sizes", dict(sizes=[5]), ValueError, "at least two integer widths"),
    ("activation", dict(activation="swish"), ValueError, "activation must be one of"),
    ("loss", dict(loss="hinge"), ValueError, "loss must be one of"),
    ("output", dict(output_activation="tanh"), ValueError, "canonical output activation"),
    ("softmax-1-unit", dict(sizes=[5, 1]), ValueError, "at least 2 output"),
    ("layers", dict(layers=[jaxbp.Dense(3)]), ValueError, "layers must be None"),
    ("schedule", dict(learning_rate=optax.constant_schedule(0.1)), TypeError, "constant rate"),
    ("lr-negative", dict(learning_rate=-0.1), ValueError, "learning_rate must be finite and > 0"),
    ("momentum-1", dict(momentum=1.0), ValueError, r"momentum must lie in \[0, 1\)"),
    ("momentum-array", dict(momentum=jnp.asarray(0.9)), TypeError, "momentum must be a Python"),
    ("num_warps", dict(num_warps=3), ValueError, "num_warps must be None or one of"),
    ("norm", dict(norm="layer"), ValueError, r"norm None and dropout 0; got norm='layer'\."),
    ("dropout", dict(dropout=0.1), ValueError, r"norm None and dropout 0; got dropout=0\.1\."),
    ("sizes-None", dict(sizes=None), TypeError, r"sizes must list .*; got NoneType None\."),
    ("sizes-int", dict(sizes=5), TypeError, r"sizes must list .*; got int 5\."),
    ("pad-str", dict(pad="no"), TypeError, r"pad must be None .*True or False; got 'no'"),
    ("precision", dict(precision="fast"), ValueError, r"precision must be None.*got 'fast'"),
    ("option-typo", dict(momentun=0.9), TypeError, r"'momentun'.*options \['learning_rate'"),
]


@pytest.mark.parametrize(
    ("changes", "error", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refuses_what_it_does_not_support(changes, error, match):
    kw = {"sizes": SIZES, **KW, **changes}
    with pytest.raises(error, match=match):
        fused_step_fn(kw.pop("sizes"), **kw)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="interpret=False is fine on a GPU")
def test_refuses_compiled_mode_without_a_gpu():
    with pytest.raises(ValueError, match="interpret=False compiles the kernel with Triton, which"):
        fused_step_fn(SIZES, **KW, interpret=False)


def test_refuses_bad_calls_at_trace_time():
    case = Case("tanh", "cross_entropy", "softmax")
    params, xs, ys = problem(case, jnp.float32, steps=1)
    step = fused_step_fn(SIZES, case.config(), learning_rate=LR, momentum=0.9)
    trace = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match=r"built for sizes=\[5, 12, 9, 3\]"):
        step(params[1:], trace[1:], xs[0], ys[0])
    with pytest.raises(ValueError, match="trace must be the momentum buffer"):
        step(params, None, xs[0], ys[0])
    with pytest.raises(ValueError, match=rf"batch must lie in \[1, {MAX_BATCH}\]"):
        step(params, trace, jnp.zeros((MAX_BATCH + 1, 5)), jnp.zeros(MAX_BATCH + 1, int))
    with pytest.raises(TypeError, match=r"must be one of .*float32.*float64"):
        step(jax.tree.map(lambda p: p.astype(jnp.bfloat16), params), trace, xs[0], ys[0])
    with pytest.raises(ValueError, match="x has 4 features"):
        step(params, trace, xs[0][:, :4], ys[0])
    plain = fused_step_fn(SIZES, case.config(), learning_rate=LR)
    with pytest.raises(ValueError, match="trace must be None with momentum=None"):
        plain(params, trace, xs[0], ys[0])
    epoch = fused_epoch_fn(SIZES, case.config(), learning_rate=LR)
    with pytest.raises(ValueError, match=r"xs must be the epoch's batches, \(steps, batch, n_0\)"):
        epoch(params, None, xs[0], ys[0])
    with pytest.raises(ValueError, match="ys must hold one target batch per x batch"):
        epoch(params, None, xs, ys[:, :4])


# --- the gradient path: make_train_step / make_train_epoch(grad="fused") -------------------


@pytest.mark.parametrize("momentum", [None, 0.9], ids=["sgd", "momentum"])
def test_fused_path_matches_manual_step_and_epoch(momentum):
    """Two steps and one epoch through the public switch, float64: the fused path's
    parameters and optimizer state equal the manual path's (both optax.sgd)."""
    params, x, y = jaxbp.random_problem(3, [5, 16, 16, 3], 24, "cross_entropy", jnp.float64)
    opt = jaxbp.fused_sgd(0.1, momentum)
    kw = dict(activation="tanh", loss="cross_entropy")
    out = {}
    for grad in ("manual", "fused"):
        step = jaxbp.make_train_step(opt, grad=grad, **kw)
        p, s = jax.tree.map(jnp.array, params), opt.init(params)
        for i in range(2):
            p, s, m = step(p, s, x[8 * i : 8 * (i + 1)], y[8 * i : 8 * (i + 1)])
        epoch = jaxbp.make_train_epoch(opt, grad=grad, batch_size=8, **kw)
        p, s, m_epoch = epoch(p, s, jax.random.key(5), x, y)
        out[grad] = (p, s, m["loss"], m_epoch["loss"])
    for a, b in zip(jax.tree.leaves(out["fused"]), jax.tree.leaves(out["manual"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert out["fused"][3].shape == (3,)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda kw: jaxbp.make_train_step(optax.sgd(0.1), grad="fused", **kw), "jaxbp.fused_sgd"),
        (
            lambda kw: jaxbp.make_train_step(
                jaxbp.fused_sgd(0.1), grad="fused", grad_norm=True, **kw
            ),
            "grad_norm=True needs the gradient",
        ),
        (
            lambda kw: jaxbp.make_train_sweep(
                jaxbp.fused_sgd(0.1), grad="fused", batch_size=4, **kw
            ),
            "a sweep of models",
        ),
        (
            lambda kw: jaxbp.make_train_step(
                jaxbp.fused_sgd(0.1), grad="fused", mesh=jaxbp.data_mesh(1), **kw
            ),
            "a mesh",
        ),
    ],
    ids=["optax-sgd", "grad-norm", "sweep", "mesh"],
)
def test_fused_path_refusals(build, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        build(dict(activation="tanh", loss="cross_entropy"))


def test_accepts_numpy_widths():
    """Widths read off arrays (np.int64) are integer widths like any other."""
    for sizes in ([np.int64(5), np.int64(12), 3], np.asarray([5, 12, 3])):
        fused = check_fused_supported(sizes, **KW)
        assert fused.sizes == (5, 12, 3) and all(type(n) is int for n in fused.sizes)


def _norm_params():
    return jaxbp.init_mlp(jax.random.key(0), [5, 12, 3], norm="layer")


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


# (id, params, trace, x) -> the error of one fused step (SIZES, momentum 0.9, float32)
STEP_CALLS = [
    (
        "norm-params",
        lambda p, t, x: (_norm_params(), t, x),
        TypeError,
        r"params\[1\] has keys \['bias', 'gain'\]\. "
        r"Build them with jaxbp\.init_mlp\(key, sizes\) \(no norm\)",
    ),
    (
        "params-dict",
        lambda p, t, x: (p[0], t, x),
        TypeError,
        r"params must be a non-empty list .*; got dict\.",
    ),
    (
        "params-int",
        lambda p, t, x: (_cast(p, jnp.int32), t, x),
        TypeError,
        r"params\[0\]\['W'\] must be floating point",
    ),
    (
        "trace-float64",
        lambda p, t, x: (p, _cast(t, jnp.float64), x),
        ValueError,
        r"shaped like params, in their dtype, \[\{'W': 'float32\[5, 12\]'"
        r".*got \[\{'W': 'float64\[5, 12\]'",
    ),
    (
        "x-complex",
        lambda p, t, x: (p, t, x.astype(jnp.complex64)),
        TypeError,
        "x must hold real numbers .*complex64",
    ),
    ("x-1d", lambda p, t, x: (p, t, x[0]), ValueError, r"x must be 2-d, \(batch, n_0\)"),
]


@pytest.mark.parametrize(
    ("change", "error", "match"), [r[1:] for r in STEP_CALLS], ids=[r[0] for r in STEP_CALLS]
)
def test_step_refuses_bad_calls(change, error, match):
    case = Case("tanh", "cross_entropy", "softmax")
    params, xs, ys = problem(case, jnp.float32, steps=1)
    step = fused_step_fn(SIZES, case.config(), learning_rate=LR, momentum=0.9)
    args = change(params, jax.tree.map(jnp.zeros_like, params), xs[0])
    with pytest.raises(error, match=match):
        step(*args, ys[0])


def _captures(fn):
    c = jnp.asarray([[2.0]])  # a captured jax array: no input of the pallas_call
    return lambda *args: fn(c, *args)


MSE = jaxbp.LOSSES["mse"]
# (id, activation, loss) the kernel cannot run -> the message that names the record
RECORDS = [
    (
        "activation-captures-array",
        jaxbp.Activation(
            "scaled", _captures(lambda c, z: c * z), _captures(lambda c, z, a: c * jnp.ones_like(z))
        ),
        "mse",
        r"activation='scaled'.* closes over jax arrays \[f64\[1,1\], f64\[1,1\]\]\. "
        r"Write its constants as Python numbers",
    ),
    (
        "loss-captures-array",
        "tanh",
        dataclasses.replace(
            MSE,
            name="weighted",
            value=_captures(lambda c, z, a, y: jnp.sum(c * (a - y) ** 2, axis=-1)),
        ),
        r"loss='weighted' closes over jax arrays",
    ),
    (
        "fn-wrong-shape",
        jaxbp.Activation("first", lambda z: z[:, :1], lambda z, a: jnp.ones_like(z)),
        "mse",
        r"activation='first': fn\(z\), phi\(z\) elementwise, "
        r"must return an array of shape \(8, 12\); got shape \(8, 1\)",
    ),
    (
        "deriv-wrong-shape",
        jaxbp.Activation("lin", lambda z: z, lambda z, a: jnp.ones(z.shape[0])),
        "mse",
        r"deriv\(z, a\), phi'\(z\) elementwise, "
        r"must return an array of shape \(8, 12\) \(or one that broadcasts",
    ),
    (
        "value-summed-over-batch",
        "tanh",
        dataclasses.replace(MSE, name="total", value=lambda z, a, y: jnp.sum((a - y) ** 2)),
        r"loss='total': value\(z, a, y\), one loss a sample, must return an array of "
        r"shape \(8,\); got shape \(\)\. Sum over the output axis only",
    ),
    (
        "delta-wrong-shape",
        "tanh",
        dataclasses.replace(
            MSE, name="flat", delta=lambda z, a, y, output: jnp.sum(a - y, axis=-1)
        ),
        r"loss='flat': delta\(z, a, y, output\), dl/dz_L, must return an array of shape \(8, 3\)",
    ),
]


@pytest.mark.parametrize(
    ("activation", "loss", "match"), [r[1:] for r in RECORDS], ids=[r[0] for r in RECORDS]
)
def test_refuses_records_the_kernel_cannot_run(activation, loss, match):
    params, x, y = jaxbp.random_problem(0, [5, 12, 3], 8, "mse", jnp.float32)
    step = fused_step_fn([5, 12, 3], activation=activation, loss=loss, learning_rate=LR)
    with pytest.raises(ValueError, match=match):
        step(params, None, x, y)


def test_record_promoting_to_float64_keeps_the_parameters_dtype():
    """An activation whose float64 constant promotes float32 pre-activations: the kernel
    stores the parameters, trace and loss in float32, as optax.apply_updates keeps them."""
    act = jaxbp.Activation(
        "double", lambda z: z * np.float64(2), lambda z, a: np.float64(2) * jnp.ones_like(z)
    )
    config = jaxbp.Config(activation=act, loss="mse")
    params, x, y = jaxbp.random_problem(0, [5, 12, 3], 8, "mse", jnp.float32)
    xs, ys = x[None], y[None]  # one step
    got = fused_run(config, (5, 12, 3), params, xs, ys, 0.9)
    want = reference_run(config, params, xs, ys, 0.9)
    assert {leaf.dtype for leaf in jax.tree.leaves(got)} == {jnp.dtype(jnp.float32)}
    assert worst(got, want) < 1e-5


# --- the gradient path: what make_train_step / make_train_epoch(grad="fused") refuse ------

MOM = jaxbp.fused_sgd(LR, momentum=0.9)
SGD = jaxbp.fused_sgd(LR)
KW_PATH = dict(activation="tanh", loss="cross_entropy")
PATH_CALLS = [  # (id, step or epoch, optimizer, (params, x) -> (params, opt_state, x), match)
    (
        "norm-params-step",
        "step",
        SGD,
        lambda p, x: (_norm_params(), SGD.init(p), x),
        r"params\[1\] has keys \['bias', 'gain'\]",
    ),
    (
        "norm-params-epoch",
        "epoch",
        SGD,
        lambda p, x: (_norm_params(), SGD.init(p), x),
        r"params\[1\] has keys \['bias', 'gain'\]",
    ),
    (
        "no-trace-step",
        "step",
        MOM,
        lambda p, x: (p, optax.sgd(LR).init(p), x),
        r"fused_sgd\(0\.1, momentum=0\.9\): optax\.sgd's \(TraceState, EmptyState\) with "
        r"a momentum trace shaped like params; got \(EmptyState, EmptyState\)\. "
        r"Build it with optimizer\.init\(params\)\.",
    ),
    (
        "no-trace-epoch",
        "epoch",
        MOM,
        lambda p, x: (p, optax.sgd(LR).init(p), x),
        r"got \(EmptyState, EmptyState\)\. Build it with optimizer\.init",
    ),
    (
        "adam-state",
        "step",
        MOM,
        lambda p, x: (p, optax.adam(LR).init(p), x),
        r"got \(ScaleByAdamState, EmptyState\)",
    ),
    (
        "trace-for-plain-sgd",
        "step",
        SGD,
        lambda p, x: (p, MOM.init(p), x),
        r"momentum=None\): optax\.sgd's \(EmptyState, EmptyState\); got \(TraceState, EmptyState\)",
    ),
    (
        "trace-of-other-params",
        "step",
        MOM,
        lambda p, x: (p, MOM.init(p[:1]), x),
        r"got \(TraceState, EmptyState\) with leaves \['float64\[5, 16\]', 'float64\[16\]'\], not",
    ),
    (
        "float32-state-float64-params",
        "step",
        MOM,
        lambda p, x: (p, MOM.init(_cast(p, jnp.float32)), x),
        r"with leaves \['float32\[5, 16\]', .*\], not \['float64\[5, 16\]'",
    ),
    (
        "train-state",
        "epoch",
        SGD,
        lambda p, x: (p, jaxbp.TrainState(SGD.init(p), []), x),
        r"got TrainState\.",
    ),
    (
        "x-1d-epoch",
        "epoch",
        SGD,
        lambda p, x: (p, SGD.init(p), x[:, 0]),
        r"x must be 2-d, \(batch, n_0\) with one sample a row; got shape \(24,\)",
    ),
]


@pytest.mark.parametrize(
    ("kind", "optimizer", "change", "match"),
    [r[1:] for r in PATH_CALLS],
    ids=[r[0] for r in PATH_CALLS],
)
def test_fused_path_refuses_bad_state(kind, optimizer, change, match):
    params, x, y = jaxbp.random_problem(3, [5, 16, 3], 24, "cross_entropy", jnp.float64)
    kw = dict(activation="tanh", loss="cross_entropy", grad="fused", donate=False)
    p, s, x = change(params, x)
    if kind == "step":
        run = lambda: jaxbp.make_train_step(optimizer, **kw)(p, s, x[:8], y[:8])  # noqa: E731
    else:
        epoch = jaxbp.make_train_epoch(optimizer, batch_size=8, **kw)
        run = lambda: epoch(p, s, jax.random.key(0), x, y)  # noqa: E731
    with pytest.raises((TypeError, ValueError), match=match):
        run()


EPOCH_DATA = [
    ("batch_size-n+1", 25, lambda x, y: (x, y)),
    ("batch_size-2n", 48, lambda x, y: (x, y)),
    ("batch_size-2n+1", 49, lambda x, y: (x, y)),
    ("y-fewer-samples", 8, lambda x, y: (x, y[:20])),
    ("y-scalar", 8, lambda x, y: (x, y[0])),
    ("x-complex", 8, lambda x, y: (x.astype(jnp.complex64), y)),
]


@pytest.mark.parametrize(
    ("batch_size", "change"), [r[1:] for r in EPOCH_DATA], ids=[r[0] for r in EPOCH_DATA]
)
def test_fused_epoch_refuses_data_as_the_manual_epoch_does(batch_size, change):
    """The same data mistakes end in the manual path's own error, word for word (n = 24:
    a batch_size in (n, 2n] used to run with duplicated samples, above 2n a raw reshape)."""
    params, x, y = jaxbp.random_problem(3, [5, 16, 3], 24, "cross_entropy", jnp.float64)
    messages = []
    for grad in ("manual", "fused"):
        epoch = jaxbp.make_train_epoch(
            SGD,
            batch_size=batch_size,
            grad=grad,
            donate=False,
            activation="tanh",
            loss="cross_entropy",
        )
        with pytest.raises((TypeError, ValueError)) as error:
            epoch(params, SGD.init(params), jax.random.key(0), *change(x, y))
        messages.append((error.type, str(error.value)))
    assert messages[1] == messages[0]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: jaxbp.fused_sgd(-0.1), r"learning_rate must be finite and > 0; got -0\.1"),
        (lambda: jaxbp.fused_sgd(float("nan")), r"learning_rate must be finite and > 0; got nan"),
        (lambda: jaxbp.fused_sgd(0.1, 1.0), r"momentum must lie in \[0, 1\).*got 1\.0"),
        (lambda: jaxbp.fused_sgd(0.1, -0.5), r"momentum must lie in \[0, 1\).*got -0\.5"),
        (
            lambda: jaxbp.make_train_step(jaxbp.FusedSGD(-0.1), grad="fused", **KW_PATH),
            r"learning_rate must be finite and > 0; got -0\.1",
        ),
        (
            lambda: jaxbp.make_train_step(SGD, grad="fused", dropout=0.1, **KW_PATH),
            r"got dropout=0\.1\. Use grad='manual'",
        ),
        (
            lambda: jaxbp.make_train_epoch(SGD, grad="fused", batch_size=4, dropout=0.1, **KW_PATH),
            r"got dropout=0\.1\. Use grad='manual'",
        ),
        (
            lambda: jaxbp.make_train_step(SGD, grad="fused", norm="layer", **KW_PATH),
            r"got norm='layer'\. Use grad='manual'",
        ),
    ],
    ids=[
        "lr-negative",
        "lr-nan",
        "momentum-1",
        "momentum-negative",
        "FusedSGD-negative",
        "dropout-step",
        "dropout-epoch",
        "norm-step",
    ],
)
def test_fused_path_refuses_at_build_time(build, match):
    with pytest.raises(ValueError, match=match):
        build()
