"""AMSGrad: Adam whose second moment never decreases (signature mirrors ``optax.amsgrad``)."""

import jax
import optax

from .._types import Mask
from .._validation import check_choice
from ..formats import MomentFormat
from ..stages import bias_correct, running_max_nu, scale_by_lr, scale_by_moments, scale_by_rsqrt
from ._parts import chain, l2_penalty

MAX_OF = ("corrected", "raw")


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_of: str = "corrected",
    epsilon_hat: bool = False,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
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
    early in training, when :math:`1-\beta_2^t` is still small. ``max_of`` is
    where ``running_max_nu`` sits: after ``bias_correct`` or before it.

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
      scale_by_lr)`` (``running_max_nu`` before ``bias_correct`` for "raw"),
      after ``add_coupled_weight_decay`` when ``weight_decay`` is given.

    Example:
      >>> import adamx
      >>> tx = adamx.amsgrad(1e-3, max_of="raw")  # torch.optim.Adam(lr=1e-3, amsgrad=True)

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", arXiv:1904.09237.
    """
    check_choice(
        "max_of", max_of, MAX_OF,
        "'corrected' keeps the max of v̂_t (optax.amsgrad), 'raw' the max of v_t, then "
        "corrects it (torch, Keras).",
    )  # fmt: skip
    return chain(
        l2_penalty(weight_decay, mask),
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        running_max_nu(nu_dtype) if max_of == "raw" else None,
        bias_correct(
            b1,
            b2,
            bias_correction_mu=bias_correction_mu,
            bias_correction_nu=bias_correction_nu,
        ),
        running_max_nu(nu_dtype) if max_of == "corrected" else None,
        scale_by_rsqrt(eps, eps_root, b2=b2 if epsilon_hat else None, epsilon_hat=epsilon_hat),
        scale_by_lr(learning_rate),
    )
