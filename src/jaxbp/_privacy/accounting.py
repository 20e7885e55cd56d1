"""Privacy accounting for DP-SGD: the epsilon a run spends, by Google's `dp-accounting`.

A DP-SGD step (`jaxbp.make_dp_train_step`) is a subsampled Gaussian mechanism: each
example's clipped gradient enters the sum with norm at most `C`, and the sum gets
`N(0, (sigma C)^2 I)`. Composed over `steps` steps with sampling rate `q`, the run is
`(epsilon, delta)`-DP with respect to adding or removing one example, where the
accountant bounds `epsilon` for the `delta` you choose (Abadi et al. 2016, "Deep Learning
with Differential Privacy", arXiv:1607.00133).

**What sampling jaxbp does, and what the number means.** The accountants here analyse
Poisson sampling: every step, each of the `n` examples joins the batch independently with
probability `q = batch_size / n`. jaxbp's epochs (`make_train_epoch`) do not do that.
They shuffle: one uniform permutation per epoch, cut into `k = ceil(n / batch_size)`
batches of fixed size, each example used once per epoch (and, when `batch_size` does not
divide `n`, the first `k * batch_size - n` examples of the permutation a second time, to
fill the last batch). The epsilon computed for the Poisson
mechanism with `q = batch_size / n` and `steps = epochs * ceil(n / batch_size)` is what
common practice reports for shuffled runs (TensorFlow Privacy's MNIST tutorial does so),
but it is not a proven guarantee for shuffling, which is a different mechanism: Chua et
al. (ICML 2024, "How Private are DP-SGD Implementations?", arXiv:2403.17673) show that
shuffled batches can have a substantially larger epsilon than the Poisson analysis gives
at the same noise, their NeurIPS 2024 follow-up (arXiv:2411.04205) extends the gap to many
epochs, and an audit of shuffled DP-SGD ("To Shuffle or not to Shuffle", arXiv:2411.10614)
measured leakage up to 4 times the reported epsilon. Read the result as "what this run would spend
with Poisson sampling": a figure to compare runs by, not a certificate.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from numbers import Real
from typing import Any, NamedTuple

import numpy as np

from jaxbp._core.validate import check_int

_INSTALL = "pip install 'jaxbp[privacy]' (or pip install dp-accounting)"


class DPSampling(NamedTuple):
    """What the accountant needs from a run of epochs: `sample_rate` `q` and `steps`."""

    sample_rate: float
    steps: int


def dp_epoch_sampling(*, n: int, batch_size: int, epochs: int) -> DPSampling:
    """`(sample_rate, steps)` of `epochs` jaxbp epochs over `n` examples in batches of `batch_size`.

    `sample_rate = batch_size / n` (each example's chance to be in a batch, had the batch
    been Poisson-sampled) and `steps = epochs * ceil(n / batch_size)` (jaxbp's epoch runs
    full batches, the last one filled up from the same permutation). Pass both on to
    `dp_epsilon`; see this module's docstring for what the approximation means.
    """
    n = check_int("n", n, 1, "the number of training examples, e.g. len(x_train)")
    batch_size = check_int("batch_size", batch_size, 1, "the batch size of the DP epoch")
    epochs = check_int("epochs", epochs, 0, "the number of epochs trained")
    if batch_size > n:
        raise ValueError(
            f"batch_size must be at most n (a jaxbp epoch needs one full batch); got "
            f"batch_size={batch_size} > n={n}. Use a batch_size of at most {n}."
        )
    return DPSampling(batch_size / n, epochs * -(-n // batch_size))


def dp_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The epsilon of `steps` DP-SGD steps at `delta`, for Poisson sampling at `sample_rate`.

    **Arguments** (all keyword-only):

    - `noise_multiplier`: `sigma >= 0`, as passed to `make_dp_train_step` (noise std over
      `l2_clip`). `0` adds no noise and gives `math.inf`: no finite epsilon exists.
    - `sample_rate`: `0 < q <= 1`, the chance of each example to be in a step's batch;
      for jaxbp's epochs `batch_size / n` (`dp_epoch_sampling`).
    - `steps`: an integer `>= 0`. `0` steps give `0.0`.
    - `delta`: `0 < delta < 1`; the usual choice is below `1 / n`.
    - `accountant`: `"rdp"` (default) or `"pld"`, from `dp-accounting`:
      - `"rdp"`: Renyi DP (Mironov 2017), the moments accountant of Abadi et al. with the
        tighter conversion to `(epsilon, delta)` of Canonne, Kamath and Steinke (2020).
        20-120 ms a call. The default: fast enough to call every epoch and in a
        calibration loop, and what TensorFlow Privacy's privacy statement uses by default.
      - `"pld"`: the privacy loss distribution, composed numerically (Koskela et al.
        2020), nearly exact for the Poisson mechanism: about 7-16% smaller than `"rdp"`
        over many steps, up to 5 times smaller over a handful, but 0.05-4 s a call. Its
        cost grows with the grid the distribution is discretised on (dp-accounting's
        `value_discretization_interval`, default 1e-4), which small noise (`sigma` below
        about 0.5, or 1 at `sample_rate=1`) or a huge epsilon (above about 100) makes
        long: `sigma=0.01, sample_rate=0.5, steps=10` needs 60 million points a step and
        took over 170 s. There the grid is coarsened just enough to keep to about a
        million points, a few seconds a call; the result is still an upper bound
        (dp-accounting rounds each privacy loss up), looser by 2e-7 to 5e-4 of epsilon
        where measured. Elsewhere it is the default grid's result, unchanged.

    Both are upper bounds on the epsilon of the Poisson-sampled mechanism; neither is a
    proof for jaxbp's shuffled epochs (see the module docstring). Needs the `privacy`
    extra: `pip install 'jaxbp[privacy]'`.
    """
    sigma = _real("noise_multiplier", noise_multiplier, "the noise_multiplier of the run, e.g. 1.1")
    if sigma < 0:
        raise ValueError(
            f"noise_multiplier must be >= 0 (noise std / l2_clip, as in make_dp_train_step); "
            f"got {noise_multiplier!r}. Pass the noise_multiplier the run used, e.g. 1.1."
        )
    q, steps, delta = _check_run(sample_rate, steps, delta)
    make = _accountant_factory(accountant)
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    dpa = _dp_accounting()
    interval = _pld_interval(dpa, sigma, q, steps, delta) if accountant == "pld" else PLD_INTERVAL
    return _epsilon(make(interval), dpa, sigma, q, steps, delta)


