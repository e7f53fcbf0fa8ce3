"""``add_coupled_weight_decay``: an L2 penalty's gradient λ·θ, added before the moments."""

from typing import Any

import optax

from .._validation import check_scalar_or_schedule
from .weight_decay import Mask, add_weight_decay_stage


def add_coupled_weight_decay(
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add λ·θ to the gradient: the gradient of the L2 penalty :math:`\lambda\|\theta\|^2/2`.

    .. math::
        g_t \leftarrow g_t + \lambda_t \, \theta_{t-1}

    Place it *before* ``scale_by_moments``: the decay then enters the moments
    and is divided by :math:`\sqrt{\hat v}` like any gradient. This is the
    ``weight_decay`` of ``torch.optim.Adam``, ``NAdam``, ``RAdam`` and ``Adamax``
    (and ``adamx.adam(..., weight_decay=λ)``); for AdamW's decoupled decay use
    ``add_decoupled_weight_decay`` after ``scale_by_rsqrt`` instead.

    Args:
      weight_decay: λ, a non-negative number or a schedule ``step -> λ_t``.
      mask: which leaves decay: a pytree of bools, a callable of the params,
        or ``adamx.path_mask(...)``. None decays every leaf.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
      >>> import adamx, optax
      >>> torch_adam_l2 = optax.chain(  # torch.optim.Adam(lr=1e-3, weight_decay=1e-2)
      ...     adamx.add_coupled_weight_decay(1e-2), adamx.scale_by_moments(0.9, 0.999),
      ...     adamx.bias_correct(0.9, 0.999), adamx.scale_by_rsqrt(1e-8), adamx.scale_by_lr(1e-3))

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101
      (section 2 contrasts the two).
    """
    check_scalar_or_schedule("weight_decay", weight_decay)
    return add_weight_decay_stage("add_coupled_weight_decay", weight_decay, mask)
