r"""The maps of ``blockwise``: 2^B sorted values in [-1, 1] or [0, 1] (B = 8 or 4 bits).

A code c stands for the map value q_c; a block of values x is stored as codes
and one scale s (``codec``), ``x̃_i = q_{c_i} s``. Signed maps have 0 at code
2^(B-1) - 1 (127; 7) and 2^B - 1 finite values; unsigned ones 0 at code 0,
2^B - 2 finite values and +inf at code 2^B - 2 (254; 14); code 2^B - 1 (255; 15)
is NaN in both. So a signed map has 2^(B-1) - 1 positive values (127; 7) and an
unsigned one 2^B - 3 finite positive values (253; 13).

- float maps ``"eEmM"`` (E + M = B - 1 signed, B unsigned): the positive values
  are the float32 numbers with M fraction bits, (1 + f/2^M) 2^-e, the largest
  1.0: the value with index k is the float32 whose bit pattern is
  ``(k + 1 + offset) << (23 - M)``. Encoding rounds the bit pattern of |y| to M
  fraction bits, decoding is a shift and a bit cast: a few integer operations
  per element, which XLA fuses and vectorizes. Relative error at most 2^-(M+1)
  from q_min up.
- ``"dynamic"``: dynamic tree quantization (Dettmers et al. 2021): an exponent
  10^-e, e = 0..6 (4 bits: 0..2), and a linear fraction in (0.1, 1] whose
  resolution halves at each smaller exponent. 8 bits: relative error about 0.4%
  near the block maximum, and values down to 1e-7 of it stay non-zero.
- ``"linear"``: evenly spaced values (k/127 signed, k/254 unsigned, the top
  unsigned one 253/254; 4 bits: k/7, k/14).

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

NAN_CODE = 255  # of the 8-bit maps (``QuantMap.nan_code`` in general)
INF_CODE = 254  # unsigned maps only: +inf (an overflowed g² in v)
_ABSMAX_MAPS = ("dynamic", "linear")  # the maps that are not float maps


def is_float_map(kind: object) -> bool:
    """True for the float maps ("float", "eEmM"): power-of-two scales, stochastic rounding."""
    return kind not in _ABSMAX_MAPS


class QuantMap(NamedTuple):
    """A sorted map of ``bits`` (8 or 4) bits: ``value(codes)`` decodes, ``index(y)`` encodes."""

    kind: str  # "dynamic", "linear" or a float map "eEmM"
    signed: bool
    bits: int = 8

    def values(self) -> np.ndarray:
        """The 2^bits map values, ascending, with NaN at the last code and, unsigned, +inf
        at the one before."""
        return np.asarray(self.value(jnp.arange(1 << self.bits)))

    @property
    def nan_code(self) -> int:
        """The last code (255; 15): NaN."""
        return (1 << self.bits) - 1

    @property
    def finite_codes(self) -> int:
        """How many codes hold finite values (0 .. finite_codes - 1)."""
        return self.nan_code if self.signed else self.nan_code - 1

    @property
    def zero_code(self) -> int:
        """The code of 0: the middle of a signed map (127; 7), the bottom of an unsigned one."""
        return (1 << (self.bits - 1)) - 1 if self.signed else 0

    @property
    def positives(self) -> int:
        """How many finite positive values the map has (127 or 253; 7 or 13)."""
        return self.zero_code if self.signed else self.finite_codes - 1

    def top_value(self) -> np.float32:
        """The largest finite map value: 1.0, or just below it for the unsigned dynamic and
        linear maps, whose code 254 holds +inf (their absmax scale is divided by it)."""
        with jax.ensure_compile_time_eval():  # a constant, also while tracing
            return np.float32(np.asarray(self.value(jnp.asarray(self.finite_codes - 1))))

    # the encoder, named index (y -> its code) on purpose: it shadows tuple.index
    def index(self, y: jax.Array, *, zero_point: bool = True) -> jax.Array:  # pyright: ignore[reportIncompatibleMethodOverride]
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
        k = _dynamic_index(a, qmap)
    elif qmap.kind == "linear":
        k = _linear_index(a, qmap)
    else:
        k = float_index_bits(jax.lax.bitcast_convert_type(a, jnp.int32), qmap)
    if not zero_point:  # never round a positive value to 0
        k = jnp.where(a > 0, jnp.maximum(k, 0), k)
    if not qmap.signed:  # code 254 (14) is +inf
        k = jnp.minimum(k, qmap.positives - 1)
    return jnp.where(y < 0, qmap.zero_code - 1 - k, qmap.zero_code + 1 + k)


@functools.partial(jax.jit, static_argnums=0)
def _value(qmap: QuantMap, codes: jax.Array) -> jax.Array:
    c = codes.astype(jnp.int32)
    k = jnp.abs(c - qmap.zero_code) - 1  # index among the positive values, -1 for zero
    if qmap.kind == "dynamic":
        magnitude = _dynamic_value(k, qmap)
    elif qmap.kind == "linear":
        magnitude = (k + 1).astype(jnp.float32) / float(_linear_steps(qmap))
    else:
        magnitude = _float_value(k, qmap)
    magnitude = jnp.where(k < 0, 0.0, magnitude)
    if qmap.signed:
        signed = jnp.where(c < qmap.zero_code, -magnitude, magnitude)
    else:
        signed = jnp.where(c == qmap.nan_code - 1, jnp.inf, magnitude)
    return jnp.where(c == qmap.nan_code, jnp.nan, signed)


def float_map_constants(qmap: QuantMap) -> tuple[int, int, int]:
    """``(top, offset, shift)`` of the float map: the positive value with index k is
    the float32 whose bit pattern is ``(k + 1 + offset) << shift``, and the top index
    ``top - 1`` is 1.0."""
    top, mantissa_bits = qmap.positives, qmap.mantissa_bits
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
    values, even across a binade boundary. At 4 bits, where q_0 is 1/8 of the scale
    or more, stochastic rounding is unbiased below q_0 too: y rounds to q_0 with
    probability y / q_0 (the noise as a uniform fraction), else to 0.
    """
    top, offset, shift = float_map_constants(qmap)
    bias = (1 << (shift - 1)) if noise is None else noise
    k = jnp.minimum(((bits + bias) >> shift) - offset, top) - 1
    smallest = np.array((1 + offset) << shift, np.int32).view(np.float32)
    if noise is None or qmap.bits == 8:  # 8 bits: as before, q_0 from q_0 / 2 up
        up = bits >= (smallest / 2).view(np.int32)
    else:
        y = jax.lax.bitcast_convert_type(bits, jnp.float32)
        up = y * np.float32(2.0**shift / smallest) > noise.astype(jnp.float32)
    return jnp.where(k >= 0, k, jnp.where(up, 0, -1))


