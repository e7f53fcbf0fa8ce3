"""StableAdamW: AdamW whose whole step, per tensor, is divided by max(1, RMS(g²/v̂))."""

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import (
    bias_correct,
    clip_by_update_rms,
    scale_by_lr,
    scale_by_moments,
    scale_by_rsqrt,
    update_rms,
)
from ._parts import chain, decoupled


def stable_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule | None = 1e-2,
    mask: Mask | None = None,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""StableAdamW (Wortsman et al. 2023): AdamW with update clipping, as torch-optimi's
    ``StableAdamW`` and pytorch_optimizer's ``StableAdamW`` compute it.

    .. math::
        \hat m_t, \hat v_t &: \text{Adam's bias-corrected moments of } g_t \\
        \mathrm{RMS}_t &= \sqrt{\operatorname{mean}\big(g_t^2 / \max(\hat v_t,
            \varepsilon^2)\big)} \quad \text{(per tensor)} \\
        \eta_t &= \alpha_t / \max(1, \mathrm{RMS}_t) \\
        \Delta\theta_t &= -\eta_t \left( \frac{\hat m_t}{\sqrt{\hat v_t} + \varepsilon}
            + \lambda \theta_{t-1} \right)

    Both references keep m̂ and v̂ themselves, as EMAs with "debiased" betas
    :math:`\hat\beta_t = \beta(1-\beta^{t-1})/(1-\beta^t)`, which are exactly Adam's
    :math:`m_t/(1-\beta_1^t)` and :math:`v_t/(1-\beta_2^t)`; adamx stores m and v and
    corrects them (``bias_correct``), as for every other member of the family.

    With ``fully_decoupled=True`` the decay is :math:`(\eta_t/\hat\alpha)\lambda\theta_{t-1}`
    (optimi's ``decouple_lr=True, max_lr=α̂``); it is divided by max(1, RMS_t) too.

    Args:
      learning_rate: α, a number or an optax schedule.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1) (0.99, as both references).
      eps: ε of the denominator √v̂ + ε and of the floor ε² of v̂ inside the RMS
        (1e-6: optimi's default; pytorch_optimizer's is 1e-8).
      weight_decay: λ of the decoupled decay, a number or a schedule (None: no decay stage).
      mask: which leaves decay (pytree of bools, callable, ``adamx.path_mask``).
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      nu_dtype: storage of v, likewise.
      fully_decoupled: decay by :math:`(\alpha_t/\hat\alpha)\lambda` instead of
        :math:`\alpha_t\lambda` (before the clip).
      peak_learning_rate: α̂ (optimi's ``max_lr``); required with ``fully_decoupled`` and a
        schedule; default with a constant α: α.

    Returns:
      ``clip_by_update_rms(chain(scale_by_moments, bias_correct, update_rms,
      scale_by_rsqrt, add_decoupled_weight_decay, scale_by_lr))``.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> tx = adamx.stable_adamw(1e-3)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Wortsman et al., "Stable and low-precision training for large-scale vision-language
      models", arXiv:2304.13013, Algorithm 2; Loshchilov & Hutter, arXiv:1711.05101.
    """
    return clip_by_update_rms(
        chain(
            scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
            bias_correct(b1, b2),
            update_rms(eps),
            scale_by_rsqrt(eps),
            decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate),
            scale_by_lr(learning_rate),
        )
    )
