"""Adafactor (Shazeer & Stern 2018) as a chain of stages; ``optax.adafactor``'s signature and
bits."""

import jax
import jax.numpy as jnp
import optax

from .._rates import ema, increment
from .._types import Mask, promote
from .._validation import (
    check_beta,
    check_flag,
    check_float_dtype,
    check_integer,
    check_non_negative,
    check_positive_number,
    check_scalar_or_schedule,
    require_params,
    require_update_tree,
)
from ..stages.block_rms import clip_by_block_rms, scale_by_param_block_rms
from ..stages.factored_rms import scale_by_factored_rms
from ._parts import chain


def adafactor(
    learning_rate: optax.ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float | jax.Array = 0.8,
    decay_offset: int | jax.Array = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | jax.Array | None = 1.0,
    momentum: float | jax.Array | None = None,
    dtype_momentum: jax.typing.DTypeLike = jnp.float32,
    weight_decay_rate: optax.ScalarOrSchedule | None = None,
    eps: float | jax.Array = 1e-30,
    factored: bool = True,
    weight_decay_mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adafactor (Shazeer & Stern 2018), bit-identical to ``optax.adafactor``.

    Each step, on the gradient :math:`g_t` of each leaf (:math:`t` from 0):

    1. factored RMS (``scale_by_factored_rms``): with
       :math:`\hat\beta_t = 1 - (t + 1 - t_0)^{-c}` (``decay_rate`` c, ``decay_offset``
       :math:`t_0`) and :math:`Y = g_t^2 + \varepsilon_1`, a matrix (its two largest
       axes both >= ``min_dim_size_to_factor``) keeps row and column means
       :math:`r_t = \hat\beta_t r_{t-1} + (1-\hat\beta_t)\operatorname{mean}_j Y`,
       :math:`c_t = \hat\beta_t c_{t-1} + (1-\hat\beta_t)\operatorname{mean}_i Y`, and
       :math:`u = g_t / \sqrt{\hat V_t}` with :math:`\hat V_t = r_t c_t^\top /
       \operatorname{mean}(r_t)`; other leaves keep the full
       :math:`v_t = \hat\beta_t v_{t-1} + (1-\hat\beta_t) Y` and :math:`u = g_t/\sqrt{v_t}`;
    2. update clipping (``clipping_threshold`` d): :math:`u \leftarrow u / \max(1,
       \operatorname{RMS}(u) / d)`, per leaf;
    3. learning rate: :math:`u \leftarrow \rho_t u` (if ``learning_rate`` is given);
    4. relative step (``multiply_by_parameter_scale``):
       :math:`u \leftarrow u \cdot \max(10^{-3}, \operatorname{RMS}(\theta_{t-1}))`, per leaf;
    5. momentum :math:`\beta_1` (if ``momentum`` is given): :math:`m_t = \beta_1 m_{t-1}
       + (1 - \beta_1) u`, stored in ``dtype_momentum``, no bias correction; :math:`u = m_t`;
    6. decayed weights (if ``weight_decay_rate`` :math:`\lambda` is given):
       :math:`u \leftarrow u + \lambda_t \theta_{t-1}` on the leaves ``weight_decay_mask``
       selects;
    7. :math:`\Delta\theta_t = -u`.

    (Without ``learning_rate`` the step size is the relative step of 4 alone, Adafactor's
    own, since the RMS of u is at most d.) The same operations in the same order as optax,
    and the same dtypes: with bfloat16 parameters and float32 momentum (the default
    ``dtype_momentum``), or a scheduled decay, the update is float32, as optax's, so
    ``optax.apply_updates`` rounds :math:`\theta + \Delta\theta` once. The state is optax's
    but for step 1's: ``adamx.FactoredRmsState(count, nu)``, ``nu`` an
    ``adamx.FactoredMoment`` (``factored=False``: a float tree), the same arrays without
    optax's (1,)-shaped placeholders.

    Adam with a factored v, ``adamx.adam(lr, nu_dtype=adamx.factored())``, is Adafactor with
    momentum and Adam's bias correction (and a constant :math:`\beta_2`, no clipping).

    Args:
      learning_rate: :math:`\rho_t`, a number or an optax schedule; None: no scaling (the
        relative step alone).
      min_dim_size_to_factor: factor a leaf only if its two largest axes are at least this
        long.
      decay_rate: the exponent c of the decay schedule of v, >= 0.
      decay_offset: :math:`t_0`, for fine-tuning from a restored step count (the count
        must stay >= ``decay_offset``: optax's schedule is undefined before it).
      multiply_by_parameter_scale: scale by :math:`\max(10^{-3}, \operatorname{RMS}(\theta))`
        (relative step); False: ``learning_rate`` is the absolute step.
      clipping_threshold: d > 0 (usually >= 1), or None for no clipping.
      momentum: :math:`\beta_1` in [0, 1), or None (no momentum and no memory for it).
      dtype_momentum: the dtype m is stored in.
      weight_decay_rate: :math:`\lambda`, a number or a schedule; None: no decay.
      eps: :math:`\varepsilon_1`, added to :math:`g^2`.
      factored: factor the second moment of the leaves that can be.
      weight_decay_mask: which leaves decay: a pytree of bools or a callable of the params.

    Returns:
      ``chain(scale_by_factored_rms, [clip_by_block_rms], [scale by ρ],
      [scale_by_param_block_rms], [ema], [add_decayed_weights], scale(-1))``, the brackets
      present as their options ask.

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((256, 128)), "b": jnp.zeros(128)}
      >>> tx = adamx.adafactor(learning_rate=1e-2)
      >>> state = tx.init(params)
      >>> state[0].nu.row["w"].shape, state[0].nu.col["w"].shape  # 384 numbers, not 32768
      ((128,), (256,))
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, arXiv:1804.04235.
    """
    _check_options(
        learning_rate, clipping_threshold, momentum, dtype_momentum, weight_decay_rate, eps
    )
    check_integer("decay_offset", decay_offset)
    check_flag("multiply_by_parameter_scale", multiply_by_parameter_scale)
    return chain(
        scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps),
        None if clipping_threshold is None else clip_by_block_rms(clipping_threshold),
        _learning_rate(learning_rate),
        scale_by_param_block_rms() if multiply_by_parameter_scale else None,
        None if momentum is None else _ema_no_debias(momentum, dtype_momentum),
        _decayed_weights(weight_decay_rate, weight_decay_mask),
        optax.scale(-1),
    )


# Three steps are optax's transformations (optax.scale, ema(debias=False), add_decayed_weights)
# with optax's states and operations, but their dtypes meet by explicit casts (``promote``,
# ``ema``): optax's mix a float32 momentum, an array rate or a scheduled decay with bfloat16
# updates by implicit promotion, which strict promotion refuses. Standard promotion's casts,
# so optax's bits. (Clipping and parameter scaling are adamx's stages, ``stages/block_rms``.)


def _leafwise(stage: str, fn, with_params: bool = False) -> optax.GradientTransformationExtraArgs:
    """A stateless stage applying ``fn(u)`` (or ``fn(u, θ)``) to every leaf."""

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_update_tree(stage, updates)
        if not with_params:
            return jax.tree.map(fn, updates), state
        require_params(stage, params)
        return jax.tree.map(fn, updates, params), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def _learning_rate(rate: optax.ScalarOrSchedule | None) -> optax.GradientTransformation | None:
    """u ← ρ_t·u, None for None: optax's ``scale_by_learning_rate(ρ, flip_sign=False)`` for a
    schedule (it casts ρ_t to u's dtype), ``optax.scale(ρ)`` with its cast written out for
    a constant."""
    if rate is None:
        return None
    if callable(rate):
        return optax.scale_by_learning_rate(rate, flip_sign=False)
    return _leafwise("scale", lambda u: jnp.multiply(*promote(rate, u)))


def _ema_no_debias(
    decay: float | jax.Array, dtype: jax.typing.DTypeLike | None
) -> optax.GradientTransformationExtraArgs:
    r""":math:`m_t = \beta m_{t-1} + (1-\beta) u`, stored in ``dtype``; u ← m_t
    (``optax.ema(β, debias=False, accumulator_dtype=dtype)``, its ``EmaState``)."""
    dtype = None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)

    def init_fn(params):
        zeros = optax.tree.zeros_like(params, dtype=dtype)
        return optax.EmaState(count=jnp.zeros([], jnp.int32), ema=zeros)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree("ema", updates)
        new = jax.tree.map(lambda u, m: ema(u, m, decay), updates, state.ema)
        count = increment(state.count)
        return new, optax.EmaState(count=count, ema=optax.tree.cast(new, dtype))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decayed_weights(
    rate: optax.ScalarOrSchedule | None, mask: Mask | None
) -> optax.GradientTransformation | None:
    r""":math:`u + \lambda_t \theta` on the leaves ``mask`` selects (``optax.masked``), None for
    None: ``optax.add_decayed_weights(λ, mask)``, its state (and its skip of a constant 0)."""
    if rate is None:
        return None
    reference = optax.add_decayed_weights(rate)  # its init: EmptyState or a step count

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params("add_decayed_weights", params)
        require_update_tree("add_decayed_weights", updates)
        decay = rate(state.count) if callable(rate) else rate
        if callable(rate):
            state = type(state)(count=increment(state.count))
        if isinstance(decay, (int, float)) and decay == 0.0:  # optax's test, not is_zero's
            return updates, state
        decayed = jax.tree.map(
            lambda u, p: jnp.add(*promote(u, jnp.multiply(*promote(decay, p)))), updates, params
        )
        return decayed, state

    tx = optax.GradientTransformationExtraArgs(reference.init, update_fn)
    return tx if mask is None else optax.masked(tx, mask)


def _check_options(learning_rate, clipping_threshold, momentum, dtype_momentum, decay, eps):
    if learning_rate is not None:
        check_scalar_or_schedule("learning_rate", learning_rate)
    if clipping_threshold is not None:
        check_positive_number(
            "clipping_threshold", clipping_threshold, "the largest RMS of an update leaf"
        )
    if momentum is not None:
        check_beta("momentum", momentum)
    check_float_dtype("dtype_momentum", dtype_momentum)
    if decay is not None:
        check_scalar_or_schedule("weight_decay_rate", decay)
    check_non_negative("eps", eps)
