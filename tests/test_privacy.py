"""Privacy accounting (`jaxbp._privacy`) against published figures and a closed form.

References, each independent of the code under test:

- Abadi et al. 2016, "Deep Learning with Differential Privacy" (arXiv:1607.00133), sec. 3.1:
  "with L = 0.01N, sigma = 4, delta = 1e-5 and T = 10000, we have epsilon ~ 1.26 using the
  moments accountant" (and ~ 9.34 by the strong composition theorem).
- TensorFlow Privacy, `tutorials/README.md` and `tutorials/mnist_dpsgd_tutorial.py`
  (github.com/tensorflow/privacy): MNIST, n = 60000, batch 256, `steps_per_epoch = 60000 //
  256 = 234`, delta = 1e-5, RDP orders `1.1, 1.2, ..., 10.9, 12, ..., 63`. Printed: "after 1
  epochs ... epsilon is: 1.00", "after 2 epochs ... 1.04", "after 60 epochs ... 2.92" at
  noise 1.12, and the table row "noise 1.2, 10 epochs, eps 1.20". (Its row "noise 0.6,
  30 epochs, eps 9.74" is not used: its settings give 9.75 here, 0.014 off, beyond the
  rounding of the printed figure.)

Both published figures come from the moments accountant's classical conversion
`epsilon = min_alpha RDP(alpha) + log(1 / delta) / (alpha - 1)`. We rebuild it from the RDP
curve of the event jaxbp composes, and require it to round to the printed value
(|error| <= 0.005, half a unit of the last printed digit), with TF Privacy's orders for
both (integer orders 2-32, the moments accountant's, give the same 1.2586 for Abadi's).
`dp_epsilon` itself uses the tighter conversion of Canonne, Kamath and Steinke (2020), so
it must be at most the published value, and at least the PLD accountant's near-exact one.

- For `sample_rate = 1` the mechanism is the Gaussian one, `T` steps at noise `sigma` equal
  one at `sigma / sqrt(T)`, and its exact epsilon solves Balle & Wang (2018, Thm. 8):
  `delta = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)`, solved here by bisection.
"""

import math
import sys
import time

import dp_accounting as dpa  # the `privacy` extra, part of `dev`
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp import dp_epoch_sampling, dp_epsilon, dp_noise_multiplier
from jaxbp._privacy.accounting import NOISE_TOL, PLD_INTERVAL, _event, _pld_interval

TFP_ORDERS = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
MNIST_Q = 256 / 60000

# (sigma, sample_rate, steps, delta, published epsilon)
PUBLISHED = [
    pytest.param(4.0, 0.01, 10000, 1e-5, 1.26, id="abadi2016-sec3.1-sigma4-q0.01-T10000"),
    pytest.param(1.12, MNIST_Q, 234, 1e-5, 1.00, id="tfprivacy-mnist-sigma1.12-epoch1"),
    pytest.param(1.12, MNIST_Q, 2 * 234, 1e-5, 1.04, id="tfprivacy-mnist-sigma1.12-epoch2"),
    pytest.param(1.12, MNIST_Q, 60 * 234, 1e-5, 2.92, id="tfprivacy-mnist-sigma1.12-epoch60"),
    pytest.param(1.2, MNIST_Q, 10 * 234, 1e-5, 1.20, id="tfprivacy-table-sigma1.2-epoch10"),
]
ROUNDING = 0.005  # the figures are printed with two decimals
# (sigma, sample_rate, steps, delta): the published runs
RUNS = [pytest.param(*case.values[:4], id=case.id) for case in PUBLISHED]


@pytest.mark.parametrize(("sigma", "q", "steps", "delta", "published"), PUBLISHED)
def test_classical_conversion_reproduces_published_epsilon(sigma, q, steps, delta, published):
    acct = dpa.rdp.RdpAccountant(TFP_ORDERS)
    acct.compose(_event(dpa, sigma, q, steps))  # the event dp_epsilon composes
    orders, rdp = np.asarray(TFP_ORDERS), np.asarray(acct.rdp)
    classical = float(np.min(rdp + math.log(1 / delta) / (orders - 1)))
    assert abs(classical - published) <= ROUNDING, (classical, published)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta", "published"), PUBLISHED)
def test_dp_epsilon_between_pld_and_published(sigma, q, steps, delta, published):
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    rdp, pld = dp_epsilon(**kw), dp_epsilon(**kw, accountant="pld")
    assert pld <= rdp <= published + ROUNDING, (pld, rdp, published)


