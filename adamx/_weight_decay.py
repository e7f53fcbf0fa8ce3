"""``add_decoupled_weight_decay``: AdamW's λ·θ, added after the adaptive scaling."""

from collections.abc import Callable
from typing import Any

import jax
import optax

from ._rates import current_rate, init_rate_state, like
from ._types import PyTree
from ._validation import (
    check_mask,
    check_scalar_or_schedule,
    flatten_like_updates,
    require_params,
    require_update_tree,
)

Mask = PyTree | Callable[[PyTree], PyTree]


def add_decoupled_weight_decay(
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add the decayed parameters to the (already adaptive) update.

    .. math::
        u_t \leftarrow u_t + \lambda_t \, \theta_{t-1}

    Placed after ``scale_by_rsqrt`` the decay is *decoupled* from the gradient
    statistics (AdamW): every weight shrinks at rate :math:`\alpha_t\lambda_t`.
    An L2 penalty added to the gradient instead is divided by
    :math:`\sqrt{\hat v}`, so large, active weights decay least.

    Args:
      weight_decay: λ, a non-negative number or a schedule ``step -> λ_t``.
      mask: which leaves decay: a pytree of bools with the params' structure
        (or a prefix of it), or a callable ``params -> such a pytree``.
        None decays every leaf.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
      >>> import adamx, jax
      >>> decay_matrices = adamx.add_decoupled_weight_decay(
      ...     1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """
    check_scalar_or_schedule("weight_decay", weight_decay)
    stage = "add_decoupled_weight_decay"

    def init_fn(params):
        del params
        return init_rate_state(weight_decay)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(stage, params)
        require_update_tree(stage, updates)
        decay, state = current_rate(weight_decay, state)
        if isinstance(decay, (int, float)) and decay == 0:
            return updates, state  # exactly u, even where θ is inf or nan
        leaves, treedef = jax.tree.flatten(updates)
        thetas = flatten_like_updates(stage, updates, params, "params")
        decay_leaf = lambda u, p: (u + like(decay, p) * p).astype(u.dtype)  # noqa: E731
        return treedef.unflatten(list(map(decay_leaf, leaves, thetas))), state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is None:
        return tx
    return optax.masked(tx, _checked(stage, mask))


def _checked(stage: str, mask: Mask) -> Callable[[PyTree], PyTree]:
    """``mask`` as a callable that validates the mask against the tree it is applied to."""

    def mask_fn(tree):
        mask_tree = mask(tree) if callable(mask) else mask
        check_mask(stage, mask_tree, tree)
        return mask_tree

    return mask_fn
