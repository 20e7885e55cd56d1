"""check_parity: passes on the real gradient, fails on a wrong derivative, prints a table."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from conftest import LOSS_OUTPUTS, make_problem
from jaxbp._parity.report import default_atol


@pytest.fixture
def problem():
    return make_problem(0, [4, 6, 6, 3], 5, "cross_entropy", jnp.float64)


def test_passes_and_prints(problem):
    report = jaxbp.check_parity(*problem, activation="tanh", loss="cross_entropy")
    assert report.passed
    assert report.rtol == 1e-12 and report.dtype == "float64"
    assert [leaf.path for leaf in report.leaves] == [
        f"params[{l}]['{k}']" for l in range(3) for k in ("W", "b")
    ]
    text = str(report)
    assert "params[2]['b']" in text and "passed (float64" in text


def test_float32_default_tolerance():
    report = jaxbp.check_parity(
        *make_problem(0, [4, 6, 3], 5, "mse", jnp.float32), activation="elu", loss="mse"
    )
    assert report.dtype == "float32" and report.rtol == 1e-5 and report.passed


@pytest.mark.parametrize("finite_differences", [False, True], ids=["autodiff", "with-fd"])
def test_catches_a_wrong_derivative(problem, finite_differences):
    """A derivative off by 1% anywhere is caught: the check can fail."""
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1.01 * (1 - a * a))
    report = jaxbp.check_parity(
        *problem, activation=bad, loss="cross_entropy", finite_differences=finite_differences
    )
    assert not report.passed
    assert "FAILED" in str(report)
    # The last layer does not use the hidden derivative; the others do.
    assert report.leaves[-1].rel_err < 1e-12 < report.leaves[0].rel_err
    if finite_differences:
        assert report.leaves[0].fd_err > 1e-6 > report.leaves[-1].fd_err


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "op-by-op"])
def test_compiled_or_op_by_op_gives_the_same_verdict(problem, compiled):
    """Both ways compute the same two gradients: the same leaves pass, and a wrong
    derivative fails either way."""
    report = jaxbp.check_parity(
        *problem, activation="tanh", loss="cross_entropy", compiled=compiled
    )
    assert report.passed and max(leaf.rel_err for leaf in report.leaves) < 1e-12
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1.01 * (1 - a * a))
    report = jaxbp.check_parity(*problem, activation=bad, loss="cross_entropy", compiled=compiled)
    assert not report.passed and report.leaves[0].rel_err > 1e-3


def test_custom_rtol(problem):
    report = jaxbp.check_parity(*problem, activation="relu", loss="cross_entropy", rtol=0.0)
    assert report.rtol == 0.0
    assert report.passed == (report.max_rel_err == 0.0)


def test_finite_differences_need_x64(problem):
    jax.config.update("jax_enable_x64", False)
    try:
        params, x, y = problem
        params32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            jaxbp.check_parity(
                params32,
                x.astype(jnp.float32),
                y,
                activation="relu",
                loss="cross_entropy",
                finite_differences=True,
            )
    finally:
        jax.config.update("jax_enable_x64", True)


# --- parity_grid, random_problem and check_parity refuse what they cannot honour ----------


def test_float64_needs_x64_rather_than_running_float32():
    """Without x64 a float64 problem is float32 arrays: refused, not judged at float32's
    rtol and reported as float64 (as `parity_grid(dtypes=["float64"])` used to)."""
    jax.config.update("jax_enable_x64", False)
    try:
        fix = 'jax.config.update("jax_enable_x64", True)'
        with pytest.raises(ValueError, match="dtypes\\[0\\] is float64") as info:
            jaxbp.parity_grid(dtypes=["float64"])
        assert fix in str(info.value)
        with pytest.raises(ValueError, match="dtype is float64") as info:
            jaxbp.random_problem(0, [2, 3], 4, "mse", jnp.float64)
        assert fix in str(info.value)
        (record,) = jaxbp.parity_grid(
            ["tanh"], [("mse", "identity")], dtypes=["float32"], depths=[2]
        )
        assert record["dtype"] == "float32" and record["passed"]
        (default,) = jaxbp.parity_grid(["tanh"], [("mse", "identity")], depths=[2])
        assert default == record  # the default dtypes: float32 alone without x64
    finally:
        jax.config.update("jax_enable_x64", True)
    # With x64 the same grid runs in float64, at float64's tolerance.
    (record,) = jaxbp.parity_grid(["tanh"], [("mse", "identity")], dtypes=["float64"], depths=[2])
    assert record["dtype"] == "float64" and record["rtol"] == 1e-12 and record["passed"]
    both = jaxbp.parity_grid(["tanh"], [("mse", "identity")], depths=[2])
    assert [r["dtype"] for r in both] == ["float32", "float64"]  # the default with x64


@pytest.mark.parametrize("loss", list(jaxbp.LOSSES))
def test_a_bare_loss_is_every_output_loss_outputs_lists_for_it(loss):
    small = dict(activations=["tanh"], dtypes=["float64"], depths=[1, 2])
    listed = [pair for pair in LOSS_OUTPUTS if pair[0] == loss]
    bare = list(jaxbp.parity_grid(losses=[loss], **small))
    assert bare == list(jaxbp.parity_grid(losses=listed, **small))
    assert [(r["loss"], r["output_activation"]) for r in bare[::2]] == listed
    assert all(r["passed"] for r in bare)


def test_a_bare_loss_of_ones_own_takes_its_link():
    mine = dataclasses.replace(jaxbp.LOSSES["mse"], name="my_mse")  # not in LOSS_OUTPUTS
    records = list(jaxbp.parity_grid(["tanh"], [mine], dtypes=["float64"], depths=[2]))
    assert [(r["loss"], r["output_activation"], r["passed"]) for r in records] == [
        ("my_mse", "identity", True)
    ]


GRID_ERRORS = [
    ("depth-zero", {"depths": [0, -3]}, ValueError, ["depths[0] must be an integer >= 1", "got 0"]),
    ("depth-negative", {"depths": [2, -3]}, ValueError, ["depths[1] must be", "got -3"]),
    ("depth-float", {"depths": [2.0]}, TypeError, ["depths[0] must be an integer", "float 2.0"]),
    ("depth-bool", {"depths": [True]}, TypeError, ["depths[0] must be an integer", "bool True"]),
    ("depths-int", {"depths": 3}, TypeError, ["depths must be a list", "one int 3"]),
    (
        "activations-bare-string",
        {"activations": "tanh"},
        TypeError,
        ["activations must be a list", "not a bare string", "activations=['tanh']"],
    ),
    (
        "activations-one-record",
        {"activations": jaxbp.ACTIVATIONS["tanh"]},
        TypeError,
        ["activations must be a list", "one Activation 'tanh'"],
    ),
    ("activations-empty", {"activations": []}, ValueError, ["activations must not be empty"]),
    (
        "activations-unknown",
        {"activations": ["tanh", "swish"]},
        ValueError,
        ["activations[1] must be one of", "'swish'"],
    ),
    (
        "losses-bare-string",
        {"losses": "mse"},
        TypeError,
        ["losses must be a list", "losses=['mse']"],
    ),
    (
        "losses-triple",
        {"losses": [("mse", "identity", "sum")]},
        TypeError,
        ["losses entries must be (loss, output_activation) pairs or bare losses", "losses[0]"],
    ),
    (
        "losses-unknown",
        {"losses": [("mse", "identity"), "mae"]},
        ValueError,
        ["losses[1] = 'mae': loss must be one of", "'mae'"],
    ),
    (
        "losses-output-not-taken",
        {"losses": [("cross_entropy", "identity")]},
        ValueError,
        ["losses[0] = ('cross_entropy', 'identity')", "takes only its canonical output"],
    ),
    (
        "dtypes-bare-string",
        {"dtypes": "float32"},
        TypeError,
        ["dtypes must be a list", "dtypes=['float32']"],
    ),
    ("dtypes-int", {"dtypes": ["int32"]}, TypeError, ["dtypes[0] must be a floating dtype"]),
    (
        "dtypes-no-tolerance",
        {"dtypes": ["float8_e4m3fn"]},
        ValueError,
        ["dtypes[0] must be one of", "DEFAULT_RTOL"],
    ),
    ("norms-bare-string", {"norms": "batch"}, TypeError, ["norms must be a list", "['batch']"]),
    ("norms-unknown", {"norms": ["group"]}, ValueError, ["norms[0]: norm must be None"]),
    ("dropouts-scalar", {"dropouts": 0.2}, TypeError, ["dropouts must be a list", "float 0.2"]),
    ("dropouts-one", {"dropouts": [1.0]}, ValueError, ["dropouts[0]: dropout must be a rate"]),
    (
        "no-case-left",
        {"depths": [1], "norms": ["batch"]},
        ValueError,
        ["parity_grid has no case to run", "depths=(2, 3)"],
    ),
    ("batch-zero", {"batch": 0}, ValueError, ["batch must be an integer >= 1", "got 0"]),
    ("seed-negative", {"seed": -1}, ValueError, ["seed must be an integer >= 0", "got -1"]),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragments"), [pytest.param(*case[1:], id=case[0]) for case in GRID_ERRORS]
)
def test_parity_grid_refuses_bad_arguments_when_called(kwargs, exc, fragments):
    with pytest.raises(exc) as info:
        jaxbp.parity_grid(**kwargs)  # at the call, before any case runs
    for fragment in fragments:
        assert fragment in str(info.value)


PROBLEM = (0, [4, 5, 3], 6, "mse", jnp.float64)

PROBLEM_ERRORS = [
    ("seed-negative", {0: -1}, ValueError, ["seed must be an integer >= 0", "got -1"]),
    ("sizes-one", {1: [4]}, ValueError, ["sizes must hold at least two layer widths"]),
    ("sizes-zero-width", {1: [4, 0, 3]}, ValueError, ["sizes[1] must be an integer >= 1"]),
    ("sizes-string", {1: "453"}, TypeError, ["sizes must be a list", "e.g. [6, 9, 4]"]),
    ("batch-zero", {2: 0}, ValueError, ["batch must be an integer >= 1", "got 0"]),
    ("loss-unknown", {3: "mae"}, ValueError, ["loss must be one of", "'mae'"]),
    ("dtype-int", {4: "int32"}, TypeError, ["dtype must be a floating dtype", "'int32'"]),
    ("dtype-none", {4: None}, TypeError, ["dtype must be a floating dtype", "got None"]),
    ("x-scale-nan", {"x_scale": float("nan")}, ValueError, ["x_scale must be a finite real"]),
    ("norm-unknown", {"norm": "group"}, ValueError, ["norm must be None, 'layer' or 'batch'"]),
]


@pytest.mark.parametrize(
    ("change", "exc", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in PROBLEM_ERRORS],
)
def test_random_problem_refuses_bad_arguments(change, exc, fragments):
    args = [change.get(i, a) for i, a in enumerate(PROBLEM)]
    kwargs = {k: v for k, v in change.items() if isinstance(k, str)}
    with pytest.raises(exc) as info:
        jaxbp.random_problem(*args, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


CHECK_ERRORS = [
    ("key-int", {"key": 0}, TypeError, ["key must be a jax.random key", "got int 0"]),
    (
        "key-int-with-fd",
        {"key": 0, "finite_differences": True},
        TypeError,
        ["key must be a jax.random key", "jax.random.key(0)"],
    ),
    (
        "key-batch",
        {"key": jax.random.split(jax.random.key(0), 2)},
        ValueError,
        ["key must be a single key", "shape (2,)"],
    ),
    (
        "rtol-string",
        {"rtol": "1e-5"},
        TypeError,
        ["rtol must be a finite real number >= 0", "'1e-5'"],
    ),
    (
        "rtol-negative",
        {"rtol": -1.0},
        ValueError,
        ["rtol must be a finite real number >= 0", "-1.0"],
    ),
    ("rtol-nan", {"rtol": float("nan")}, ValueError, ["rtol must be a finite real number", "nan"]),
    (
        "atol-inf",
        {"atol": float("inf")},
        ValueError,
        ["atol must be a finite real number >= 0", "inf"],
    ),
    (
        "atol-word",
        {"atol": "relative"},
        ValueError,
        ["atol must be a finite real number >= 0", "'auto'"],
    ),
    (
        "atol-list",
        {"atol": [0.1]},
        TypeError,
        ["atol must be a finite real number >= 0", "list [0.1]"],
    ),
    (
        "fd-string",
        {"finite_differences": "no"},
        TypeError,
        ["finite_differences must be True or False", "str 'no'"],
    ),
    (
        "compiled-none",
        {"compiled": None},
        TypeError,
        ["compiled must be True or False", "NoneType None", "compiled=False"],
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragments"), [pytest.param(*case[1:], id=case[0]) for case in CHECK_ERRORS]
)
def test_check_parity_refuses_bad_arguments(problem, kwargs, exc, fragments):
    with pytest.raises(exc) as info:
        jaxbp.check_parity(*problem, activation="tanh", loss="cross_entropy", **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_check_parity_takes_typed_and_raw_keys(problem):
    kw = dict(activation="relu", loss="cross_entropy", finite_differences=True)
    typed = jaxbp.check_parity(*problem, key=jax.random.key(3), **kw)
    raw = jaxbp.check_parity(*problem, key=jax.random.PRNGKey(3), **kw)
    assert typed.passed and [l.fd_err for l in typed.leaves] == [l.fd_err for l in raw.leaves]


# --- the verdict's scale, and the atol a network takes by default --------------------


def _report(rtol, atol, leaves):
    """A report over hand-made leaves `(abs_err, ref_norm)`, judged as check_parity does."""
    made = tuple(
        jaxbp.LeafParity(
            f"leaf{i}", err, err / ref if ref else float("inf"), abs_err=err, ref_norm=ref
        )
        for i, (err, ref) in enumerate(leaves)
    )
    report = jaxbp.ParityReport(made, "float64", rtol, None, True, atol=atol)
    return dataclasses.replace(report, passed=all(report.leaf_passed(l) for l in made))


SCALED = [  # (rtol, atol, leaves (abs_err, ref_norm), the worst scaled error by hand)
    ("relative", 1e-5, 0.0, [(1e-6, 1.0), (3e-6, 2.0)], 1.5e-6),
    ("with-atol", 1e-5, 1e-4, [(2e-6, 10.0), (1e-7, 0.0)], max(2e-6 / 20.0, 1e-7 / 10.0)),
    ("zero-leaf-no-atol", 1e-5, 0.0, [(1e-6, 1.0), (1e-9, 0.0)], float("inf")),
    ("exact-zero-leaf", 1e-5, 0.0, [(1e-6, 1.0), (0.0, 0.0)], 1e-6),
    ("absolute-within", 0.0, 1e-3, [(1e-4, 1.0), (5e-4, 0.0)], 0.0),
    ("absolute-beyond", 0.0, 1e-3, [(1e-4, 1.0), (2e-3, 5.0)], float("inf")),
    ("nothing-allowed", 0.0, 0.0, [(1e-9, 1.0)], float("inf")),
]


@pytest.mark.parametrize(
    ("rtol", "atol", "leaves", "want"), [c[1:] for c in SCALED], ids=[c[0] for c in SCALED]
)
def test_max_scaled_err_is_on_the_verdicts_scale(rtol, atol, leaves, want):
    """`err / (atol / rtol + ref)`, computed here by hand: a leaf of scale 0 with an error
    is inf (not a ZeroDivisionError), and the report passes exactly when the worst scaled
    error is at most rtol, with rtol = 0 (an absolute verdict) too."""
    report = _report(rtol, atol, leaves)
    assert report.max_scaled_err == pytest.approx(want, rel=1e-12)
    assert report.passed == (report.max_scaled_err <= rtol)


def test_max_scaled_err_of_a_real_report_by_hand():
    """A batch-norm network (the bias before each norm has an exactly-zero gradient),
    judged with atol="auto", whose tanh derivative is off by 1e-6: the worst scaled error
    recomputed from jax.grad and manual_grad in numpy. The error is that of the derivative,
    not rounding, so it does not hang on how XLA compiles either program (check_parity
    computes both gradients in one, this test each in its own)."""
    params, x, y = make_problem(3, [4, 6, 6, 3], 5, "cross_entropy", jnp.float64, norm="batch")
    off = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: (1 + 1e-6) * (1 - a * a))
    cfg = jaxbp.Config(off, "cross_entropy", norm="batch")
    report = jaxbp.check_parity(params, x, y, cfg, atol="auto", rtol=1e-5)
    manual = jax.jit(jaxbp.manual_grad)(params, x, y, cfg)
    auto = jax.jit(jax.grad(jaxbp.loss_fn))(params, x, y, cfg)
    manual, auto = ([np.asarray(g) for g in jax.tree.leaves(t)] for t in (manual, auto))
    norm = np.sqrt(sum(np.sum(a * a) for a in auto))
    assert report.atol == pytest.approx(report.rtol * norm, rel=1e-12)
    assert report.grad_norm == pytest.approx(norm, rel=1e-12)
    want = max(np.linalg.norm(m - a) / (norm + np.linalg.norm(a)) for m, a in zip(manual, auto))
    assert 1e-9 < want < 1e-5  # the derivative's error, well above rounding (about 1e-16)
    assert report.passed and report.max_scaled_err == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    ("norm", "want"), [(None, 0.0), ("layer", 0.0), ("batch", "auto")], ids=str
)
def test_atol_none_takes_the_networks_default(norm, want):
    """`atol=None`, the default, is "auto" exactly where a layer zeroes a gradient leaf
    (batch norm's preceding bias), as `jaxbp check` and `jaxbp train` judge; 0 elsewhere."""
    params, x, y = make_problem(2, [4, 6, 6, 3], 5, "cross_entropy", jnp.float64, norm=norm)
    cfg = jaxbp.Config("tanh", "cross_entropy", norm=norm)
    assert default_atol(params, cfg) == want
    assert default_atol(params, activation="tanh", loss="cross_entropy", norm=norm) == want
    by_default = jaxbp.check_parity(params, x, y, cfg, atol=None)
    assert by_default == jaxbp.check_parity(params, x, y, cfg, atol=want)
    assert (by_default.atol > 0) == (want == "auto")
    assert jaxbp.check_parity(params, x, y, cfg) == by_default and by_default.passed
    assert jaxbp.check_parity(params, x, y, cfg, atol=0).atol == 0.0


def test_a_failure_says_what_to_try():
    """The batch norm's preceding bias, judged purely relatively, fails on rounding: the
    report says atol='auto' and why; a wrong derivative in float64 is named as one; the
    same in float32 suggests float64 first."""
    params, x, y = make_problem(2, [4, 6, 6, 3], 5, "cross_entropy", jnp.float64, norm="batch")
    cfg = jaxbp.Config("tanh", "cross_entropy", norm="batch")
    strict = jaxbp.check_parity(params, x, y, cfg, atol=0)
    assert not strict.passed and strict.advice.startswith("atol='auto'")
    assert "try: atol='auto'" in str(strict)
    bad = jaxbp.Activation("tanh", jnp.tanh, lambda z, a: 1.01 * (1 - a * a))
    for dtype, start in ((jnp.float64, "a leaf off"), (jnp.float32, "the same check in")):
        problem = make_problem(0, [4, 6, 3], 5, "mse", dtype)
        report = jaxbp.check_parity(*problem, activation=bad, loss="mse")
        assert not report.passed and report.advice.startswith(start)
        assert str(report).splitlines()[-1] == f"try: {report.advice}"
    assert "try:" not in str(jaxbp.check_parity(*problem, activation="tanh", loss="mse"))
