"""How ``scale_by_moments`` stores a moment between steps.

A format turns the moment computed this step into what the optimizer state
keeps, and back: ``decode`` before the update, ``encode`` after it. Stages
downstream only ever see the decoded, freshly updated moment, so a low-memory
format is a choice of ``scale_by_moments`` alone.

The default, ``FloatFormat``, stores the moment in a float dtype (the parameter's
own dtype unless told otherwise): ``decode`` is the identity and ``encode`` a cast,
exactly as optax's ``mu_dtype``; its state is a tree of arrays shaped like the
parameters, as optax's ``mu``/``nu``.

A format that needs several arrays per leaf keeps its state *transposed*: a
record of parameter-shaped trees, one array per parameter position in each
(``QuantizedMoment(codes, scales, key, config)`` for ``blockwise_8bit``,
``StochasticFloatMoment(value, key, config)`` for ``stochastic_float``). Hosts that
wrap every state leaf at a parameter position (``flax.nnx.Optimizer``) then wrap
plain arrays, and the original shape is read from the gradient at update time.
The record carries the format's configuration as the string key of its
``config`` field (``{"blockwise_8bit(signed=False, qmap='e4m4', ...)": uint8[1]}``):
it is part of the tree structure, so every update compares it with the optimizer's
own format (at trace time), and part of every checkpoint path, so a restore into
another configuration is refused by the checkpointer.
"""

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .._packed import PackedTree
from .._validation import _keystr, check_float_dtype, flatten_like_updates
from .codec import (
    QuantizedMoment,
    QuantMap,
    block_layout,
    dequantize,
    quantize,
    resolve_qmap,
)
from .rounding import round_stochastic

_PROTOCOL = ("elementwise", "stochastic", "fields", "bind", "describe")
ROLES = {"mu": 0, "nu": 1, "nu_max": 2}  # folded into the stochastic-rounding key
_ARGUMENT = {"mu": "mu_dtype", "nu": "nu_dtype", "nu_max": "nu_dtype"}


class MomentFormat(Protocol):
    """What a state format provides (see ``FloatFormat`` for the simplest one).

    A leaf's stored moment is one array (``fields is None``) or a tuple of arrays,
    one per name in ``fields`` (None where a leaf has no such array); the state
    stores the latter as a ``record`` of parameter-shaped trees.

    Attributes:
      elementwise: each stored element depends only on the same element of the
        moment. Such a format stores a packed bucket (``adamx.pack``,
        ``multi_tensor``) like any leaf; any other format is asked about each
        bucket through ``init(..., packed=...)``.
      stochastic: it rounds with random bits; the state then holds one PRNG key
        per moment, split every step, and each leaf gets its own key.
      fields: None (the state is a tree of arrays), or the names of a leaf's
        arrays, stored as ``record(**{field: tree}, key=..., config=...)``.
    """

    elementwise: bool
    stochastic: bool
    fields: tuple[str, ...] | None

    def bind(self, role: str) -> "MomentFormat":
        """This format for the moment ``role`` ("mu", "nu" or "nu_max"): fills in defaults."""

    def init(self, param: jax.Array, packed: tuple | None = None) -> Any:
        """The stored zero moment for a parameter leaf.

        ``packed``: for a bucket of packed leaves, ``((path, size), ...)`` of the
        leaves in it; a format that is not elementwise stores it exactly as the
        per-leaf run stores each of those leaves, or raises ValueError.
        """

    def decode(self, stored: Any, like: jax.Array) -> jax.Array:
        """The moment as an array shaped like ``like`` (the gradient)."""

    def encode(self, value: jax.Array, stored: Any, key: jax.Array | None) -> Any:
        """``value`` in the layout and dtypes of ``stored``; ``key``: this leaf's random key."""

    def describe(self) -> str:
        """The static configuration, as recorded in the state (the seed excluded)."""

    def partition_specs(self, spec: tuple, shape: tuple) -> Any:
        """How a leaf's stored arrays shard, given the parameter's ``PartitionSpec`` entries:
        one spec (``fields is None``) or a tuple with one per field (None: no array)."""


