"""Weight decay, both kinds: coupled L2 (before the moments) and AdamW's decoupled λ·θ (after).

Both add λ_t·θ_{t-1} to the tree they are given, on the leaves a mask selects
(``_masked_decay``); they differ in where they sit in the chain, and decoupled decay
may be divided by the learning rate's peak α̂ (fully decoupled).
"""

import jax
import optax

from .._types import Mask
from .._validation import (
    check_flag,
    check_positive_number,
    check_scalar_or_schedule,
)
from ._masked_decay import PackedMaskedState as PackedMaskedState
from ._masked_decay import masked_decay


def add_coupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule = 1e-4,
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
    return masked_decay("add_coupled_weight_decay", weight_decay, mask)


def add_decoupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    fully_decoupled: bool | None = None,
    peak_learning_rate: float | jax.Array | None = None,
    learning_rate: optax.ScalarOrSchedule | None = None,
    cautious: bool = False,
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
    :math:`\hat\alpha`: the stage adds :math:`(\lambda_t/\hat\alpha)\,\theta_{t-1}`,
    so that after ``scale_by_lr``

    .. math::
        \Delta\theta_t = -\alpha_t u_t - \frac{\alpha_t}{\hat\alpha} \lambda_t \theta_{t-1}

    and tuning the peak learning rate no longer changes the effective decay
    (with a constant α: :math:`\theta_t = (1-\lambda)\theta_{t-1} - \alpha u_t`).

    *Cautious* weight decay (Chen et al. 2025) decays only the elements where the
    update and the parameter agree in sign, those the decay does not push against:

    .. math::
        u_t \leftarrow u_t + \lambda_t \, \mathbb{1}[u_t \odot \theta_{t-1} \ge 0]
        \odot \theta_{t-1}

    (the paper's Algorithm 1, ``≥`` included: where u is 0 the element decays; complex
    leaves: :math:`\operatorname{Re}(\bar u\,\theta) \ge 0`). It is elementwise, so it
    composes with the mask, schedules, fully decoupled decay and every path.

    Args:
      weight_decay: λ, a non-negative number or a schedule ``step -> λ_t``.
      mask: which leaves decay: a pytree of bools with the params' structure
        (or a prefix of it), or a callable ``params -> such a pytree`` (see
        ``adamx.path_mask`` to decide by the leaf's path).
        None decays every leaf.
      fully_decoupled: divide the decay by α̂. None (the default): fully
        decoupled exactly when ``peak_learning_rate`` is given.
      peak_learning_rate: :math:`\hat\alpha` > 0, the peak of the schedule
        given to ``scale_by_lr``. Default with ``fully_decoupled=True``: a
        constant ``learning_rate``.
      learning_rate: the chain's α (what ``scale_by_lr`` gets); a number
        stands in for ``peak_learning_rate``, a schedule cannot. The aliases
        pass theirs; unused unless the decay is fully decoupled.
      cautious: decay only where :math:`u \odot \theta \ge 0` (cautious weight decay).
        Place the stage right after the direction (before ``scale_by_lr``): u is
        compared with θ before the learning rate negates it.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
      >>> import adamx, jax
      >>> decay_matrices = adamx.add_decoupled_weight_decay(
      ...     1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
      >>> fully = adamx.add_decoupled_weight_decay(1e-4, peak_learning_rate=3e-4)
      >>> cwd = adamx.add_decoupled_weight_decay(0.1, cautious=True)

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
      Chen, Li, Liang et al., "Cautious Weight Decay", arXiv:2510.12402 (Algorithm 1).
    """
    check_scalar_or_schedule("weight_decay", weight_decay)
    check_flag("cautious", cautious)
    peak = _peak(fully_decoupled, peak_learning_rate, learning_rate)
    rate = weight_decay if peak is None else _divided(weight_decay, peak)
    return masked_decay("add_decoupled_weight_decay", rate, mask, cautious)


def _peak(
    fully_decoupled: bool | None,
    peak_learning_rate: float | jax.Array | None,
    learning_rate: optax.ScalarOrSchedule | None,
) -> float | jax.Array | None:
    """α̂ of fully decoupled decay (the user's peak, else a constant learning rate), or None."""
    check_flag("fully_decoupled", fully_decoupled, optional=True)
    if fully_decoupled is None:
        fully_decoupled = peak_learning_rate is not None
    if not fully_decoupled:
        if peak_learning_rate is not None:
            raise ValueError(
                "peak_learning_rate is used only by fully decoupled weight decay: pass "
                "fully_decoupled=True with it, or drop it."
            )
        return None
    if peak_learning_rate is not None:
        check_positive_number(
            "peak_learning_rate",
            peak_learning_rate,
            "it is the peak α̂ of the learning-rate schedule, which fully decoupled decay "
            "divides by.",
        )
        return peak_learning_rate
    if callable(learning_rate):
        raise ValueError(
            "fully_decoupled=True with a learning-rate schedule needs peak_learning_rate=α̂, "
            "the schedule's peak: the decay per step is weight_decay * α_t / α̂."
        )
    if learning_rate is None:
        raise ValueError(
            "fully_decoupled=True needs peak_learning_rate=α̂, the peak of the learning rate "
            "given to scale_by_lr (or learning_rate=α when it is constant): the decay per "
            "step is weight_decay * α_t / α̂."
        )
    check_positive_number(
        "learning_rate",
        learning_rate,
        "with fully_decoupled=True and no peak_learning_rate, the learning rate is the peak "
        "α̂ that the decay divides by. Pass peak_learning_rate=α̂ > 0 (the peak of the "
        "schedule), or a learning_rate > 0.",
    )
    return learning_rate


def _divided(
    weight_decay: optax.ScalarOrSchedule, peak: float | jax.Array
) -> optax.ScalarOrSchedule:
    """λ_t / α̂, a number or a schedule like ``weight_decay``."""
    if not callable(weight_decay):
        return weight_decay / peak
    schedule = weight_decay  # a schedule, for the closure

    def relative(count: jax.typing.ArrayLike) -> jax.typing.ArrayLike:
        return schedule(count) / peak

    return relative
