"""How many bytes a pytree of arrays holds: in all (``state_nbytes``) or per leaf, and the
training-state budget (``training_nbytes``: parameters plus optimizer state per parameter)."""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._types import PyTree
from ._validation import check_size


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
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # typed key: count its data
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


class TrainingBytes(NamedTuple):
    """Bytes a training run holds in its parameters and optimizer state (``training_nbytes``).

    Attributes:
      param_bytes: bytes of the parameters (``size * itemsize`` summed over their leaves).
      state_bytes: bytes of the optimizer state counted with them.
      n_params: number of parameter elements.
    """

    param_bytes: int
    state_bytes: int
    n_params: int

    @property
    def total(self) -> int:
        """Parameters plus optimizer state, in bytes."""
        return self.param_bytes + self.state_bytes

    @property
    def per_param(self) -> float:
        r"""Bytes per parameter element, :math:`(P + S) / n` (``nan`` for no parameters)."""
        return self.total / self.n_params if self.n_params else math.nan


def training_nbytes(
    params: optax.Params, state: optax.OptState, *, min_size: int | None = None
) -> TrainingBytes:
    r"""The training-state budget: parameters plus optimizer state, in bytes per parameter.

    .. math::
        \text{per\_param} = \frac{\sum_{\theta} |\theta|\,\mathrm{itemsize}(\theta)
        + \sum_{s} |s|\,\mathrm{itemsize}(s)}{\sum_{\theta} |\theta|}

    Leaves are counted as ``state_nbytes`` counts them: arrays, NumPy scalars and
    ``jax.ShapeDtypeStruct`` (so ``jax.eval_shape(tx.init, params)`` is measured without
    allocating), global sizes (a sharded array counts once), Python numbers as 0 bytes.
    Activations, gradients and temporaries are not part of the count.

    With ``min_size`` only the parameter leaves of at least ``min_size`` elements count,
    with the state that belongs to them: the large tensors, where a format's per-tensor
    overhead (block scales, factors, fallbacks of small leaves to float32) has vanished.
    A state leaf belongs to parameter leaf ``i`` when it sits at position ``i`` of a
    subtree of the state shaped like ``params`` (``state.mu["w"]``,
    ``state.mu.codes["w"]``, ``state.nu.row["w"]`` all belong to ``params["w"]``); the
    rest (step counts, PRNG keys, configuration tags) belongs to no parameter and counts
    only in the whole total. A state of bare parameter-shaped leaves matches this for any
    optax or adamx optimizer; a bare array as ``params`` owns the whole state.

    Args:
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      state: the optimizer state, e.g. ``tx.init(params)`` or
        ``jax.eval_shape(tx.init, params)``.
      min_size: if given, count only parameter leaves with at least this many
        elements, and their state (an int >= 0).

    Returns:
      A ``TrainingBytes``: ``param_bytes``, ``state_bytes``, ``n_params``, and the
      properties ``total`` and ``per_param``.

    Example:
      >>> import adamx, jax, jax.numpy as jnp
      >>> params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32),
      ...           "b": jax.ShapeDtypeStruct((1024,), jnp.float32)}
      >>> state = jax.eval_shape(adamx.adamw(1e-3).init, params)
      >>> budget = adamx.training_nbytes(params, state)  # 4 B (θ) + 8 B (m, v), count 4 B
      >>> budget.param_bytes, budget.state_bytes, round(budget.per_param, 4)
      (4198400, 8396804, 12.0)
      >>> eight = adamx.adamw(1e-3, mu_dtype=adamx.blockwise_8bit(),
      ...                     nu_dtype=adamx.blockwise_8bit())
      >>> big = adamx.training_nbytes(params, jax.eval_shape(eight.init, params),
      ...                             min_size=4096)
      >>> big.per_param   # 4 + 2 x (1 code + 4/256 of a block scale)
      6.03125
    """
    if min_size is None:
        return TrainingBytes(state_nbytes(params), state_nbytes(state), _n_elements(params))
    check_size("min_size", min_size, what="elements a parameter leaf needs to be counted")
    per_leaf, _ = state_nbytes_by_param(params, state)
    large = [
        (leaf, owned)
        for leaf, owned in zip(jax.tree.leaves(params), per_leaf, strict=True)
        if _size(leaf) >= min_size
    ]
    return TrainingBytes(
        sum(leaf_nbytes(leaf) for leaf, _ in large),
        sum(owned for _, owned in large),
        sum(_size(leaf) for leaf, _ in large),
    )


def state_nbytes_by_param(params: optax.Params, state: optax.OptState) -> tuple[list[int], int]:
    """State bytes owned by each parameter leaf (in ``jax.tree.leaves(params)`` order), and
    the bytes owned by none; see ``training_nbytes`` for the rule."""
    treedef = jax.tree.structure(params)
    per_leaf = [0] * treedef.num_leaves
    shared = 0
    pending = [state]
    while pending:  # top-down: the first parameter-shaped subtree on each branch owns it
        node = pending.pop()
        positions = _parameter_positions(treedef, node)
        if positions is not None:
            for i, sub in enumerate(positions):
                per_leaf[i] += state_nbytes(sub)
        elif jax.tree_util.treedef_is_leaf(jax.tree.structure(node)):
            shared += state_nbytes(node)
        else:
            pending.extend(jax.tree.flatten(node, is_leaf=lambda x, node=node: x is not node)[0])
    return per_leaf, shared


def _parameter_positions(treedef: Any, node: Any) -> list | None:
    """The subtrees of ``node`` at the parameter positions, if ``node`` is shaped like the
    parameters (each position holding one leaf or nothing); else None."""
    try:
        positions = treedef.flatten_up_to(node)
    except ValueError:  # not shaped like the parameters
        return None
    if all(len(jax.tree.leaves(sub)) <= 1 for sub in positions) and all(
        jax.tree_util.treedef_is_leaf(jax.tree.structure(sub)) or not jax.tree.leaves(sub)
        for sub in positions
    ):
        return positions
    return None


def _size(leaf: Any) -> int:
    return int(np.prod(leaf.shape, dtype=np.int64)) if hasattr(leaf, "shape") else 0


def _n_elements(params: optax.Params) -> int:
    return sum(_size(leaf) for leaf in jax.tree.leaves(params))
