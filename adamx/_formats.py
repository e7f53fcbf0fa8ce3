"""How ``scale_by_moments`` stores a moment between steps.

A format turns the moment computed this step into what the optimizer state
keeps, and back: ``decode`` before the update, ``encode`` after it. Stages
downstream only ever see the decoded, freshly updated moment, so a low-memory
format is a choice of ``scale_by_moments`` alone.

The default, ``FloatFormat``, stores the moment in a float dtype (the parameter's
own dtype unless told otherwise): ``decode`` is the identity and ``encode`` a cast,
exactly as optax's ``mu_dtype``. ``Blockwise8bit`` (made by ``blockwise_8bit``)
stores large moments as 8-bit codes plus one float32 scale per block.
"""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from ._low_precision import round_stochastic
from ._quantization import QuantizedArray, QuantMap, dequantize, quantize, resolve_qmap
from ._validation import check_float_dtype


class MomentFormat(Protocol):
    """What a state format provides (see ``FloatFormat`` for the simplest one)."""

    def init(self, param: jax.Array) -> Any:
        """The stored zero moment for a parameter leaf."""

    def decode(self, stored: Any) -> jax.Array:
        """The moment as an array shaped like the parameter."""

    def encode(self, value: jax.Array, stored: Any) -> Any:
        """``value`` in the layout and dtypes of ``stored`` (which it replaces)."""


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

    def init(self, param):
        dtype = None if self.dtype is None else jax.dtypes.canonicalize_dtype(self.dtype)
        return jnp.zeros_like(param, dtype=dtype)

    def decode(self, stored):
        if self.upcast:
            return stored.astype(jnp.promote_types(stored.dtype, jnp.float32))
        return stored

    def encode(self, value, stored):
        return value.astype(stored.dtype)


class StochasticFloat(NamedTuple):
    """A moment stored by ``StochasticFloatFormat``: the rounded value and its PRNG key."""

    value: jax.Array  # the moment, in the storage dtype (e.g. bfloat16)
    key: jax.Array  # uint32 raw PRNG key data, split at every encode


class StochasticFloatFormat(NamedTuple):
    """Store the moment in a narrow float dtype, stochastically rounded (``stochastic_float``)."""

    dtype: Any = jnp.bfloat16
    seed: int = 0

    def init(self, param):
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"stochastic_float rounds real moments, but got a {param.dtype} parameter of "
                f"shape {param.shape}. Use a float dtype (jnp.complex64) for complex parameters."
            )
        key = jax.random.fold_in(jax.random.key(self.seed), hash(param.shape) % 2**31)
        zeros = jnp.zeros_like(param, dtype=jax.dtypes.canonicalize_dtype(self.dtype))
        return StochasticFloat(zeros, jax.random.key_data(key))

    def decode(self, stored):
        return stored.value.astype(jnp.float32)

    def encode(self, value, stored):
        key, sub = jax.random.split(jax.random.wrap_key_data(stored.key))
        rounded = round_stochastic(value.astype(jnp.float32), stored.value.dtype, sub)
        return StochasticFloat(rounded, jax.random.key_data(key))


