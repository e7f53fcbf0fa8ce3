"""Training bfloat16/float16 parameters without a float32 master copy.

In bf16, ``p + u`` rounds to the nearest bf16 number: once the update is below
half a unit in the last place of ``p`` (2^-9 |p|) it is lost, and training stalls
as the learning rate decays. Two final stages of a chain fix that, each turning
the update into the exact difference ``p_new - p`` of two low-precision numbers,
so ``optax.apply_updates`` lands on ``p_new`` exactly:

- ``stochastic_rounding``: ``p_new`` is ``p + u`` rounded up or down at random,
  with probabilities that make ``E[p_new] = p + u`` (no bias, no extra memory
  beyond a PRNG key).
- ``kahan_summation``: ``p_new`` is ``p + u + c`` rounded to nearest, and the
  rounding error ``c`` is carried to the next step in a buffer of the
  parameter's dtype (2 bytes/param for bf16), so small updates accumulate.

Leaves whose dtype is float32 or wider are passed through unchanged. The sum
``p + u`` is formed in float32 (a temporary, not stored).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import PyTree
from .._validation import (
    check_float_leaves,
    check_seed,
    flatten_like_updates,
    require_params,
    require_update_tree,
)
from ..formats.rounding import is_low_precision, round_stochastic


class StochasticRoundingState(NamedTuple):
    """State of ``stochastic_rounding``."""

    key: jax.Array  # uint32 raw PRNG key data; split once per step


class KahanState(NamedTuple):
    """State of ``kahan_summation``."""

    compensation: PyTree  # rounding error carried over, in each low-precision param's dtype


def _delta(p: jax.Array, p_new: jax.Array, u: jax.Array) -> jax.Array:
    """``p_new - p`` in the update's dtype (exact whenever it is representable there)."""
    return (p_new.astype(jnp.float32) - p.astype(jnp.float32)).astype(u.dtype)


def _leaves(stage: str, updates: PyTree, params: PyTree):
    require_params(stage, params)
    require_update_tree(stage, updates)
    check_float_leaves(stage, "parameter", params)
    paths_and_updates, treedef = jax.tree_util.tree_flatten_with_path(updates)
    return paths_and_updates, flatten_like_updates(stage, updates, params, "params"), treedef


def stochastic_rounding(seed: int = 0) -> optax.GradientTransformationExtraArgs:
    r"""Make the update land on a stochastically rounded low-precision parameter.

    .. math::
        \theta_t = \operatorname{SR}(\theta_{t-1} + u_t), \qquad
        u'_t = \theta_t - \theta_{t-1}

    Put it last in the chain (after the learning rate) and apply with
    ``optax.apply_updates``. The key in the state is split every step, so a run
    is reproducible given ``seed``. bfloat16/float16 leaves are rounded; wider
    leaves pass through.

    Args:
      seed: seed of the PRNG key carried in the state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params``.

    Example:
      >>> import adamx, optax, jax.numpy as jnp
      >>> tx = optax.chain(adamx.adamw(1e-3), adamx.stochastic_rounding(seed=0))
      >>> state = tx.init({"w": jnp.ones(3, jnp.bfloat16)})

    References:
      Gupta et al., "Deep Learning with Limited Numerical Precision", arXiv:1502.02551;
      Zamirai et al., "Revisiting BFloat16 Training", arXiv:2010.06192.
    """
    check_seed("seed", seed)

    def init_fn(params):
        check_float_leaves("stochastic_rounding", "parameter", params)
        return StochasticRoundingState(key=jax.random.key_data(jax.random.key(seed)))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        paths_and_updates, ps, treedef = _leaves("stochastic_rounding", updates, params)
        key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
        out = []
        for i, ((_, u), p) in enumerate(zip(paths_and_updates, ps, strict=True)):
            if not is_low_precision(p.dtype):
                out.append(u)
                continue
            exact = p.astype(jnp.float32) + u.astype(jnp.float32)
            p_new = round_stochastic(exact, p.dtype, jax.random.fold_in(step_key, i))
            out.append(_delta(p, p_new, u))
        return treedef.unflatten(out), StochasticRoundingState(jax.random.key_data(key))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kahan_summation() -> optax.GradientTransformationExtraArgs:
    r"""Carry each low-precision parameter's rounding error to the next step.

    .. math::
        y_t = u_t + c_{t-1}, \qquad \theta_t = \operatorname{RN}(\theta_{t-1} + y_t), \qquad
        c_t = (\theta_{t-1} + y_t) - \theta_t, \qquad u'_t = \theta_t - \theta_{t-1}

    RN rounds to the nearest number of the parameter's dtype, and ``c`` is kept in
    that dtype too (bfloat16: 2 more bytes per parameter instead of a 4-byte
    float32 master copy). An update smaller than half an ulp of θ is not lost: it
    accumulates in ``c`` until it moves θ. Put it last in the chain and apply with
    ``optax.apply_updates``; float32 or wider leaves pass through.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params``.

    Example:
      >>> import adamx, optax, jax.numpy as jnp
      >>> tx = optax.chain(adamx.adamw(1e-3), adamx.kahan_summation())
      >>> state = tx.init({"w": jnp.ones(3, jnp.bfloat16)})

    References:
      Kahan, "Further remarks on reducing truncation errors", CACM 8(1), 1965;
      Zamirai et al., "Revisiting BFloat16 Training", arXiv:2010.06192.
    """

    def init_fn(params):
        check_float_leaves("kahan_summation", "parameter", params)
        return KahanState(
            compensation=jax.tree.map(
                lambda p: jnp.zeros_like(p) if is_low_precision(p.dtype) else optax.MaskedNode(),
                params,
            )
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        paths_and_updates, ps, treedef = _leaves("kahan_summation", updates, params)
        cs = flatten_like_updates("kahan_summation", updates, state.compensation, "state")
        out, comp = [], []
        for (_, u), p, c in zip(paths_and_updates, ps, cs, strict=True):
            if not is_low_precision(p.dtype):
                out.append(u)
                comp.append(c)
                continue
            exact = p.astype(jnp.float32) + (u.astype(jnp.float32) + c.astype(jnp.float32))
            p_new = exact.astype(p.dtype)
            out.append(_delta(p, p_new, u))
            comp.append((exact - p_new.astype(jnp.float32)).astype(c.dtype))
        return treedef.unflatten(out), KahanState(treedef.unflatten(comp))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