# ---------------------------------------------------------------------------
# Float storage.


class FloatFormat(NamedTuple):
    """Store the moment as a float array of ``dtype`` (None: the parameter's dtype).

    With ``upcast=False`` (optax's ``mu_dtype`` semantics) the stored moment
    enters the moving average in its own dtype, so for bfloat16 the product
    β·m is rounded to bfloat16 and β itself is too: 0.9 becomes 0.8984 and
    0.999 becomes exactly 1.0. With ``upcast=True`` it is decoded to float32
    first: the average is computed in float32 and only the stored value is
    rounded (to nearest: a change below half an ulp, such as v's decay by
    1 - β2 = 0.001 per step, is still lost; ``stochastic_float`` keeps it).
    """

    dtype: Any = None
    upcast: bool = False

    elementwise = True
    stochastic = False
    fields = None

    def bind(self, role: str) -> "FloatFormat":
        del role
        return self

    def init(self, param, packed=None):
        del packed
        dtype = None if self.dtype is None else jax.dtypes.canonicalize_dtype(self.dtype)
        if (
            dtype is not None
            and jnp.iscomplexobj(param)
            and not jnp.issubdtype(dtype, jnp.complexfloating)
        ):
            raise TypeError(
                f"the parameter is {param.dtype} but the moment would be stored as real "
                f"{dtype}, which drops its imaginary part. Store it as a complex dtype "
                f"(e.g. jnp.complex64) or pass None (the parameter's dtype)."
            )
        return jnp.zeros_like(param, dtype=dtype)

    def decode(self, stored, like=None):
        del like
        if self.upcast:
            return stored.astype(jnp.promote_types(stored.dtype, jnp.float32))
        return stored

    def encode(self, value, stored, key=None):
        del key
        return value.astype(stored.dtype)

    def describe(self) -> str:
        dtype = "the parameter's dtype" if self.dtype is None else jnp.dtype(self.dtype).name
        return f"a float moment ({dtype}{', upcast' if self.upcast else ''})"

    def partition_specs(self, spec: tuple, shape: tuple) -> tuple:
        """Elementwise: the moment shards exactly like its parameter."""
        del shape
        return tuple(spec)

    def stored_dtype_ok(self, stored) -> bool:
        """False if ``stored`` has another dtype than this format's explicit one."""
        if self.dtype is None:
            return True
        return jnp.result_type(stored) == jax.dtypes.canonicalize_dtype(self.dtype)


