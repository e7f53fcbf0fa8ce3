"""The rest of the Adam family (optax's names and signatures): chains built by ``build_chain``.

Each alias only chooses stages and stage options; the maths lives in the stages.
"""

from typing import Any

import optax

from ..stages.weight_decay import Mask
from .adam import build_chain


def nadam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: Any = None,
    weight_decay: Any = None,
    mask: Mask | None = None,
    nu_dtype: Any = None,
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
      ``chain(scale_by_moments, bias_correct(nesterov=True), scale_by_rsqrt, scale_by_lr)``.

    Example:
      >>> import adamx
      >>> tx = adamx.nadam(2e-3, momentum_decay=4e-3)  # torch.optim.NAdam(lr=2e-3)

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """
    return build_chain(
        learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
        nu_dtype=nu_dtype, nesterov=True, momentum_decay=momentum_decay,
        coupled_decay=weight_decay, mask=mask,
    )  # fmt: skip


def nadamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
    *,
    momentum_decay: Any = None,
    nu_dtype: Any = None,
    fully_decoupled: bool = False,
    peak_learning_rate: Any = None,
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

    References:
      Dozat 2016; Loshchilov & Hutter, arXiv:1711.05101.
    """
    return build_chain(
        learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
        nu_dtype=nu_dtype, nesterov=True, momentum_decay=momentum_decay,
        decoupled_decay=weight_decay, mask=mask, fully_decoupled=fully_decoupled,
        peak_learning_rate=peak_learning_rate,
    )  # fmt: skip


