"""How many bytes a pytree of arrays holds: in all (``state_nbytes``) or per leaf."""

from typing import Any

import jax
import numpy as np

from ._types import PyTree


def state_nbytes(state: PyTree) -> int:
    """Bytes held by the arrays of an optimizer state (or any pytree).

    Sums ``size * itemsize`` over the leaves: arrays, NumPy scalars and
    ``jax.ShapeDtypeStruct`` (so ``jax.eval_shape(tx.init, params)`` is measured
    without allocating). Sizes are global: a sharded array counts once, not per
    device (``adamx.sharding.state_bytes_per_device`` counts each device's shards
    with the same rule). Python numbers count as 0 bytes (they are not device memory).

    Args:
      state: an optimizer state, e.g. ``tx.init(params)``.

    Returns:
      The number of bytes, an int.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> adamx.state_nbytes(adamx.adam(1e-3).init({"w": jnp.zeros(1000)}))  # m, v, count
      8004
    """
    return sum(leaf_nbytes(leaf) for leaf in jax.tree.leaves(state))


def leaf_nbytes(leaf: Any) -> int:
    """``size * itemsize`` of an array-like leaf (a typed PRNG key: of its key data); else 0."""
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        return 0
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # typed key: count its data
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


class TrainingBytes:
    """Placeholder (issue 14)."""


def training_nbytes(*args: Any, **kwargs: Any) -> Any:
    """Placeholder until the training-state budget lands (issue 14)."""
    raise NotImplementedError("adamx.training_nbytes is being written (issue 14)")