def _epsilon(acct: Any, dpa: Any, sigma: float, q: float, steps: int, delta: float) -> float:
    """The epsilon at `delta` of `steps` Poisson-sampled Gaussian steps, on a fresh `acct`."""
    with _quiet_absl():  # at extreme noise the RDP series warns once per order, ~100 lines
        acct.compose(_event(dpa, sigma, q, steps))
        return float(acct.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's convergence warnings (absl logging) silenced for one call: their
    only outcome, an epsilon of 0 for a noise that makes every order's bound vanish, is
    returned as the result."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def dp_noise_multiplier(
    *,
    epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The smallest `noise_multiplier` whose `dp_epsilon` is at most `epsilon` (within 1e-4).

    The arguments are `dp_epsilon`'s, with the target `epsilon > 0` (finite) in place of
    `noise_multiplier`. The search is `dp_accounting.calibrate_dp_mechanism` (Brent's
    method); the returned value always meets the target. A calibration evaluates the
    accountant 10-30 times: 0.2-1.1 s with `"rdp"`, 1 s to a minute with `"pld"` (slowest at
    large epsilon). `steps=0` needs no noise and returns `0.0`.

    With `"pld"`, the noise returned is settled on the grid `dp_epsilon` itself uses there,
    so `dp_epsilon(noise_multiplier=dp_noise_multiplier(epsilon=e, ...), ...) <= e`, and at
    1e-4 less noise it is above `e`. Where the answer is above 1 on dp-accounting's default
    grid, the search and its result are `calibrate_dp_mechanism`'s, unchanged. Below 1,
    where `dp_epsilon` may coarsen its grid (and where dp-accounting's search on its
    default grid took 107 s for `epsilon=565.6, sample_rate=0.5, steps=10`, noise 0.1), it
    locates the answer on a grid 10 times coarser than `dp_epsilon`'s, then settles it with
    two or three `dp_epsilon` calls: 1.5-5 s where measured (5 s for that run).
    """
    target = _real("epsilon", epsilon, "the privacy budget to meet, e.g. 3.0")
    if not target > 0:
        raise ValueError(
            f"epsilon must be > 0 (the budget the run may spend); got {epsilon!r}. "
            "Pass a positive target, e.g. epsilon=3.0."
        )
    q, steps, delta = _check_run(sample_rate, steps, delta)
    make = _accountant_factory(accountant)
    if steps == 0:
        return 0.0
    dpa = _dp_accounting()
    if accountant == "pld":
        return _pld_noise_multiplier(dpa, make, target, q, steps, delta)
    return _calibrate(dpa, make, target, q, steps, delta, dpa.LowerEndpointAndGuess(0.0, 1.0))


NOISE_TOL = 1e-4
"""`dp_noise_multiplier`'s tolerance on the noise multiplier."""

PLD_SEARCH_COARSEN = 10
"""How much coarser than `dp_epsilon`'s the grid is on which a small-noise PLD calibration
locates its answer (`_pld_noise_multiplier`)."""


def _calibrate(
    dpa: Any,
    make: Callable[[], Any],
    target: float,
    q: float,
    steps: int,
    delta: float,
    bracket: Any,
) -> float:
    """dp-accounting's own calibration (`calibrate_dp_mechanism`), from `bracket`."""
    return float(
        dpa.calibrate_dp_mechanism(
            make, lambda sigma: _event(dpa, sigma, q, steps), target, delta, bracket, tol=NOISE_TOL
        )
    )


def _pld_noise_multiplier(
    dpa: Any, make: Callable[[float], Any], target: float, q: float, steps: int, delta: float
) -> float:
    """The smallest noise whose `dp_epsilon(accountant="pld")` is at most `target`, within
    `NOISE_TOL`: the noise `s` it returns has `dp_epsilon(s) <= target < dp_epsilon(s -
    NOISE_TOL)`, each evaluated on the very grid `dp_epsilon` gives that noise.

    - **Ordinary runs**, where `dp_epsilon(1) > target` (the answer is above 1) and noise 1
      needs no coarser grid than dp-accounting's default (nor, then, does any larger
      noise): exactly `calibrate_dp_mechanism` on that default grid from the bracket `[0,
      1]`, as before, a search that then never evaluates a noise below 1.
    - **Otherwise** (the answer below 1, where that search would evaluate small noise on the
      default grid: 107 s for `epsilon=565.6, sample_rate=0.5, steps=10`, against 2 s for
      one `dp_epsilon` there), in two stages, each evaluation on a grid chosen for its own
      noise, so that none costs more than a `dp_epsilon` call:
      1. *Locate*: Brent's method on a grid `PLD_SEARCH_COARSEN` times coarser than
         `dp_epsilon`'s (7-10 times faster; epsilon larger by 1e-7 to 2e-4 of itself where
         measured), from a bracket found by halving (or doubling) from 1.
      2. *Settle*: `dp_epsilon`'s own value `NOISE_TOL / 10` above the located noise and
         `0.9 NOISE_TOL` below it: two calls, when they bracket the answer (the coarser grid
         only raises epsilon, by less than that where measured); else steps of growing
         length until they do, then bisection.
    """

    intervals: dict[float, float] = {}
    gaps: dict[tuple[float, float], float] = {}

    def interval(sigma: float) -> float:
        """`dp_epsilon`'s grid for this noise."""
        if sigma not in intervals:
            intervals[sigma] = _pld_interval(dpa, sigma, q, steps, delta)
        return intervals[sigma]

    def on_grid(sigma: float, grid: float) -> float:
        """`epsilon - target` at this noise, on this grid."""
        if sigma <= 0:
            return math.inf  # no noise: no finite epsilon
        if (sigma, grid) not in gaps:
            epsilon = _epsilon(make(grid), dpa, sigma, q, steps, delta)
            gaps[sigma, grid] = epsilon - target
        return gaps[sigma, grid]

    def gap(sigma: float) -> float:
        """`dp_epsilon(sigma) - target`."""
        return on_grid(sigma, interval(sigma))

    def coarse(sigma: float) -> float:
        return on_grid(sigma, PLD_SEARCH_COARSEN * interval(sigma))

    # A coarser (nested) grid raises epsilon, so coarse(1) <= 0 means the answer is below 1
    # and gap(1) need not be computed; were it not so, the search below is still right.
    if coarse(1.0) > 0 and interval(1.0) == PLD_INTERVAL and gap(1.0) > 0:
        # dp-accounting's search for a bracket from [0, 1] (its values cached), then its
        # calibration in that bracket: the very result of calibrate_dp_mechanism with
        # LowerEndpointAndGuess(0, 1), which is `NoBracketIntervalFoundError` past 30 tries.
        lo, hi, width = 0.0, 1.0, 1.0
        for _ in range(30):
            if on_grid(hi, PLD_INTERVAL) <= 0:
                break
            width *= 2
            lo, hi = hi, hi + width
        else:
            raise dpa.mechanism_calibration.NoBracketIntervalFoundError(
                "Unable to find bracketing interval within 2**30 of initial guess."
            )
        bracket = dpa.ExplicitBracketInterval(lo, hi)
        return _calibrate(dpa, lambda: make(PLD_INTERVAL), target, q, steps, delta, bracket)

    # 1. Locate, on the coarse grid: a bracket lo < hi with coarse(lo) > 0 >= coarse(hi).
    from scipy.optimize import brentq  # scipy: a dependency of dp-accounting

    lo, hi = (1.0, 2.0) if coarse(1.0) > 0 else (0.5, 1.0)
    for _ in range(60):
        if coarse(lo) > 0 >= coarse(hi):
            break
        lo, hi = (hi, 2 * hi) if coarse(hi) > 0 else (lo / 2, lo)
    else:
        raise dpa.mechanism_calibration.NoBracketIntervalFoundError(
            f"no noise multiplier between 2**-60 and 2**60 has a PLD epsilon of {target!r} "
            f"(sample_rate={q!r}, steps={steps!r}, delta={delta!r})."
        )
    located = float(brentq(coarse, lo, hi, xtol=NOISE_TOL / 20))

    # 2. Settle, on dp_epsilon's grid: lo < hi <= lo + NOISE_TOL with gap(lo) > 0 >= gap(hi).
    step = NOISE_TOL
    hi = located + NOISE_TOL / 10
    if gap(hi) > 0:
        lo, hi = hi, hi + step
        while gap(hi) > 0:
            step *= 2
            lo, hi = hi, hi + step
    else:
        lo = hi - step
        while gap(lo) <= 0:
            step *= 2
            lo, hi = lo - step, lo
    while hi - lo > NOISE_TOL * (1 + 1e-9):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return hi


PLD_INTERVAL = 1e-4
"""dp-accounting's default `value_discretization_interval`: `dp_epsilon`'s PLD grid unless
the run needs a coarser one (`_pld_interval`)."""

PLD_STEP_POINTS = 200_000
PLD_MAX_INTERVAL = 50.0
"""The coarsest grid `dp_epsilon`'s PLD takes: dp-accounting's discretisation computes
`expm1(interval)`, which overflows past about 709, and a noise that would call for a
coarser grid (sigma below about 1e-3) spends an epsilon in the millions, which a grid of
50 still bounds from above."""

PLD_RUN_POINTS = 1_000_000
"""Most grid points `dp_epsilon`'s PLD gives one step's privacy loss distribution, and
about the most it gives the composed one (whose span is about the epsilon)."""


def _pld_interval(dpa: Any, sigma: float, q: float, steps: int, delta: float) -> float:
    """The PLD accountant's `value_discretization_interval` for this run.

    The PLD is a grid of privacy-loss values `interval` apart, and its cost grows with
    the number of grid points. One step's privacy loss spans up to about `1 / sigma^2 +
    20 / sigma` (with -50 in log mass truncated): 120 million points at `sigma = 0.01`
    on the default 1e-4 grid (half that with subsampling); the composition's spans about
    its epsilon (36 million points for epsilon 3600). So the interval is the default,
    `PLD_INTERVAL`, unless one step would need more than `PLD_STEP_POINTS` points (sigma
    below about 0.45-0.53 for `q < 1`, 1.02 for `q = 1`) or the composition more than
    `PLD_RUN_POINTS`; then it is just coarse enough for them. The composition's span is
    read off a first pass 100 times coarser still (at most 2000 points a step).

    Any interval gives an upper bound: dp-accounting rounds each privacy loss up
    (`pessimistic_estimate=True`, connect-the-dots), so a coarser grid can only make
    epsilon larger, never smaller than the true one. Measured where the interval changes,
    the excess over a finer grid is 2e-7 (`sigma=0.01, q=0.5, steps=10`, epsilon 5e4) to
    3e-6 (`sigma=0.3, q=0.1, steps=1e4`, epsilon 3595) and 5e-4 (`sigma=0.05, q=0.01,
    steps=1e5`, epsilon 2.2e5) of epsilon.
    """
    from dp_accounting.pld import privacy_loss_mechanism as plm

    span = max(
        bounds.epsilon_upper - bounds.epsilon_lower
        for adjacency in (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD)
        for bounds in [
            plm.GaussianPrivacyLoss(
                sigma, sampling_prob=q, adjacency_type=adjacency
            ).connect_dots_bounds()
        ]
    )
    fine = min(max(PLD_INTERVAL, span / PLD_STEP_POINTS), PLD_MAX_INTERVAL)
    coarse_interval = min(100 * fine, PLD_MAX_INTERVAL)
    coarse = dpa.pld.PLDAccountant(value_discretization_interval=coarse_interval)
    scale = coarse.compose(_event(dpa, sigma, q, steps)).get_epsilon(delta)
    chosen = max(fine, scale / PLD_RUN_POINTS) if math.isfinite(scale) else fine
    return min(chosen, PLD_MAX_INTERVAL)


def _event(dpa: Any, sigma: float, q: float, steps: int) -> Any:
    gaussian = dpa.GaussianDpEvent(sigma)  # noise std sigma * C on a sum of sensitivity C
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, gaussian), steps)


