"""``bias_correct``: undo the zero initialisation of the moving averages."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import like
from .._types import InfNormMoments, Moments, map_moments
from .._validation import check_beta, check_non_negative, require_moment_tree


class BiasCorrectState(NamedTuple):
    """State of ``bias_correct``."""

    count: jax.Array  # shape=(), int32: steps taken, saturating at 2**31 - 1


class MomentumScheduleState(NamedTuple):
    """State of ``bias_correct(nesterov=True, momentum_decay=ψ)`` (PyTorch's NAdam)."""

    count: jax.Array  # shape=(), int32: steps taken, saturating at 2**31 - 1
    mu_product: jax.Array  # shape=(), default float dtype (as torch): Π_{i<=t} μ_i


def _momentum(b1: Any, psi: Any, t: jax.Array) -> jax.Array:
    """PyTorch NAdam's momentum schedule μ_t = β1·(1 - ½·0.96^(t·ψ)); ``t`` in the default float.

    ``t`` is a float so that ``t + 1`` cannot wrap at the saturated int32 step count.
    """
    return b1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def _check_flags(nesterov: Any, momentum_decay: Any, correct_mu: Any, correct_nu: Any) -> None:
    for name, flag in (
        ("nesterov", nesterov),
        ("correct_mu", correct_mu),
        ("correct_nu", correct_nu),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}.")
    if momentum_decay is not None:
        check_non_negative("momentum_decay", momentum_decay)
        if not nesterov:
            raise ValueError(
                "momentum_decay (PyTorch NAdam's ψ) schedules Nesterov momentum: it needs "
                "nesterov=True."
            )
    if nesterov and not correct_mu:
        raise ValueError(
            "nesterov=True corrects the first moment by construction; it cannot be combined "
            "with correct_mu=False."
        )


def bias_correct(
    b1: Any = 0.9,
    b2: Any = 0.999,
    *,
    nesterov: bool = False,
    momentum_decay: Any = None,
    correct_mu: bool = True,
    correct_nu: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Divide the moments by :math:`1 - \beta^t`, so early steps are not too small.

    .. math::
        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}

    With ``nesterov=True`` the first moment looks one step ahead (Dozat 2016, as
    in ``optax.nadam``):

    .. math::
        \hat m_t = \beta_1 \frac{m_t}{1 - \beta_1^{t+1}} + (1 - \beta_1) \frac{g_t}{1 - \beta_1^t}

    With ``momentum_decay=ψ`` as well, the momentum follows PyTorch NAdam's
    schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi})` (m_t itself
    still averages with β1):

    .. math::
        \hat m_t = \frac{\mu_{t+1} m_t}{1 - \prod_{i\le t+1}\mu_i}
                 + \frac{(1 - \mu_t) g_t}{1 - \prod_{i\le t}\mu_i}

    An infinity-norm second moment (``InfNormMoments``, AdaMax) is a running
    maximum, not an average started at zero: it is never corrected.

    Takes and returns the moment tree (place it between ``scale_by_moments`` and
    ``scale_by_rsqrt``). Keeps its own step count ``t`` (int32, saturating).

    Args:
      b1: the first-moment decay used by ``scale_by_moments``.
      b2: the second-moment decay used by ``scale_by_moments``.
      nesterov: use Nesterov momentum for the first moment.
      momentum_decay: ψ of PyTorch's NAdam (its default is 4e-3); needs
        ``nesterov=True``. None: the constant momentum β1 (optax).
      correct_mu: correct m (False: the original AMSGrad paper, ``optax.amsgrad``'s
        ``bias_correction_mu=False``).
      correct_nu: correct v (``optax.amsgrad``'s ``bias_correction_nu``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``BiasCorrectState``
      (``MomentumScheduleState`` with ``momentum_decay``).

    Raises:
      ValueError: ``momentum_decay`` without ``nesterov=True``; ``nesterov=True``
        with ``correct_mu=False``.

    Example:
      >>> import adamx, optax
      >>> torch_nadam = optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.999),
      ...     adamx.bias_correct(0.9, 0.999, nesterov=True, momentum_decay=4e-3),
      ...     adamx.scale_by_rsqrt(1e-8),
      ...     adamx.scale_by_lr(2e-3))

    References:
      Kingma & Ba, arXiv:1412.6980, section 3; Dozat, "Incorporating Nesterov
      Momentum into Adam", ICLR 2016 workshop.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    _check_flags(nesterov, momentum_decay, correct_mu, correct_nu)
    scheduled = momentum_decay is not None

    def init_fn(params):
        del params
        count = jnp.zeros([], jnp.int32)
        if scheduled:
            return MomentumScheduleState(count=count, mu_product=jnp.ones([], float))
        return BiasCorrectState(count=count)

    def first_moment(t, state):
        """(coefficient of m_t, coefficient of g_t or None, new state) for the first moment."""
        if scheduled:
            t_float = t.astype(float)
            mu_t = _momentum(b1, momentum_decay, t_float)
            mu_next = _momentum(b1, momentum_decay, t_float + 1)
            product = state.mu_product * mu_t
            c_m = mu_next / (1.0 - product * mu_next)
            c_g = (1.0 - mu_t) / (1.0 - product)
            return c_m, c_g, MomentumScheduleState(count=t, mu_product=product)
        return None, None, BiasCorrectState(count=t)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree("bias_correct", updates)
        t = optax.safe_increment(state.count)
        c_m, c_g, new_state = first_moment(t, state)
        mu, nu, grad = (
            map_moments(lambda m, f=f: getattr(m, f), updates) for f in ("mu", "nu", "grad")
        )
        # Whole trees go through optax.tree.bias_correction in optax's order. XLA:CPU may fuse
        # 1 - b^t into each leaf's loop, where its rounding depends on the fusion, so matching
        # optax bit for bit needs the same graph, not only the same maths.
        if c_m is not None:
            mu_hat = jax.tree.map(lambda m, g: like(c_m, m) * m + like(c_g, g) * g, mu, grad)
        elif nesterov:  # m̂ = b1·m/(1 - b1^(t+1)) + (1 - b1)·g/(1 - b1^t)
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                optax.tree.bias_correction(mu, b1, optax.safe_increment(t)),
                optax.tree.bias_correction(grad, b1, t),
            )
        else:  # m̂ = m/(1 - b1^t)
            mu_hat = optax.tree.bias_correction(mu, b1, t) if correct_mu else mu
        nu_hat = optax.tree.bias_correction(nu, b2, t) if correct_nu else nu  # v̂ = v/(1 - b2^t)

        def rebuild(m: Moments, mu_hat, nu_hat) -> Moments:
            # An infinity-norm second moment is a running max, never corrected.
            return m._replace(mu=mu_hat, nu=m.nu if isinstance(m, InfNormMoments) else nu_hat)

        return map_moments(rebuild, updates, mu_hat, nu_hat), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