def _gaussian_epsilon(s, delta):
    """Exact epsilon of the Gaussian mechanism, sensitivity 1, noise s (Balle & Wang 2018)."""

    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_of(eps):
        return phi(1 / (2 * s) - eps * s) - math.exp(eps) * phi(-1 / (2 * s) - eps * s)

    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(100):
        lo, hi = ((lo + hi) / 2, hi) if delta_of((lo + hi) / 2) > delta else (lo, (lo + hi) / 2)
    return hi


@pytest.mark.parametrize(
    ("sigma", "steps", "delta"),
    [
        pytest.param(4.0, 100, 1e-5, id="sigma4-T100"),
        pytest.param(10.0, 100, 1e-5, id="sigma10-T100"),
        pytest.param(2.0, 10, 1e-6, id="sigma2-T10-delta1e-6"),
    ],
)
def test_full_batch_matches_exact_gaussian(sigma, steps, delta):
    exact = _gaussian_epsilon(sigma / math.sqrt(steps), delta)
    kw = dict(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=delta)
    assert dp_epsilon(**kw, accountant="pld") == pytest.approx(exact, rel=1e-5)
    rdp = dp_epsilon(**kw)
    assert exact <= rdp <= 1.15 * exact  # an upper bound, 6-11% above on these settings


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), RUNS)
def test_pld_is_dp_accountings_default_grid_on_ordinary_runs(sigma, q, steps, delta):
    """Where the default grid is affordable, the result is exactly dp-accounting's own."""
    acct = dpa.pld.PLDAccountant()  # value_discretization_interval=1e-4
    acct.compose(
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    )
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert _pld_interval(dpa, sigma, q, steps, delta) == PLD_INTERVAL
    assert dp_epsilon(**kw, accountant="pld") == acct.get_epsilon(delta)


# (sigma, sample_rate, steps): on the default grid, one step alone would be 0.8 to 60
# million points (the first took over 170 s, the others 6-30 s).
SMALL_NOISE = [
    pytest.param(0.01, 0.5, 10, id="sigma0.01-q0.5-T10"),
    pytest.param(0.05, 0.5, 4, id="sigma0.05-q0.5-T4"),
    pytest.param(0.1, 0.2, 100, id="sigma0.1-q0.2-T100"),
]


@pytest.mark.parametrize(("sigma", "q", "steps"), SMALL_NOISE)
def test_small_noise_pld_is_quick_and_a_tight_upper_bound(sigma, q, steps):
    """A coarser grid, and still between dp-accounting's optimistic (privacy buckets,
    rounded down: a lower estimate) and pessimistic estimates, within 0.1%."""
    interval = _pld_interval(dpa, sigma, q, steps, 1e-5)
    assert interval > PLD_INTERVAL
    start = time.perf_counter()
    eps = dp_epsilon(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="pld"
    )
    assert time.perf_counter() - start < 60  # a few seconds; was up to 170 s
    _, lower = _pessimistic_and_optimistic_epsilon(sigma, q, steps, 1e-5)
    assert lower <= eps <= lower * (1 + 1e-3)


@pytest.mark.parametrize(
    ("sigma", "steps"), [(0.05, 1), (0.2, 16)], ids=["sigma0.05-T1", "sigma0.2-T16"]
)
def test_small_noise_full_batch_matches_exact_gaussian(sigma, steps):
    """Full batches at small noise, on a coarsened grid, against the closed form."""
    assert _pld_interval(dpa, sigma, 1.0, steps, 1e-5) > PLD_INTERVAL
    exact = _gaussian_epsilon(sigma / math.sqrt(steps), 1e-5)  # 284.39
    kw = dict(noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=1e-5)
    assert exact <= dp_epsilon(**kw, accountant="pld") <= exact * (1 + 1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_no_noise_is_infinite_and_no_step_is_free(accountant):
    kw = dict(sample_rate=0.01, delta=1e-5, accountant=accountant)
    assert dp_epsilon(noise_multiplier=0.0, steps=100, **kw) == math.inf
    assert dp_epsilon(noise_multiplier=0, steps=0, **kw) == 0.0
    assert dp_epsilon(noise_multiplier=1.0, steps=0, **kw) == 0.0


def test_more_noise_less_epsilon_more_steps_more():
    eps = [
        dp_epsilon(noise_multiplier=s, sample_rate=0.01, steps=1000, delta=1e-5)
        for s in (0.8, 1, 2)
    ]
    assert eps[0] > eps[1] > eps[2]
    eps = [
        dp_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=t, delta=1e-5)
        for t in (10, 100, 1000)
    ]
    assert eps[0] < eps[1] < eps[2]


