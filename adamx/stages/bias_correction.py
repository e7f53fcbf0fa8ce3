"""``bias_correct``: undo the zero initialisation of the moving averages."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import decay_power, increment, like
from .._types import InfNormMoments, Moments, PyTree, map_moments, promote
from .._validation import check_beta, check_flag, check_non_negative, require_moment_tree
from ._deprecation import renamed_keyword

_STAGE = "bias_correct"


class BiasCorrectState(NamedTuple):
    """State of ``bias_correct``."""

    # shape=(), int32: steps taken, saturating at 2**31 - 1
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


class MomentumScheduleState(NamedTuple):
    """State of ``bias_correct(nesterov=True, momentum_decay=ψ)`` (PyTorch's NAdam)."""

    # shape=(), int32: steps taken, saturating at 2**31 - 1
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mu_product: jax.Array  # shape=(), default float dtype (as torch): Π_{i<=t} μ_i


def bias_correct(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    *,
    nesterov: bool = False,
    momentum_decay: float | jax.Array | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    correct_mu: bool | None = None,
    correct_nu: bool | None = None,
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
      bias_correction_mu: correct m (False: the original AMSGrad paper; the name of
        ``optax.amsgrad`` and ``adamx.amsgrad``).
      bias_correction_nu: correct v.
      correct_mu, correct_nu: deprecated names of ``bias_correction_mu`` and
        ``bias_correction_nu`` (they warn, for one release).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``BiasCorrectState``
      (``MomentumScheduleState`` with ``momentum_decay``).

    Raises:
      ValueError: ``momentum_decay`` without ``nesterov=True``; ``nesterov=True``
        with ``bias_correction_mu=False``.

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
    correct_mu = renamed_keyword(
        _STAGE, "correct_mu", correct_mu, "bias_correction_mu", bias_correction_mu, True
    )
    correct_nu = renamed_keyword(
        _STAGE, "correct_nu", correct_nu, "bias_correction_nu", bias_correction_nu, True
    )
    _check_options(b1, b2, nesterov, momentum_decay, correct_mu, correct_nu)
    scheduled = momentum_decay is not None

    def init_fn(params):
        del params
        count = jnp.zeros([], jnp.int32)
        if scheduled:
            return MomentumScheduleState(count=count, mu_product=jnp.ones([], float))
        return BiasCorrectState(count=count)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree("bias_correct", updates)
        t = increment(state.count)
        mu, nu, grad = (
            map_moments(lambda m, f=f: getattr(m, f), updates) for f in ("mu", "nu", "grad")
        )
        if scheduled:
            mu_hat, new_state = _scheduled_nesterov(b1, momentum_decay, mu, grad, t, state)
        else:
            mu_hat = _first_moment(b1, nesterov, correct_mu, mu, grad, t)
            new_state = BiasCorrectState(count=t)
        nu_hat = bias_correction(nu, b2, t) if correct_nu else nu  # v̂ = v/(1 - b2^t)

        def rebuild(m: Moments, mu_hat, nu_hat) -> Moments:
            # An infinity-norm second moment is a running max, never corrected.
            return m._replace(mu=mu_hat, nu=m.nu if isinstance(m, InfNormMoments) else nu_hat)

        return map_moments(rebuild, updates, mu_hat, nu_hat), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.partial(jax.jit, inline=True)
def bias_correction(tree: PyTree, decay: float | jax.Array, count: jax.Array) -> PyTree:
    r""":math:`x / (1 - \beta^t)` for each leaf, as ``optax.tree.bias_correction`` computes it.

    The same program as optax's (one scalar :math:`1 - \beta^t`, cast to each
    leaf's dtype, then a division, jitted and inlined): XLA:CPU may fuse the scalar
    into each leaf's loop, where its rounding depends on the fusion, so bit parity
    needs the same program, also when run eagerly, not only the same maths. Written
    out because optax forms ``decay ** count`` with a float and an int32, which
    strict promotion refuses (``decay_power``).
    """
    correction = 1 - decay_power(decay, count)
    return jax.tree.map(lambda x: x / correction.astype(x.dtype), tree)


def _first_moment(b1, nesterov, correct_mu, mu, grad, t) -> PyTree:
    """m̂ of Adam (m/(1 - b1^t)) or of Nesterov (b1·m/(1 - b1^(t+1)) + (1 - b1)·g/(1 - b1^t))."""
    if nesterov:
        return jax.tree.map(
            lambda m_hat, g_hat: _sum(_times(b1, m_hat), _times(1 - b1, g_hat)),
            bias_correction(mu, b1, increment(t)),
            bias_correction(grad, b1, t),
        )
    return bias_correction(mu, b1, t) if correct_mu else mu


def _times(c: float | jax.Array, x: jax.Array) -> jax.Array:
    """c·x in their promoted dtype (an injected float32 β times a bfloat16 leaf: float32)."""
    return jnp.multiply(*promote(c, x))


def _sum(x: jax.Array, y: jax.Array) -> jax.Array:
    """x + y in their promoted dtype, in this order: XLA may fuse a·b + c·d into a fused
    multiply-add, so swapping the terms can change the last bit (optax's order kept)."""
    return jnp.add(*promote(x, y))


def _momentum(b1: float | jax.Array, psi: float | jax.Array, t: jax.Array) -> jax.Array:
    """PyTorch NAdam's momentum schedule μ_t = β1·(1 - ½·0.96^(t·ψ)); ``t`` in the default float.

    ``t`` is a float so that ``t + 1`` cannot wrap at the saturated int32 step count.
    """
    return b1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def _scheduled_nesterov(b1, psi, mu, grad, t, state) -> tuple[PyTree, MomentumScheduleState]:
    """m̂ = μ_{t+1}·m/(1 - Π_{i<=t+1} μ_i) + (1 - μ_t)·g/(1 - Π_{i<=t} μ_i) (PyTorch's NAdam)."""
    t_float = t.astype(float)
    mu_t, mu_next = _momentum(b1, psi, t_float), _momentum(b1, psi, t_float + 1)
    product = state.mu_product * mu_t
    c_m = mu_next / (1.0 - product * mu_next)
    c_g = (1.0 - mu_t) / (1.0 - product)
    mu_hat = jax.tree.map(lambda m, g: _sum(like(c_m, m) * m, like(c_g, g) * g), mu, grad)
    return mu_hat, MomentumScheduleState(count=t, mu_product=product)


def _check_options(b1, b2, nesterov, momentum_decay, correct_mu, correct_nu) -> None:
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_flag("nesterov", nesterov)
    check_flag("bias_correction_mu", correct_mu)
    check_flag("bias_correction_nu", correct_nu)
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
            "with bias_correction_mu=False."
        )
