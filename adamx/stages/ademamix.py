"""AdEMAMix's slow EMA (``add_slow_ema``, a moment-segment stage) and simplified AdEMAMix
(``scale_by_simplified_ademamix``, a stage of its own)."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import increment, rate_at
from .._types import PyTree, as_arrays, is_moments, map_moments, promote, promoted_dtype
from .._validation import (
    _keystr,
    check_beta,
    check_beta_or_schedule,
    check_float_leaves,
    check_non_negative,
    check_non_negative_or_schedule,
    require_moment_tree,
    require_update_tree,
)
from ..formats import MomentFormat
from ..formats.base import as_format, init_moment, read_moment, write_moment
from .bias_correction import bias_correction
from .moments import SKIPPED_STEPS, catch_up, first_moment

_SLOW = "add_slow_ema"
_SIMPLE = "scale_by_simplified_ademamix"
# m2 is bound like m (role "mu": signed codes, errors name mu_dtype) but rounds with its own
# random stream: scale_by_moments folds 0, 1, 2 (protocol.ROLES) into its keys.
_SLOW_EMA_STREAM = 3


class SlowEmaState(NamedTuple):
    """State of ``add_slow_ema``."""

    # shape=(), int32: steps taken (the schedules' step), saturating
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    m2: PyTree  # the slow EMA m2, in its state format (default: the params' dtype)


def add_slow_ema(
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Mix a slow EMA of the gradient into the first moment (AdEMAMix).

    .. math::
        m^{(2)}_t = \beta_{3,t} m^{(2)}_{t-1} + (1 - \beta_{3,t}) g_t, \qquad
        \hat m_t \leftarrow \hat m_t + \alpha_t m^{(2)}_t

    :math:`m^{(2)}` is not bias-corrected (the paper, ``optax.contrib.ademamix``): the slow
    momentum fills in over ~1/(1-β3) steps. A moment-segment stage: place it after
    ``bias_correct`` and before ``scale_by_rsqrt``; it rewrites ``mu`` only, so an
    infinity-norm record (AdaMax) passes through as such (AdEMAMix over AdaMax's u_t).
    ``b3`` and ``alpha`` may be schedules, read at the step count before this step
    (step 0 first, as optax's ``count_m2``). Under ``adamx.sparse_rows(...,
    semantics="catch_up")`` a row skipped k steps first decays by the current
    :math:`\beta_3^k`.

    Args:
      b3: β3, decay of the slow EMA in [0, 1), or a schedule ``step -> β3_t``.
      alpha: α >= 0, weight of the slow EMA, or a schedule ``step -> α_t``.
      mu_dtype: storage of m2: a float dtype, a moment format, or None for the
        parameters' dtype (as ``scale_by_moments``' ``mu_dtype``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``SlowEmaState``.

    Raises:
      TypeError: at trace time, given plain gradients instead of the moment tree.

    Example:
      >>> import adamx, optax
      >>> ademamix = optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.999), adamx.bias_correct(0.9, 0.999),
      ...     adamx.add_slow_ema(b3=0.9999, alpha=5.0), adamx.scale_by_rsqrt(1e-8),
      ...     adamx.scale_by_lr(1e-3))

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
      arXiv:2409.03137, algorithm 1.
    """
    check_beta_or_schedule("b3", b3)
    check_non_negative_or_schedule("alpha", alpha)
    fmt = as_format(mu_dtype, "mu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_SLOW, "parameter", params)
        m2 = _own_stream(fmt, init_moment(_SLOW, fmt, "mu", params))
        return SlowEmaState(count=jnp.zeros([], jnp.int32), m2=m2)

    def update_fn(updates, state, params=None, **extra_args):
        del params
        require_moment_tree(_SLOW, updates)
        skipped = extra_args.get(SKIPPED_STEPS) or {}
        b3_t, alpha_t = rate_at(b3, state.count), rate_at(alpha, state.count)
        paths_and_records, treedef = jax.tree_util.tree_flatten_with_path(
            updates, is_leaf=is_moments
        )
        grads = map_moments(lambda m: m.grad, updates)
        stored, keys, next_key = read_moment(_SLOW, fmt, "mu", grads, state.m2)
        rows = []
        for (path, m), s, k in zip(paths_and_records, stored, keys, strict=True):
            old = fmt.decode(s, m.grad)
            if (rows_skipped := skipped.get(_keystr(path))) is not None:
                old = catch_up(old, rows_skipped, b3_t)
            m2 = first_moment(m.grad, old, b3_t)  # (1 - β3)·g + β3·m2, as optax
            mu = jnp.add(*promote(m.mu, jnp.multiply(*promote(alpha_t, m2))))
            rows.append((m._replace(mu=mu), fmt.encode(m2, s, k)))
        m2 = write_moment(fmt, treedef, [r[1] for r in rows], next_key, state.m2)
        new_state = SlowEmaState(count=increment(state.count), m2=m2)
        return treedef.unflatten([r[0] for r in rows]), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleBySimplifiedAdemamixState(NamedTuple):
    """State of ``scale_by_simplified_ademamix``."""

    # shape=(), int32: steps taken, saturating
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mu: PyTree  # the accumulated momentum m (no 1 - β1 factor), in its state format
    nu: PyTree  # the second moment v, in its state format


def scale_by_simplified_ademamix(
    b1: optax.ScalarOrSchedule = 0.99,
    b2: float | jax.Array = 0.95,
    alpha: optax.ScalarOrSchedule = 0.0,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Simplified AdEMAMix: one momentum that sums (not averages) the gradients.

    .. math::
        m_t = \beta_{1,t} m_{t-1} + g_t, \qquad
        v_t = |g_t|^2 + \beta_2 (v_{t-1} - |g_t|^2), \qquad
        u_t = \frac{m_t + \alpha_t g_t}{\sqrt{v_t / (1 - \beta_2^t) + \bar\varepsilon}
              + \varepsilon}

    (:math:`v_t` is Adam's :math:`(1-\beta_2)|g_t|^2 + \beta_2 v_{t-1}`, written as optax's
    ``lerp`` for its bits). :math:`m_t` is not bias-corrected and not scaled by
    :math:`1-\beta_1`: β1 = 0.99 makes it ~100 gradients long, so the learning rate is
    ~100x smaller than Adam's. Equal, bit for bit, to
    ``optax.contrib.scale_by_simplified_ademamix`` (which stores m and v in the params'
    dtype). ``b1`` and ``alpha`` may be schedules (step 0 first): a β1 warm-up as in the
    authors' code. Takes gradients, returns updates in the gradients' dtype.

    Args:
      b1: β1 in [0, 1), or a schedule ``step -> β1_t``.
      b2: β2 in [0, 1), decay of the second moment.
      alpha: α >= 0, weight of the current gradient, or a schedule.
      eps: ε, added to the root.
      eps_root: ε̄, added under the root.
      mu_dtype: storage of m: a float dtype, a moment format, or None (the params' dtype).
      nu_dtype: storage of v, likewise.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``ScaleBySimplifiedAdemamixState``.

    Example:
      >>> import adamx, jax.numpy as jnp, optax
      >>> tx = optax.chain(
      ...     adamx.scale_by_simplified_ademamix(b1=0.99, b2=0.95, alpha=2.0),
      ...     adamx.scale_by_lr(1e-4),
      ... )
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.1])}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"]  # step 1: m = g, v̂ = g², so -α_lr·(1 + α)·sign(g)
      Array([-0.0003,  0.0003], dtype=float32)

    References:
      Morwani, Vyas, Ye, Kakade et al., "Connections between Schedule-Free Optimizers,
      AdEMAMix, and Accelerated SGD Variants", arXiv:2502.02431.
    """
    check_beta_or_schedule("b1", b1)
    check_beta("b2", b2)
    check_non_negative_or_schedule("alpha", alpha)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    mu_format, nu_format = as_format(mu_dtype, "mu"), as_format(nu_dtype, "nu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_SIMPLE, "parameter", params)
        return ScaleBySimplifiedAdemamixState(
            count=jnp.zeros([], jnp.int32),
            mu=init_moment(_SIMPLE, mu_format, "mu", params),
            nu=init_moment(_SIMPLE, nu_format, "nu", params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree(_SIMPLE, updates)
        updates = as_arrays(updates)
        check_float_leaves(_SIMPLE, "gradient", updates)
        b1_t, alpha_t = rate_at(b1, state.count), rate_at(alpha, state.count)
        t = increment(state.count)
        grads, treedef = jax.tree.flatten(updates)
        mus, mu_keys, mu_next = read_moment(_SIMPLE, mu_format, "mu", updates, state.mu)
        nus, nu_keys, nu_next = read_moment(_SIMPLE, nu_format, "nu", updates, state.nu)
        ms, vs = [], []
        for g, mu_stored, nu_stored in zip(grads, mus, nus, strict=True):
            ms.append(_sum_moment(g, mu_format.decode(mu_stored, g), b1_t))
            vs.append(_lerp_moment(g, nu_format.decode(nu_stored, g), b2))
        v_hats = bias_correction(vs, b2, t)  # optax's program (one jit, inlined), for its bits
        steps = [_step(*row, alpha_t, eps, eps_root) for row in zip(grads, ms, v_hats, strict=True)]
        mu_rows = map(mu_format.encode, ms, mus, mu_keys)
        nu_rows = map(nu_format.encode, vs, nus, nu_keys)
        return treedef.unflatten(steps), ScaleBySimplifiedAdemamixState(
            count=t,
            mu=write_moment(mu_format, treedef, list(mu_rows), mu_next, state.mu),
            nu=write_moment(nu_format, treedef, list(nu_rows), nu_next, state.nu),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sum_moment(g: jax.Array, m: jax.Array, b1: float | jax.Array) -> jax.Array:
    """m_t = g + β1·m_{t-1} (``optax.tree.add_scale(g, b1, m)``), in the promoted dtype."""
    return jnp.add(*promote(g, jnp.multiply(*promote(b1, m))))


def _lerp_moment(g: jax.Array, v: jax.Array, b2: float | jax.Array) -> jax.Array:
    """v_t = |g|² + β2·(v_{t-1} - |g|²) (optax's ``lerp(b2, g*g, v)``), |g|² in the promoted
    dtype (a float16 g squared in float16 would flush small gradients to 0)."""
    g = g.astype(promoted_dtype(g, v))
    g2 = (g.conj() * g).real if jnp.iscomplexobj(g) else g * g
    return jnp.add(*promote(g2, jnp.multiply(*promote(b2, jnp.subtract(*promote(v, g2))))))


def _step(g, m, v_hat, alpha, eps, eps_root) -> jax.Array:
    """(m + α·g) / (√(v̂ + ε̄) + ε), in the gradient's dtype."""
    numerator = jnp.add(*promote(m, jnp.multiply(*promote(alpha, g))))
    root = jnp.sqrt(jnp.add(*promote(v_hat, eps_root)))
    denominator = jnp.add(*promote(root, eps))
    return jnp.divide(*promote(numerator, denominator)).astype(g.dtype)


def _own_stream(fmt: MomentFormat, m2: PyTree) -> PyTree:
    """m2's state with a rounding key of its own (a stochastic format), not m's."""
    if not fmt.stochastic:
        return m2
    key = jax.random.fold_in(jax.random.key(fmt.seed), _SLOW_EMA_STREAM)
    return dataclasses.replace(m2, key=jax.random.key_data(key))


# Belong in _validation.py (check_beta / check_non_negative that accept a schedule).
