"""Rounding primitives: unbiased stochastic rounding of float32 values to a narrower float.

Shared by the stochastic moment format (``formats.stochastic``) and the parameter-side
``stochastic_rounding`` stage.
"""

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .random_bits import random_bits, uniform


def is_low_precision(dtype: DTypeLike) -> bool:
    """True for real floating dtypes narrower than float32 (bfloat16, float16)."""
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4


def round_stochastic(x: jax.Array, dtype: DTypeLike, key: jax.Array) -> jax.Array:
    r"""Round float32 ``x`` to ``dtype``, up or down at random, unbiased.

    .. math::
        \operatorname{SR}(x) = \begin{cases} \lceil x \rceil & \text{w.p. }
        (x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x \rfloor) \\
        \lfloor x \rfloor & \text{otherwise} \end{cases}, \qquad
        \mathbb{E}[\operatorname{SR}(x)] = x

    where ⌊x⌋ and ⌈x⌉ are the neighbouring numbers of ``dtype`` around ``x``.
    For bfloat16 (the upper half of a float32) this is adding 16 random bits to
    the float32 bit pattern and truncating; other dtypes compare a uniform draw
    with the distance to the nearest number. The random bits are a keyed hash of
    each element's index (``random_bits``): cheap, and the same under sharding.
    """
    key_data = jax.random.key_data(key)
    if jnp.dtype(dtype) == jnp.bfloat16:
        bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
        noise = random_bits(key_data, x.shape) >> 16
        truncated = (bits + noise) & jnp.uint32(0xFFFF0000)
        return jax.lax.bitcast_convert_type(truncated, jnp.float32).astype(dtype)
    nearest = x.astype(dtype)
    near = nearest.astype(jnp.float32)
    toward = jnp.where(x > near, jnp.inf, -jnp.inf).astype(dtype)
    other = jnp.nextafter(nearest, toward)
    gap = other.astype(jnp.float32) - near
    prob = jnp.where(gap != 0, (x - near) / jnp.where(gap != 0, gap, 1.0), 0.0)
    take_other = uniform(key_data, x.shape) < prob
    return jnp.where(take_other, other, nearest)
