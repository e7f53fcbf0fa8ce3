"""Blockwise 8-bit quantization: per-block absmax scale plus 8-bit codes into a map.

An array ``x`` is cut into blocks of ``b`` consecutive elements of its last axis
(leading axes are kept, so a block never crosses a shard boundary of a leading
axis). Each block keeps ``s = max |x_i|`` in float32 and one byte per element,
the index of the map value nearest to ``x_i / s``:

.. math::
    c_i = \\arg\\min_k |q_k - x_i / s|, \\qquad \\tilde x_i = q_{c_i} \\, s

Maps (255 finite values in [-1, 1] or [0, 1], sorted; code 255 is NaN):

- ``"dynamic"``: dynamic tree quantization (Dettmers et al. 2021): an exponent
  10^-e, e = 0..6, and a linear fraction in (0.1, 1] whose resolution halves at
  each smaller exponent. Relative error about 0.4% near the block maximum, and
  values down to 1e-7 of it stay non-zero.
- ``"linear"``: evenly spaced values (k/127 signed, k/254 unsigned).

Non-finite values: the block scale is the max over finite values only, and a NaN
or ±inf element gets the NaN code, so it decodes as NaN on its own (as the fp32
moment would poison that element) and the rest of its block is unaffected.
``zero_point=False`` (used for Adam's second moment) never rounds a positive
value to 0: a zero v would turn m/(sqrt(v)+eps) into m/eps, a huge step.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", arXiv:2110.02861.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NAN_CODE = 255
_LEVELS = 7  # exponents 10^0 .. 10^-6 of the dynamic map


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scale"],
    meta_fields=["shape"],
)
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """An array stored as 8-bit codes and one float32 scale per block.

    Attributes:
      codes: uint8, shape ``(*lead, n_blocks, block)``: indices into the map.
      scale: float32, shape ``(*lead, n_blocks)``: each block's max |x|.
      shape: the original shape (static; the last axis is zero-padded to
        ``n_blocks * block`` when it is not a multiple of the block).
    """

    codes: jax.Array
    scale: jax.Array
    shape: tuple


class QuantMap(NamedTuple):
    """A sorted 8-bit map: ``values()`` for decoding, ``index(y)`` for nearest encoding."""

    kind: str  # "dynamic" or "linear"
    signed: bool

    def values(self) -> np.ndarray:
        """The 256 map values, ascending, with NaN at code 255 (for inspection and tests)."""
        return np.asarray(self.value(jnp.arange(256)))

    def index(self, y: jax.Array, *, zero_point: bool = True) -> jax.Array:
        """The code of the map value nearest each ``y`` in [-1, 1] (float32 in, int32 out)."""
        a = jnp.abs(y)
        k = (
            _dynamic_index(a, self.signed)
            if self.kind == "dynamic"
            else _linear_index(a, self.signed)
        )
        if not zero_point:  # never round a positive value to 0
            k = jnp.where(a > 0, jnp.maximum(k, 0), k)
        zero = 127 if self.signed else 0
        return jnp.where(y < 0, zero - 1 - k, zero + 1 + k)

    def value(self, codes: jax.Array) -> jax.Array:
        """The float32 map value of each code, computed (no table gather: it shards freely)."""
        c = codes.astype(jnp.int32)
        zero = 127 if self.signed else 0
        k = jnp.abs(c - zero) - 1  # index among the positive values, -1 for zero
        if self.kind == "dynamic":
            magnitude = _dynamic_value(k, self.signed)
        else:
            magnitude = (k + 1).astype(jnp.float32) / (127.0 if self.signed else 254.0)
        magnitude = jnp.where(k < 0, 0.0, magnitude)
        signed = jnp.where(c < zero, -magnitude, magnitude)
        return jnp.where(c == NAN_CODE, jnp.nan, signed)


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


def block_layout(shape: tuple, block_size: int) -> tuple[int, int]:
    """``(n_blocks, block)`` along the last axis (one block of the whole axis if it is shorter)."""
    last = shape[-1]
    block = min(block_size, last)
    return -(-last // block), block


@functools.partial(jax.jit, static_argnames=("qmap", "block_size", "zero_point"))
def quantize(x: jax.Array, qmap: QuantMap, block_size: int, *, zero_point: bool = True):
    """Blockwise 8-bit codes of ``x`` (see the module docstring)."""
    n_blocks, block = block_layout(x.shape, block_size)
    x = x.astype(jnp.float32)
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    blocks = x.reshape(*x.shape[:-1], n_blocks, block)
    finite = jnp.isfinite(blocks)
    scale = jnp.max(jnp.where(finite, jnp.abs(blocks), 0.0), axis=-1)
    y = blocks / jnp.where(scale > 0, scale, 1.0)[..., None]
    codes = jnp.where(finite, qmap.index(y, zero_point=zero_point), NAN_CODE)
    return codes.astype(jnp.uint8), scale


@functools.partial(jax.jit, static_argnames=("qmap", "shape"))
def dequantize(codes: jax.Array, scale: jax.Array, qmap: QuantMap, shape: tuple) -> jax.Array:
    """The float32 array that ``codes`` and ``scale`` stand for, in ``shape``."""
    blocks = qmap.value(codes) * scale[..., None]
    flat = blocks.reshape(*blocks.shape[:-2], -1)
    return flat[..., : shape[-1]]