def _dp_accounting() -> Any:
    try:
        import dp_accounting  # the optional `privacy` extra
        from dp_accounting import pld, rdp  # noqa: F401 (loads the accountants)
    except ImportError as err:
        raise ImportError(
            "Privacy accounting (jaxbp.dp_epsilon, jaxbp.dp_noise_multiplier) needs Google's "
            f"dp-accounting package, an optional extra of jaxbp: {_INSTALL}."
        ) from err
    return dp_accounting


def _accountant_factory(accountant: Any) -> Callable[..., Any]:
    """`make(interval=PLD_INTERVAL)`, which builds a fresh accountant of that name; the
    name is checked before any import.

    `interval` is the PLD's grid (dp-accounting's `value_discretization_interval`), which
    `dp_epsilon` chooses for its run (`_pld_interval`) and `dp_noise_multiplier` for each
    noise it evaluates; `PLD_INTERVAL`, the default, is dp-accounting's own default. RDP
    has no grid and ignores it.
    """
    factories = {
        "rdp": lambda interval=PLD_INTERVAL: _dp_accounting().rdp.RdpAccountant(),
        "pld": lambda interval=PLD_INTERVAL: _dp_accounting().pld.PLDAccountant(
            value_discretization_interval=interval
        ),
    }
    if not isinstance(accountant, str):
        raise TypeError(
            f"accountant must be a string, one of {sorted(factories)}; got "
            f"{type(accountant).__name__} {accountant!r}. Pass accountant='rdp' or 'pld'."
        )
    if accountant not in factories:
        raise ValueError(
            f"accountant must be one of {sorted(factories)}; got {accountant!r}. "
            "Pass 'rdp' (fast, the default) or 'pld' (tighter, slower)."
        )
    return factories[accountant]


