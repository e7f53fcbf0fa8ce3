"""``scale_by_moments``: the exponential moving averages of g and |g|² (or AdaMax's max |g|)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import decay_power, ema
from .._types import InfNormMoments, Moments, PyTree, as_arrays, promote, promoted_dtype
from .._validation import (
    _keystr,
    check_beta,
    check_flag,
    check_float_leaves,
    check_non_negative,
    check_same_shape,
    is_zero,
    require_update_tree,
)
from ..formats import MomentFormat
from ..formats.base import as_format, init_moment, update_moments
from ._deprecation import renamed_keyword

_STAGE = "scale_by_moments"
SKIPPED_STEPS = "skipped_steps"
"""The extra argument (``update(..., skipped_steps=...)``) that asks for a lazy catch-up:
``{jax.tree_util.keystr(path): int32 (rows,)}``, for a leaf that holds some rows of a table
(``adamx.sparse_rows(..., semantics="catch_up")``), the number of steps since each row was
last updated. Leaves not named are updated as usual."""


class ScaleByMomentsState(NamedTuple):
    """State of ``scale_by_moments``: the stored moments, one entry per parameter leaf."""

    mu: PyTree  # first moment m, in its state format (default: the params' dtype)
    nu: PyTree  # second moment v (or u), in its state format (default: the params' dtype)


def scale_by_moments(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    mu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
    infinity_norm: bool = False,
    eps: float | jax.Array = 0.0,
    eps_inf: float | jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Track Adam's moving averages of the gradient and its square.

    .. math::
        m_t = (1 - \beta_1) g_t + \beta_1 m_{t-1}, \qquad
        v_t = (1 - \beta_2) |g_t|^2 + \beta_2 v_{t-1}

    With ``infinity_norm=True`` the second moment is AdaMax's exponentially
    weighted infinity norm (Kingma & Ba, section 7.1), handed on as an
    ``InfNormMoments`` record so that later stages take no root and apply no
    bias correction to it:

    .. math::
        u_t = \max(|g_t| + \varepsilon, \beta_2 u_{t-1})

    Opens the moment segment of a chain: each gradient leaf becomes a
    ``Moments(mu=m_t, nu=v_t, grad=g_t)`` record, which ``bias_correct``,
    ``running_max_nu`` and ``scale_by_rsqrt`` consume. The moments handed on are
    computed in the promoted dtype of gradient and state; the state keeps them in
    its format. Python numbers in the tree are taken as JAX arrays (as optax does).
    ``update(..., skipped_steps={path: k})`` first decays the stored moments of a leaf's
    rows by :math:`\beta^{k_r}` (``catch_up``; sent by ``adamx.sparse_rows``' catch-up).

    Args:
      b1: decay of the first moment, in [0, 1). 0 disables momentum.
      b2: decay of the second moment, in [0, 1).
      mu_dtype: storage of m: a float dtype, a moment format, or None for the
        parameters' dtype (as ``optax.adam``'s ``mu_dtype``).
      nu_dtype: storage of v, likewise.
      infinity_norm: track u_t (AdaMax) instead of v_t.
      eps: ε, added to :math:`|g|` inside the max (where ``optax.adamax`` and
        ``torch.optim.Adamax`` put their eps; Keras adds eps after the max,
        which is ``scale_by_rsqrt``'s eps). Needs ``infinity_norm=True``.
      eps_inf: deprecated name of ``eps`` (warns; removed in the next release).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``ScaleByMomentsState``.

    Raises:
      ValueError: ``eps`` without ``infinity_norm=True``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.scale_by_moments(b1=0.9, b2=0.999)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> moments, state = tx.update({"w": jnp.ones(3)}, state)
      >>> moments["w"].mu  # (1 - 0.9) * 1
      Array([0.1, 0.1, 0.1], dtype=float32)

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    """
    eps_name = "eps" if eps_inf is None else "eps_inf"  # errors name the keyword passed
    eps = renamed_keyword(_STAGE, "eps_inf", eps_inf, "eps", eps, 0.0)
    _check_options(b1, b2, infinity_norm, eps, eps_name)
    record = InfNormMoments if infinity_norm else Moments
    mu_format, nu_format = as_format(mu_dtype, "mu"), as_format(nu_dtype, "nu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_STAGE, "parameter", params)
        return ScaleByMomentsState(
            mu=init_moment(_STAGE, mu_format, "mu", params),
            nu=init_moment(_STAGE, nu_format, "nu", params),
        )

    def update_leaf(path, g, mu_stored, nu_stored, mu_key, nu_key, skipped):
        m, v = mu_format.decode(mu_stored, g), nu_format.decode(nu_stored, g)
        check_same_shape(_STAGE, path, g, m, "gradient")
        check_same_shape(_STAGE, path, g, v, "gradient")
        if skipped is not None:
            m, v = catch_up(m, skipped, b1), catch_up(v, skipped, b2)
        mu = first_moment(g, m, b1)
        nu = infinity_moment(g, v, b2, eps) if infinity_norm else second_moment(g, v, b2)
        mu_new = mu_format.encode(mu, mu_stored, mu_key)
        return record(mu, nu, g), mu_new, nu_format.encode(nu, nu_stored, nu_key)

    def update_fn(updates, state, params=None, **extra_args):
        del params
        skipped = extra_args.get(SKIPPED_STEPS) or {}
        require_update_tree(_STAGE, updates)
        updates = as_arrays(updates)
        check_float_leaves(_STAGE, "gradient", updates)

        def leaf(path, *stored):
            return update_leaf(path, *stored, skipped=skipped.get(_keystr(path)))

        moments, mu, nu = update_moments(
            _STAGE, mu_format, nu_format, updates, state.mu, state.nu, leaf
        )
        return moments, ScaleByMomentsState(mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_options(b1, b2, infinity_norm, eps, eps_name) -> None:
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_non_negative(eps_name, eps)
    check_flag("infinity_norm", infinity_norm)
    if not infinity_norm and not is_zero(eps):
        raise ValueError(
            f"{eps_name}={eps!r} is the epsilon of AdaMax's infinity norm and needs "
            "infinity_norm=True. For Adam's eps, use scale_by_rsqrt(eps=...)."
        )


# The moment updates. optax.tree.update_moment, update_moment_per_elem_norm and
# update_infinity_moment compute the same formulas, but mix dtypes by implicit promotion: here
# the state comes back from its format in a dtype of its own (mu_dtype, an 8-bit code decoded to
# float32) and injected hyperparameters are float32 arrays, which strict promotion refuses to mix
# implicitly. So the casts are written out (``promote``, ``ema``): standard promotion's
# arithmetic, optax's bits (tests/aliases/test_parity_optax.py).


def first_moment(g: jax.Array, m: jax.Array, b1: float | jax.Array) -> jax.Array:
    r""":math:`m_t = (1 - \beta_1) g_t + \beta_1 m_{t-1}`, with (1-β1)·g in g's dtype, as optax.

    For bfloat16 g (float32's exponent range) and a float32 m that only rounds,
    and adamx keeps it for bit parity with ``optax.adam(mu_dtype=jnp.float32)``.
    A float16 g would underflow there (0.1·g for |g| < 6e-7), so g is first
    widened to the dtype of the sum when its exponent range is narrower.
    """
    wide = promoted_dtype(g, m)
    narrow = not jnp.iscomplexobj(g) and jnp.finfo(g.dtype).minexp > jnp.finfo(wide).minexp
    return ema(g.astype(wide) if narrow else g, m, b1)


def second_moment(g: jax.Array, v: jax.Array, b2: float | jax.Array) -> jax.Array:
    r""":math:`v_t = (1 - \beta_2) |g_t|^2 + \beta_2 v_{t-1}`, with |g|² in the promoted dtype.

    optax squares g in its own dtype; a float16 g squared in float16 flushes v to
    0 for |g| < 2.4e-4, so g is cast to the dtype of g and v first (the same bits
    as optax where the two agree). |g|² is Re(conj(g)·g) for complex g.
    """
    g = g.astype(promoted_dtype(g, v))
    return ema((g.conj() * g).real if jnp.iscomplexobj(g) else g * g, v, b2)


def catch_up(x: jax.Array, skipped: jax.Array, beta: float | jax.Array) -> jax.Array:
    r""":math:`\beta^{k_r} x_r` for each row r: the decay of k_r steps with a zero gradient.

    A row of a table that ``adamx.sparse_rows(..., semantics="catch_up")`` did not update for
    k steps gets, before this step's update, the decay dense Adam's zero gradients would have
    applied: :math:`m \leftarrow \beta_1^k m`, :math:`v \leftarrow \beta_2^k v`, and for
    AdaMax's :math:`u \leftarrow \beta_2^k u` (its floor ε never binds once the step's
    :math:`|g| + \varepsilon` enters the max). k = 0 leaves x as it is, bit for bit.
    """
    decay = decay_power(beta, skipped.astype(jnp.int32))
    decay = decay.reshape(-1, *(1,) * (x.ndim - 1))
    return jnp.multiply(*promote(x, decay)).astype(x.dtype)


def infinity_moment(
    g: jax.Array, u: jax.Array, b2: float | jax.Array, eps: float | jax.Array
) -> jax.Array:
    r""":math:`u_t = \max(|g_t| + \varepsilon, \beta_2 u_{t-1})`, as
    ``optax.tree.update_infinity_moment`` forms it."""
    grown = jnp.add(*promote(jnp.abs(g), eps))
    decayed = jnp.multiply(*promote(b2, u))
    return jnp.maximum(*promote(grown, decayed))
