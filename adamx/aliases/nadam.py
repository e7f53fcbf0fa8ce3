"""NAdam and NAdamW: Adam with Nesterov momentum (signatures mirror ``optax.nadam``/``nadamw``)."""

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import bias_correct, scale_by_lr, scale_by_moments, scale_by_rsqrt
from ._parts import chain, decoupled, l2_penalty


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    momentum_decay: float | None = None,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""NAdam: Adam with Nesterov momentum; ``optax.nadam`` or, with ``momentum_decay``, torch's.

    optax (Dozat 2016), bit-identical to ``optax.nadam``:

    .. math::
        \hat m_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t},
        \qquad \Delta\theta_t = -\alpha_t \frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon}
        + \varepsilon}

    ``momentum_decay=ψ`` (``torch.optim.NAdam``, default ψ = 4e-3 there): the
    momentum follows :math:`\mu_t = \beta_1(1 - \tfrac12 0.96^{t\psi})` and
    :math:`\hat m_t = \mu_{t+1} m_t/(1-\prod_{i\le t+1}\mu_i)
    + (1-\mu_t) g_t/(1-\prod_{i\le t}\mu_i)`.

    Args:
      learning_rate: α, a number or a schedule.
      b1, b2, eps, eps_root, mu_dtype: as in :func:`adamx.adam`.
      momentum_decay: ψ of torch's NAdam; None: optax's constant β1.
      weight_decay: coupled L2 λ (torch's ``weight_decay``); None (default) or 0: none.
      mask: which leaves the L2 term applies to.
      nu_dtype: storage of v (a float dtype or a moment format).

    Returns:
      ``chain(scale_by_moments, bias_correct(nesterov=True), scale_by_rsqrt, scale_by_lr)``,
      after ``add_coupled_weight_decay`` when ``weight_decay`` is given.

    Example:
      >>> import adamx
      >>> tx = adamx.nadam(2e-3, momentum_decay=4e-3)  # torch.optim.NAdam(lr=2e-3)

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """
    return chain(
        l2_penalty(weight_decay, mask),
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2, nesterov=True, momentum_decay=momentum_decay),
        scale_by_rsqrt(eps, eps_root),
        scale_by_lr(learning_rate),
    )


def nadamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    momentum_decay: float | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""NAdamW: :func:`nadam` with decoupled weight decay (``optax.nadamw``).

    .. math::
        \Delta\theta_t = -\alpha_t\left(\frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon}
        + \varepsilon} + \lambda_t\theta_{t-1}\right)

    With ``momentum_decay=ψ`` this is ``torch.optim.NAdam(decoupled_weight_decay=True)``.

    Args:
      learning_rate, b1, b2, eps, eps_root, mu_dtype, momentum_decay, nu_dtype: as in :func:`nadam`.
      weight_decay: λ, a number or a schedule.
      mask: which leaves decay (pytree, callable, ``path_mask``).
      fully_decoupled, peak_learning_rate: as in :func:`adamx.adamw`.

    Returns:
      ``chain(scale_by_moments, bias_correct(nesterov=True), scale_by_rsqrt,
      add_decoupled_weight_decay, scale_by_lr)``.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
      >>> tx = adamx.nadamw(1e-3, weight_decay=0.1, mask=adamx.exclude_paths("b"))
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Dozat 2016; Loshchilov & Hutter, arXiv:1711.05101.
    """
    return chain(
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2, nesterov=True, momentum_decay=momentum_decay),
        scale_by_rsqrt(eps, eps_root),
        decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate),
        scale_by_lr(learning_rate),
    )
