r"""Per-tensor RMS stages of Adafactor: update clipping and parameter scaling.

Each reads a statistic of a whole leaf (its "block", in optax's words):

.. math::
    \text{clip\_by\_block\_rms:}\quad u \leftarrow \frac{u}{\max(1, \operatorname{RMS}(u) / d)}
    \qquad
    \text{scale\_by\_param\_block\_rms:}\quad u \leftarrow u \cdot \max(\epsilon_2,
    \operatorname{RMS}(\theta))

with :math:`\operatorname{RMS}(x) = \sqrt{\operatorname{mean}(x^2)}` over the leaf: optax's
operations in optax's order (bit for bit), with the dtypes promoted explicitly where a wider
rate or update meets a narrower leaf (optax relies on implicit promotion there); what
adamx adds is that a per-tensor statistic is never computed over something that is not the
tensor: handed the flat buckets of ``adamx.pack`` / ``multi_tensor`` (which mix leaves) the
stage refuses at ``init``, and ``adamx.sparse_rows`` refuses a chain holding it (the touched
rows are not the table). The state, ``BlockRmsState``, is empty: it marks the chain.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import PyTree, promote
from .._validation import check_non_negative, check_positive_number
from ._whole_leaf import refuse_buckets, whole_leaf_state


@whole_leaf_state("clip_by_block_rms or scale_by_param_block_rms (e.g. in adamx.adafactor)")
class BlockRmsState(NamedTuple):
    """The (empty) state of a per-tensor RMS stage: it marks the chain as reading whole
    leaves, so that paths handing the chain pieces of leaves can refuse it."""


def clip_by_block_rms(threshold: float | jax.Array) -> optax.GradientTransformation:
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

    def clip(u: jax.Array, p: jax.Array | None) -> jax.Array:
        del p
        rms = jnp.sqrt(jnp.mean((u.conj() * u).real))
        return jnp.divide(*promote(u, jnp.maximum(1.0, jnp.divide(*promote(rms, threshold)))))

    return _per_tensor("clip_by_block_rms", clip)


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

    def scale(u: jax.Array, p: jax.Array | None) -> jax.Array:
        assert p is not None, "needs_params: the stage refuses an update without params"
        return jnp.multiply(*promote(u, optax.safe_root_mean_squares(p, min_scale)))

    return _per_tensor("scale_by_param_block_rms", scale, needs_params=True)


def _per_tensor(
    name: str, fn: Callable[[jax.Array, jax.Array | None], jax.Array], needs_params: bool = False
) -> optax.GradientTransformation:
    """``fn(u, θ)`` on each leaf (in the update's dtype, promoted explicitly where they meet)."""

    def init_fn(params: PyTree) -> BlockRmsState:
        refuse_buckets(name, params)
        return BlockRmsState()

    def update_fn(updates, state, params=None):
        if params is None and needs_params:
            raise ValueError(f"{name} scales by each parameter's RMS: pass params to update.")
        if params is None:
            return jax.tree.map(lambda u: fn(u, None), updates), state
        return jax.tree.map(fn, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)
