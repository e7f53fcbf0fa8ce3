"""``scale_by_laprop``: LaProp's step, momentum over the gradient normalised by √v̂."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import decay_power, ema, increment, rate_at
from .._types import PyTree, as_arrays, promote
from .._validation import (
    check_beta,
    check_flag,
    check_float_leaves,
    check_non_negative,
    check_same_shape,
    check_scalar_or_schedule,
    require_update_tree,
)
from ..formats import MomentFormat
from ..formats.base import as_format, init_moment, update_moments
from .moments import first_moment, second_moment

_STAGE = "scale_by_laprop"


class ScaleByLapropState(NamedTuple):
    """State of ``scale_by_laprop``."""

    # shape=(), int32: steps taken, saturating at 2**31 - 1
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mu: PyTree  # first moment m of the normalised gradient, in its state format
    nu: PyTree  # second moment v of the gradient, in its state format
    lr_ema: jax.Array | None = None  # shape=(), default float: c_t, with ``learning_rate`` only


def scale_by_laprop(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-15,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    eps_root: float | jax.Array = 0.0,
    epsilon_hat: bool = False,
    learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LaProp: normalise the gradient by √v̂ first, then take its momentum.

    At step t = 1, 2, ... (Adam divides the momentum of g by √v̂; LaProp swaps the two,
    so β1 and β2 no longer constrain each other):

    .. math::
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
            \hat v_t = v_t / (1 - \beta_2^t) \\
        x_t &= \frac{g_t}{\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) x_t, \qquad
            u_t = m_t / (1 - \beta_1^t)

    With ``epsilon_hat=True`` ε and ε̄ apply to the *uncorrected* v, as
    ``pytorch_optimizer.LaProp`` computes it (with ε̄ = 1e-15 there, fixed):

    .. math::
        x_t = \frac{g_t \sqrt{1 - \beta_2^t}}{\sqrt{v_t + \bar\varepsilon} + \varepsilon}

    The defaults (β1 = 0.9, β2 = 0.999, ε = 1e-15, ε̄ = 0, ε after the correction) are
    those of the authors' code (Z-T-WANG/LaProp-Optimizer) and of the paper's
    algorithm; ``pytorch_optimizer.LaProp`` is ``eps_root=1e-15, epsilon_hat=True``
    (ε̄ matters where v is tiny: 5e-6 apart in float64 on the repo's small model without it).
    Both weight the momentum by the learning rate; ``learning_rate=α`` (the chain's,
    which ``scale_by_lr`` then applies) does the same:

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) \alpha_t x_t, \qquad
        c_t = \beta_1 c_{t-1} + (1 - \beta_1) \alpha_t, \qquad u_t = m_t / c_t

    so that :math:`\alpha_t u_t` steps by the α-weighted mean of past x (u = 0 while
    c = 0). For a constant α, :math:`c_t = \alpha(1-\beta_1^t)` and this is the default
    form (up to rounding); under a schedule, steps taken with a larger α weigh more.

    m and v are computed in the promoted dtype of g and their decoded state; the updates
    keep the gradients' dtype. One stage, not the normalisation and a momentum stage
    chained: ``scale_by_moments`` averages g, not x, and the two halves share one step
    count and the ``(count, mu, nu)`` state of the family.

    Args:
      b1: β1, decay of the momentum of x, in [0, 1).
      b2: β2, decay of the second moment, in [0, 1).
      eps: ε, added to the root (>= 0).
      mu_dtype: storage of m: a float dtype, a moment format, or None (the params' dtype).
      nu_dtype: storage of v, likewise.
      eps_root: ε̄, added under the root (>= 0).
      epsilon_hat: add ε and ε̄ to the uncorrected v (pytorch_optimizer's placement).
      learning_rate: α (a number or a schedule, evaluated at this stage's step count
        as ``scale_by_lr`` does) to weight the momentum by; None: unweighted. The
        state then keeps :math:`c_t` (``lr_ema``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``ScaleByLapropState``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.scale_by_laprop()
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> u, state = tx.update({"w": jnp.array([2.0, -3.0])}, state)
      >>> u["w"].round(4)  # the first step is sign(g), up to float32's rounding of β2
      Array([ 1., -1.], dtype=float32)

    References:
      Ziyin, Wang & Ueda, "LaProp: Separating Momentum and Adaptivity in Adam",
      arXiv:2002.04839.
    """
    _check_options(b1, b2, eps, eps_root, epsilon_hat, learning_rate)
    mu_format, nu_format = as_format(mu_dtype, "mu"), as_format(nu_dtype, "nu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_STAGE, "parameter", params)
        return ScaleByLapropState(
            count=jnp.zeros([], jnp.int32),
            mu=init_moment(_STAGE, mu_format, "mu", params),
            nu=init_moment(_STAGE, nu_format, "nu", params),
            lr_ema=None if learning_rate is None else jnp.zeros([], float),
        )

    def update_leaf(path, g, mu_stored, nu_stored, mu_key, nu_key, corrections):
        m, v = mu_format.decode(mu_stored, g), nu_format.decode(nu_stored, g)
        check_same_shape(_STAGE, path, g, m, "gradient")
        check_same_shape(_STAGE, path, g, v, "gradient")
        correction1, correction2, alpha = corrections
        nu = second_moment(g, v, b2)
        x = normalised(g, nu, correction2, eps, eps_root, epsilon_hat)
        if alpha is not None:
            x = jnp.multiply(*promote(alpha.astype(x.dtype), x))
        mu = first_moment(x, m, b1)
        u = jnp.divide(*promote(mu, correction1.astype(mu.dtype)))
        if alpha is not None:  # c = 0 (α = 0 so far): no step
            u = jnp.where(correction1 > 0, u, jnp.zeros_like(u))
        mu_new = mu_format.encode(mu, mu_stored, mu_key)
        return u.astype(g.dtype), mu_new, nu_format.encode(nu, nu_stored, nu_key)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree(_STAGE, updates)
        updates = as_arrays(updates)
        check_float_leaves(_STAGE, "gradient", updates)
        count = increment(state.count)
        alpha, lr_ema = None, None
        if learning_rate is None:
            correction1 = 1 - decay_power(b1, count)
        else:
            alpha = _rate(learning_rate, state.count)
            lr_ema = correction1 = ema(alpha, state.lr_ema, b1)
        corrections = (correction1, 1 - decay_power(b2, count), alpha)
        new_updates, mu, nu = update_moments(
            _STAGE,
            mu_format,
            nu_format,
            updates,
            state.mu,
            state.nu,
            lambda *stored: update_leaf(*stored, corrections=corrections),
        )
        return new_updates, ScaleByLapropState(count=count, mu=mu, nu=nu, lr_ema=lr_ema)

    # optax's OptState (ArrayTree) leaves out None, a valid state leaf (lr_ema without a rate)
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]


