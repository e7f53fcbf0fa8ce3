r"""Blockwise 8-bit quantization: per-block scale plus 8-bit codes into a map.

An array ``x`` is cut into blocks of ``b`` consecutive elements of its last axis
(leading axes are kept, so a block never crosses a shard boundary of a leading
axis). Each block keeps one float32 scale ``s`` and one byte per element, the
code of a map value q near ``x_i / s``:

.. math::
    \tilde x_i = q_{c_i} \, s

Maps (values in [-1, 1] or [0, 1], sorted by code; code 255 is NaN; signed maps
have 0 at code 127 and 255 finite values, unsigned ones 0 at code 0, 254 finite
values and +inf at code 254):

- float maps ``"eEmM"`` (E + M = 7 signed, 8 unsigned): the positive values are
  the float32 numbers with M fraction bits, (1 + f/2^M) 2^-e, the largest 1.0:
  the value with index k is the float32 whose bit pattern is
  ``(k + 1 + offset) << (23 - M)``. Encoding rounds the bit pattern of |y| to M
  fraction bits (nearest, or stochastic with added random bits), decoding is a
  shift and a bit cast: a few integer operations per element, which XLA fuses
  and vectorizes. The block scale is the power of two just above the block's
  largest finite |x|, found by a max over the uint8 exponent fields, so x / s is
  an exact exponent subtraction. Relative error at most 2^-(M+1) from q_min up.
- ``"dynamic"``: dynamic tree quantization (Dettmers et al. 2021): an exponent
  10^-e, e = 0..6, and a linear fraction in (0.1, 1] whose resolution halves at
  each smaller exponent. Scale: the block's absmax (divided by the largest
  finite value, 1 - 0.9/128, when unsigned). Relative error about 0.4% near the
  block maximum, and values down to 1e-7 of it stay non-zero.
- ``"linear"``: evenly spaced values (k/127 signed, k/254 unsigned, the top
  unsigned one 253/254), absmax scale (divided by the largest value).

Non-finite values: the block scale is taken over finite values only. A NaN
element gets the NaN code, and so does ±inf on a signed map: it decodes as NaN
on its own (as the fp32 moment would poison that element). +inf on an unsigned
map (v = g² overflowed) keeps the +inf code, so Adam's step there is m/inf = 0,
as in float32. The rest of the block is unaffected.
``zero_point=False`` (used for Adam's second moment) never rounds a positive
value to 0: a zero v would turn m/(sqrt(v)+eps) into m/eps, a huge step.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", arXiv:2110.02861; Micikevicius et al., "FP8 Formats for Deep
  Learning", arXiv:2209.05433; Rouhani et al., "Microscaling Data Formats for
  Deep Learning", arXiv:2310.10537 (power-of-two block scales).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .random_bits import random_bits

NAN_CODE = 255
INF_CODE = 254  # unsigned maps only: +inf (an overflowed g² in v)
_LEVELS = 7  # exponents 10^0 .. 10^-6 of the dynamic map


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scales", "key", "config"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class QuantizedMoment:
    """A moment stored by ``blockwise_8bit``: parameter-shaped trees of codes and scales.

    Each tree has one entry per parameter leaf (so hosts that wrap each state
    leaf at a parameter position, such as ``flax.nnx``, see plain arrays); the
    original shape of a leaf is its gradient's.

    Attributes:
      codes: per leaf, uint8 ``(*lead, n_blocks, block)``: indices into the map;
        or the float32 moment itself for a leaf below ``min_size``.
      scales: per leaf, float32 ``(*lead, n_blocks)``: each block's max |x|
        (dynamic and linear maps) or the power of two just above it (float maps);
        None for a float32 leaf.
      key: uint32[2] raw PRNG key data of stochastic rounding, split at every
        update (each leaf folds in its index); None when rounding to nearest.
      config: ``{description: uint8[1]}``: the format's configuration as a static
        key, part of the tree structure and of checkpoint paths.
    """

    codes: Any
    scales: Any
    key: Any
    config: Any


QuantizedArray = QuantizedMoment  # the name before the transposed layout


class QuantMap(NamedTuple):
    """A sorted 8-bit map: ``values()`` for decoding, ``index(y)`` for nearest encoding."""

    kind: str  # "dynamic", "linear" or a float map "eEmM"
    signed: bool

    def values(self) -> np.ndarray:
        """The 256 map values, ascending, with NaN at code 255 and, unsigned, +inf at 254."""
        return np.asarray(self.value(jnp.arange(256)))

    @property
    def finite_codes(self) -> int:
        """How many codes hold finite values (0 .. finite_codes - 1)."""
        return NAN_CODE if self.signed else INF_CODE

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
        k = _float_index(a, qmap.signed, qmap.mantissa_bits)
    if not zero_point:  # never round a positive value to 0
        k = jnp.where(a > 0, jnp.maximum(k, 0), k)
    if not qmap.signed:  # code 254 is +inf
        k = jnp.minimum(k, INF_CODE - 2)
    zero = 127 if qmap.signed else 0
    return jnp.where(y < 0, zero - 1 - k, zero + 1 + k)


@functools.partial(jax.jit, static_argnums=0)
def _value(qmap: QuantMap, codes: jax.Array) -> jax.Array:
    c = codes.astype(jnp.int32)
    zero = 127 if qmap.signed else 0
    k = jnp.abs(c - zero) - 1  # index among the positive values, -1 for zero
    if qmap.kind == "dynamic":
        magnitude = _dynamic_value(k, qmap.signed)
    elif qmap.kind == "linear":
        magnitude = (k + 1).astype(jnp.float32) / (127.0 if qmap.signed else 254.0)
    else:
        magnitude = _float_value(k, qmap.signed, qmap.mantissa_bits)
    magnitude = jnp.where(k < 0, 0.0, magnitude)
    signed = jnp.where(c < zero, -magnitude, magnitude) if qmap.signed else magnitude
    if not qmap.signed:
        signed = jnp.where(c == INF_CODE, jnp.inf, signed)
    return jnp.where(c == NAN_CODE, jnp.nan, signed)


def float_map_constants(signed: bool, mantissa_bits: int) -> tuple[int, int, int]:
    """``(top, offset, shift)`` of the float map: the positive value with index k is
    the float32 whose bit pattern is ``(k + 1 + offset) << shift``, and the top index
    ``top - 1`` is 1.0."""
    top = 127 if signed else 253  # positive values (codes 0, 254, 255: 0, +inf, NaN)
    shift = 23 - mantissa_bits
    return top, (127 << mantissa_bits) - top, shift


def _float_index(a: jax.Array, signed: bool, mantissa_bits: int) -> jax.Array:
    """Index among the positive values of the float map value nearest ``a`` (-1: zero)."""
    return _float_index_bits(jax.lax.bitcast_convert_type(a, jnp.int32), signed, mantissa_bits)


def _float_index_bits(bits, signed: bool, mantissa_bits: int, noise=None) -> jax.Array:
    """``_float_index`` of the float32 whose bit pattern is ``bits`` (int32, >= 0 or underflow).

    Rounds the bit pattern to ``mantissa_bits`` fraction bits (adding half the
    dropped unit first: round half up, carrying into the exponent), then subtracts
    the offset that puts 1.0 at the top. Below the smallest value q_0: q_0 from
    q_0 / 2 up, else 0 (bit patterns of non-negative floats order like the floats).
    With ``noise`` (uniform integers in [0, 2^shift)) added instead of half the
    unit, the rounding is stochastic and unbiased: a value is linear in its bit
    pattern between two neighbouring map values, even across a binade boundary.
    """
    top, offset, shift = float_map_constants(signed, mantissa_bits)
    bias = (1 << (shift - 1)) if noise is None else noise
    k = jnp.minimum(((bits + bias) >> shift) - offset, top) - 1
    half_smallest = np.array((1 + offset) << shift, np.int32).view(np.float32) / 2
    return jnp.where(k >= 0, k, jnp.where(bits >= half_smallest.view(np.int32), 0, -1))


def _float_value(k: jax.Array, signed: bool, mantissa_bits: int) -> jax.Array:
    """The positive float map value with index ``k`` >= 0: a shift and a bit cast."""
    _, offset, shift = float_map_constants(signed, mantissa_bits)
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
    if qmap in ("dynamic", "linear", *floats):
        return QuantMap(qmap, signed)
    raise ValueError(
        f'qmap must be "float", "dynamic", "linear" or a float map '
        f'"e<E>m<M>" with E + M = {bits} for signed={signed} '
        f"({', '.join(floats)}), got {qmap!r}."
    )


def block_layout(shape: tuple, block_size: int) -> tuple[int, int]:
    """``(n_blocks, block)`` along the last axis (one block of the whole axis if it is shorter)."""
    last = shape[-1]
    block = min(block_size, last)
    return -(-last // block), block


@functools.partial(jax.jit, static_argnames=("qmap", "block_size", "zero_point"))
def quantize(
    x: jax.Array,
    qmap: QuantMap,
    block_size: int,
    *,
    zero_point: bool = True,
    noise_key: jax.Array | None = None,
):
    """Blockwise 8-bit codes of ``x`` and the block scales (see the module docstring).

    ``noise_key`` (raw key data; float maps only) rounds stochastically instead of
    to nearest.
    """
    n_blocks, block = block_layout(x.shape, block_size)
    x = x.astype(jnp.float32)
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    blocks = x.reshape(*x.shape[:-1], n_blocks, block)
    if qmap.kind not in ("dynamic", "linear"):
        return _quantize_float(blocks, qmap, zero_point, noise_key)
    if noise_key is not None:
        raise ValueError(f"stochastic rounding needs a float map, got qmap={qmap.kind!r}.")
    finite = jnp.isfinite(blocks)
    scale = jnp.max(jnp.where(finite, jnp.abs(blocks), 0.0), axis=-1) / qmap.top_value()
    y = blocks / jnp.where(scale > 0, scale, 1.0)[..., None]
    codes = jnp.where(finite, qmap.index(y, zero_point=zero_point), _non_finite_code(qmap, blocks))
    return codes.astype(jnp.uint8), scale


def _non_finite_code(qmap: QuantMap, x: jax.Array) -> jax.Array:
    """NaN's code, or +inf's for +inf on an unsigned map (v = inf gives Adam's step 0)."""
    if qmap.signed:
        return jnp.asarray(NAN_CODE)
    return jnp.where(x == jnp.inf, INF_CODE, NAN_CODE)


def _quantize_float(blocks, qmap: QuantMap, zero_point: bool, noise_key=None):
    """Float-map codes with a power-of-two block scale, in integer arithmetic.

    The scale is the power of two just above the block's largest finite |x|,
    ``s = 2^(E+1)`` for the largest biased exponent field E: its one reduction runs
    over uint8 exponents, and ``x / s`` is exact (an exponent subtraction on the
    bit pattern), so encoding is a handful of integer operations per element.
    Float32 subnormals are read as 0 (positive ones still get q_0 when
    ``zero_point=False``).
    """
    bits = jax.lax.bitcast_convert_type(blocks, jnp.int32)
    mag = bits & 0x7FFFFFFF
    finite = mag < 0x7F800000
    exponent = jnp.where(finite, mag >> 23, 0)  # biased; 0 for zeros and subnormals
    scale_exp = jnp.minimum(jnp.max(exponent.astype(jnp.uint8), axis=-1).astype(jnp.int32), 253)
    y_bits = jnp.where(exponent > 0, mag - ((scale_exp - 126) << 23)[..., None], 0)  # |x| / s
    if noise_key is None:
        k = _float_index_bits(y_bits, qmap.signed, qmap.mantissa_bits)
    else:
        noise = random_bits(noise_key, y_bits.shape) >> (9 + qmap.mantissa_bits)
        k = _float_index_bits(y_bits, qmap.signed, qmap.mantissa_bits, noise.astype(jnp.int32))
    if not zero_point:  # never round a positive value to 0
        k = jnp.where(mag > 0, jnp.maximum(k, 0), k)
    zero = 127 if qmap.signed else 0
    codes = jnp.where(bits < 0, zero - 1 - k, zero + 1 + k) if qmap.signed else 1 + k
    codes = jnp.where(finite, codes, _non_finite_code(qmap, blocks))
    scale = jax.lax.bitcast_convert_type((scale_exp + 1) << 23, jnp.float32)
    return codes.astype(jnp.uint8), scale


@functools.partial(jax.jit, static_argnames=("qmap", "shape"))
def dequantize(codes: jax.Array, scale: jax.Array, qmap: QuantMap, shape: tuple) -> jax.Array:
    """The float32 array that ``codes`` and ``scale`` stand for, in ``shape``."""
    blocks = qmap.value(codes) * scale[..., None]
    flat = blocks.reshape(*blocks.shape[:-2], -1)
    return flat[..., : shape[-1]]