def test_accepts_numpy_and_array_scalars():
    base = dp_epsilon(noise_multiplier=1.12, sample_rate=MNIST_Q, steps=234, delta=1e-5)
    got = dp_epsilon(
        noise_multiplier=np.float64(1.12),
        sample_rate=jnp.asarray(MNIST_Q),
        steps=np.int64(234),
        delta=np.asarray(1e-5),
    )
    assert got == base


@pytest.mark.parametrize(
    ("n", "batch_size", "epochs", "expected"),
    [
        pytest.param(60000, 256, 60, (256 / 60000, 60 * 235), id="mnist-last-batch-filled"),
        pytest.param(1438, 32, 60, (32 / 1438, 60 * 45), id="digits-train-split"),
        pytest.param(100, 100, 3, (1.0, 3), id="full-batch"),
        pytest.param(10, 5, 0, (0.5, 0), id="no-epochs"),
    ],
)
def test_epoch_sampling(n, batch_size, epochs, expected):
    assert tuple(dp_epoch_sampling(n=n, batch_size=batch_size, epochs=epochs)) == expected


def test_epoch_sampling_counts_the_steps_jaxbp_runs():
    n, batch_size = 10, 3
    params = jaxbp.init_mlp(jax.random.key(0), [2, 3, 2])
    optimizer = optax.sgd(0.1)
    epoch = jaxbp.make_train_epoch(
        optimizer, batch_size=batch_size, activation="tanh", loss="cross_entropy"
    )
    x, y = jnp.ones((n, 2)), jnp.arange(n) % 2
    _, _, metrics = epoch(params, optimizer.init(params), jax.random.key(1), x, y)
    assert dp_epoch_sampling(n=n, batch_size=batch_size, epochs=1).steps == metrics["loss"].shape[0]


@pytest.mark.parametrize(
    ("accountant", "target", "q", "steps"),
    [
        pytest.param("rdp", 2.5165, MNIST_Q, 60 * 234, id="rdp-tfprivacy-epoch60"),
        pytest.param("rdp", 8.0, 0.02, 2700, id="rdp-eps8"),
        pytest.param("pld", 1.0, 0.01, 10000, id="pld-abadi-settings"),
    ],
)
def test_noise_multiplier_is_the_smallest_that_meets_epsilon(accountant, target, q, steps):
    kw = dict(sample_rate=q, steps=steps, delta=1e-5, accountant=accountant)
    sigma = dp_noise_multiplier(epsilon=target, **kw)
    assert dp_epsilon(noise_multiplier=sigma, **kw) <= target
    assert dp_epsilon(noise_multiplier=sigma - 2e-4, **kw) > target


def _pld_event(sigma, q, steps):
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


def test_pld_noise_multiplier_is_dp_accountings_own_on_ordinary_runs():
    """Where the noise is above 1 on the default grid, the calibration is exactly
    dp-accounting's `calibrate_dp_mechanism` with its default accountant and bracket."""
    target, q, steps = 0.5, 0.01, 500
    own = dpa.calibrate_dp_mechanism(
        dpa.pld.PLDAccountant,
        lambda sigma: _pld_event(sigma, q, steps),
        target,
        1e-5,
        dpa.LowerEndpointAndGuess(0.0, 1.0),
        tol=1e-4,
    )
    assert own > 1
    got = dp_noise_multiplier(
        epsilon=target, sample_rate=q, steps=steps, delta=1e-5, accountant="pld"
    )
    assert got == own


def _pessimistic_and_optimistic_epsilon(sigma, q, steps, delta):
    """dp-accounting's PLD, built directly on the grid dp_epsilon reports for this noise: its
    pessimistic estimate (an upper bound on the true epsilon) and its optimistic one (a lower
    bound: privacy buckets, each loss rounded down)."""
    interval = _pld_interval(dpa, sigma, q, steps, delta)
    acct = dpa.pld.PLDAccountant(value_discretization_interval=interval)
    upper = acct.compose(_pld_event(sigma, q, steps)).get_epsilon(delta)
    lower = (
        dpa.pld.privacy_loss_distribution.from_gaussian_mechanism(
            sigma,
            sampling_prob=q,
            pessimistic_estimate=False,
            use_connect_dots=False,
            value_discretization_interval=interval,
        )
        .self_compose(steps)
        .get_epsilon_for_delta(delta)
    )
    return upper, lower


