"""Cautious AdamW (C-AdamW), a chain of the stages; optionally with cautious weight decay."""

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import (
    bias_correct,
    cautious,
    scale_by_lr,
    scale_by_moments,
    scale_by_rsqrt,
)
from ..stages.cautious import Rescale
from ._parts import chain, decoupled


def cautious_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    rescale: Rescale = "count",
    cautious_weight_decay: bool = False,
    epsilon_hat: bool = False,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Cautious AdamW (Liang et al. 2024): AdamW whose direction is masked where it
    disagrees with the gradient.

    .. math::
        u_t &= \hat m_t / (\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon)
        \qquad \text{(Adam's direction)} \\
        \phi_t &= \mathbb{1}[u_t \odot g_t > 0], \qquad
        s_t = n / ({\textstyle\sum} \phi_t + 1) \ \text{per leaf of n elements} \\
        \Delta\theta_t &= -\alpha_t \left( s_t\, \phi_t \odot u_t
        + \lambda \, c_t \odot \theta_{t-1} \right)

    with :math:`c_t = 1` (AdamW's decay) or, with ``cautious_weight_decay=True``,
    :math:`c_t = \mathbb{1}[s_t \phi_t \odot u_t \odot \theta_{t-1} \ge 0]` (Chen et al.
    2025: decay only where the update and the weight agree in sign). ``rescale="mean"``
    uses :math:`s_t = 1/\max(\operatorname{mean}\phi_t, 10^{-3})` (timm, and the authors'
    current ``c_adamw.py``) instead of :math:`n/(\sum\phi_t + 1)` (``pytorch_optimizer``,
    the authors' first release). The authors' ``c_adamw.py`` also puts ε on the
    uncorrected root (Hugging Face's AdamW): ``epsilon_hat=True``, :math:`u_t = \hat m_t /
    (\sqrt{\hat v_t} + \varepsilon/\sqrt{1-\beta_2^t})`; so
    ``cautious_adamw(lr, eps=1e-6, weight_decay=λ, rescale="mean", epsilon_hat=True)`` is
    their C-AdamW.

    Args:
      learning_rate: α, a number or an optax schedule.
      b1, b2, eps, eps_root: as in :func:`adamx.adamw`.
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      weight_decay: λ, a number or a schedule (None: no decay stage).
      mask: which leaves decay (pytree, callable, ``path_mask``).
      rescale: "count" or "mean", the per-leaf rescale of the kept elements.
      cautious_weight_decay: decay only where :math:`u \odot \theta \ge 0`.
      epsilon_hat: add ε to the uncorrected root (as :func:`adamx.adamw`'s).
      nu_dtype: storage of v: a float dtype or a moment format (None: the params' dtype).
      fully_decoupled, peak_learning_rate: as in :func:`adamx.adamw`.

    Returns:
      ``chain(cautious(chain(scale_by_moments, bias_correct, scale_by_rsqrt)),
      add_decoupled_weight_decay, scale_by_lr)``. Its state's first element is a
      ``CautiousState``: ``optax.tree.get(state, "masked_fraction")`` is the fraction
      of elements masked at the last step.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.array([1.0, -2.0, 3.0])}
      >>> tx = adamx.cautious_adamw(1e-3, weight_decay=0.1, cautious_weight_decay=True)
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.array([0.5, 0.5, -0.5])}
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
      >>> float(optax.tree.get(state, "masked_fraction"))  # u = g on step 1: nothing masked
      0.0

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of
      Code", arXiv:2411.16085. Chen, Li, Liang et al., "Cautious Weight Decay",
      arXiv:2510.12402.
    """
    direction = chain(
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2),
        scale_by_rsqrt(eps, eps_root, b2=b2 if epsilon_hat else None, epsilon_hat=epsilon_hat),
    )
    return chain(
        cautious(direction, rescale=rescale),
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