def _check_run(sample_rate: Any, steps: Any, delta: Any) -> tuple[float, int, float]:
    q = _real("sample_rate", sample_rate, "batch_size / n, see jaxbp.dp_epoch_sampling")
    if not 0 < q <= 1:
        raise ValueError(
            f"sample_rate must be in (0, 1] (each example's chance to be in a batch); got "
            f"{sample_rate!r}. Pass batch_size / n, e.g. from jaxbp.dp_epoch_sampling."
        )
    steps = check_int("steps", steps, 0, "the number of DP-SGD steps taken")
    delta = _real("delta", delta, "e.g. 1e-5, below 1 / n")
    if not 0 < delta < 1:
        raise ValueError(
            f"delta must be in (0, 1); got {delta!r}. Pass a small probability below "
            "1 / n, e.g. delta=1e-5 for 60000 examples."
        )
    return q, steps, delta


def _real(name: str, value: Any, example: str) -> float:
    """`value` as a finite float: a Python or numpy real, or a 0-d real array."""
    dtype = getattr(value, "dtype", None)
    scalar_array = (
        dtype is not None
        and np.shape(value) == ()
        and (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))
    )
    if isinstance(value, bool) or not (isinstance(value, Real) or scalar_array):
        raise TypeError(
            f"{name} must be a real number; got {type(value).__name__} {value!r}. "
            f"Pass a Python float ({example})."
        )
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite; got {value!r}. Pass a finite number ({example}).")
    return out