def amsgrad(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_of: str = "corrected",
    epsilon_hat: bool = False,
    weight_decay: Any = None,
    mask: Mask | None = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad: Adam whose second moment never decreases; optax's or torch's flavour.

    ``max_of="corrected"`` (default, bit-identical to ``optax.amsgrad``) keeps
    the running maximum of the bias-corrected :math:`\hat v_t`:

    .. math::
        \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, v_t/(1-\beta_2^t)), \qquad
        \Delta\theta_t = -\alpha_t \hat m_t / (\sqrt{\hat v^{\max}_t + \bar\varepsilon}
        + \varepsilon)

    ``max_of="raw"`` (``torch.optim.Adam(amsgrad=True)``, Keras ``amsgrad=True``)
    keeps the maximum of the raw :math:`v_t` and corrects it afterwards:
    :math:`\hat v^{\max}_t = \max_{i\le t} v_i / (1-\beta_2^t)`. The two differ
    early in training, when :math:`1-\beta_2^t` is still small.

    Args:
      learning_rate, b1, b2, eps, eps_root, mu_dtype: as in :func:`adamx.adam`.
      bias_correction_mu: correct m (False: the original AMSGrad paper).
      bias_correction_nu: correct v (False: the max of the raw v, never corrected).
      max_of: "corrected" (optax) or "raw" (torch, Keras).
      epsilon_hat: add ε to the uncorrected root (Keras).
      weight_decay: coupled L2 λ (torch's ``weight_decay``); None (default) or 0: none.
      mask: which leaves the L2 term applies to.
      nu_dtype: storage of v and of its maximum.

    Returns:
      ``chain(scale_by_moments, bias_correct, running_max_nu, scale_by_rsqrt,
      scale_by_lr)`` (``running_max_nu`` before ``bias_correct`` for "raw").

    Example:
      >>> import adamx
      >>> tx = adamx.amsgrad(1e-3, max_of="raw")  # torch.optim.Adam(lr=1e-3, amsgrad=True)

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", arXiv:1904.09237.
    """
    if max_of not in ("corrected", "raw"):
        raise ValueError(
            f"max_of must be 'corrected' (the max of v̂_t, as optax.amsgrad) or 'raw' (the max "
            f"of v_t, then corrected, as torch and Keras), got {max_of!r}."
        )
    return build_chain(
        learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
        nu_dtype=nu_dtype, amsgrad=max_of, correct_mu=bias_correction_mu,
        correct_nu=bias_correction_nu, epsilon_hat=epsilon_hat, coupled_decay=weight_decay,
        mask=mask,
    )  # fmt: skip


def adamax(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_in_max: bool = True,
    weight_decay: Any = None,
    mask: Mask | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
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
      eps: ε (see ``eps_in_max``).
      eps_in_max: put ε inside the max (optax, torch) or after it (Keras).
      weight_decay: coupled L2 λ (torch's ``weight_decay``); None (default) or 0: none.
      mask: which leaves the L2 term applies to.
      mu_dtype, nu_dtype: storage of m and u.

    Returns:
      ``chain(scale_by_moments(infinity_norm=True), bias_correct, scale_by_rsqrt, scale_by_lr)``.

    References:
      Kingma & Ba, arXiv:1412.6980, section 7.1.
    """
    return build_chain(learning_rate, **_adamax_options(b1, b2, eps, eps_in_max, mu_dtype,
                       nu_dtype), coupled_decay=weight_decay, mask=mask)  # fmt: skip


def adamaxw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: Any = 1e-4,
    mask: Mask | None = None,
    *,
    eps_in_max: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    fully_decoupled: bool = False,
    peak_learning_rate: Any = None,
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
      :func:`adamax`'s chain with ``add_decoupled_weight_decay`` before ``scale_by_lr``.

    References:
      Kingma & Ba, arXiv:1412.6980; Loshchilov & Hutter, arXiv:1711.05101.
    """
    return build_chain(
        learning_rate, **_adamax_options(b1, b2, eps, eps_in_max, mu_dtype, nu_dtype),
        decoupled_decay=weight_decay, mask=mask, fully_decoupled=fully_decoupled,
        peak_learning_rate=peak_learning_rate,
    )  # fmt: skip


def _adamax_options(b1, b2, eps, eps_in_max, mu_dtype, nu_dtype) -> dict:
    if not isinstance(eps_in_max, bool):
        raise TypeError(f"eps_in_max must be True or False, got {eps_in_max!r}.")
    eps_inf, eps_after = (eps, 0.0) if eps_in_max else (0.0, eps)
    return dict(b1=b1, b2=b2, eps=eps_after, eps_inf=eps_inf, infinity_norm=True,
                mu_dtype=mu_dtype, nu_dtype=nu_dtype)  # fmt: skip


def radam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    threshold: Any = 5.0,
    *,
    nesterov: bool = False,
    epsilon_hat: bool = False,
    weight_decay: Any = None,
    decoupled_weight_decay: bool = False,
    mask: Mask | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
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
      threshold: τ; optax and torch use 5.
      epsilon_hat: add ε to the uncorrected root (torch).
      weight_decay: λ, coupled L2 by default (torch's ``weight_decay``).
      decoupled_weight_decay: decay as AdamW does (torch's flag of the same name).
      mask: which leaves decay.
      fully_decoupled, peak_learning_rate: as in :func:`adamx.adamw` (decoupled decay only).

    Returns:
      ``chain(scale_by_moments, bias_correct, scale_by_rsqrt(rectify_threshold=τ), scale_by_lr)``
      with the weight-decay stage where it belongs.

    Example:
      >>> import adamx  # torch.optim.RAdam(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
      >>> tx = adamx.radam(1e-3, epsilon_hat=True, weight_decay=1e-2, decoupled_weight_decay=True)

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", arXiv:1908.03265.
    """
    if not isinstance(decoupled_weight_decay, bool):
        raise TypeError(
            f"decoupled_weight_decay must be True or False, got {decoupled_weight_decay!r}."
        )
    return build_chain(
        learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
        nu_dtype=nu_dtype, nesterov=nesterov, epsilon_hat=epsilon_hat,
        rectify_threshold=threshold,
        coupled_decay=None if decoupled_weight_decay else weight_decay,
        decoupled_decay=weight_decay if decoupled_weight_decay else None,
        mask=mask, fully_decoupled=fully_decoupled, peak_learning_rate=peak_learning_rate,
    )  # fmt: skip
