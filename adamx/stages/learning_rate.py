"""``scale_by_lr``: the final step, -α_t · u."""

import jax
import optax

from .._rates import current_rate, init_rate_state, like
from .._validation import check_scalar_or_schedule, require_update_tree


def scale_by_lr(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Multiply by minus the learning rate, turning directions into descent steps.

    .. math::
        \Delta\theta_t = -\alpha_t \, u_t

    Args:
      learning_rate: a non-negative number, a scalar array, or an optax
        schedule ``step -> α_t``. Only a schedule keeps state (its step count).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; updates keep their dtype.

    Example:
      >>> import adamx, optax
      >>> tx = adamx.scale_by_lr(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000))
    """
    check_scalar_or_schedule("learning_rate", learning_rate)

    def init_fn(params):
        del params
        return init_rate_state(learning_rate)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree("scale_by_lr", updates)
        lr, state = current_rate(learning_rate, state)
        return jax.tree.map(lambda u: like(-lr, u) * u, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