def _float_value(k: jax.Array, qmap: QuantMap) -> jax.Array:
    """The positive float map value with index ``k`` >= 0: a shift and a bit cast."""
    _, offset, shift = float_map_constants(qmap)
    return jax.lax.bitcast_convert_type((k + 1 + offset) << shift, jnp.float32)


def _level_sizes(qmap: QuantMap) -> np.ndarray:
    """Points per exponent level e: 64..1 (signed) or 128..2 (unsigned) over e = 0..6;
    4 bits: 4, 2, 1 or 8, 4, 2 over e = 0..2 (the top unsigned point is +inf's code)."""
    top = 1 << (qmap.bits - (2 if qmap.signed else 1))
    return top >> np.arange(7 if qmap.bits == 8 else 3)


def _dynamic_index(a: jax.Array, qmap: QuantMap) -> jax.Array:
    """Index among the positive values of the one nearest ``a`` (-1: zero is nearest).

    The level e (a in (10^-e-1, 10^-e]) comes from comparisons; rounding the
    fraction to the nearest point of the level lands on the top of the next level
    down when that is nearer, since consecutive levels are contiguous in the
    sorted order. Only selects and multiplies: cheap, and it shards freely.
    """
    sizes = _level_sizes(qmap)
    offsets = np.cumsum(sizes[::-1])[::-1] - sizes  # index of each level's first point
    pow10, n, offset = np.float32(1.0), np.float32(sizes[0]), np.float32(offsets[0])
    for e in range(1, len(sizes)):
        below = a <= np.float32(10.0**-e)
        pow10 = jnp.where(below, np.float32(10.0**e), pow10)
        n = jnp.where(below, np.float32(sizes[e]), n)
        offset = jnp.where(below, np.float32(offsets[e]), offset)
    r = jnp.floor((a * pow10 - np.float32(0.1)) * (n / np.float32(0.9)) + 0.5)  # half rounds up
    k = (offset + jnp.clip(r, 0.0, n) - 1.0).astype(jnp.int32)
    smallest = 10.0 ** (1 - len(sizes)) * (0.1 + 0.9 / float(sizes[-1]))
    return jnp.where(a >= smallest / 2, jnp.maximum(k, 0), -1)