def stochastic_float(dtype: Any = jnp.bfloat16, seed: int = 0) -> StochasticFloatFormat:
    r"""A moment format: a narrow float, rounded stochastically (unbiased) when stored.

    .. math::
        \text{stored}_t = \operatorname{SR}(\beta\, x_{t-1} + (1-\beta)\, y_t), \qquad
        \mathbb{E}[\operatorname{SR}(x)] = x

    With round-to-nearest, a bfloat16 second moment cannot decay: the change
    (1-β2)·v = 0.001·v is below half an ulp (2^-9 v) and is rounded away, so v only
    grows. Stochastic rounding keeps the moving average unbiased. The average is
    computed in float32; each leaf carries an 8-byte key.

    Args:
      dtype: the storage dtype, bfloat16 or float16.
      seed: PRNG seed; give the two moments different seeds.

    Returns:
      A ``StochasticFloatFormat`` for ``mu_dtype`` / ``nu_dtype``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.stochastic_float(jnp.bfloat16, seed=0),
      ...                 nu_dtype=adamx.stochastic_float(jnp.bfloat16, seed=1))
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


class Blockwise8bit(NamedTuple):
    """Store the moment as blockwise 8-bit codes (make it with :func:`blockwise_8bit`).

    ``stochastic`` is resolved (True/False) here; the defaults of the fields are
    the nearest-rounding E4M3 map.
    """

    signed: bool = True
    block_size: int = 256
    min_size: int = 4096
    qmap: str = "float"
    sqrt: bool = False
    stochastic: bool = False
    seed: int = 0

    def init(self, param):
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"blockwise_8bit stores real moments, but got a {param.dtype} parameter of shape "
                f"{param.shape}. Use a float dtype for complex parameters (jnp.complex64), "
                "or keep them out of the 8-bit optimizer with optax.masked / optax.partition."
            )
        zeros = jnp.zeros_like(param, dtype=jnp.float32)
        if not self._quantizes(param):
            return zeros
        key = None
        if self.stochastic:  # m and v of one leaf get different keys
            key = jax.random.fold_in(jax.random.key(self.seed), int(self.signed))
            key = jax.random.key_data(jax.random.fold_in(key, hash(param.shape) % 2**31))
        return self._quantize(zeros, key)

    def decode(self, stored):
        if not isinstance(stored, QuantizedArray):
            return stored
        value = dequantize(stored.codes, stored.scale, self._map(), stored.shape)
        value = value * value if self.sqrt else value
        if self.qmap == "dynamic":  # materialize once: XLA would re-decode in each consumer
            value = jax.lax.optimization_barrier(value)
        return value

    def encode(self, value, stored):
        if not isinstance(stored, QuantizedArray):
            return value.astype(jnp.float32)
        return self._quantize(value, stored.key)

    def _quantize(self, value, key) -> QuantizedArray:
        if self.qmap == "dynamic":
            value = jax.lax.optimization_barrier(value)  # read twice below (block max, codes)
        value = jnp.sqrt(value) if self.sqrt else value
        noise_key = None
        if key is not None:
            key, sub = jax.random.split(jax.random.wrap_key_data(key))
            key, noise_key = jax.random.key_data(key), jax.random.key_data(sub)
        codes, scale = quantize(
            value, self._map(), self.block_size, zero_point=self.signed, noise_key=noise_key
        )
        return QuantizedArray(codes, scale, tuple(value.shape), key)

    def _quantizes(self, param) -> bool:
        return param.ndim > 0 and param.size >= max(self.min_size, 1)

    def _map(self) -> QuantMap:
        return resolve_qmap(self.qmap, self.signed)


def blockwise_8bit(
    signed: bool = True,
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
    cast), and the power-of-two block scale makes x/s exact. The block max lands in
    [s/2, s); the maps reach down to q_min = 1.25·2^-16 (m) and 1.1875·2^-16 (v)
    of s; below that m rounds to 0 or q_min, and v to q_min. ``"dynamic"`` (Dettmers' dynamic tree,
    values down to 1e-7 of the block's absmax) and ``"linear"`` keep the absmax
    scale and nearest rounding; ``"e<E>m<M>"`` picks another float split.

    Stochastic rounding (``stochastic``; float maps only) rounds to one of the two
    neighbouring map values with probabilities that make it unbiased,
    E[x̃] = x. It matters for v: β2 = 0.999 moves v by 0.1% per step, far below
    half a code step (1.6% to 3.1% of v for M = 4), so rounded to nearest v would
    not follow slow changes (it freezes, as a bfloat16 v does). The default, ``None``, rounds v
    (``signed=False``) stochastically and m (moved by 10% per step) to nearest.
    The key lives in the state (8 bytes per leaf) and is split at every step.

    Blocks are ``block_size`` consecutive elements of the last axis (the whole
    axis if shorter; a ragged last block is zero-padded), so the codes have the
    parameter's leading axes and a block never crosses a shard boundary.
    Parameters with fewer than ``min_size`` elements keep a float32 moment, as
    bitsandbytes does. A non-finite element decodes as NaN on its own; the rest
    of its block keeps a scale taken over the finite values.

    Args:
      signed: True for the first moment m (values in [-s, s]); False for the
        second moment v (values in [0, s]; a positive v never rounds to 0).
      block_size: elements per block, a power of two (default 256).
      min_size: parameters smaller than this stay float32 (default 4096).
      qmap: the 8-bit map: ``"float"`` (E4M3 signed, E4M4 unsigned), a float
        split ``"e<E>m<M>"`` (E + M = 7 signed, 8 unsigned), ``"dynamic"``
        (dynamic tree, Dettmers et al.) or ``"linear"``.
      sqrt: store sqrt(x) instead of x (unsigned only): halves the dynamic range
        the map must cover, and rounding errors land on sqrt(v), which is what
        Adam divides by.
      stochastic: round stochastically (True), to nearest (False), or None: v
        stochastically and m to nearest on float maps, nearest on the others.
      seed: seed of the stochastic-rounding key (m and v get different keys).

    Returns:
      A ``Blockwise8bit`` format for ``scale_by_moments``'s ``mu_dtype`` / ``nu_dtype``.

    Example:
      >>> import adamx
      >>> tx = adamx.scale_by_moments(
      ...     mu_dtype=adamx.blockwise_8bit(signed=True),
      ...     nu_dtype=adamx.blockwise_8bit(signed=False))

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization", arXiv:2110.02861;
      Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433;
      Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True (first moment) or False (second), got {signed!r}.")
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
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0 (elements), got {min_size!r}.")
    resolve_qmap(qmap, signed)
    if sqrt and signed:
        raise ValueError(
            "sqrt=True stores the root of a non-negative moment and needs signed=False "
            "(the second moment v); the first moment m is signed."
        )
    if stochastic is not None and not isinstance(stochastic, bool):
        raise TypeError(f"stochastic must be True, False or None (auto), got {stochastic!r}.")
    if stochastic is None:
        stochastic = not signed and qmap not in ("dynamic", "linear")
    if stochastic and qmap in ("dynamic", "linear"):
        raise ValueError(
            f'stochastic=True rounds on a float map\'s bit pattern and needs qmap="float" '
            f'(or "e<E>m<M>"), got qmap={qmap!r}.'
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int, got {seed!r}.")
    return Blockwise8bit(signed, block_size, min_size, qmap, sqrt, stochastic, seed)


def as_format(name: str, spec: Any) -> MomentFormat:
    """A ``MomentFormat`` from a format, a float dtype, or None (the parameter's dtype).

    ``mu_dtype`` given as a dtype stores and computes as ``optax.adam(mu_dtype=...)``
    does (bit for bit). ``nu_dtype`` given as a dtype narrower than float32 is
    decoded to float32 before the update (``FloatFormat(dtype, upcast=True)``):
    otherwise β2 = 0.999 would round to 1 in bfloat16 and v would never decay.
    """
    if isinstance(spec, Blockwise8bit) and name == "mu_dtype" and not spec.signed:
        raise ValueError(
            "mu_dtype=blockwise_8bit(signed=False) would clip the negative entries of the first "
            "moment m to 0. Use blockwise_8bit(signed=True) for mu_dtype; the unsigned map is "
            "for nu_dtype (the second moment v >= 0)."
        )
    if all(hasattr(spec, m) for m in ("init", "decode", "encode")):
        return spec
    check_float_dtype(name, spec)
    narrow = spec is not None and jnp.dtype(spec).itemsize < 4
    return FloatFormat(spec, upcast=name == "nu_dtype" and narrow)
