"""RAdam: Adam with variance rectification (``optax.radam``, with torch's options)."""

import jax
import optax

from .._types import Mask
from .._validation import check_flag
from ..formats import MomentFormat
from ..stages import bias_correct, scale_by_lr, scale_by_moments, scale_by_rsqrt
from ._parts import chain, decoupled, l2_penalty


def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float | None = 5.0,
    *,
    nesterov: bool = False,
    epsilon_hat: bool = False,
    weight_decay: optax.ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    mask: Mask | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RAdam: Adam with variance rectification (``optax.radam``, ``torch.optim.RAdam``).

    With :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)` and
    :math:`r_t = \sqrt{(\rho_t-4)(\rho_t-2)\rho_\infty / ((\rho_\infty-4)(\rho_\infty-2)\rho_t)}`:

    .. math::
        \Delta\theta_t = -\alpha_t \begin{cases} r_t\hat m_t/(\sqrt{\hat v_t+\bar\varepsilon}
        + \varepsilon) & \rho_t \ge \tau \\ \hat m_t & \text{otherwise} \end{cases}

    ``torch.optim.RAdam`` adds ε to the uncorrected root: ``epsilon_hat=True``.

    Args:
      learning_rate, b1, b2, eps, eps_root, nesterov, mu_dtype, nu_dtype: as in :func:`adamx.adam`.
      threshold: τ; optax and torch use 5. None: no rectification (Adam).
      epsilon_hat: add ε to the uncorrected root (torch).
      weight_decay: λ, coupled L2 by default (torch's ``weight_decay``); None (default)
        or 0: none.
      decoupled_weight_decay: decay as AdamW does (torch's flag of the same name).
      mask: which leaves decay.
      fully_decoupled, peak_learning_rate: as in :func:`adamx.adamw` (decoupled decay only).

    Returns:
      ``chain(scale_by_moments, bias_correct, scale_by_rsqrt(threshold=τ), scale_by_lr)``
      with ``add_coupled_weight_decay`` first, or ``add_decoupled_weight_decay`` before
      ``scale_by_lr`` with ``decoupled_weight_decay=True``.

    Example:
      >>> import adamx  # torch.optim.RAdam(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
      >>> tx = adamx.radam(1e-3, epsilon_hat=True, weight_decay=1e-2, decoupled_weight_decay=True)

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", arXiv:1908.03265.
    """
    check_flag("decoupled_weight_decay", decoupled_weight_decay)
    if not decoupled_weight_decay and (fully_decoupled or peak_learning_rate is not None):
        raise ValueError(
            "fully_decoupled and peak_learning_rate rescale decoupled weight decay, but this "
            "optimizer's decay is coupled (an L2 gradient term) unless "
            "decoupled_weight_decay=True: pass decoupled_weight_decay=True, or drop them."
        )
    if decoupled_weight_decay:  # AdamW's decay, after the adaptive step
        l2 = None
        decay = decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate)
    else:  # torch's default: an L2 term added to the gradient
        l2, decay = l2_penalty(weight_decay, mask), None
    rectified = epsilon_hat or threshold is not None  # then scale_by_rsqrt counts steps, needs b2
    return chain(
        l2,
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2, nesterov=nesterov),
        scale_by_rsqrt(
            eps,
            eps_root,
            b2=b2 if rectified else None,
            epsilon_hat=epsilon_hat,
            threshold=threshold,
        ),
        decay,
        scale_by_lr(learning_rate),
    )
