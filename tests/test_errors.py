"""Bad input raises a clear ValueError/TypeError, eagerly and under jax.jit (trace time)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp

KEY = jax.random.key(0)
PARAMS = jaxbp.init_mlp(KEY, [4, 5, 3], dtype=jnp.float64)
X = jnp.ones((6, 4))
LABELS = jnp.asarray([0, 1, 2, 0, 1, 2])
Y = jnp.zeros((6, 3))
BASE = dict(activation="tanh", loss="cross_entropy")

# (id, params, x, y, keyword overrides, exception, fragments the message must contain)
CASES = [
    ("x-width", PARAMS, jnp.ones((6, 7)), LABELS, {}, ValueError, ["x has 7 features", "n_0 = 4"]),
    ("y-batch", PARAMS, X, LABELS[:5], {}, ValueError, ["same batch size as x (6)", "(5,)"]),
    (
        "empty-batch",
        PARAMS,
        jnp.ones((0, 4)),
        LABELS[:0],
        {},
        ValueError,
        ["at least one sample", "(0, 4)"],
    ),
    ("x-1d", PARAMS, jnp.ones(4), LABELS, {}, ValueError, ["x must be 2-d", "(4,)", "x[None, :]"]),
    ("x-3d", PARAMS, jnp.ones((2, 3, 4)), LABELS, {}, ValueError, ["x must be 2-d", "(2, 3, 4)"]),
    (
        "layers-do-not-chain",
        [PARAMS[0], {"W": jnp.ones((4, 3)), "b": jnp.zeros(3)}],
        X,
        LABELS,
        {},
        ValueError,
        ["layers must chain", "params[1]['W'] has 4 rows", "5 outputs"],
    ),
    (
        "params-dict",
        PARAMS[0],
        X,
        LABELS,
        {},
        TypeError,
        ["params must be a non-empty list", "got dict"],
    ),
    ("params-empty", [], X, LABELS, {}, ValueError, ["non-empty list", "empty list"]),
    ("params-keys", [{"w": 1, "b": 2}], X, LABELS, {}, TypeError, ["params[0] is ['b', 'w']"]),
    (
        "params-tuple-layer",
        [(PARAMS[0]["W"], PARAMS[0]["b"])],
        X,
        LABELS,
        {},
        TypeError,
        ["params[0] is 'tuple'"],
    ),
    (
        "b-shape",
        [{"W": jnp.ones((4, 3)), "b": jnp.zeros(2)}],
        X,
        LABELS,
        {},
        ValueError,
        ["params[0] must hold W of shape (n_in, n_out)", "b (2,)"],
    ),
    (
        "integer-params",
        [{"W": jnp.ones((4, 3), int), "b": jnp.zeros(3, int)}],
        X,
        LABELS,
        {},
        TypeError,
        ["params[0]['W'] must be floating point", "int"],
    ),
    (
        "activation-name",
        PARAMS,
        X,
        LABELS,
        {"activation": "swish"},
        ValueError,
        ["activation must be one of", "'relu'", "'swish'"],
    ),
    (
        "activation-type",
        PARAMS,
        X,
        LABELS,
        {"activation": 3},
        TypeError,
        ["activation must be a name", "int 3"],
    ),
    (
        "loss-name",
        PARAMS,
        X,
        LABELS,
        {"loss": "hinge"},
        ValueError,
        ["loss must be one of", "'mse'", "'hinge'"],
    ),
    (
        "reduction-name",
        PARAMS,
        X,
        LABELS,
        {"reduction": "max"},
        ValueError,
        ["reduction must be one of", "'sum'", "'max'"],
    ),
    (
        "output-name",
        PARAMS,
        X,
        Y,
        {"loss": "mse", "output_activation": "softmin"},
        ValueError,
        ["output_activation must be 'softmax'", "'softmin'"],
    ),
    (
        "ce-non-canonical-output",
        PARAMS,
        X,
        LABELS,
        {"output_activation": "sigmoid"},
        ValueError,
        [
            "loss='cross_entropy' takes only its canonical output activation 'softmax'",
            "'sigmoid'",
            "loss='mse'",
        ],
    ),
    (
        "bce-non-canonical-output",
        PARAMS,
        X,
        Y,
        {"loss": "binary_cross_entropy", "output_activation": "identity"},
        ValueError,
        ["canonical output activation 'sigmoid'", "'identity'"],
    ),
    (
        "mse-target-width",
        PARAMS,
        X,
        jnp.zeros((6, 2)),
        {"loss": "mse"},
        ValueError,
        ["must have shape (6, 3)", "3 units", "(6, 2)"],
    ),
    (
        "bce-target-1d-for-3-units",
        PARAMS,
        X,
        jnp.zeros(6),
        {"loss": "binary_cross_entropy"},
        ValueError,
        ["must have shape (6, 3)", "(6,)"],
    ),
    (
        "ce-prob-width",
        PARAMS,
        X,
        jnp.zeros((6, 2)),
        {},
        ValueError,
        ["probability rows (6, 3)", "(6, 2)"],
    ),
    (
        "ce-float-labels",
        PARAMS,
        X,
        LABELS.astype(float),
        {},
        ValueError,
        ["integer labels (6,)", "y.astype(int)"],
    ),
    (
        "ce-integer-2d",
        PARAMS,
        X,
        jnp.zeros((6, 3), int),
        {},
        ValueError,
        ["integer y for loss='cross_entropy' must be labels"],
    ),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("fn", ["loss_fn", "manual_grad", "backprop"])
@pytest.mark.parametrize(("name", "params", "x", "y", "kw", "exc", "fragments"), CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_bad_input(mode, name, params, x, y, kw, exc, fragments, fn):
    del name
    f = getattr(jaxbp, fn)
    kw = {**BASE, **kw}
    if mode == "jit":
        f = jax.jit(f, static_argnames=tuple(kw))
    with pytest.raises(exc) as info:
        f(params, x, y, **kw)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_forward_checks_too():
    with pytest.raises(ValueError, match="x has 7 features"):
        jaxbp.forward(PARAMS, jnp.ones((2, 7)), activation="relu")
    with pytest.raises(ValueError, match="output_activation must be 'softmax'"):
        jaxbp.forward(PARAMS, X, activation="relu", output_activation="nope")


@pytest.mark.parametrize(
    ("y", "fragment"),
    [
        (jnp.asarray([0, 1, 3, 0, 1, 2]), "y[2] = 3"),
        (jnp.asarray([0, -1, 1, 0, 1, 2]), "y[1] = -1"),
    ],
    ids=["label-too-large", "label-negative"],
)
def test_labels_out_of_range_eagerly(y, fragment):
    with pytest.raises(ValueError, match=r"labels in y must lie in \[0, 3\)") as info:
        jaxbp.manual_grad(PARAMS, X, y, **BASE)
    assert fragment in str(info.value)


def test_bce_targets_outside_unit_interval_eagerly():
    y = Y.at[4, 1].set(1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; row 4"):
        jaxbp.loss_fn(PARAMS, X, y, activation="tanh", loss="binary_cross_entropy")


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"sizes": [3]}, ValueError, "at least two widths"),
        ({"sizes": []}, ValueError, "at least two widths"),
        ({"sizes": [3, 0, 2]}, ValueError, "sizes[1] is 0"),
        ({"sizes": [3, 2.5]}, ValueError, "sizes[1] is 2.5"),
        ({"sizes": [3, -1]}, ValueError, "sizes[1] is -1"),
        ({"sizes": [3, 2], "init": "xavier"}, ValueError, "init must be one of ['glorot_normal'"),
        ({"sizes": [3, 2], "dtype": jnp.int32}, TypeError, "dtype must be a floating dtype"),
    ],
    ids=[
        "one-size",
        "no-sizes",
        "zero-width",
        "float-width",
        "negative-width",
        "init-name",
        "int-dtype",
    ],
)
def test_init_mlp_errors(kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        jaxbp.init_mlp(KEY, **kwargs)
    assert fragment in str(info.value)


def test_no_silent_nan_for_valid_extremes():
    """Not an error case: saturated inputs give finite gradients, not NaN."""
    x = jnp.full((6, 4), 1e3)
    g = jaxbp.manual_grad(PARAMS, x, LABELS, activation="sigmoid", loss="cross_entropy")
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
