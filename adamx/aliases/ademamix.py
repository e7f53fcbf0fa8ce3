"""AdEMAMix and simplified AdEMAMix, each a chain of the stages (signatures mirror
``optax.contrib.ademamix`` / ``simplified_ademamix``)."""

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import (
    add_slow_ema,
    bias_correct,
    scale_by_lr,
    scale_by_moments,
    scale_by_rsqrt,
    scale_by_simplified_ademamix,
)
from ._parts import chain, decoupled


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    weight_decay: optax.ScalarOrSchedule | None = 0.0,
    mask: Mask | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdEMAMix (Pagliardini et al. 2024): Adam plus a slow EMA of the gradient.

    .. math::
        m_t &= (1-\beta_1) g_t + \beta_1 m_{t-1}, \qquad
        v_t = (1-\beta_2) |g_t|^2 + \beta_2 v_{t-1}, \qquad
        m^{(2)}_t = (1-\beta_{3,t}) g_t + \beta_{3,t} m^{(2)}_{t-1} \\
        \Delta\theta_t &= -\eta_t \left( \frac{m_t/(1-\beta_1^t) + \alpha_t m^{(2)}_t}
        {\sqrt{v_t/(1-\beta_2^t) + \bar\varepsilon} + \varepsilon} + \lambda\theta_{t-1} \right)

    Bit-identical to ``optax.contrib.ademamix`` (float32 and float64; mu_dtype None).
    Unlike optax, ``mu_dtype`` stores m and m2 at every step and v has its own
    ``nu_dtype`` (None: the params' dtype): ``optax.contrib.ademamix(mu_dtype=d)`` makes
    m, m2 *and* v zeros of dtype d, then keeps the promoted dtype from step 1 on (the
    state's dtype changes, so a jitted update retraces once). For optax's first-step
    storage, pass ``nu_dtype=mu_dtype``. β3 and α are often warmed up over the whole run
    (the paper's ``T_{α,β3}``): pass schedules (``linear_warmup``, ``half_life_warmup``
    below). ``pytorch_optimizer.AdEMAMix``'s default ``weight_decay`` is an L2 term
    (``weight_decouple=False``): ``add_coupled_weight_decay`` before the moments, with
    ``weight_decay=None`` here.

    Args:
      learning_rate: η, a number or an optax schedule.
      b1: decay of the fast EMA (Adam's first moment), in [0, 1).
      b2: decay of the second moment, in [0, 1).
      b3: decay of the slow EMA, in [0, 1), or a schedule.
      alpha: weight α of the slow EMA, or a schedule.
      eps: ε, added to the root of v̂.
      eps_root: ε̄, added to v̂ under the root.
      mu_dtype: storage of m and m2: a float dtype or a moment format (None: the params').
      weight_decay: λ of the decoupled decay, a number or a schedule; 0.0 keeps its stage
        (as optax does, so the states match), None leaves it out.
      mask: which leaves decay (pytree, callable, ``adamx.path_mask``).
      nu_dtype: storage of v: a float dtype or a moment format (None: the params' dtype).
      fully_decoupled, peak_learning_rate: as in ``adamx.adamw``.

    Returns:
      ``chain(scale_by_moments, bias_correct, add_slow_ema, scale_by_rsqrt,
      add_decoupled_weight_decay, scale_by_lr)``.

    Example:
      >>> import adamx
      >>> from adamx import half_life_warmup, linear_warmup
      >>> T = 100_000  # the paper's T_{α,β3}: α and β3 warmed up over the whole run
      >>> tx = adamx.ademamix(
      ...     1e-3, b3=half_life_warmup(0.9, 0.9999, T), alpha=linear_warmup(8.0, T),
      ...     weight_decay=0.1)

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
      arXiv:2409.03137.
    """
    return chain(
        scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        bias_correct(b1, b2),
        add_slow_ema(b3, alpha, mu_dtype),
        scale_by_rsqrt(eps, eps_root),
        decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate),
        scale_by_lr(learning_rate),
    )


def simplified_ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: optax.ScalarOrSchedule = 0.99,
    b2: float = 0.95,
    alpha: optax.ScalarOrSchedule = 0.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule | None = 0.0,
    mask: Mask | None = None,
    *,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    fully_decoupled: bool = False,
    peak_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Simplified AdEMAMix (Morwani et al. 2025): one momentum, summed, plus α·g.

    .. math::
        m_t &= \beta_{1,t} m_{t-1} + g_t, \qquad
        v_t = (1-\beta_2) |g_t|^2 + \beta_2 v_{t-1} \\
        \Delta\theta_t &= -\eta_t \left( \frac{m_t + \alpha_t g_t}
        {\sqrt{v_t/(1-\beta_2^t) + \bar\varepsilon} + \varepsilon} + \lambda\theta_{t-1} \right)

    Bit-identical to ``optax.contrib.simplified_ademamix`` (which stores m and v in the
    params' dtype; here ``mu_dtype`` / ``nu_dtype`` choose). m sums ~1/(1-β1) gradients,
    so η is ~(1-β1) times Adam's. ``b1`` may be a schedule (the authors' β1 warm-up).

    Args:
      learning_rate: η, a number or an optax schedule.
      b1: β1 in [0, 1), or a schedule.
      b2: β2 in [0, 1).
      alpha: weight α of the current gradient, or a schedule.
      eps: ε, added to the root of v̂.
      eps_root: ε̄, added to v̂ under the root.
      weight_decay: λ of the decoupled decay; 0.0 keeps its stage (as optax), None drops it.
      mask: which leaves decay (pytree, callable, ``adamx.path_mask``).
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      nu_dtype: storage of v, likewise.
      fully_decoupled, peak_learning_rate: as in ``adamx.adamw``.

    Returns:
      ``chain(scale_by_simplified_ademamix, add_decoupled_weight_decay, scale_by_lr)``.

    Example:
      >>> import adamx
      >>> tx = adamx.simplified_ademamix(1e-4, b1=0.99, b2=0.95, alpha=5.0)

    References:
      Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
      Accelerated SGD Variants", arXiv:2502.02431.
    """
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
        decoupled(weight_decay, mask, learning_rate, fully_decoupled, peak_learning_rate),
        scale_by_lr(learning_rate),
    )