# ---------------------------------------------------------------------------
# Stochastic rounding to a narrow float.


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["value", "key", "config"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class StochasticFloatMoment:
    """A moment stored by ``stochastic_float``: parameter-shaped trees plus one key.

    Attributes:
      value: the moment of each leaf, in the storage dtype (e.g. bfloat16).
      key: uint32[2], raw PRNG key data, split at every update; leaf i rounds
        with ``fold_in(split, i)``.
      config: ``{description: uint8[1]}``: the format's configuration as a
        (static) key, so it is part of the tree structure and checkpoint paths.
    """

    value: Any
    key: Any
    config: Any


StochasticFloat = StochasticFloatMoment  # the name before the transposed layout


class StochasticFloatFormat(NamedTuple):
    """Store the moment in a narrow float dtype, stochastically rounded (``stochastic_float``)."""

    dtype: Any = jnp.bfloat16
    seed: int = 0

    elementwise = False  # the rounding noise depends on the element's position in its leaf
    stochastic = True
    fields = ("value",)
    record = StochasticFloatMoment

    def bind(self, role: str) -> "StochasticFloatFormat":
        if role != "mu" and jnp.dtype(self.dtype) == jnp.float16:
            _warn_float16_second_moment(f"stochastic_float(jnp.float16) as {_ARGUMENT[role]}")
        return self

    def init(self, param, packed=None):
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"stochastic_float rounds real moments, but got a {param.dtype} parameter of "
                f"shape {param.shape}. Use a float dtype (jnp.complex64) for complex parameters."
            )
        if packed:
            path, _ = packed[0]
            raise ValueError(
                f"stochastic_float draws its rounding noise from each element's position, so a "
                f"bucket of packed leaves (the leaf at {path} and {len(packed) - 1} others, "
                "packed by adamx.pack / multi_tensor) would be rounded differently from the "
                "per-leaf run. Keep these leaves out of the buckets (pack(..., min_size=0) or "
                "multi_tensor(..., min_size=0)), or store the moment in float32 or "
                "blockwise_8bit() when packing."
            )
        return (jnp.zeros_like(param, dtype=jax.dtypes.canonicalize_dtype(self.dtype)),)

    def decode(self, stored, like=None):
        del like
        return stored[0].astype(jnp.float32)

    def encode(self, value, stored, key):
        rounded = round_stochastic(value.astype(jnp.float32), stored[0].dtype, key)
        return (rounded,)

    def describe(self) -> str:
        return f"stochastic_float({jnp.dtype(self.dtype).name})"

    def partition_specs(self, spec: tuple, shape: tuple) -> tuple:
        """The rounded value shards like its parameter (its noise depends on global indices)."""
        del shape
        return (tuple(spec),)


def _warn_float16_second_moment(what: str) -> None:
    warnings.warn(
        f"{what}: float16 holds v = g² only for 2.4e-4 < |g| < 256 (6e-8 < v < 65504); "
        "outside that range v flushes to 0 (a step of m/eps) or overflows to inf. Use "
        "adamx.stochastic_float(jnp.bfloat16) (the float32 exponent range) or "
        "adamx.blockwise_8bit().",
        UserWarning,
        stacklevel=4,
    )