def normalised(
    g: jax.Array,
    v: jax.Array,
    correction2: jax.Array,
    eps: float | jax.Array,
    eps_root: float | jax.Array,
    epsilon_hat: bool,
) -> jax.Array:
    r""":math:`g / (\sqrt{v/c_2 + \bar\varepsilon} + \varepsilon)`, or with ``epsilon_hat``
    :math:`g / ((\sqrt{v + \bar\varepsilon} + \varepsilon) / \sqrt{c_2})` (pytorch_optimizer's
    order), in the promoted dtype of g and v; :math:`c_2 = 1 - \beta_2^t`."""
    g, v = promote(g, v)
    c2 = correction2.astype(v.dtype)
    if epsilon_hat:
        root = jnp.add(*promote(jnp.sqrt(jnp.add(*promote(v, eps_root))), eps))
        return jnp.divide(*promote(g, root / jnp.sqrt(c2).astype(root.dtype)))
    root = jnp.sqrt(jnp.add(*promote(v / c2, eps_root)))
    return jnp.divide(*promote(g, jnp.add(*promote(root, eps))))


def _rate(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """α_t at the step count (a schedule's value, or the constant), a scalar of the default
    float dtype (float32; float64 under x64, as the reference's Python floats)."""
    return jnp.asarray(rate_at(learning_rate, count)).astype(float)


def _check_options(b1, b2, eps, eps_root, epsilon_hat, learning_rate) -> None:
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    check_flag("epsilon_hat", epsilon_hat)
    if learning_rate is not None:
        check_scalar_or_schedule("learning_rate", learning_rate)
