"""``add_decoupled_weight_decay``: AdamW's λ·θ, added after the adaptive scaling."""

import functools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._masks import check_not_masked_packed, contains_packed, resolve_mask
from .._rates import current_rate, init_rate_state
from .._types import PyTree
from .._validation import (
    check_scalar_or_schedule,
    flatten_like_updates,
    is_concrete_number,
    require_params,
    require_update_tree,
)

Mask = PyTree | Callable[[PyTree], PyTree]


def add_decoupled_weight_decay(
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
    *,
    peak_learning_rate: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add the decayed parameters to the (already adaptive) update.

    .. math::
        u_t \leftarrow u_t + \lambda_t \, \theta_{t-1}

    Placed after ``scale_by_rsqrt`` the decay is *decoupled* from the gradient
    statistics (AdamW): every weight shrinks at rate :math:`\alpha_t\lambda_t`.
    An L2 penalty added to the gradient instead is divided by
    :math:`\sqrt{\hat v}`, so large, active weights decay least.

    *Fully decoupled* weight decay (Loshchilov & Hutter, section 3) makes the
    decay follow the learning-rate schedule's shape but not its peak
    :math:`\hat\alpha`: with ``peak_learning_rate`` the stage adds
    :math:`(\lambda_t/\hat\alpha)\,\theta_{t-1}`, so that after ``scale_by_lr``

    .. math::
        \Delta\theta_t = -\alpha_t u_t - \frac{\alpha_t}{\hat\alpha} \lambda_t \theta_{t-1}

    and tuning the peak learning rate no longer changes the effective decay
    (with a constant α: :math:`\theta_t = (1-\lambda)\theta_{t-1} - \alpha u_t`).

    Args:
      weight_decay: λ, a non-negative number or a schedule ``step -> λ_t``.
      mask: which leaves decay: a pytree of bools with the params' structure
        (or a prefix of it), or a callable ``params -> such a pytree`` (see
        ``adamx.path_mask`` to decide by the leaf's path).
        None decays every leaf.
      peak_learning_rate: :math:`\hat\alpha` > 0 for fully decoupled decay
        (the peak of the schedule given to ``scale_by_lr``); None: decoupled
        (AdamW), the decay scales with α_t.

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
    rate = relative_to_peak(weight_decay, peak_learning_rate)
    return add_weight_decay_stage("add_decoupled_weight_decay", rate, mask)


def relative_to_peak(weight_decay: Any, peak_learning_rate: Any) -> Any:
    """λ_t / α̂ (a number or a schedule), or λ_t itself when ``peak_learning_rate`` is None."""
    if peak_learning_rate is None:
        return weight_decay
    check_scalar_or_schedule("peak_learning_rate", peak_learning_rate)
    if callable(peak_learning_rate) or (
        is_concrete_number(peak_learning_rate) and peak_learning_rate <= 0
    ):
        raise ValueError(
            f"peak_learning_rate must be a number > 0, got {peak_learning_rate!r}: it is the "
            "peak α̂ of the learning-rate schedule, which fully decoupled decay divides by."
        )
    if callable(weight_decay):
        return lambda count: weight_decay(count) / peak_learning_rate
    return weight_decay / peak_learning_rate


class PackedMaskedState(NamedTuple):
    """State of a masked weight-decay stage on params holding a ``PackedTree``.

    On a plain tree the stage keeps ``optax.MaskedState`` (the state of ``optax.adamw(mask=...)``);
    on packed params the mask is resolved per element of each bucket, not by ``optax.masked``,
    and this distinct type lets ``multi_tensor`` tell it from a user's ``optax.masked``.
    """

    inner_state: Any  # the rate's state: EmptyState, or ScheduleState for a schedule


def add_weight_decay_stage(stage: str, weight_decay: Any, mask: Mask | None):
    r"""u + λ_t θ on every unmasked element; ``stage`` names it in error messages.

    .. math::
        u_i \leftarrow u_i + [\text{mask}_i] \, \lambda_t \, \theta_i

    The mask is resolved against the params' paths, those of the original tree when
    the params are packed (``_masks.resolve_mask``): inside a bucket it is a static
    per-element constant, so the decayed elements get exactly the per-leaf ``u + λθ``.
    """

    def init_fn(params):
        rate_state = init_rate_state(weight_decay)
        if isinstance(params, _PLACEHOLDER):  # optax.tree_map_params probes the state's shape
            return rate_state if mask is None else optax.MaskedState(inner_state=rate_state)
        check_not_masked_packed(stage, params)
        if mask is None:
            return rate_state
        resolve_mask(stage, mask, params)  # refuse a mask that does not fit, at init
        packed = contains_packed(params)
        return (PackedMaskedState if packed else optax.MaskedState)(inner_state=rate_state)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(stage, params)
        require_update_tree(stage, updates)
        check_not_masked_packed(stage, updates)
        rate_state = state if mask is None else state.inner_state
        decay, rate_state = current_rate(weight_decay, rate_state)
        state = rate_state if mask is None else type(state)(inner_state=rate_state)
        if isinstance(decay, (int, float)) and decay == 0:
            return updates, state  # exactly u, even where θ is inf or nan
        leaves, treedef = jax.tree.flatten(updates)
        thetas = flatten_like_updates(stage, updates, params, "params")
        flags = (
            [True] * len(leaves)
            if mask is None
            else treedef.flatten_up_to(resolve_mask(stage, mask, updates))
        )
        decayed = map(functools.partial(_decay_leaf, decay=decay), leaves, thetas, flags)
        return treedef.unflatten(list(decayed)), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decay_leaf(u: jax.Array, theta: jax.Array, flag: Any, decay: Any) -> jax.Array:
    """u + λ·θ where ``flag`` (a bool, or a static bool array over a bucket) says so."""
    if not isinstance(flag, np.ndarray) or flag.ndim == 0:
        if not flag:
            return u
        # A scheduled λ_t is float32: u + λ_t·θ is formed in float32 and rounded once.
        return (u + decay * theta).astype(u.dtype)
    return jnp.where(flag, (u + decay * theta).astype(u.dtype), u)


# optax.tree_map_params calls init with this placeholder instead of params (optax.masked
# special-cases it the same way); () if a future optax moves it: isinstance(x, ()) is False.
_PLACEHOLDER = getattr(sys.modules.get(optax.tree_map_params.__module__), "_ParamsPlaceholder", ())
