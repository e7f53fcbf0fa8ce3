r"""A narrow float moment (bfloat16, float16), rounded stochastically when stored.

The ``MomentFormat`` to copy for a format that keeps one array per leaf in a
record with a random rounding key (``fields = ("value",)``, ``stochastic``).
"""

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .._validation import check_float_dtype, check_seed
from .protocol import ARGUMENTS, BucketMembers, MomentRecord, Role
from .rounding import round_stochastic


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["value", "key", "config"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class StochasticFloatMoment(MomentRecord):
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


class StochasticFloatFormat(NamedTuple):
    """Store the moment in a narrow float dtype, stochastically rounded (``stochastic_float``)."""

    dtype: DTypeLike = jnp.bfloat16
    seed: int = 0

    elementwise = False  # the rounding noise depends on the element's position in its leaf
    stochastic = True
    fields = ("value",)
    record = StochasticFloatMoment
    version = 1  # of the stored layout: bump on any change (versions.py)

    def bind(self, role: Role) -> "StochasticFloatFormat":
        """Any moment; a float16 second moment gets a warning about its range."""
        if role != "mu" and jnp.dtype(self.dtype) == jnp.float16:
            warn_float16_second_moment(f"stochastic_float(jnp.float16) as {ARGUMENTS[role]}")
        return self

    def init(self, param: jax.Array, packed: BucketMembers | None = None) -> tuple[jax.Array]:
        """Zeros like ``param`` in ``dtype``; refuses complex parameters and packed buckets."""
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

    def decode(self, stored: tuple[jax.Array], like: jax.Array | None = None) -> jax.Array:
        """The stored value as float32 (the moving average is computed in float32)."""
        del like
        return stored[0].astype(jnp.float32)

    def encode(
        self, value: jax.Array, stored: tuple[jax.Array], key: jax.Array | None
    ) -> tuple[jax.Array]:
        r"""``(SR(value),)`` in the stored dtype, E[SR(x)] = x (``rounding.round_stochastic``)."""
        assert key is not None, "a stochastic format is always given a key"
        return (round_stochastic(value.astype(jnp.float32), stored[0].dtype, key),)

    def describe(self) -> str:
        """``stochastic_float(<dtype>)``."""
        return f"stochastic_float({jnp.dtype(self.dtype).name})"

    def partition_specs(
        self, spec: tuple, shape: tuple[int, ...], axis_sizes: dict[str, int] | None = None
    ) -> tuple[tuple]:
        """The rounded value shards like its parameter (its noise depends on global indices)."""
        del shape, axis_sizes
        return (tuple(spec),)


def warn_float16_second_moment(what: str) -> None:
    """Warn that float16 cannot hold v = g² over the range of gradients Adam meets."""
    warnings.warn(
        f"{what}: float16 holds v = g² only for 2.4e-4 < |g| < 256 (6e-8 < v < 65504); "
        "outside that range v flushes to 0 (a step of m/eps) or overflows to inf. Use "
        "adamx.stochastic_float(jnp.bfloat16) (the float32 exponent range) or "
        "adamx.blockwise_8bit().",
        UserWarning,
        stacklevel=4,
    )


def stochastic_float(dtype: DTypeLike = jnp.bfloat16, seed: int = 0) -> StochasticFloatFormat:
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
    check_seed("seed", seed)
    return StochasticFloatFormat(dtype, seed)
