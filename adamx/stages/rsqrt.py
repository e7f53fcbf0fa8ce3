"""``scale_by_rsqrt``: the adaptive, per-parameter step m̂ / (sqrt(v̂) + eps)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import decay_power, increment, like
from .._types import InfNormMoments, Moments, map_moments, promote
from .._validation import check_beta, check_flag, check_non_negative, is_zero, require_moment_tree
from ._deprecation import renamed_keyword

_STAGE = "scale_by_rsqrt"


class ScaleByRsqrtState(NamedTuple):
    """State of ``scale_by_rsqrt`` when it needs the step (``epsilon_hat`` or ``threshold``)."""

    # shape=(), int32: steps taken, saturating at 2**31 - 1
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def scale_by_rsqrt(
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    b2: float | jax.Array | None = None,
    epsilon_hat: bool = False,
    threshold: float | jax.Array | None = None,
    rectify_threshold: float | jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the first moment by the inverse root of the second.

    .. math::
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon}

    Each parameter gets its own step size, and multiplying the loss by a
    constant leaves :math:`u_t` unchanged (up to ``eps``). Closes the moment
    segment: takes the moment tree, returns updates with the gradients' dtype.

    An infinity-norm record (AdaMax, ``scale_by_moments(infinity_norm=True)``)
    is used without a root: :math:`u_t = \hat m_t / (u_t + \varepsilon)`.

    ``epsilon_hat=True`` adds ε to the *uncorrected* root, as Keras (and
    Kingma & Ba's "ε̂" form) do:
    :math:`u_t = \hat m_t / (\sqrt{\hat v_t} + \varepsilon / \sqrt{1-\beta_2^t})`.

    ``threshold=τ`` rectifies the variance (RAdam), with
    :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`:

    .. math::
        u_t = \begin{cases} r_t \, \hat m_t / (\sqrt{\hat v_t + \bar\varepsilon}
              + \varepsilon) & \rho_t \ge \tau \\ \hat m_t & \text{otherwise} \end{cases}
        \qquad r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
              {(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    Args:
      eps: added to the root, bounds the step where v̂ is tiny (>= 0).
      eps_root: added under the root; a small positive value keeps the
        derivative of the update finite when differentiating through it (>= 0).
      b2: the second-moment decay of ``scale_by_moments``; needed (only) by
        ``epsilon_hat`` and ``threshold``, which then keep a step count.
      epsilon_hat: add ε to the uncorrected root (Keras, torch's RAdam).
      threshold: τ of RAdam (optax and torch use 5); None: no rectification.
      rectify_threshold: deprecated name of ``threshold`` (warns; removed in the next release).

    Returns:
      An ``optax.GradientTransformationExtraArgs``, stateless unless ``b2`` is given.

    Raises:
      ValueError: ``epsilon_hat``/``threshold`` without ``b2`` (or the
        reverse); at trace time, these options or ``eps_root`` with an
        infinity-norm record.

    Example:
      Adam, written out stage by stage (``adamx.adam`` is this chain):

      >>> import adamx, jax.numpy as jnp, optax
      >>> tx = optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.999),
      ...     adamx.bias_correct(0.9, 0.999),
      ...     adamx.scale_by_rsqrt(eps=1e-8),
      ...     adamx.scale_by_lr(1e-3),
      ... )
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.1])}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"].round(6)  # the first step is -α·g/(|g| + ε) ≈ -α·sign(g)
      Array([-0.001,  0.001], dtype=float32)

    References:
      Kingma & Ba, arXiv:1412.6980, sections 2 and 7.1; Liu et al., "On the
      Variance of the Adaptive Learning Rate and Beyond", arXiv:1908.03265.
    """
    threshold_name = "threshold" if rectify_threshold is None else "rectify_threshold"
    threshold = renamed_keyword(
        _STAGE, "rectify_threshold", rectify_threshold, "threshold", threshold, None
    )
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    _check_options(b2, epsilon_hat, threshold, threshold_name)
    counted = b2 is not None

    def init_fn(params):
        del params
        return ScaleByRsqrtState(count=jnp.zeros([], jnp.int32)) if counted else optax.EmptyState()

    def adaptive(m: Moments, eps_t: float | jax.Array, r: jax.Array | None) -> jax.Array:
        if isinstance(m, InfNormMoments):
            _check_inf_norm(eps_root, epsilon_hat, threshold)
            return jnp.divide(*promote(m.mu, jnp.add(*promote(m.nu, eps))))
        mu = m.mu if r is None else r.astype(m.mu.dtype) * m.mu
        root = jnp.sqrt(jnp.add(*promote(m.nu, eps_root)))
        return jnp.divide(*promote(mu, root + like(eps_t, root)))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree(_STAGE, updates)
        eps_t, rho, r, new_state = eps, None, None, state
        if b2 is not None:  # counted
            t = increment(state.count)
            eps_t = eps / jnp.sqrt(1 - decay_power(b2, t)) if epsilon_hat else eps
            rho, r = (None, None) if threshold is None else rectification(b2, t)
            new_state = ScaleByRsqrtState(t)

        def step(m: Moments) -> jax.Array:
            u = adaptive(m, eps_t, r)
            if rho is not None and threshold is not None:  # below it, plain momentum: u = m̂
                u = jnp.where(rho >= threshold, *promote(u, m.mu))
            return u.astype(m.grad.dtype)

        return map_moments(step, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rectification(b2: float | jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(ρ_t, r_t) of RAdam, as ``optax.scale_by_radam`` computes them (the casts written out)."""
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    b2t = decay_power(b2, t)
    rho = rho_inf - jnp.multiply(*promote(2 * t, b2t)) / (1 - b2t)
    r = jnp.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
    return rho, r


def _check_options(b2, epsilon_hat, threshold, threshold_name) -> None:
    check_flag("epsilon_hat", epsilon_hat)
    if threshold is not None:
        check_non_negative(threshold_name, threshold)
    uses_b2 = epsilon_hat or threshold is not None
    if uses_b2 and b2 is None:
        raise ValueError(
            f"epsilon_hat and {threshold_name} depend on the step through 1 - b2**t: pass "
            "b2 (the second-moment decay given to scale_by_moments), e.g. scale_by_rsqrt("
            "1e-8, b2=0.999, epsilon_hat=True)."
        )
    if b2 is not None:
        check_beta("b2", b2)
        if not uses_b2:
            raise ValueError(
                "scale_by_rsqrt uses b2 only for epsilon_hat=True or threshold=...; "
                "pass one of them, or drop b2."
            )


def _check_inf_norm(eps_root, epsilon_hat, threshold) -> None:
    if epsilon_hat or threshold is not None:
        raise ValueError(
            "scale_by_rsqrt: epsilon_hat and threshold assume a mean-square second "
            "moment, but scale_by_moments(infinity_norm=True) tracks an infinity norm (AdaMax). "
            "Drop these options, or use the default second moment."
        )
    if not is_zero(eps_root):
        raise ValueError(
            f"scale_by_rsqrt: eps_root={eps_root!r} goes under a root, but an infinity-norm "
            "second moment (AdaMax) is used without one. Use eps (or scale_by_moments' eps)."
        )