def test_small_noise_pld_noise_multiplier_is_quick_and_meets_the_target():
    """Epsilon 565.6 at sample_rate 0.5 over 10 steps, noise about 0.1: dp-accounting's search
    on its default grid took 107 s (one dp_epsilon there: 2 s). The noise returned meets the
    target on dp_epsilon's grid, and 1e-4 less noise misses it even by dp-accounting's
    optimistic estimate, a lower bound on the true epsilon: it is the smallest within 1e-4
    for any grid."""
    target, q, steps, delta = 565.6, 0.5, 10, 1e-5
    start = time.perf_counter()
    sigma = dp_noise_multiplier(
        epsilon=target, sample_rate=q, steps=steps, delta=delta, accountant="pld"
    )
    assert time.perf_counter() - start < 60  # 5 s measured on an idle machine; was 107 s
    kw = dict(sample_rate=q, steps=steps, delta=delta, accountant="pld")
    assert dp_epsilon(noise_multiplier=sigma, **kw) <= target
    _, lower = _pessimistic_and_optimistic_epsilon(sigma - NOISE_TOL, q, steps, delta)
    assert lower > target


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [
        pytest.param(0.01, 0.5, 10, id="sigma0.01-q0.5-T10"),
        pytest.param(0.1, 0.2, 100, id="sigma0.1-q0.2-T100"),
        pytest.param(0.8, 0.05, 50, id="sigma0.8-q0.05-T50-default-grid"),
    ],
)
def test_pld_round_trip_below_noise_one(sigma, q, steps):
    """dp-accounting's own epsilon for a noise below 1 (on the grid dp_epsilon reports), and
    back: the noise found is that noise, within the 1e-4 tolerance, never below it."""
    target, _ = _pessimistic_and_optimistic_epsilon(sigma, q, steps, 1e-5)
    start = time.perf_counter()
    got = dp_noise_multiplier(
        epsilon=target, sample_rate=q, steps=steps, delta=1e-5, accountant="pld"
    )
    assert time.perf_counter() - start < 60  # 2.5-4 s measured on an idle machine
    assert sigma <= got < sigma + NOISE_TOL


@pytest.mark.parametrize(
    ("sigma", "steps"), [(0.05, 1), (0.2, 16)], ids=["sigma0.05-T1", "sigma0.2-T16"]
)
def test_small_noise_full_batch_noise_multiplier_matches_exact_gaussian(sigma, steps):
    """Full batches: the exact epsilon of noise sigma (Balle & Wang), and back. The PLD is an
    upper bound, so the noise found is at least sigma, and it is within the tolerance."""
    exact = _gaussian_epsilon(sigma / math.sqrt(steps), 1e-5)
    kw = dict(sample_rate=1.0, steps=steps, delta=1e-5, accountant="pld")
    got = dp_noise_multiplier(epsilon=exact, **kw)
    assert sigma <= got < sigma + NOISE_TOL
    assert dp_epsilon(noise_multiplier=got, **kw) <= exact


def test_noise_multiplier_round_trip_and_no_steps():
    sigma = dp_noise_multiplier(epsilon=2.5165, sample_rate=MNIST_Q, steps=60 * 234, delta=1e-5)
    assert sigma == pytest.approx(1.12, abs=2e-4)  # dp_epsilon(1.12, ...) = 2.51649
    assert dp_noise_multiplier(epsilon=1.0, sample_rate=0.01, steps=0, delta=1e-5) == 0.0


OK = dict(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5)
OK_TARGET = dict(epsilon=3.0, sample_rate=0.01, steps=100, delta=1e-5)


def _eps(**overrides):
    return dp_epsilon, {**OK, **overrides}


def _sigma(**overrides):
    return dp_noise_multiplier, {**OK_TARGET, **overrides}


