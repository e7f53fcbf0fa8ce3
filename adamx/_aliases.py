"""Adam and AdamW: chains of the five stages, and nothing more."""

from typing import Any

import optax

from ._bias_correction import bias_correct
from ._learning_rate import scale_by_lr
from ._moments import scale_by_moments
from ._rsqrt import scale_by_rsqrt
from ._weight_decay import Mask, add_decoupled_weight_decay


def adam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba 2015), bit-identical to ``optax.adam``.

    .. math::
        m_t &= (1-\beta_1) g_t + \beta_1 m_{t-1}, \qquad
        v_t = (1-\beta_2) |g_t|^2 + \beta_2 v_{t-1} \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
        \Delta\theta_t &= -\alpha_t \, \hat m_t / (\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon)

    With ``nesterov=True``, :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) +
    (1-\beta_1) g_t/(1-\beta_1^t)` (NAdam, as ``optax.nadam``).

    Args:
      learning_rate: α, a number or an optax schedule.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: ε, added to the root of v̂.
      eps_root: ε̄, added to v̂ under the root.
      mu_dtype: storage dtype of m (None: the params' dtype).
      nesterov: use Nesterov momentum.

    Returns:
      ``chain(scale_by_moments, bias_correct, scale_by_rsqrt, scale_by_lr)``.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> tx = adamx.adam(1e-3)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    """
    return optax.chain(
        scale_by_moments(b1, b2, mu_dtype),
        bias_correct(b1, b2, nesterov=nesterov),
        scale_by_rsqrt(eps, eps_root),
        scale_by_lr(learning_rate),
    )


def adamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW (Loshchilov & Hutter 2019), bit-identical to ``optax.adamw``.

    Adam's step with the weight decay added after the adaptive scaling, so
    every (unmasked) weight decays at rate :math:`\alpha_t \lambda`:

    .. math::
        \Delta\theta_t = -\alpha_t \left( \frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon}
        + \varepsilon} + \lambda \theta_{t-1} \right)

    Args:
      learning_rate: α, a number or an optax schedule.
      b1, b2, eps, eps_root, mu_dtype, nesterov: as in :func:`adam`.
      weight_decay: λ, a number or a schedule.
      mask: which leaves decay: a pytree of bools, or a callable of the params.

    Returns:
      ``chain(scale_by_moments, bias_correct, scale_by_rsqrt,
      add_decoupled_weight_decay, scale_by_lr)``.

    Example:
      >>> import adamx, jax, optax
      >>> schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-4, 100, 10_000)
      >>> tx = adamx.adamw(schedule, weight_decay=0.1,
      ...                  mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
    """
    return optax.chain(
        scale_by_moments(b1, b2, mu_dtype),
        bias_correct(b1, b2, nesterov=nesterov),
        scale_by_rsqrt(eps, eps_root),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_lr(learning_rate),
    )
