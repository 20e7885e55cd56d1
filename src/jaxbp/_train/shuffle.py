"""The epoch shuffle: a uniformly random permutation that sorts one uint32 array a round.

`jax.random.permutation` sorts (random key, value) pairs; XLA:CPU sorts a single uint32
array several times faster (`experiments/benchmark.py` measures both). So each round
packs the random key into the high bits of one word and the current position into the
low bits, sorts that word, and reads the new order from the low bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_WORD = 32
_MAX_ROUNDS = 6
"""Above this many rounds (n > 2**21) the packed sort has too few random bits a round to
pay off, and `jax.random.permutation` is used."""


def position_bits(n: int) -> int:
    """`k`: the low bits of the packed word that hold a position in `range(n)`."""
    return max(1, (n - 1).bit_length())


def rounds_for(n: int) -> int:
    """Rounds of packed sorting that make a permutation of `range(n)` uniform.

    With `k = bit_length(n - 1)` position bits, each round draws `32 - k` random bits
    per element. Every round is a stable sort by its fresh bits (ties keep the previous
    order, since the position is the low part of the word), so after `r` rounds the
    order is the lexicographic order of each element's `r * (32 - k)` random bits: a
    uniform permutation unless two elements draw the same bits, which happens with
    probability below `n**2 / 2**(r * (32 - k) + 1)`. Choosing `r * (32 - k) >= 3k`
    bounds that by `1 / (2n)`, the guarantee `jax.random.permutation` gives.
    """
    k = position_bits(n)
    return -(-3 * k // (_WORD - k))


def permutation(key: Array, n: int) -> Array:
    """A uniformly random permutation of `range(n)`: int32 `(n,)` (see `rounds_for`)."""
    rounds = rounds_for(n)
    if rounds > _MAX_ROUNDS:
        return jax.random.permutation(key, n).astype(jnp.int32)
    k = position_bits(n)
    position = jnp.arange(n, dtype=jnp.uint32)
    perm = position
    for round_key in jax.random.split(key, rounds):
        high = jax.random.bits(round_key, (n,), jnp.uint32) >> k
        order = jax.lax.sort((high << k) | position) & ((1 << k) - 1)
        perm = perm[order]
    return perm.astype(jnp.int32)