# (id, (function, keywords), exception, fragments the message must contain)
ERRORS = [
    (
        "sigma-negative",
        _eps(noise_multiplier=-1.0),
        ValueError,
        ["noise_multiplier must be >= 0", "-1.0", "e.g. 1.1"],
    ),
    (
        "sigma-nan",
        _eps(noise_multiplier=math.nan),
        ValueError,
        ["noise_multiplier must be finite", "nan"],
    ),
    (
        "sigma-inf",
        _eps(noise_multiplier=math.inf),
        ValueError,
        ["noise_multiplier must be finite", "inf"],
    ),
    (
        "sigma-str",
        _eps(noise_multiplier="1.0"),
        TypeError,
        ["noise_multiplier must be a real number", "str '1.0'"],
    ),
    (
        "sigma-bool",
        _eps(noise_multiplier=True),
        TypeError,
        ["noise_multiplier must be a real number", "bool True"],
    ),
    (
        "sigma-vector",
        _eps(noise_multiplier=np.ones(2)),
        TypeError,
        ["noise_multiplier must be a real number", "ndarray"],
    ),
    (
        "q-zero",
        _eps(sample_rate=0.0),
        ValueError,
        ["sample_rate must be in (0, 1]", "got 0.0", "batch_size / n"],
    ),
    (
        "q-batch-size",
        _eps(sample_rate=256),
        ValueError,
        ["sample_rate must be in (0, 1]", "got 256", "dp_epoch_sampling"],
    ),
    (
        "steps-float",
        _eps(steps=10.0),
        TypeError,
        ["steps must be an integer", "float 10.0", "int(10.0)"],
    ),
    (
        "steps-negative",
        _eps(steps=-1),
        ValueError,
        ["steps must be an integer >= 0", "got -1", "Pass an integer >= 0"],
    ),
    (
        "delta-zero",
        _eps(delta=0.0),
        ValueError,
        ["delta must be in (0, 1)", "got 0.0", "delta=1e-5"],
    ),
    ("delta-one", _eps(delta=1), ValueError, ["delta must be in (0, 1)", "got 1"]),
    (
        "accountant-name",
        _eps(accountant="moments"),
        ValueError,
        ["accountant must be one of ['pld', 'rdp']", "'moments'"],
    ),
    (
        "accountant-type",
        _eps(accountant=None),
        TypeError,
        ["accountant must be a string", "NoneType None"],
    ),
    (
        "epsilon-zero",
        _sigma(epsilon=0.0),
        ValueError,
        ["epsilon must be > 0", "got 0.0", "epsilon=3.0"],
    ),
    ("epsilon-inf", _sigma(epsilon=math.inf), ValueError, ["epsilon must be finite", "inf"]),
    ("epsilon-delta", _sigma(delta=-1e-5), ValueError, ["delta must be in (0, 1)", "-1e-05"]),
]


