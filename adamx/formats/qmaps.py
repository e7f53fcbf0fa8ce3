r"""The 8-bit maps of ``blockwise_8bit``: 256 sorted values in [-1, 1] or [0, 1].

A code c stands for the map value q_c; a block of values x is stored as codes
and one scale s (``codec``), ``x̃_i = q_{c_i} s``. Signed maps have 0 at code
127 and 255 finite values; unsigned ones 0 at code 0, 254 finite values and +inf
at code 254; code 255 is NaN in both.

- float maps ``"eEmM"`` (E + M = 7 signed, 8 unsigned): the positive values are
  the float32 numbers with M fraction bits, (1 + f/2^M) 2^-e, the largest 1.0:
  the value with index k is the float32 whose bit pattern is
  ``(k + 1 + offset) << (23 - M)``. Encoding rounds the bit pattern of |y| to M
  fraction bits, decoding is a shift and a bit cast: a few integer operations
  per element, which XLA fuses and vectorizes. Relative error at most 2^-(M+1)
  from q_min up.
- ``"dynamic"``: dynamic tree quantization (Dettmers et al. 2021): an exponent
  10^-e, e = 0..6, and a linear fraction in (0.1, 1] whose resolution halves at
  each smaller exponent. Relative error about 0.4% near the block maximum, and
  values down to 1e-7 of it stay non-zero.
- ``"linear"``: evenly spaced values (k/127 signed, k/254 unsigned, the top
  unsigned one 253/254).

Values and codes are computed, never looked up in a table, so they shard freely.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", arXiv:2110.02861; Micikevicius et al., "FP8 Formats for Deep
  Learning", arXiv:2209.05433.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NAN_CODE = 255
INF_CODE = 254  # unsigned maps only: +inf (an overflowed g² in v)
_LEVELS = 7  # exponents 10^0 .. 10^-6 of the dynamic map
_ABSMAX_MAPS = ("dynamic", "linear")  # the maps that are not float maps


def is_float_map(kind: str) -> bool:
    """True for the float maps ("float", "eEmM"): power-of-two scales, stochastic rounding."""
    return kind not in _ABSMAX_MAPS


class QuantMap(NamedTuple):
    """A sorted 8-bit map: ``value(codes)`` for decoding, ``index(y)`` for nearest encoding."""

    kind: str  # "dynamic", "linear" or a float map "eEmM"
    signed: bool

    def values(self) -> np.ndarray:
        """The 256 map values, ascending, with NaN at code 255 and, unsigned, +inf at 254."""
        return np.asarray(self.value(jnp.arange(256)))

    @property
    def finite_codes(self) -> int:
        """How many codes hold finite values (0 .. finite_codes - 1)."""
        return NAN_CODE if self.signed else INF_CODE

    @property
    def zero_code(self) -> int:
        """The code of 0: the middle of a signed map, the bottom of an unsigned one."""
        return 127 if self.signed else 0

    def top_value(self) -> np.float32:
        """The largest finite map value: 1.0, or just below it for the unsigned dynamic and
        linear maps, whose code 254 holds +inf (their absmax scale is divided by it)."""
        with jax.ensure_compile_time_eval():  # a constant, also while tracing
            return np.float32(np.asarray(self.value(jnp.asarray(self.finite_codes - 1))))

    def index(self, y: jax.Array, *, zero_point: bool = True) -> jax.Array:
        """The code of the map value nearest each ``y`` in [-1, 1] (float32 in, int32 out)."""
        return _index(self, y, zero_point)

    def value(self, codes: jax.Array) -> jax.Array:
        """The float32 map value of each code, computed (no table gather: it shards freely)."""
        return _value(self, codes)

    @property
    def mantissa_bits(self) -> int:
        """M of an ``"eXmM"`` float map (the fraction bits kept of a float32)."""
        return int(self.kind.split("m")[1])


@functools.partial(jax.jit, static_argnums=(0, 2))
def _index(qmap: QuantMap, y: jax.Array, zero_point: bool) -> jax.Array:
    a = jnp.abs(y)
    if qmap.kind == "dynamic":
        k = _dynamic_index(a, qmap.signed)
    elif qmap.kind == "linear":
        k = _linear_index(a, qmap.signed)
    else:
        k = float_index_bits(jax.lax.bitcast_convert_type(a, jnp.int32), qmap)
    if not zero_point:  # never round a positive value to 0
        k = jnp.where(a > 0, jnp.maximum(k, 0), k)
    if not qmap.signed:  # code 254 is +inf
        k = jnp.minimum(k, INF_CODE - 2)
    return jnp.where(y < 0, qmap.zero_code - 1 - k, qmap.zero_code + 1 + k)


@functools.partial(jax.jit, static_argnums=0)
def _value(qmap: QuantMap, codes: jax.Array) -> jax.Array:
    c = codes.astype(jnp.int32)
    k = jnp.abs(c - qmap.zero_code) - 1  # index among the positive values, -1 for zero
    if qmap.kind == "dynamic":
        magnitude = _dynamic_value(k, qmap.signed)
    elif qmap.kind == "linear":
        magnitude = (k + 1).astype(jnp.float32) / (127.0 if qmap.signed else 254.0)
    else:
        magnitude = _float_value(k, qmap)
    magnitude = jnp.where(k < 0, 0.0, magnitude)
    if qmap.signed:
        signed = jnp.where(c < qmap.zero_code, -magnitude, magnitude)
    else:
        signed = jnp.where(c == INF_CODE, jnp.inf, magnitude)
    return jnp.where(c == NAN_CODE, jnp.nan, signed)


def float_map_constants(signed: bool, mantissa_bits: int) -> tuple[int, int, int]:
    """``(top, offset, shift)`` of the float map: the positive value with index k is
    the float32 whose bit pattern is ``(k + 1 + offset) << shift``, and the top index
    ``top - 1`` is 1.0."""
    top = 127 if signed else 253  # positive values (codes 0, 254, 255: 0, +inf, NaN)
    shift = 23 - mantissa_bits
    return top, (127 << mantissa_bits) - top, shift


def float_index_bits(bits: jax.Array, qmap: QuantMap, noise: jax.Array | None = None) -> jax.Array:
    """Index among the positive values of float map ``qmap`` of the value nearest the float32
    whose bit pattern is ``bits`` (int32, >= 0); -1 where zero is nearest.

    Rounds the bit pattern to M fraction bits (adding half the dropped unit first:
    round half up, carrying into the exponent), then subtracts the offset that puts
    1.0 at the top. Below the smallest value q_0: q_0 from q_0 / 2 up, else 0 (bit
    patterns of non-negative floats order like the floats). With ``noise`` (uniform
    int32 in [0, 2^shift)) added instead of half the unit, the rounding is stochastic
    and unbiased: a value is linear in its bit pattern between two neighbouring map
    values, even across a binade boundary.
    """
    top, offset, shift = float_map_constants(qmap.signed, qmap.mantissa_bits)
    bias = (1 << (shift - 1)) if noise is None else noise
    k = jnp.minimum(((bits + bias) >> shift) - offset, top) - 1
    half_smallest = np.array((1 + offset) << shift, np.int32).view(np.float32) / 2
    return jnp.where(k >= 0, k, jnp.where(bits >= half_smallest.view(np.int32), 0, -1))


def _float_value(k: jax.Array, qmap: QuantMap) -> jax.Array:
    """The positive float map value with index ``k`` >= 0: a shift and a bit cast."""
    _, offset, shift = float_map_constants(qmap.signed, qmap.mantissa_bits)
    return jax.lax.bitcast_convert_type((k + 1 + offset) << shift, jnp.float32)


def _level_sizes(signed: bool) -> np.ndarray:
    """Points per exponent level e = 0..6: 64..1 (signed) or 128..2 (unsigned)."""
    top = 64 if signed else 128
    return top >> np.arange(_LEVELS)


def _dynamic_index(a: jax.Array, signed: bool) -> jax.Array:
    """Index among the positive values of the one nearest ``a`` (-1: zero is nearest).

    The level e (a in (10^-e-1, 10^-e]) comes from six comparisons; rounding the
    fraction to the nearest point of the level lands on the top of the next level
    down when that is nearer, since consecutive levels are contiguous in the
    sorted order. Only selects and multiplies: cheap, and it shards freely.
    """
    sizes = _level_sizes(signed)
    offsets = np.cumsum(sizes[::-1])[::-1] - sizes  # index of each level's first point
    pow10, n, offset = np.float32(1.0), np.float32(sizes[0]), np.float32(offsets[0])
    for e in range(1, _LEVELS):
        below = a <= np.float32(10.0**-e)
        pow10 = jnp.where(below, np.float32(10.0**e), pow10)
        n = jnp.where(below, np.float32(sizes[e]), n)
        offset = jnp.where(below, np.float32(offsets[e]), offset)
    r = jnp.floor((a * pow10 - np.float32(0.1)) * (n / np.float32(0.9)) + 0.5)  # half rounds up
    k = (offset + jnp.clip(r, 0.0, n) - 1.0).astype(jnp.int32)
    smallest = 1e-6 * (0.1 + 0.9 / float(sizes[-1]))
    return jnp.where(a >= smallest / 2, jnp.maximum(k, 0), -1)


def _dynamic_value(k: jax.Array, signed: bool) -> jax.Array:
    """The positive value with index ``k`` >= 0 (inverse of ``_dynamic_index``).

    Level e holds indices [top 2^-e - top/64, top 2^(1-e) - top/64), so
    ``floor(log2(k + top/64))`` reads off the level.
    """
    top = int(_level_sizes(signed)[0])
    shifted = jnp.maximum(k, 0) + top // 64
    e = (top.bit_length() - 1) - (31 - jax.lax.clz(shifted))  # log2(top) - floor(log2(.))
    n = jnp.right_shift(top, e)
    j = shifted - n  # position within the level, 0-based
    frac = 0.1 + (j + 1).astype(jnp.float32) * (0.9 / n.astype(jnp.float32))
    return frac * sum(jnp.where(e == i, np.float32(10.0**-i), 0.0) for i in range(_LEVELS))


def _linear_index(a: jax.Array, signed: bool) -> jax.Array:
    n = 127 if signed else 254
    return jnp.clip(jnp.round(a * n), 0, n).astype(jnp.int32) - 1


def resolve_qmap(qmap: object, signed: bool) -> QuantMap:
    """The ``QuantMap`` named by ``qmap``; a ValueError naming the valid maps otherwise.

    ``"float"`` is e4m3 for the signed map and e4m4 for the unsigned one.
    """
    bits = 7 if signed else 8  # magnitude bits: the signed map spends one on the sign
    floats = [f"e{e}m{bits - e}" for e in range(2, bits)]
    if qmap == "float":
        qmap = "e4m3" if signed else "e4m4"
    if qmap in (*_ABSMAX_MAPS, *floats):
        return QuantMap(qmap, signed)
    raise ValueError(
        f'qmap must be "float", "dynamic", "linear" or a float map '
        f'"e<E>m<M>" with E + M = {bits} for signed={signed} '
        f"({', '.join(floats)}), got {qmap!r}."
    )
