"""An accountant that follows a DP-SGD run: the epsilon spent after each epoch.

Renyi DP composes by addition: `k` steps of one subsampled Gaussian mechanism have, at
every order `alpha`, `k` times the RDP of one step (Mironov 2017). So the RDP of one step
is computed once per run (dp-accounting's `RdpAccountant`, 0.2-0.7 s), and the epsilon
after any number of steps is its conversion at `k` times that vector (microseconds):
exactly `dp_epsilon(..., accountant="rdp")`, which composes the `k` steps in one go, and
cheap enough to log every epoch.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from jaxbp._core.validate import check_int
from jaxbp._privacy.accounting import _check_run, _dp_accounting, _event, _quiet_absl, _real

__all__ = ["DPTracker"]


class DPTracker(NamedTuple):
    """The privacy a DP-SGD run has spent, by the RDP accountant (`dp_epsilon`'s default).

    An immutable value: `tracker.advanced(steps)` is the tracker after `steps` more steps,
    `tracker.epsilon` the epsilon at `delta` spent so far. Build it with `DPTracker.of`
    (which checks the arguments); resume a run with `steps` = the steps it has taken.

    - `noise_multiplier`: `sigma >= 0`, as given to `DPSGD` / `make_dp_train_epoch`.
    - `sample_rate`: `0 < q <= 1`, `batch_size / n` (`dp_epoch_sampling`).
    - `delta`: `0 < delta < 1`, below `1 / n`.
    - `steps`: DP-SGD steps taken so far (an epoch takes `ceil(n / batch_size)`).

    With `make_dp_train_epoch(sampling="poisson")` the epsilon is a guarantee for the run;
    with shuffled batches it is the "as if Poisson" figure (see `dp_epsilon`).

    For example, epsilon after each of 3 epochs of 45 steps:
    `t = DPTracker.of(noise_multiplier=1.1, sample_rate=32 / 1438, delta=1e-4)`, then
    `[t.advanced(45 * e).epsilon for e in (1, 2, 3)]`.
    """

    noise_multiplier: float
    sample_rate: float
    delta: float
    steps: int = 0

    @classmethod
    def of(
        cls, *, noise_multiplier: float, sample_rate: float, delta: float, steps: int = 0
    ) -> DPTracker:
        """A checked tracker (arguments as the class docstring's); needs dp-accounting."""
        sigma = _real("noise_multiplier", noise_multiplier, "the run's noise_multiplier, e.g. 1.1")
        if sigma < 0:
            raise ValueError(
                f"noise_multiplier must be >= 0 (noise std / l2_clip); got {noise_multiplier!r}. "
                "Pass the noise_multiplier the run uses, e.g. 1.1."
            )
        q, steps, delta = _check_run(sample_rate, steps, delta)
        _dp_accounting()  # an ImportError naming the extra now, not at the first epoch
        return cls(sigma, q, delta, steps)

    def advanced(self, steps: int) -> DPTracker:
        """This tracker after `steps >= 0` more DP-SGD steps."""
        steps = check_int("steps", steps, 0, "the DP-SGD steps just taken, e.g. one epoch's")
        return self._replace(steps=self.steps + steps)

    @property
    def epsilon(self) -> float:
        """The epsilon at `delta` of the `steps` taken: `0.0` for none, `math.inf` without
        noise."""
        if self.steps == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        orders, one_step = _one_step_rdp(self.noise_multiplier, self.sample_rate)
        dpa = _dp_accounting()
        compute = dpa.rdp.rdp_privacy_accountant.compute_epsilon
        return float(compute(orders, self.steps * one_step, self.delta)[0])


@functools.lru_cache(maxsize=64)
def _one_step_rdp(sigma: float, q: float) -> tuple[Any, Any]:
    """`(orders, rdp)`: the RDP of one Poisson-sampled Gaussian step at each of
    dp-accounting's default orders (read-only arrays: they are cached)."""
    dpa = _dp_accounting()
    acct = dpa.rdp.RdpAccountant()
    with _quiet_absl():
        acct.compose(_event(dpa, sigma, q, 1))
    orders, rdp = np.asarray(acct.orders), acct.rdp
    orders.flags.writeable = rdp.flags.writeable = False
    return orders, rdp
