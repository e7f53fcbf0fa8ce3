r"""Per-tensor RMS stages of Adafactor: update clipping and parameter scaling.

Each reads a statistic of a whole leaf (its "block", in optax's words):

.. math::
    \text{clip\_by\_block\_rms:}\quad u \leftarrow \frac{u}{\max(1, \operatorname{RMS}(u) / d)}
    \qquad
    \text{scale\_by\_param\_block\_rms:}\quad u \leftarrow u \cdot \max(\epsilon_2,
    \operatorname{RMS}(\theta))

with :math:`\operatorname{RMS}(x) = \sqrt{\operatorname{mean}(x^2)}` over the leaf. The maths
is optax's own transformation (called, not copied: the same operations, bit for bit); what
adamx adds is that a per-tensor statistic is never computed over something that is not the
tensor: handed the flat buckets of ``adamx.pack`` / ``multi_tensor`` (which mix leaves) the
stage refuses at ``init``, and ``adamx.sparse_rows`` refuses a chain holding it (the touched
rows are not the table). The state, ``BlockRmsState``, is empty: it marks the chain.
"""

from typing import NamedTuple

import jax
import optax

from .._packed import PackedTree
from .._types import PyTree
from .._validation import check_non_negative, check_positive_number


class BlockRmsState(NamedTuple):
    """The (empty) state of a per-tensor RMS stage: it marks the chain as reading whole
    leaves, so that paths handing the chain pieces of leaves can refuse it."""


def clip_by_block_rms(threshold: float) -> optax.GradientTransformation:
    r"""Divide each leaf's update by :math:`\max(1, \operatorname{RMS}(u) / d)`
    (Adafactor's update clipping; ``optax.clip_by_block_rms``).

    Args:
      threshold: d, the largest RMS an update keeps (> 0).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.clip_by_block_rms(1.0)
      >>> float(tx.update(jnp.full(4, 3.0), tx.init(None))[0][0])
      1.0
    """
    check_positive_number("threshold", threshold)
    return _per_tensor("clip_by_block_rms", optax.clip_by_block_rms(threshold))


def scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
    r"""Multiply each leaf's update by :math:`\max(\epsilon_2, \operatorname{RMS}(\theta))`
    (Adafactor's relative step size; ``optax.scale_by_param_block_rms``).

    Args:
      min_scale: :math:`\epsilon_2`, the smallest scale (a parameter near 0 still moves).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.scale_by_param_block_rms()
      >>> p = jnp.full(4, 2.0)
      >>> float(tx.update(jnp.ones(4), tx.init(p), p)[0][0])
      2.0
    """
    check_non_negative("min_scale", min_scale)
    return _per_tensor("scale_by_param_block_rms", optax.scale_by_param_block_rms(min_scale))


def _per_tensor(name: str, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    def init_fn(params: PyTree) -> BlockRmsState:
        _refuse_buckets(name, params)
        return BlockRmsState()

    def update_fn(updates, state, params=None):
        updates, _ = inner.update(updates, optax.EmptyState(), params)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _refuse_buckets(name: str, params: PyTree) -> None:
    """A ``PackedTree`` with buckets mixes leaves: a per-tensor RMS of a bucket is of no tensor."""
    packed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, PackedTree))
    for tree in packed:
        if isinstance(tree, PackedTree) and tree.buckets:
            raise ValueError(
                f"{name} computes one RMS per parameter leaf, but it was handed the flat buckets "
                "of adamx.pack / multi_tensor, which mix many leaves: each bucket's RMS would "
                "scale every leaf in it. Keep these leaves out of the buckets (pack / "
                "multi_tensor min_size=0), or run this chain without packing (optax."
                "multi_transform can send the small leaves to an elementwise optimizer)."
            )
