"""Adam and AdamW: chains of the stages, and nothing more; the chain builder the family shares."""

from typing import Any

import optax

from .._validation import is_concrete_number
from ..stages.amsgrad import running_max_nu
from ..stages.bias_correction import bias_correct
from ..stages.coupled import add_coupled_weight_decay
from ..stages.learning_rate import scale_by_lr
from ..stages.moments import scale_by_moments
from ..stages.rsqrt import scale_by_rsqrt
from ..stages.weight_decay import Mask, add_decoupled_weight_decay

_AMSGRAD = (None, "raw", "corrected")


def build_chain(
    learning_rate: Any,
    *,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
    momentum_decay: Any = None,
    infinity_norm: bool = False,
    eps_inf: Any = 0.0,
    amsgrad: str | None = None,
    correct_mu: bool = True,
    correct_nu: bool = True,
    epsilon_hat: bool = False,
    rectify_threshold: Any = None,
    coupled_decay: Any = None,
    decoupled_decay: Any = None,
    mask: Mask | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The family's one chain; each option adds or configures a stage, unused stages are left out.

    ``amsgrad``: None, "raw" (running max before ``bias_correct``: torch, Keras)
    or "corrected" (after it: optax). ``coupled_decay`` (None or 0: no stage) goes before
    the moments; ``decoupled_decay`` (None: no stage) after the adaptive step.
    """
    if amsgrad not in _AMSGRAD:
        raise ValueError(
            f"amsgrad must be one of {_AMSGRAD}, got {amsgrad!r}: 'raw' keeps the running max "
            "of v_t and then corrects it (torch, Keras), 'corrected' the max of v̂_t (optax)."
        )
    peak = _peak(learning_rate, decoupled_decay, fully_decoupled, peak_learning_rate)
    uses_b2 = epsilon_hat or rectify_threshold is not None
    stages = [
        _coupled_stage(coupled_decay, mask),
        scale_by_moments(
            b1, b2, mu_dtype, nu_dtype=nu_dtype, infinity_norm=infinity_norm, eps_inf=eps_inf
        ),
        running_max_nu(nu_dtype) if amsgrad == "raw" else None,
        bias_correct(
            b1,
            b2,
            nesterov=nesterov,
            momentum_decay=momentum_decay,
            correct_mu=correct_mu,
            correct_nu=correct_nu,
        ),
        running_max_nu(nu_dtype) if amsgrad == "corrected" else None,
        scale_by_rsqrt(
            eps,
            eps_root,
            b2=b2 if uses_b2 else None,
            epsilon_hat=epsilon_hat,
            rectify_threshold=rectify_threshold,
        ),
        None
        if decoupled_decay is None
        else add_decoupled_weight_decay(decoupled_decay, mask, peak_learning_rate=peak),
        scale_by_lr(learning_rate),
    ]
    return optax.chain(*[s for s in stages if s is not None])


def _coupled_stage(weight_decay: Any, mask: Mask | None):
    if weight_decay is None or (is_concrete_number(weight_decay) and weight_decay == 0):
        # No stage at all: the chain (and its state) is exactly Adam's. None, unlike 0.0, also
        # stays static under optax.inject_hyperparams, so the state keeps optax's structure.
        return None
    return add_coupled_weight_decay(weight_decay, mask)


def _peak(learning_rate, decoupled_decay, fully_decoupled, peak_learning_rate):
    """α̂ for fully decoupled weight decay, or None."""
    if not isinstance(fully_decoupled, bool):
        raise TypeError(f"fully_decoupled must be True or False, got {fully_decoupled!r}.")
    if not fully_decoupled:
        if peak_learning_rate is not None:
            raise ValueError(
                "peak_learning_rate is used only by fully decoupled weight decay: pass "
                "fully_decoupled=True with it, or drop it."
            )
        return None
    if decoupled_decay is None:
        raise ValueError(
            "fully_decoupled=True rescales decoupled weight decay, but this optimizer's decay "
            "is coupled (an L2 gradient term). Use the decoupled variant (adamw, nadamw, "
            "adamaxw, radam(decoupled_weight_decay=True))."
        )
    if peak_learning_rate is not None:
        return peak_learning_rate
    if callable(learning_rate):
        raise ValueError(
            "fully_decoupled=True with a learning-rate schedule needs peak_learning_rate=α̂, "
            "the schedule's peak: the decay per step is weight_decay * α_t / α̂."
        )
    return learning_rate


def adam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    weight_decay: Any = None,
    mask: Mask | None = None,
    epsilon_hat: bool = False,
    nu_dtype: Any = None,
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
      mu_dtype: storage dtype of m (None: the params' dtype).
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
    return build_chain(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        nesterov=nesterov,
        epsilon_hat=epsilon_hat,
        coupled_decay=weight_decay,
        mask=mask,
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
    epsilon_hat: bool = False,
    nu_dtype: Any = None,
    fully_decoupled: bool = False,
    peak_learning_rate: Any = None,
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

    Args:
      learning_rate: α, a number or an optax schedule.
      b1, b2, eps, eps_root, mu_dtype, nesterov, epsilon_hat, nu_dtype: as in :func:`adam`.
      weight_decay: λ, a number or a schedule.
      mask: which leaves decay: a pytree of bools, a callable of the params, or
        ``adamx.path_mask(...)``/``adamx.exclude_paths(...)``.
      fully_decoupled: decay by :math:`(\alpha_t/\hat\alpha)\lambda_t` instead of
        :math:`\alpha_t\lambda_t` (Loshchilov & Hutter's fully decoupled form).
      peak_learning_rate: α̂; required with ``fully_decoupled`` and a schedule.

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
    return build_chain(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        nesterov=nesterov,
        epsilon_hat=epsilon_hat,
        decoupled_decay=weight_decay,
        mask=mask,
        fully_decoupled=fully_decoupled,
        peak_learning_rate=peak_learning_rate,
    )
