"""Weight initialisation schemes (section 1.1.3: initialisation as a remedy for depth).

Each scheme draws `W: (n_in, n_out)` from the fans `n_in = n_{l-1}` and `n_out = n_l`.
"""

from __future__ import annotations

import math
from typing import Any

import jax

Array = jax.Array

_NORMAL_VARIANCE = {
    "glorot_normal": lambda n_in, n_out: 2 / (n_in + n_out),
    "he_normal": lambda n_in, n_out: 2 / n_in,
    "lecun_normal": lambda n_in, n_out: 1 / n_in,
}
_UNIFORM_LIMIT = {
    "glorot_uniform": lambda n_in, n_out: math.sqrt(6 / (n_in + n_out)),
    "he_uniform": lambda n_in, n_out: math.sqrt(6 / n_in),
    "standard": lambda n_in, n_out: 1 / math.sqrt(n_in),
}

INITS = (
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "standard",
)
"""The weight schemes by name; "standard" is the pre-2010 `U[-1/sqrt(n_in), 1/sqrt(n_in)]`."""


def check_init(init: Any, argument: str = "init") -> str:
    """`init` if it names a scheme, else a ValueError listing them."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"{argument} must be one of {list(INITS)}; got {init!r}.")
    return init


def init_weight(key: Array, n_in: int, n_out: int, init: str, dtype: Any) -> Array:
    """A `(n_in, n_out)` weight matrix drawn from scheme `init`; normals are not truncated."""
    shape = (n_in, n_out)
    if init in _NORMAL_VARIANCE:
        std = math.sqrt(_NORMAL_VARIANCE[init](n_in, n_out))
        return std * jax.random.normal(key, shape, dtype)
    limit = _UNIFORM_LIMIT[init](n_in, n_out)
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)