@pytest.mark.parametrize(
    ("call", "exc", "fragments"), [pytest.param(*case[1:], id=case[0]) for case in ERRORS]
)
def test_bad_arguments_raise_one_clear_error(call, exc, fragments):
    fn, kw = call
    with pytest.raises(exc) as info:
        fn(**kw)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kw", "exc", "fragments"),
    [
        pytest.param(
            {"n": 100, "batch_size": 101, "epochs": 1},
            ValueError,
            ["batch_size must be at most n", "101 > n=100", "at most 100"],
            id="batch-over-n",
        ),
        pytest.param(
            {"n": 0, "batch_size": 1, "epochs": 1},
            ValueError,
            ["n must be an integer >= 1", "got 0"],
            id="n-zero",
        ),
        pytest.param(
            {"n": 10, "batch_size": 2, "epochs": 1.5},
            TypeError,
            ["epochs must be an integer", "float 1.5", "Pass an int"],
            id="epochs-float",
        ),
    ],
)
def test_bad_epoch_sampling(kw, exc, fragments):
    with pytest.raises(exc) as info:
        dp_epoch_sampling(**kw)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_extra_names_it_and_arguments_are_checked_first(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jaxbp\[privacy\]'"):
        dp_epsilon(**OK)
    with pytest.raises(ValueError, match="delta must be in"):
        dp_epsilon(**{**OK, "delta": 2.0})


def test_extreme_noise_is_answered_quietly(caplog):
    """At sigma 1e30 every order of the RDP series underflows: dp-accounting warns ~100
    times and answers 0; jaxbp answers 0 without the flood."""
    with caplog.at_level("WARNING"):
        eps = jaxbp.dp_epsilon(noise_multiplier=1e30, sample_rate=0.02, steps=100, delta=1e-5)
    assert eps == 0.0
    assert not [r for r in caplog.records if r.name == "absl"]


def test_tiny_noise_pld_is_a_finite_bound_not_an_overflow():
    """sigma = 3e-4 asked dp-accounting for a grid coarse enough that its discretisation
    overflowed (OverflowError); the grid is capped, and the result is a finite upper
    bound, below RDP's (PLD is the tighter of the two)."""
    kw = dict(noise_multiplier=3e-4, sample_rate=0.01, steps=100, delta=1e-5)
    pld = jaxbp.dp_epsilon(**kw, accountant="pld")
    assert math.isfinite(pld) and 1e6 < pld < jaxbp.dp_epsilon(**kw)


# --- the tracker: a run's epsilon after each epoch ---------------------------------------------

TRACKED = [
    pytest.param(1.1, 32 / 1438, 45, 1e-4, id="digits-sigma1.1-batch32"),
    pytest.param(1.12, MNIST_Q, 234, 1e-5, id="tfprivacy-mnist-sigma1.12"),
    pytest.param(0.6, 0.5, 2, 1e-3, id="small-noise-big-rate"),
]


@pytest.mark.parametrize(("sigma", "q", "per_epoch", "delta"), TRACKED)
def test_tracker_is_dp_epsilon_after_every_epoch(sigma, q, per_epoch, delta):
    """The RDP of one step scaled by the steps taken is the composition dp_epsilon runs:
    the same number, epoch after epoch, and monotone."""
    tracker = jaxbp.DPTracker.of(noise_multiplier=sigma, sample_rate=q, delta=delta)
    spent = []
    for epoch in range(1, 6):
        tracker = tracker.advanced(per_epoch)
        want = dp_epsilon(
            noise_multiplier=sigma, sample_rate=q, steps=epoch * per_epoch, delta=delta
        )
        assert tracker.steps == epoch * per_epoch
        assert tracker.epsilon == want
        spent.append(tracker.epsilon)
    assert spent == sorted(spent) and spent[0] > 0


def test_tracker_resumes_where_a_run_stopped_and_tracks_the_published_run():
    """A tracker built at the steps a checkpoint has taken goes on as the uninterrupted
    one; and it follows TF Privacy's MNIST run to its printed 60-epoch figure (2.92 with the
    classical conversion; the tighter one is at most that)."""
    kw = dict(noise_multiplier=1.12, sample_rate=MNIST_Q, delta=1e-5)
    straight = jaxbp.DPTracker.of(**kw).advanced(30 * 234).advanced(30 * 234)
    resumed = jaxbp.DPTracker.of(**kw, steps=30 * 234).advanced(30 * 234)
    assert resumed == straight and resumed.epsilon == straight.epsilon
    assert 2.5 < straight.epsilon <= 2.92 + ROUNDING


def test_tracker_edges():
    tracker = jaxbp.DPTracker.of(noise_multiplier=0.0, sample_rate=0.1, delta=1e-5)
    assert tracker.epsilon == 0.0 and tracker.advanced(0).epsilon == 0.0
    assert tracker.advanced(1).epsilon == math.inf
    noisy = jaxbp.DPTracker.of(noise_multiplier=np.float32(2.0), sample_rate=0.1, delta=1e-5)
    assert type(noisy.noise_multiplier) is float and noisy.advanced(3).steps == 3


@pytest.mark.parametrize(
    ("call", "exc", "fragments"),
    [
        pytest.param(
            lambda: jaxbp.DPTracker.of(noise_multiplier=-1.0, sample_rate=0.1, delta=1e-5),
            ValueError,
            ["noise_multiplier must be >= 0", "-1.0", "e.g. 1.1"],
            id="negative-noise",
        ),
        pytest.param(
            lambda: jaxbp.DPTracker.of(noise_multiplier=1.0, sample_rate=1.5, delta=1e-5),
            ValueError,
            ["sample_rate must be in (0, 1]", "1.5"],
            id="rate-over-one",
        ),
        pytest.param(
            lambda: jaxbp.DPTracker.of(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5).advanced(
                -2
            ),
            ValueError,
            ["steps must be an integer >= 0", "got -2"],
            id="steps-back",
        ),
        pytest.param(
            lambda: jaxbp.DPTracker.of(noise_multiplier="1", sample_rate=0.1, delta=1e-5),
            TypeError,
            ["noise_multiplier must be a real number", "str '1'"],
            id="noise-str",
        ),
    ],
)
def test_tracker_bad_arguments(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_tracker_names_the_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jaxbp\[privacy\]'"):
        jaxbp.DPTracker.of(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
