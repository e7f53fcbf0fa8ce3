"""Adam and AdamW, each a chain of the stages (signatures mirror ``optax.adam``/``adamw``)."""

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import bias_correct, scale_by_lr, scale_by_moments, scale_by_rsqrt
from ._parts import chain, decoupled, l2_penalty


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
    epsilon_hat: bool = False,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba 2015), bit-identical to ``optax.adam``.

    .. math::
        m_t &= (1-\beta_1) g_t + \beta_1 m_{t-1}, \qquad
        v_t = (1-\beta_2) |g_t|^2 + \beta_2 v_{t-1} \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
        \Delta\theta_t &= -\alpha_t \, \hat m_t / (\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon)

    With ``nesterov=True``, :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) +
    (1-\beta_1) g_t/(1-\beta_1^t)` (NAdam, as ``optax.nadam``).

    With ``weight_decay=λ`` the gradient of an L2 penalty is added first,
    :math:`g_t \leftarrow g_t + \lambda\theta_{t-1}` (``torch.optim.Adam``'s
    ``weight_decay``; for decoupled decay use :func:`adamw`). With
    ``epsilon_hat=True`` ε is added to the uncorrected root, as Keras does:
    :math:`\hat m_t / (\sqrt{\hat v_t} + \varepsilon/\sqrt{1-\beta_2^t})`.

    Args:
      learning_rate: α, a number or an optax schedule.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: ε, added to the root of v̂.
      eps_root: ε̄, added to v̂ under the root.
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      nesterov: use Nesterov momentum.
      weight_decay: λ of the coupled L2 term, a number or a schedule. None (the
        default) or 0: no stage, so the chain is exactly optax's.
      mask: which leaves the L2 term applies to (pytree, callable, ``path_mask``).
      epsilon_hat: add ε to the uncorrected root (Keras).
      nu_dtype: storage of v: a float dtype or a moment format (None: the params' dtype).

    Returns:
      ``chain(scale_by_moments, bias_correct, scale_by_rsqrt, scale_by_lr)``,
      after ``add_coupled_weight_decay`` when ``weight_decay`` is given.

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
    return chain(
        l2_penalty(weight_decay, mask),
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2, nesterov=nesterov),
        scale_by_rsqrt(eps, eps_root, b2=b2 if epsilon_hat else None, epsilon_hat=epsilon_hat),
        scale_by_lr(learning_rate),
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = False,
    epsilon_hat: bool = False,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
    cautious_weight_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW (Loshchilov & Hutter 2019), bit-identical to ``optax.adamw``.

    Adam's step with the weight decay added after the adaptive scaling, so
    every (unmasked) weight decays at rate :math:`\alpha_t \lambda`:

    .. math::
        \Delta\theta_t = -\alpha_t \left( \frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon}
        + \varepsilon} + \lambda \theta_{t-1} \right)

    With ``fully_decoupled=True`` the decay follows the schedule's shape but
    not its peak α̂ (``peak_learning_rate``, default: a constant
    ``learning_rate``): :math:`\Delta\theta_t = -\alpha_t u_t -
    (\alpha_t/\hat\alpha)\lambda_t\theta_{t-1}`, so tuning α̂ leaves the decay alone.
    With ``cautious_weight_decay=True`` only the weights whose update agrees with them in
    sign decay (Chen et al. 2025): :math:`\lambda\theta_{t-1}` becomes
    :math:`\lambda\,\mathbb{1}[u_t \odot \theta_{t-1} \ge 0] \odot \theta_{t-1}`.

    Args:
      learning_rate: α, a number or an optax schedule.
      b1, b2, eps, eps_root, mu_dtype, nesterov, epsilon_hat, nu_dtype: as in :func:`adam`.
      weight_decay: λ, a number or a schedule.
      mask: which leaves decay: a pytree of bools, a callable of the params, or
        ``adamx.path_mask(...)``/``adamx.exclude_paths(...)``.
      fully_decoupled: decay by :math:`(\alpha_t/\hat\alpha)\lambda_t` instead of
        :math:`\alpha_t\lambda_t` (Loshchilov & Hutter's fully decoupled form).
      peak_learning_rate: α̂; required with ``fully_decoupled`` and a schedule.
      cautious_weight_decay: decay only where :math:`u_t \odot \theta_{t-1} \ge 0`
        (``add_decoupled_weight_decay(cautious=True)``; arXiv:2510.12402).

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
    return chain(
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2, nesterov=nesterov),
        scale_by_rsqrt(eps, eps_root, b2=b2 if epsilon_hat else None, epsilon_hat=epsilon_hat),
        decoupled(
            weight_decay,
            mask,
            learning_rate,
            fully_decoupled,
            peak_learning_rate,
            cautious_weight_decay,
        ),
        scale_by_lr(learning_rate),
    )
