"""Blockwise 8- and 4-bit moments: codes and block scales per leaf (``blockwise``).

The ``MomentFormat`` to copy for a format that keeps several arrays per leaf
(``fields = ("codes", "scales")``) and follows the moment it stores (``bind``).
The arithmetic lives in ``codec`` (blocks, scales, 4-bit packing) and ``qmaps`` (the
maps); the factories ``blockwise`` / ``blockwise_8bit`` / ``blockwise_4bit`` and their
checks in ``blockwise_options``.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .codec import check_blocks_on_devices, dequantize, quantize
from .protocol import ARGUMENTS, BucketMembers, MomentRecord, Role
from .qmaps import QuantMap, is_float_map, resolve_qmap


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scales", "key", "config"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class QuantizedMoment(MomentRecord):
    """A moment stored by ``blockwise``: parameter-shaped trees of codes and scales.

    Each tree has one entry per parameter leaf (so hosts that wrap each state
    leaf at a parameter position, such as ``flax.nnx``, see plain arrays); the
    original shape of a leaf is its gradient's.

    Attributes:
      codes: per leaf, uint8 ``(*lead, n_blocks, block)``: indices into the map (4 bits:
        ``(*lead, n_blocks, ceil(block / 2))``, two a byte); or the float32 moment itself
        for a leaf below ``min_size``.
      scales: per leaf, float32 ``(*lead, n_blocks)``: each block's max :math:`|x|`
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


Stored8bit = tuple[jax.Array, jax.Array | None]  # (codes, scales), or (float32 moment, None)


