"""LaProp as a chain of stages (the signature follows ``adamx.adam``'s order)."""

import jax
import optax

from .._types import Mask
from .._validation import check_flag
from ..formats import MomentFormat
from ..stages import scale_by_laprop, scale_by_lr
from ._parts import chain, decoupled


def laprop(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-15,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    eps_root: float = 0.0,
    epsilon_hat: bool = False,
    lr_weighted: bool = False,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LaProp (Ziyin et al. 2020): the momentum of the gradient normalised by √v̂.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        x_t = \frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \varepsilon}, \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) x_t, \quad
        \Delta\theta_t = -\alpha_t \left(\frac{m_t}{1-\beta_1^t} + \lambda_t\theta_{t-1}\right)

    See :func:`adamx.scale_by_laprop` for ``eps_root``, ``epsilon_hat`` and the
    learning-rate weighting. ``pytorch_optimizer.LaProp(lr=α)`` (weight decay 0) is
    ``laprop(α, eps_root=1e-15, epsilon_hat=True, lr_weighted=True)``; for a constant α
    ``lr_weighted`` only changes the rounding.

    With ``weight_decay=λ`` the decay is AdamW's (decoupled, before the learning
    rate: :math:`-\alpha_t\lambda_t\theta_{t-1}`). ``pytorch_optimizer.LaProp`` instead
    multiplies the *updated* weights by :math:`1-\alpha\lambda` after the step, and the
    authors' code by :math:`1-\lambda`; both differ from this by second-order terms
    (:math:`\alpha^2\lambda u_t`), or by the factor α.

    Args:
      learning_rate: α, a number or an optax schedule.
      b1: β1, decay of the momentum, in [0, 1).
      b2: β2, decay of the second moment, in [0, 1).
      eps: ε, added to the root (1e-15: the authors' default and pytorch_optimizer's).
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      nu_dtype: storage of v: a float dtype or a moment format (None: the params' dtype).
      eps_root: ε̄, added under the root.
      epsilon_hat: ε and ε̄ on the uncorrected v (pytorch_optimizer's placement).
      lr_weighted: weight the momentum by α_t, as the authors' code and pytorch_optimizer
        do (under a schedule, steps taken with a larger α weigh more).
      weight_decay: λ of decoupled decay, a number or a schedule. None (the default):
        no stage.
      mask: which leaves decay (pytree of bools, callable, ``adamx.path_mask``).

    Returns:
      ``chain(scale_by_laprop, scale_by_lr)``, with ``add_decoupled_weight_decay``
      before ``scale_by_lr`` when ``weight_decay`` is given.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> tx = adamx.laprop(4e-4, weight_decay=1e-2)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Ziyin, Wang & Ueda, "LaProp: Separating Momentum and Adaptivity in Adam",
      arXiv:2002.04839.
    """
    check_flag("lr_weighted", lr_weighted)
    return chain(
        scale_by_laprop(
            b1,
            b2,
            eps,
            mu_dtype,
            nu_dtype=nu_dtype,
            eps_root=eps_root,
            epsilon_hat=epsilon_hat,
            learning_rate=learning_rate if lr_weighted else None,
        ),
        decoupled(weight_decay, mask, learning_rate, False, None),
        scale_by_lr(learning_rate),
    )
