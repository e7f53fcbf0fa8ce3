"""``scale_by_adopt``: ADOPT's step, g normalised by the previous √v, clipped, then averaged."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import increment
from .._types import PyTree, as_arrays, promote, promoted_dtype
from .._validation import (
    check_beta,
    check_callable,
    check_flag,
    check_float_leaves,
    check_non_negative,
    check_same_shape,
    require_update_tree,
)
from ..formats import MomentFormat
from ..formats.base import as_format, init_moment, update_moments
from .moments import first_moment, second_moment

_STAGE = "scale_by_adopt"


class ScaleByAdoptState(NamedTuple):
    """State of ``scale_by_adopt`` (the fields of optax's ``ScaleByAdamState``)."""

    # shape=(), int32: steps taken, saturating at 2**31 - 1
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mu: PyTree  # first moment m of the normalised gradient, in its state format
    nu: PyTree  # second moment v of the gradient, in its state format


def quarter_power(count: jax.Array) -> jax.Array:
    r"""ADOPT's clipping bound :math:`c_t = t^{1/4}` at optax's step index t = ``count``.

    Computed as ``optax.contrib.scale_by_adopt``'s default ``lambda x: x**0.25`` does
    (the int32 count raised in the default float dtype), with the cast written out.
    """
    return jnp.power(count.astype(promoted_dtype(count, 0.25)), 0.25)


def scale_by_adopt(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.9999,
    eps: float | jax.Array = 1e-6,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.typing.ArrayLike] = quarter_power,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT: normalise the gradient by the *previous* second moment, then average it.

    At step t = ``count`` (0-based), with :math:`v_{-1} = 0`:

    .. math::
        v_t &= \beta_2' v_{t-1} + (1 - \beta_2') g_t^2, \qquad
            \beta_2' = \beta_2 \ (t > 0), \ 0 \ (t = 0) \\
        x_t &= \mathrm{clip}\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \varepsilon)},
            -c_t, c_t\right), \qquad c_t = t^{1/4} \\
        m_t &= \beta_1' m_{t-1} + (1 - \beta_1') x_t, \qquad
            \beta_1' = \beta_1 \ (t > 0), \ 1 \ (t = 0) \\
        u_t &= m_t \quad\text{(or } \beta_1' m_t + (1 - \beta_1') x_t
            \text{ with nesterov)}

    The first step only records :math:`v_0 = g_0^2` and returns :math:`u_0 = 0`: there
    is no previous v to normalise by. Since :math:`g_t` and :math:`v_{t-1}` are
    independent, the normalised step is unbiased without a bias correction, for any β2.
    ``use_clipping=False`` drops the clip (:math:`c_t = \infty`).

    Bit-identical to ``optax.contrib.scale_by_adopt`` (tests/aliases/test_parity_adopt.py),
    including its first step: β' are the float32 arrays ``jnp.where(count > 0, β, ·)``,
    so :math:`1 - \beta_1'` rounds in float32 (0.100000024 for β1 = 0.9), not from the
    Python float. The clip bound is cast to x's dtype (optax's default bound is weakly
    typed and does the same). Updates keep the gradients' dtype, as every adamx stage's:
    where optax's are wider (bfloat16 gradients with ``mu_dtype=jnp.float32``) they are
    rounded to the gradients' dtype, as ``adamx.adam`` does.

    One stage for both ideas (the normalisation and the momentum): its state is optax's
    ``(count, mu, nu)``, and both halves switch on the same step (β1' = 1 and β2' = 0 at
    t = 0), so split into two stages each would need its own step count.

    Args:
      b1: β1, decay of the momentum of x, in [0, 1).
      b2: β2, decay of the second moment, in [0, 1).
      eps: ε, the floor of :math:`\sqrt{v_{t-1}}` (>= 0).
      mu_dtype: storage of m: a float dtype, a moment format, or None (the params' dtype).
      nu_dtype: storage of v, likewise (optax has no such option: None is optax's).
      nesterov: return :math:`\beta_1' m_t + (1-\beta_1') x_t` instead of :math:`m_t`.
      use_clipping: clip x to :math:`[-c_t, c_t]`.
      clip_value_fn: :math:`t \mapsto c_t` (t the 0-based int32 count); default
        :math:`t^{1/4}`, optax's. ``pytorch_optimizer.ADOPT`` and the authors' code clip
        at :math:`(t+1)^{1/4}` (their 1-based step): pass ``lambda t: (t + 1) ** 0.25``
        (under strict promotion: ``adamx.stages.adopt.quarter_power(t + 1)``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``ScaleByAdoptState``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.scale_by_adopt()
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> u, state = tx.update({"w": jnp.ones(2)}, state)  # first step: v_0 = g², u = 0
      >>> u["w"], state.nu["w"]
      (Array([0., 0.], dtype=float32), Array([1., 1.], dtype=float32))

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
      Rate", NeurIPS 2024, arXiv:2411.02853 (Algorithm 2, the clipped form).
    """
    _check_options(b1, b2, eps, nesterov, use_clipping, clip_value_fn)
    mu_format, nu_format = as_format(mu_dtype, "mu"), as_format(nu_dtype, "nu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_STAGE, "parameter", params)
        return ScaleByAdoptState(
            count=jnp.zeros([], jnp.int32),
            mu=init_moment(_STAGE, mu_format, "mu", params),
            nu=init_moment(_STAGE, nu_format, "nu", params),
        )

    def update_leaf(path, g, mu_stored, nu_stored, mu_key, nu_key, step):
        m, v_prev = mu_format.decode(mu_stored, g), nu_format.decode(nu_stored, g)
        check_same_shape(_STAGE, path, g, m, "gradient")
        check_same_shape(_STAGE, path, g, v_prev, "gradient")
        beta1, beta2, clip = step
        nu = second_moment(g, v_prev, beta2)
        x = normalised(g, v_prev, eps, clip)
        mu = first_moment(x, m, beta1)
        u = first_moment(x, mu, beta1) if nesterov else mu
        mu_new = mu_format.encode(mu, mu_stored, mu_key)
        return u.astype(g.dtype), mu_new, nu_format.encode(nu, nu_stored, nu_key)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree(_STAGE, updates)
        updates = as_arrays(updates)
        check_float_leaves(_STAGE, "gradient", updates)
        first = state.count > 0
        clip = clip_value_fn(state.count) if use_clipping else None
        step = (jnp.where(first, b1, 1), jnp.where(first, b2, 0), clip)
        new_updates, mu, nu = update_moments(
            _STAGE,
            mu_format,
            nu_format,
            updates,
            state.mu,
            state.nu,
            lambda *stored: update_leaf(*stored, step=step),
        )
        count = increment(state.count)
        return new_updates, ScaleByAdoptState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normalised(
    g: jax.Array, v_prev: jax.Array, eps: float | jax.Array, clip: jax.typing.ArrayLike | None
) -> jax.Array:
    r""":math:`\mathrm{clip}(g / \max(\sqrt{v_{t-1}}, \varepsilon), -c, c)` (no clip for None),
    in the promoted dtype of g and v, as optax forms it."""
    floor = jnp.maximum(*promote(jnp.sqrt(v_prev), eps))
    x = jnp.divide(*promote(g, floor))
    if clip is None:
        return x
    bound = jnp.asarray(clip).astype(x.dtype)
    return jnp.clip(x, -bound, bound)


def _check_options(b1, b2, eps, nesterov, use_clipping, clip_value_fn) -> None:
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_non_negative("eps", eps)
    check_flag("nesterov", nesterov)
    check_flag("use_clipping", use_clipping)
    check_callable(
        "clip_value_fn",
        clip_value_fn,
        "a function of the int32 step count t",
        "Under optax.inject_hyperparams, pass static_args=('clip_value_fn',): it takes a "
        "callable for a schedule and passes its value.",
    )
