r"""Blockwise 8- and 4-bit quantization: one scale per block plus a code per element.

An array ``x`` is cut into blocks of ``b`` consecutive elements of its last axis
(leading axes are kept, so a block never crosses a shard boundary of a leading
axis; a ragged last block is zero-padded). Each block keeps one float32 scale
``s`` and one code per element, the code of a map value q (``qmaps``) near
``x_i / s``: a byte, or at 4 bits half a byte (two codes per uint8, the even
element in the low nibble, the odd one in the high nibble; an odd block gets a
zero code appended):

.. math::
    \tilde x_i = q_{c_i} \, s

Scales: on 8-bit float maps, the power of two just above the block's largest
finite |x|, found by a max over the uint8 exponent fields, so x / s is an exact
exponent subtraction; on 4-bit float maps the block's largest finite |x|; on the
dynamic and linear maps the block's absmax (divided by the map's largest finite
value when that is below 1).

Non-finite values: the block scale is taken over finite values only. A NaN
element gets the NaN code, and so does ±inf on a signed map: it decodes as NaN
on its own (as the fp32 moment would poison that element). +inf on an unsigned
map (v = g² overflowed) keeps the +inf code, so Adam's step there is m/inf = 0,
as in float32. The rest of the block is unaffected.
``zero_point=False`` (used for Adam's second moment) never rounds a positive
value to 0: a zero v would turn m/(sqrt(v)+eps) into m/eps, a huge step.

References:
  Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
  Quantization", arXiv:2110.02861; Rouhani et al., "Microscaling Data Formats for
  Deep Learning", arXiv:2310.10537 (power-of-two block scales).
"""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .qmaps import QuantMap, float_index_bits, is_float_map
from .random_bits import random_bits