def _dynamic_value(k: jax.Array, qmap: QuantMap) -> jax.Array:
    """The positive value with index ``k`` >= 0 (inverse of ``_dynamic_index``).

    Level e holds indices [top 2^-e - last, top 2^(1-e) - last), ``last`` the size
    of the lowest level, so ``floor(log2(k + last))`` reads off the level.
    """
    sizes = _level_sizes(qmap)
    top, last = int(sizes[0]), int(sizes[-1])
    shifted = jnp.maximum(k, 0) + last
    e = (top.bit_length() - 1) - (31 - jax.lax.clz(shifted))  # log2(top) - floor(log2(.))
    n = jnp.right_shift(top, e)
    j = shifted - n  # position within the level, 0-based
    frac = 0.1 + (j + 1).astype(jnp.float32) * (0.9 / n.astype(jnp.float32))
    return frac * sum(jnp.where(e == i, np.float32(10.0**-i), 0.0) for i in range(len(sizes)))


def _linear_steps(qmap: QuantMap) -> int:
    """Values k / steps: 127 or 254 (4 bits: 7 or 14; the top unsigned step is +inf's)."""
    return qmap.zero_code if qmap.signed else qmap.nan_code - 1


def _linear_index(a: jax.Array, qmap: QuantMap) -> jax.Array:
    n = _linear_steps(qmap)
    return jnp.clip(jnp.round(a * n), 0, n).astype(jnp.int32) - 1


DEFAULT_FLOAT = {(8, True): "e4m3", (8, False): "e4m4", (4, True): "e3m0", (4, False): "e3m1"}
"""What ``qmap="float"`` means per (bits, signed); the 4-bit choice is measured in
``benchmarks/maps_4bit.py`` (see ``blockwise``)."""


def float_splits(signed: bool, bits: int = 8) -> list[str]:
    """The float maps ``"e<E>m<M>"`` of ``bits`` bits: E + M = bits - 1 (signed) or bits."""
    magnitude = bits - 1 if signed else bits  # the signed map spends one bit on the sign
    exponents = range(2, magnitude) if bits == 8 else range(1, magnitude + 1)
    return [f"e{e}m{magnitude - e}" for e in exponents]


def resolve_qmap(qmap: object, signed: bool, bits: int = 8) -> QuantMap:
    """The ``QuantMap`` named by ``qmap``; a ValueError naming the valid maps otherwise.

    ``"float"`` is ``DEFAULT_FLOAT[bits, signed]`` (8 bits: e4m3 signed, e4m4 unsigned).
    """
    floats = float_splits(signed, bits)
    if qmap == "float":
        qmap = DEFAULT_FLOAT[bits, signed]
    if isinstance(qmap, str) and qmap in (*_ABSMAX_MAPS, *floats):
        return QuantMap(qmap, signed, bits)
    magnitude = bits - 1 if signed else bits
    at = "" if bits == 8 else f" at bits={bits}"
    raise ValueError(
        f'qmap must be "float", "dynamic", "linear" or a float map '
        f'"e<E>m<M>" with E + M = {magnitude} for signed={signed}{at} '
        f"({', '.join(floats)}), got {qmap!r}."
    )