def stochastic_float(dtype: Any = jnp.bfloat16, seed: int = 0) -> StochasticFloatFormat:
    r"""A moment format: a narrow float, rounded stochastically (unbiased) when stored.

    .. math::
        \text{stored}_t = \operatorname{SR}(\beta\, x_{t-1} + (1-\beta)\, y_t), \qquad
        \mathbb{E}[\operatorname{SR}(x)] = x

    With round-to-nearest, a bfloat16 second moment cannot decay: the change
    (1-β2)·v = 0.001·v is below half an ulp (2^-9 v) and is rounded away, so v only
    grows. Stochastic rounding keeps the moving average unbiased. The average is
    computed in float32; the state holds one 8-byte key per moment, and every leaf
    and moment (m, v, AMSGrad's maximum) rounds with its own noise.

    Args:
      dtype: the storage dtype, bfloat16 or float16 (float16's range does not hold
        a second moment: a warning says so).
      seed: PRNG seed.

    Returns:
      A ``StochasticFloatFormat`` for ``mu_dtype`` / ``nu_dtype``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.stochastic_float(jnp.bfloat16),
      ...                 nu_dtype=adamx.stochastic_float(jnp.bfloat16))
    """
    check_float_dtype("dtype", dtype)
    if (
        dtype is None
        or jnp.dtype(dtype).itemsize >= 4
        or jnp.issubdtype(dtype, jnp.complexfloating)
    ):
        raise ValueError(
            f"stochastic_float rounds to a dtype narrower than float32 (bfloat16 or float16), "
            f"got {None if dtype is None else jnp.dtype(dtype)}. For float32 moments pass "
            "mu_dtype=jnp.float32 directly."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int, got {seed!r}.")
    return StochasticFloatFormat(dtype, seed)


# ---------------------------------------------------------------------------
# Blockwise 8-bit.


class Blockwise8bit(NamedTuple):
    """Store the moment as blockwise 8-bit codes (make it with :func:`blockwise_8bit`).

    ``signed`` and ``stochastic`` may be None until the format is bound to the
    moment it stores (``bind``): then m is signed and v, AMSGrad's maximum unsigned.
    """

    signed: bool | None = None
    block_size: int = 256
    min_size: int = 4096
    qmap: str = "float"
    sqrt: bool = False
    stochastic: bool | None = None
    seed: int = 0

    elementwise = False  # a block's scale is shared by block_size elements
    fields = ("codes", "scales")
    record = QuantizedMoment

    def bind(self, role: str) -> "Blockwise8bit":
        """Resolve ``signed`` (m: True, v: False) and ``stochastic`` for ``role``."""
        signed = role == "mu"
        if self.signed is not None and self.signed != signed:
            raise ValueError(_wrong_sign_message(role, self.signed))
        if self.sqrt and signed:
            raise ValueError(
                "blockwise_8bit(sqrt=True) stores the root of a non-negative moment and is "
                "for nu_dtype (the second moment v); the first moment m is signed."
            )
        resolve_qmap(self.qmap, signed)
        stochastic = self.stochastic
        if stochastic is None:
            stochastic = _is_float_map(self.qmap)
        return self._replace(signed=signed, stochastic=stochastic)

    def init(self, param, packed=None):
        self._check_bound()
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"blockwise_8bit stores real moments, but got a {param.dtype} parameter of shape "
                f"{param.shape}. Use a float dtype for complex parameters (jnp.complex64), "
                "or keep them out of the 8-bit optimizer with optax.masked / optax.partition."
            )
        zeros = jnp.zeros_like(param, dtype=jnp.float32)
        if packed:
            self._check_bucket(packed)
            return zeros, None
        if not self._quantizes(param):
            return zeros, None
        return self._quantize(zeros, None)

    def decode(self, stored, like):
        codes, scales = stored
        if scales is None:
            return codes
        value = dequantize(codes, scales, self._map(), tuple(jnp.shape(like)))
        value = value * value if self.sqrt else value
        if self.qmap == "dynamic":  # materialize once: XLA would re-decode in each consumer
            value = jax.lax.optimization_barrier(value)
        return value

    def encode(self, value, stored, key=None):
        _, scales = stored
        if scales is None:
            return value.astype(jnp.float32), None
        return self._quantize(value, key if self.stochastic else None)

    def describe(self) -> str:
        self._check_bound()
        return (
            f"blockwise_8bit(signed={self.signed}, qmap={self._map().kind!r}, sqrt={self.sqrt}, "
            f"block_size={self.block_size}, min_size={self.min_size}, "
            f"stochastic={self.stochastic})"
        )

    def partition_specs(self, spec: tuple, shape: tuple, axis_sizes: dict | None = None) -> tuple:
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
        if not (len(shape) > 0 and int(np.prod(shape)) >= max(self.min_size, 1)):
            return (spec, None)
        if axis_sizes is not None:
            self._check_blocks_on_devices(shape, spec[-1], axis_sizes)
        return ((*spec, None), spec)

    def _check_blocks_on_devices(self, shape: tuple, entry: Any, axis_sizes: Any) -> None:
        names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        pieces = int(np.prod([axis_sizes[name] for name in names], dtype=np.int64))
        _, block = block_layout(tuple(shape), self.block_size)
        if pieces > 1 and (shape[-1] % pieces or (shape[-1] // pieces) % block):
            raise ValueError(
                f"blockwise_8bit(block_size={self.block_size}): a parameter of shape "
                f"{tuple(shape)} split along its last axis over {names} ({pieces} pieces of "
                f"{shape[-1] / pieces:g} elements) cannot be laid out like the parameter in "
                f"blocks of {block}: a block must lie on one device. Use a block_size that "
                "divides each device's piece (a power of two), shard a leading axis instead, "
                "or raise min_size so this leaf stays float32."
            )

    def _check_bucket(self, packed) -> None:
        big = [(path, size) for path, size in packed if size >= max(self.min_size, 1)]
        if big:
            path, size = big[0]
            raise ValueError(
                f"blockwise_8bit quantizes leaves of at least min_size={self.min_size} elements, "
                f"but the leaf at {path} ({size} elements) was packed into a flat bucket "
                f"(adamx.pack / multi_tensor min_size > {size}), where its blocks would span "
                "unrelated leaves. Give pack / multi_tensor a min_size <= the format's "
                f"min_size ({self.min_size}), so that every leaf the format quantizes stays "
                "unpacked (the defaults are both 4096)."
            )

    def _quantize(self, value, key):
        sharding = getattr(jax.typeof(value), "sharding", None)  # typed (Explicit) axes only
        spec = getattr(sharding, "spec", None)
        if spec is not None and len(spec) == value.ndim and spec[-1] is not None:
            self._check_blocks_on_devices(value.shape, spec[-1], sharding.mesh.shape)
        if self.qmap == "dynamic":
            value = jax.lax.optimization_barrier(value)  # read twice below (block max, codes)
        value = jnp.sqrt(value) if self.sqrt else value
        noise_key = None if key is None else jax.random.key_data(key)
        codes, scale = quantize(
            value, self._map(), self.block_size, zero_point=self.signed, noise_key=noise_key
        )
        return codes, scale

    def _quantizes(self, param) -> bool:
        return param.ndim > 0 and param.size >= max(self.min_size, 1)

    def _check_bound(self) -> None:
        if self.signed is None or self.stochastic is None:
            raise ValueError(
                "this blockwise_8bit format is not bound to a moment yet: pass it as mu_dtype / "
                "nu_dtype (the optimizer binds it), or call .bind('mu') / .bind('nu') first."
            )

    def _map(self) -> QuantMap:
        return resolve_qmap(self.qmap, self.signed)


def _is_float_map(qmap: str) -> bool:
    return qmap not in ("dynamic", "linear")


def _wrong_sign_message(role: str, signed: bool) -> str:
    if role == "mu":
        return (
            "mu_dtype=blockwise_8bit(signed=False) would clip the negative entries of the "
            "first moment m to 0. Use blockwise_8bit() (signed is then chosen for the moment) "
            "or blockwise_8bit(signed=True) for mu_dtype."
        )
    return (
        f"{_ARGUMENT[role]}=blockwise_8bit(signed=True) would store the second moment v >= 0 "
        "on the signed map, wasting half its codes, and round v to nearest, so it could not "
        "decay. Use blockwise_8bit() (signed is then chosen for the moment) or "
        "blockwise_8bit(signed=False) for nu_dtype."
    )


def blockwise_8bit(
    signed: bool | None = None,
    *,
    block_size: int = 256,
    min_size: int = 4096,
    qmap: str = "float",
    sqrt: bool = False,
    stochastic: bool | None = None,
    seed: int = 0,
) -> Blockwise8bit:
    r"""A moment format of 8-bit codes with one scale per block (about 1 byte/param).

    .. math::
        \tilde x_i = q_{c_i} \, s_b, \qquad c_i = \operatorname{round}_q(x_i / s_b)

    The default ``qmap="float"`` is a small float: for y = x/s in [-1, 1] the code
    keeps the float32 bits of |y| rounded to M fraction bits (E4M3 plus a sign
    for m; E4M4 for v), 1.0 being the top code:

    .. math::
        q = (1 + f / 2^M)\, 2^{-e}, \quad f < 2^M, \qquad
        |\tilde y - y| \le 2^{-M-1} |y| \ \ (y \ge q_{\min}), \qquad
        s_b = 2^{\lfloor \log_2 \max_{i \in b} |x_i| \rfloor + 1}

    so encoding and decoding are a few integer operations (a shift, an add, a bit
    cast), and the power-of-two block scale makes x/s exact. ``"dynamic"``
    (Dettmers' dynamic tree, values down to 1e-7 of the block's absmax) and
    ``"linear"`` keep the absmax scale and nearest rounding; ``"e<E>m<M>"`` picks
    another float split.

    The format follows the moment it stores: passed as ``mu_dtype`` it is signed
    (m), as ``nu_dtype`` unsigned (v, and AMSGrad's maximum); an explicit
    ``signed`` that contradicts the moment is refused. Stochastic rounding
    (``stochastic``; float maps only) rounds to one of the two neighbouring map
    values with probabilities that make it unbiased, E[x̃] = x. It matters for v:
    β2 = 0.999 moves v by 0.1% per step, far below half a code step, so rounded to
    nearest v would freeze (as a bfloat16 v does); and for m: rounded to nearest,
    a steady m sits up to half a step (6%) off its target for good. The default
    (None) rounds both stochastically on float maps. The state keeps one 8-byte key
    per moment, split at every step; every leaf and moment gets its own noise.

    Blocks are ``block_size`` consecutive elements of the last axis (the whole
    axis if shorter; a ragged last block is zero-padded), so the codes have the
    parameter's leading axes and a block never crosses a shard boundary.
    Parameters with fewer than ``min_size`` elements keep a float32 moment, as
    bitsandbytes does. A NaN element decodes as NaN on its own and +inf in v (an
    overflowed g²) as +inf; the rest of the block keeps a scale taken over the
    finite values.

    Args:
      signed: None (default: follow the moment), True (m) or False (v).
      block_size: elements per block, a power of two (default 256).
      min_size: parameters smaller than this stay float32 (default 4096).
      qmap: the 8-bit map: ``"float"`` (E4M3 signed, E4M4 unsigned), a float
        split ``"e<E>m<M>"`` (E + M = 7 signed, 8 unsigned), ``"dynamic"``
        (dynamic tree, Dettmers et al.) or ``"linear"``.
      sqrt: store sqrt(x) instead of x (the second moment only): halves the dynamic
        range the map must cover, and rounding errors land on sqrt(v), which is what
        Adam divides by.
      stochastic: round stochastically (True), to nearest (False), or None:
        stochastically on float maps, to nearest on the others.
      seed: seed of the stochastic-rounding key.

    Returns:
      A ``Blockwise8bit`` format for ``mu_dtype`` / ``nu_dtype``.

    Example:
      >>> import adamx
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit())

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization", arXiv:2110.02861;
      Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433;
      Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
    """
    if signed is not None and not isinstance(signed, bool):
        raise TypeError(
            f"signed must be None (follow the moment), True (first moment) or False (second), "
            f"got {signed!r}."
        )
    _check_block_size(block_size)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0 (elements), got {min_size!r}.")
    _check_qmap(qmap, signed)
    if sqrt and signed:
        raise ValueError(
            "sqrt=True stores the root of a non-negative moment and needs signed=False "
            "(the second moment v); the first moment m is signed."
        )
    if stochastic is not None and not isinstance(stochastic, bool):
        raise TypeError(f"stochastic must be True, False or None (auto), got {stochastic!r}.")
    if stochastic and not _is_float_map(qmap):
        raise ValueError(
            f'stochastic=True rounds on a float map\'s bit pattern and needs qmap="float" '
            f'(or "e<E>m<M>"), got qmap={qmap!r}.'
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int, got {seed!r}.")
    fmt = Blockwise8bit(signed, block_size, min_size, qmap, sqrt, stochastic, seed)
    return fmt if signed is None else fmt.bind("mu" if signed else "nu")


def _check_block_size(block_size) -> None:
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 2
        or (block_size & (block_size - 1))
    ):
        raise ValueError(
            f"block_size must be a power of two >= 2 (such as 64, 256 or 2048), got "
            f"{block_size!r}. Blocks are cut along the last axis; a power of two divides the "
            "per-device length of a sharded axis, so blocks never straddle devices."
        )


def _check_qmap(qmap, signed) -> None:
    if signed is not None:
        resolve_qmap(qmap, signed)
        return
    try:  # unbound: valid for one of the two moments (checked again when bound)
        resolve_qmap(qmap, True)
    except ValueError:
        resolve_qmap(qmap, False)


# ---------------------------------------------------------------------------
# Binding a format to a moment.


def as_format(spec: Any, role: str) -> MomentFormat:
    """The format that stores the moment ``role`` ("mu", "nu" or "nu_max").

    ``spec`` is a format, a float dtype, or None (the parameter's dtype). A dtype
    given for m stores and computes as ``optax.adam(mu_dtype=...)`` does (bit for
    bit). A dtype narrower than float32 given for v is decoded to float32 before
    the update (``FloatFormat(dtype, upcast=True)``; otherwise β2 = 0.999 would
    round to 1), but rounded to nearest v still cannot decay: a warning names
    the formats that can. A format is bound to the role (``bind``).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {tuple(ROLES)}, got {role!r}.")
    if all(hasattr(spec, m) for m in ("init", "decode", "encode")):
        missing = [a for a in _PROTOCOL if not hasattr(spec, a)]
        if missing:
            raise TypeError(
                f"{_ARGUMENT[role]}={spec!r} looks like a moment format but lacks {missing}; a "
                "format implements adamx.MomentFormat (see FloatFormat for the simplest one)."
            )
        return spec.bind(role)
    check_float_dtype(_ARGUMENT[role], spec)
    narrow = spec is not None and jnp.dtype(spec).itemsize < 4
    if role != "mu" and narrow:
        _warn_narrow_second_moment(role, jnp.dtype(spec))
    return FloatFormat(spec, upcast=role != "mu" and narrow)


def _warn_narrow_second_moment(role: str, dtype) -> None:
    warnings.warn(
        f"{_ARGUMENT[role]}={dtype.name}: each step moves v by (1 - b2)·v = 0.1% of v, less "
        f"than half a {dtype.name} ulp, so rounded to nearest v can grow but never decay"
        + (" (and float16 holds v = g² only for 2.4e-4 < |g| < 256)" if dtype == "float16" else "")
        + f". Use {_ARGUMENT[role]}=adamx.stochastic_float(jnp.bfloat16) (unbiased rounding) "
        "or adamx.blockwise_8bit().",
        UserWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------------------
# A moment's state: a tree of arrays, or a record of trees (used by the stages).


def _config(fmt: MomentFormat) -> dict:
    return {fmt.describe(): jnp.zeros((1,), jnp.uint8)}


def init_moment(stage: str, fmt: MomentFormat, role: str, params: Any) -> Any:
    """The zero state of moment ``role`` for ``params``: a tree, or ``fmt.record`` of trees."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    packed = bucket_members(params) if not fmt.elementwise else [None] * len(paths_and_leaves)
    rows = []
    for (path, leaf), members in zip(paths_and_leaves, packed, strict=True):
        try:
            rows.append(fmt.init(jnp.asarray(leaf), members))
        except (TypeError, ValueError) as error:
            where = f"the parameter at {_keystr(path)}"
            raise type(error)(f"{stage}: {_ARGUMENT[role]} at {where}: {error}") from None
    if fmt.fields is None:
        return treedef.unflatten(rows)
    trees = {f: treedef.unflatten([row[i] for row in rows]) for i, f in enumerate(fmt.fields)}
    key = None
    if fmt.stochastic:
        key = jax.random.fold_in(jax.random.key(fmt.seed), ROLES[role])
        key = jax.random.key_data(key)
    return fmt.record(**trees, key=key, config=_config(fmt))


def read_moment(stage: str, fmt: MomentFormat, role: str, updates: Any, stored: Any):
    """``(per-leaf stored moments, per-leaf keys, next key)`` of ``stored`` at ``updates``' leaves.

    Refuses a state made by another format configuration, naming the leaf and both.
    """
    _check_config(stage, fmt, role, updates, stored)
    if fmt.fields is None:
        leaves = flatten_like_updates(stage, updates, stored, "state")
        return leaves, [None] * len(leaves), None
    columns = [
        flatten_like_updates(stage, updates, getattr(stored, field), "state")
        for field in fmt.fields
    ]
    rows = [tuple(column[i] for column in columns) for i in range(len(columns[0]))]
    if not fmt.stochastic:
        return rows, [None] * len(rows), None
    next_key, step_key = jax.random.split(jax.random.wrap_key_data(stored.key))
    keys = [jax.random.fold_in(step_key, i) for i in leaf_ids(updates)]
    return rows, keys, jax.random.key_data(next_key)


def write_moment(fmt: MomentFormat, treedef: Any, rows: list, key: Any, stored: Any) -> Any:
    """The new state of a moment from its per-leaf stored values (``read_moment``'s inverse)."""
    if fmt.fields is None:
        return treedef.unflatten(rows)
    trees = {f: treedef.unflatten([row[i] for row in rows]) for i, f in enumerate(fmt.fields)}
    return fmt.record(**trees, key=key, config=stored.config)


def _check_config(stage: str, fmt: MomentFormat, role: str, updates: Any, stored: Any) -> None:
    record = fmt.fields is not None
    got = _stored_description(stored)
    want = fmt.describe() if record else None
    if got == want and (record or _float_dtypes_ok(fmt, stored)):
        return
    paths = jax.tree_util.tree_flatten_with_path(updates)[0]
    where = _keystr(paths[0][0]) if paths else "[]"
    if got is None:
        leaves = jax.tree.leaves(stored)
        got = f"a float moment ({jnp.result_type(leaves[0]).name})" if leaves else "empty"
    raise ValueError(
        f"{stage}: the state's {role} at {where} (and the other leaves) was stored as {got}, "
        f"but this optimizer stores {role} as {fmt.describe()} ({_ARGUMENT[role]}). The layouts "
        "decode differently, so this state cannot be used: build the optimizer with the format "
        "that made the state, or start from tx.init(params)."
    )


def _stored_description(stored: Any) -> str | None:
    if isinstance(stored, (QuantizedMoment, StochasticFloatMoment)):
        return next(iter(stored.config))
    return None


def _float_dtypes_ok(fmt: MomentFormat, stored: Any) -> bool:
    ok = getattr(fmt, "stored_dtype_ok", lambda leaf: True)
    return all(ok(leaf) for leaf in jax.tree.leaves(stored))


def leaf_ids(tree: Any) -> list[int]:
    """Each leaf's index in the tree as the user built it (a ``PackedTree`` is looked through:
    a loose leaf keeps its index in the unpacked tree, so its random bits do not depend on
    packing)."""
    ids, offset = [], 0
    for node in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, PackedTree)):
        if isinstance(node, PackedTree):
            n = len(node.spec.shapes)
            ids += [offset + i for i in node.spec.layout.loose]
            ids += [offset + n + j for j in range(len(node.spec.layout.buckets))]
            offset += n + len(node.spec.layout.buckets)
        else:
            ids.append(offset)
            offset += 1
    return ids


def bucket_members(tree: Any) -> list:
    """For each leaf of ``tree``: None, or ``((path, size), ...)`` of the leaves packed in it."""
    out = []
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, PackedTree))[
        0
    ]
    for prefix, node in nodes:
        if not isinstance(node, PackedTree):
            out.append(None)
            continue
        dummy = node.spec.treedef.unflatten(range(len(node.spec.shapes)))
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(dummy)[0]]
        out += [None] * len(node.spec.layout.loose)
        for _, indices in node.spec.layout.buckets:
            out.append(
                tuple(
                    (_keystr(tuple(prefix) + tuple(paths[i])), int(np.prod(node.spec.shapes[i])))
                    for i in indices
                )
            )
    return out