def block_layout(shape: tuple[int, ...], block_size: int) -> tuple[int, int]:
    """``(n_blocks, block)`` along the last axis (one block of the whole axis if it is shorter)."""
    last = shape[-1]
    block = min(block_size, last)
    return -(-last // block), block


def check_blocks_on_devices(
    shape: tuple[int, ...],
    entry: str | tuple[str, ...] | None,
    axis_sizes: Mapping[str, int],
    block_size: int,
    name: str = "blockwise_8bit",
) -> None:
    """Refuse a last axis split over devices (``entry``: its ``PartitionSpec`` entry) into
    pieces that are not a whole number of blocks: a block must lie on one device."""
    names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    pieces = int(np.prod([axis_sizes[name] for name in names], dtype=np.int64))
    _, block = block_layout(tuple(shape), block_size)
    if pieces > 1 and (shape[-1] % pieces or (shape[-1] // pieces) % block):
        raise ValueError(
            f"{name}(block_size={block_size}): a parameter of shape "
            f"{tuple(shape)} split along its last axis over {names} ({pieces} pieces of "
            f"{shape[-1] / pieces:g} elements) cannot be laid out like the parameter in "
            f"blocks of {block}: a block must lie on one device. Use a block_size that "
            "divides each device's piece (a power of two), shard a leading axis instead, "
            "or raise min_size so this leaf stays float32."
        )


@functools.partial(jax.jit, static_argnames=("qmap", "block_size", "zero_point"))
def quantize(
    x: jax.Array,
    qmap: QuantMap,
    block_size: int,
    *,
    zero_point: bool = True,
    noise_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Blockwise codes of ``x`` (uint8 ``(*lead, n_blocks, block)``; 4-bit maps:
    ``(*lead, n_blocks, ceil(block / 2))``, two codes a byte) and the block scales
    (float32 ``(*lead, n_blocks)``); see the module docstring.

    ``noise_key`` (raw key data; float maps only) rounds stochastically instead of
    to nearest.
    """
    n_blocks, block = block_layout(x.shape, block_size)
    x = x.astype(jnp.float32)
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    blocks = x.reshape(*x.shape[:-1], n_blocks, block)
    if is_float_map(qmap.kind):
        codes, scale = _quantize_float(blocks, qmap, zero_point, noise_key)
        return pack(codes, qmap.bits), scale
    if noise_key is not None:
        raise ValueError(f"stochastic rounding needs a float map, got qmap={qmap.kind!r}.")
    finite = jnp.isfinite(blocks)
    scale = jnp.max(jnp.where(finite, jnp.abs(blocks), 0.0), axis=-1) / qmap.top_value()
    y = blocks / jnp.where(scale > 0, scale, 1.0)[..., None]
    codes = jnp.where(finite, qmap.index(y, zero_point=zero_point), _non_finite_code(qmap, blocks))
    return pack(codes.astype(jnp.uint8), qmap.bits), scale


def pack(codes: jax.Array, bits: int) -> jax.Array:
    """4 bits: two codes a byte along the last axis, ``lo | hi << 4`` (an odd length gets a
    zero code appended); 8 bits: ``codes`` unchanged."""
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack(packed: jax.Array, bits: int) -> jax.Array:
    """The codes ``pack`` stored: ``(..., 2 n)`` from ``(..., n)`` at 4 bits."""
    if bits == 8:
        return packed
    pairs = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


def _non_finite_code(qmap: QuantMap, x: jax.Array) -> jax.Array:
    """NaN's code, or +inf's for +inf on an unsigned map (v = inf gives Adam's step 0)."""
    if qmap.signed:
        return jnp.asarray(qmap.nan_code)
    return jnp.where(x == jnp.inf, qmap.nan_code - 1, qmap.nan_code)


def _quantize_float(
    blocks: jax.Array, qmap: QuantMap, zero_point: bool, noise_key: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Float-map codes in integer arithmetic on the bit pattern of ``|x| / s``.

    8 bits: s is the power of two just above the block's largest finite |x|,
    ``s = 2^(E+1)`` for the largest biased exponent field E: its one reduction runs
    over uint8 exponents, and ``x / s`` is exact (an exponent subtraction on the
    bit pattern). 4 bits: s is the block's largest finite |x| (so it decodes
    exactly, as the top value 1.0): with 7 or 13 positive values, the half binade
    that a power-of-two scale leaves unused costs more than one float32 division
    per element (``benchmarks/maps_4bit.py``). Float32 subnormals are read as 0
    (positive ones still get q_0 when ``zero_point=False``).
    """
    bits = jax.lax.bitcast_convert_type(blocks, jnp.int32)
    mag = bits & 0x7FFFFFFF
    finite = mag < 0x7F800000
    exponent = jnp.where(finite, mag >> 23, 0)  # biased; 0 for zeros and subnormals
    if qmap.bits == 8:
        scale_exp = jnp.max(exponent.astype(jnp.uint8), axis=-1).astype(jnp.int32)
        scale_exp = jnp.minimum(scale_exp, 253)
        y_bits = jnp.where(exponent > 0, mag - ((scale_exp - 126) << 23)[..., None], 0)  # |x|/s
        scale = jax.lax.bitcast_convert_type((scale_exp + 1) << 23, jnp.float32)
    else:
        scale = jnp.max(jnp.where(finite, jnp.abs(blocks), 0.0), axis=-1)
        y = jnp.abs(blocks) / jnp.where(scale > 0, scale, 1.0)[..., None]
        y_bits = jnp.where(exponent > 0, jax.lax.bitcast_convert_type(y, jnp.int32), 0)
    noise = None
    if noise_key is not None:
        noise = (random_bits(noise_key, y_bits.shape) >> (9 + qmap.mantissa_bits)).astype(jnp.int32)
    k = float_index_bits(y_bits, qmap, noise)
    if not zero_point:  # never round a positive value to 0
        k = jnp.where(mag > 0, jnp.maximum(k, 0), k)
    zero = qmap.zero_code
    codes = jnp.where(bits < 0, zero - 1 - k, zero + 1 + k) if qmap.signed else 1 + k
    codes = jnp.where(finite, codes, _non_finite_code(qmap, blocks))
    return codes.astype(jnp.uint8), scale


@functools.partial(jax.jit, static_argnames=("qmap", "shape"))
def dequantize(
    codes: jax.Array, scale: jax.Array, qmap: QuantMap, shape: tuple[int, ...]
) -> jax.Array:
    """The float32 array that ``codes`` and ``scale`` stand for, in ``shape``."""
    blocks = qmap.value(unpack(codes, qmap.bits)) * scale[..., None]
    flat = blocks.reshape(*blocks.shape[:-2], -1)
    return flat[..., : shape[-1]]
