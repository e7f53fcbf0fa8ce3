"""AdaMax and AdaMaxW: Adam with an infinity-norm second moment (``optax.adamax``, ``adamaxw``)."""

import jax
import optax

from .._types import Mask
from .._validation import check_flag
from ..formats import MomentFormat
from ..stages import bias_correct, scale_by_lr, scale_by_moments, scale_by_rsqrt
from ._parts import chain, decoupled, l2_penalty


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMax: Adam with an infinity-norm second moment (``optax.adamax``, ``torch.optim.Adamax``).

    .. math::
        u_t = \max(|g_t| + \varepsilon, \beta_2 u_{t-1}), \qquad
        \Delta\theta_t = -\frac{\alpha_t}{1-\beta_1^t} \frac{m_t}{u_t}

    ``eps_in_max=False`` (Keras ``Adamax``) adds ε after the maximum instead:
    :math:`u_t = \max(|g_t|, \beta_2 u_{t-1})`, :math:`\Delta\theta_t =
    -\alpha_t \hat m_t/(u_t + \varepsilon)`. u is never bias-corrected.

    Args:
      learning_rate, b1: as in :func:`adamx.adam`.
      b2: decay of the infinity norm.
      eps: ε: ``scale_by_moments``' ``eps`` (inside the max) or ``scale_by_rsqrt``'s
        (after it), see ``eps_in_max``.
      eps_in_max: put ε inside the max (optax, torch) or after it (Keras).
      weight_decay: coupled L2 λ (torch's ``weight_decay``); None (default) or 0: none.
      mask: which leaves the L2 term applies to.
      mu_dtype, nu_dtype: storage of m and u.

    Returns:
      ``chain(scale_by_moments(infinity_norm=True), bias_correct, scale_by_rsqrt, scale_by_lr)``,
      after ``add_coupled_weight_decay`` when ``weight_decay`` is given.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.1])}
      >>> tx = adamx.adamax(1e-2)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"]  # the first step is -α·sign(g)
      Array([-0.01,  0.01], dtype=float32)

    References:
      Kingma & Ba, arXiv:1412.6980, section 7.1.
    """
    check_flag("eps_in_max", eps_in_max)
    return chain(
        l2_penalty(weight_decay, mask),
        scale_by_moments(
            b1, b2, mu_dtype, nu_dtype=nu_dtype, infinity_norm=True, eps=eps if eps_in_max else 0.0
        ),
        bias_correct(b1, b2),
        scale_by_rsqrt(0.0 if eps_in_max else eps),
        scale_by_lr(learning_rate),
    )


def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    eps_in_max: bool = True,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r""":func:`adamax` with decoupled weight decay (``optax.adamaxw``).

    .. math::
        \Delta\theta_t = -\alpha_t\left(\frac{\hat m_t}{u_t} + \lambda_t\theta_{t-1}\right)

    Args:
      learning_rate, b1, b2, eps, eps_in_max, mu_dtype, nu_dtype: as in :func:`adamax`.
      weight_decay: λ, a number or a schedule.
      mask: which leaves decay (pytree, callable, ``path_mask``).
      fully_decoupled, peak_learning_rate: as in :func:`adamx.adamw`.

    Returns:
      ``chain(scale_by_moments(infinity_norm=True), bias_correct, scale_by_rsqrt,
      add_decoupled_weight_decay, scale_by_lr)``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.1])}
      >>> tx = adamx.adamaxw(1e-2, weight_decay=0.1)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"]  # the first step is -α·(sign(g) + λθ)
      Array([-0.011,  0.012], dtype=float32)

    References:
      Kingma & Ba, arXiv:1412.6980; Loshchilov & Hutter, arXiv:1711.05101.
    """
    check_flag("eps_in_max", eps_in_max)
    return chain(
        scale_by_moments(
            b1, b2, mu_dtype, nu_dtype=nu_dtype, infinity_norm=True, eps=eps if eps_in_max else 0.0
        ),
        bias_correct(b1, b2),
        scale_by_rsqrt(0.0 if eps_in_max else eps),
        decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate),
        scale_by_lr(learning_rate),
    )
