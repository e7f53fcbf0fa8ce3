"""ADOPT as a chain of stages (the signature mirrors ``optax.contrib.adopt``)."""

from collections.abc import Callable

import jax
import optax

from .._types import Mask
from ..formats import MomentFormat
from ..stages import scale_by_adopt, scale_by_lr
from ..stages.adopt import quarter_power
from ._parts import chain, decoupled


def adopt(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.typing.ArrayLike] = quarter_power,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    weight_decay: optax.ScalarOrSchedule | None = None,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT (Taniguchi et al. 2024), bit-identical to ``optax.contrib.adopt``.

    Adam with the gradient normalised by the *previous* second moment before the
    momentum, clipped at :math:`c_t = t^{1/4}` (t the 0-based step):

    .. math::
        x_t = \mathrm{clip}\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \varepsilon)},
            \pm c_t\right), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) x_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \Delta\theta_t = -\alpha_t \left(m_t + \lambda_t \theta_{t-1}\right)

    The first step sets :math:`v_0 = g_0^2` and moves nothing (but the decay).
    See :func:`adamx.scale_by_adopt` for the step in full.

    With ``weight_decay=λ`` the decay is decoupled (AdamW's), as
    ``pytorch_optimizer.ADOPT(weight_decouple=True)``: every weight shrinks by
    :math:`\alpha_t\lambda_t\theta_{t-1}` on every step, the first included.
    (Its default, ``weight_decouple=False``, adds :math:`\lambda\theta` to the gradient:
    ``optax.chain(adamx.add_coupled_weight_decay(λ), adamx.scale_by_adopt(...),
    adamx.scale_by_lr(α))``.)

    Args:
      learning_rate: α, a number or an optax schedule.
      b1: β1, decay of the momentum, in [0, 1).
      b2: β2, decay of the second moment, in [0, 1).
      eps: ε, the floor of :math:`\sqrt{v_{t-1}}`.
      mu_dtype: storage of m: a float dtype or a moment format (None: the params' dtype).
      nesterov: Nesterov momentum, as optax's.
      use_clipping: clip the normalised gradient to :math:`\pm c_t`.
      clip_value_fn: :math:`t \mapsto c_t`; default :math:`t^{1/4}` (optax's; the
        authors' code and ``pytorch_optimizer`` use :math:`(t+1)^{1/4}`).
      nu_dtype: storage of v: a float dtype or a moment format (None: the params' dtype).
      weight_decay: λ of decoupled decay, a number or a schedule. None (the default):
        no stage, so the chain is exactly optax's.
      mask: which leaves decay (pytree of bools, callable, ``adamx.path_mask``).

    Returns:
      ``chain(scale_by_adopt, scale_by_lr)``, with ``add_decoupled_weight_decay``
      before ``scale_by_lr`` when ``weight_decay`` is given.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(3)}
      >>> tx = adamx.adopt(1e-3, weight_decay=1e-2)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
      Rate", NeurIPS 2024, arXiv:2411.02853.
    """
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nu_dtype=nu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
        decoupled(weight_decay, mask, learning_rate, False, None),
        scale_by_lr(learning_rate),
    )
