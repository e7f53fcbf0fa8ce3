"""Cheap random bits for stochastic rounding: a keyed hash of each element's index.

``jax.random.bits`` runs Threefry-2x32 (20 rounds) per pair of words; on CPU that
costs ~100x an elementwise pass (the 'rbg' implementations, XLA's RngBitGenerator,
are no faster there), and stochastic rounding needs a fresh word per element
every step. A counter-based generator in the style of Philox (Salmon et al. 2011)
needs far less: the element's flat index i, offset by the first key word and
mixed by an integer hash, then the second key word and the hash again:

.. math::
    r_i = h(h(i + k_0) \\oplus k_1), \\qquad
    h(x) = \\text{lowbias32}(x)

where lowbias32 (C. Wellons' hash prospector: xor-shift 16, multiply by
0x7feb352d, xor-shift 15, multiply by 0x846ca68b, xor-shift 16) is a bijection
of 32-bit words with low avalanche bias. The key (k_0, k_1) is the raw data of a
``jax.random`` key that the caller splits every step, so runs are reproducible
given the seed. The bits depend only on the key and the element's position in
the global array: they are the same under jit and under any sharding. This is
rounding noise, not a generator for cryptography or Monte Carlo estimates; the
tests check uniformity and that stochastic rounding with it is unbiased.

References:
  Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
  Wellons, "Prospecting for Hash Functions" (2018), https://nullprogram.com/blog/2018/07/31/.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _flat_index(shape: tuple) -> jax.Array:
    """Row-major position of each element, uint32 (wrapping beyond 2^32 elements)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


@functools.partial(jax.jit, static_argnums=1)
def random_bits(key_data: jax.Array, shape: tuple) -> jax.Array:
    """uint32 random words of ``shape`` from raw key data (two uint32 words).

    Args:
      key_data: ``jax.random.key_data`` of a threefry key (uint32, shape (2,)).
      shape: the shape of the result.

    Returns:
      A uint32 array of ``shape``: ``h(h(i + k_0) ^ k_1)`` for flat index i.
    """
    k = key_data.astype(jnp.uint32).reshape(-1)
    return _lowbias32(_lowbias32(_flat_index(shape) + k[0]) ^ k[1])


@functools.partial(jax.jit, static_argnums=1)
def uniform(key_data: jax.Array, shape: tuple) -> jax.Array:
    """float32 uniform in [0, 1) on a grid of 2^-24, from ``random_bits``."""
    return (random_bits(key_data, shape) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