class Blockwise8bit(NamedTuple):
    """Store the moment as blockwise 8- or 4-bit codes (make it with :func:`blockwise`,
    :func:`blockwise_8bit` or :func:`blockwise_4bit`).

    ``signed`` and ``stochastic`` may be None until the format is bound to the
    moment it stores (``bind``): then m is signed and v, AMSGrad's maximum unsigned.
    ``bits`` (8 or 4) is last, so that positional construction of 8-bit formats holds.
    """

    signed: bool | None = None
    block_size: int = 256
    min_size: int = 4096
    qmap: str = "float"
    sqrt: bool | None = False  # None: for the second moment at 4 bits (``blockwise``)
    stochastic: bool | None = None
    seed: int = 0
    bits: int = 8

    elementwise = False  # a block's scale is shared by block_size elements
    fields = ("codes", "scales")
    record = QuantizedMoment
    version = 1  # of the stored layout (codes, maps, packing): bump on any change (versions.py)

    def bind(self, role: Role) -> "Blockwise8bit":
        """Resolve ``signed`` (m: True, v: False), ``sqrt`` (None: not signed) and
        ``stochastic`` for ``role``."""
        signed = role == "mu"
        if self.signed is not None and self.signed != signed:
            raise ValueError(_wrong_sign_message(role, self.signed, self.name))
        if self.sqrt and signed:
            raise ValueError(
                f"{self.name}(sqrt=True) stores the root of a non-negative moment and is "
                "for nu_dtype (the second moment v); the first moment m is signed."
            )
        resolve_qmap(self.qmap, signed, self.bits)
        stochastic = is_float_map(self.qmap) if self.stochastic is None else self.stochastic
        sqrt = not signed if self.sqrt is None else self.sqrt
        return self._replace(signed=signed, stochastic=stochastic, sqrt=sqrt)

    def init(self, param: jax.Array, packed: BucketMembers | None = None) -> Stored8bit:
        """Zero codes and scales, or a float32 zero moment below ``min_size`` and in buckets
        of packed leaves smaller than ``min_size``."""
        self._check_bound()
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"{self.name} stores real moments, but got a {param.dtype} parameter of shape "
                f"{param.shape}. Use a float dtype for complex parameters (jnp.complex64), "
                f"or keep them out of the {self.bits}-bit optimizer with optax.masked / "
                "optax.partition."
            )
        zeros = jnp.zeros_like(param, dtype=jnp.float32)
        if packed:
            self._check_bucket(packed)
            return zeros, None
        if not self._quantizes(param.shape):
            return zeros, None
        return self._quantize(zeros, None)

    def decode(self, stored: Stored8bit, like: jax.Array) -> jax.Array:
        """The float32 moment shaped like ``like`` (squared back with ``sqrt``)."""
        codes, scales = stored
        if scales is None:
            return codes
        value = dequantize(codes, scales, self._map(), tuple(jnp.shape(like)))
        value = value * value if self.sqrt else value
        if self.qmap == "dynamic":  # materialize once: XLA would re-decode in each consumer
            value = jax.lax.optimization_barrier(value)
        return value

    def encode(
        self, value: jax.Array, stored: Stored8bit, key: jax.Array | None = None
    ) -> Stored8bit:
        """Codes and scales of ``value`` (stochastic rounding with ``key`` if ``stochastic``)."""
        _, scales = stored
        if scales is None:
            return value.astype(jnp.float32), None
        return self._quantize(value, key if self.stochastic else None)

    def describe(self) -> str:
        """``blockwise_8bit(signed=..., qmap=..., sqrt=..., block_size=..., ...)``; at 4 bits
        ``blockwise(bits=4, signed=..., ...)`` (another tree key: a mismatched restore fails)."""
        self._check_bound()
        head = "blockwise_8bit(" if self.bits == 8 else f"blockwise(bits={self.bits}, "
        return (
            f"{head}signed={self.signed}, qmap={self._map().kind!r}, sqrt={self.sqrt}, "
            f"block_size={self.block_size}, min_size={self.min_size}, "
            f"stochastic={self.stochastic})"
        )

    def partition_specs(
        self, spec: tuple, shape: tuple[int, ...], axis_sizes: dict[str, int] | None = None
    ) -> tuple:
        """How the stored arrays of a leaf of ``shape`` shard, given the parameter's spec.

        ``spec``: the parameter's ``PartitionSpec`` entries, one per axis. Codes
        ``(*lead, n_blocks, block)`` and scales ``(*lead, n_blocks)`` keep the leading
        axes' entries and put the last axis' entry on ``n_blocks``. That is the
        parameter's layout only if each device's piece of the last axis is a whole
        number of blocks: given ``axis_sizes`` (``mesh.shape``), anything else is
        refused (ValueError). A float32 leaf (below ``min_size``) shards like the
        parameter.
        """
        spec = tuple(spec) + (None,) * (len(shape) - len(spec))
        if not self._quantizes(tuple(shape)):
            return (spec, None)
        if axis_sizes is not None:
            check_blocks_on_devices(tuple(shape), spec[-1], axis_sizes, self.block_size, self.name)
        return ((*spec, None), spec)

    def _check_bucket(self, packed: BucketMembers) -> None:
        big = [(path, size) for path, size in packed if size >= max(self.min_size, 1)]
        if big:
            path, size = big[0]
            raise ValueError(
                f"{self.name} quantizes leaves of at least min_size={self.min_size} elements, "
                f"but the leaf at {path} ({size} elements) was packed into a flat bucket "
                f"(adamx.pack / multi_tensor min_size > {size}), where its blocks would span "
                "unrelated leaves. Give pack / multi_tensor a min_size <= the format's "
                f"min_size ({self.min_size}), so that every leaf the format quantizes stays "
                "unpacked (the defaults are both 4096)."
            )

    def _quantize(self, value: jax.Array, key: jax.Array | None) -> Stored8bit:
        sharding: Any = getattr(jax.typeof(value), "sharding", None)  # typed (Explicit) axes
        spec = getattr(sharding, "spec", None)
        if spec is not None and len(spec) == value.ndim and spec[-1] is not None:
            mesh_shape = sharding.mesh.shape
            check_blocks_on_devices(value.shape, spec[-1], mesh_shape, self.block_size, self.name)
        if self.qmap == "dynamic":
            value = jax.lax.optimization_barrier(value)  # read twice below (block max, codes)
        value = jnp.sqrt(value) if self.sqrt else value
        noise_key = None if key is None else jax.random.key_data(key)
        return quantize(
            value, self._map(), self.block_size, zero_point=self.signed, noise_key=noise_key
        )

    def _quantizes(self, shape: tuple[int, ...]) -> bool:
        return len(shape) > 0 and int(np.prod(shape)) >= max(self.min_size, 1)

    def _check_bound(self) -> None:
        if self.signed is None or self.stochastic is None or self.sqrt is None:
            raise ValueError(
                f"this {self.name} format is not bound to a moment yet: pass it as mu_dtype / "
                "nu_dtype (the optimizer binds it), or call .bind('mu') / .bind('nu') first."
            )

    def _map(self) -> QuantMap:
        assert self.signed is not None, "called on a bound format only"
        return resolve_qmap(self.qmap, self.signed, self.bits)

    @property
    def name(self) -> str:
        """``blockwise_8bit`` or ``blockwise_4bit``: the constructor, for messages."""
        return f"blockwise_{self.bits}bit"


def _wrong_sign_message(role: Role, signed: bool, name: str) -> str:
    if role == "mu":
        return (
            f"mu_dtype={name}(signed=False) would clip the negative entries of the "
            f"first moment m to 0. Use {name}() (signed is then chosen for the moment) "
            f"or {name}(signed=True) for mu_dtype."
        )
    return (
        f"{ARGUMENTS[role]}={name}(signed=True) would store the second moment v >= 0 "
        "on the signed map, wasting half its codes, and round v to nearest, so it could not "
        f"decay. Use {name}() (signed is then chosen for the moment) or "
        f"{name}(signed=False) for nu_dtype."
    )
