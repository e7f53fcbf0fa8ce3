"""The stage both weight decays build on: u + λ_t·θ on the leaves (or elements) a mask selects
(and, for cautious weight decay, only where u and θ agree in sign)."""

import functools
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._masks import check_not_masked_packed, contains_packed, resolve_mask
from .._rates import current_rate, init_rate_state
from .._types import Mask, promote
from .._validation import flatten_like_updates, is_zero, require_params, require_update_tree
from .cautious import alignment


class PackedMaskedState(NamedTuple):
    """State of a masked weight-decay stage on params holding a ``PackedTree``.

    On a plain tree the stage keeps ``optax.MaskedState`` (the state of ``optax.adamw(mask=...)``);
    on packed params the mask is resolved per element of each bucket, not by ``optax.masked``,
    and this distinct type lets ``multi_tensor`` tell it from a user's ``optax.masked``.
    """

    inner_state: Any  # the rate's state: EmptyState, or ScheduleState for a schedule


def masked_decay(
    stage: str, weight_decay: optax.ScalarOrSchedule, mask: Mask | None, cautious: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""u + λ_t θ on every unmasked element; ``stage`` names it in error messages.

    .. math::
        u_i \leftarrow u_i + [\text{mask}_i] \, \lambda_t \, \theta_i

    ``cautious``: only where u and θ agree, :math:`u_i \leftarrow u_i + [\text{mask}_i]
    \, \mathbb{1}[u_i \theta_i \ge 0] \, \lambda_t \theta_i` (elementwise, so a bucket's
    elements get exactly their leaf's result; complex: :math:`\operatorname{Re}(\bar u_i
    \theta_i) \ge 0`).

    The mask is resolved against the params' paths, those of the original tree when
    the params are packed (``_masks.resolve_mask``): inside a bucket it is a static
    per-element constant, so the decayed elements get exactly the per-leaf ``u + λθ``.
    """

    def init_fn(params):
        rate_state = init_rate_state(weight_decay)
        if isinstance(params, _PLACEHOLDER):  # optax.tree_map_params probes the state's shape
            return rate_state if mask is None else optax.MaskedState(inner_state=rate_state)
        check_not_masked_packed(stage, params)
        if mask is None:
            return rate_state
        resolve_mask(stage, mask, params)  # refuse a mask that does not fit, at init
        packed = contains_packed(params)
        return (PackedMaskedState if packed else optax.MaskedState)(inner_state=rate_state)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(stage, params)
        require_update_tree(stage, updates)
        check_not_masked_packed(stage, updates)
        rate_state = state if mask is None else state.inner_state
        decay, rate_state = current_rate(weight_decay, rate_state)
        state = rate_state if mask is None else type(state)(inner_state=rate_state)
        if is_zero(decay):
            return updates, state  # exactly u, even where θ is inf or nan
        leaves, treedef = jax.tree.flatten(updates)
        thetas = flatten_like_updates(stage, updates, params, "params")
        flags = (
            [True] * len(leaves)
            if mask is None
            else treedef.flatten_up_to(resolve_mask(stage, mask, updates))
        )
        decay_leaf = functools.partial(_decay_leaf, decay=decay, cautious=cautious)
        decayed = map(decay_leaf, leaves, thetas, flags)
        return treedef.unflatten(list(decayed)), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decay_leaf(
    u: jax.Array,
    theta: jax.Array,
    flag: bool | np.ndarray,
    decay: jax.typing.ArrayLike,
    cautious: bool = False,
) -> jax.Array:
    """u + λ·θ where ``flag`` (a bool, or a static bool array over a bucket) says so."""
    decayed = _cautiously_decayed if cautious else _decayed
    if not isinstance(flag, np.ndarray) or flag.ndim == 0:
        if not flag:
            return u
        return decayed(u, theta, decay)
    return jnp.where(flag, decayed(u, theta, decay), u)


def _decayed(u: jax.Array, theta: jax.Array, decay: jax.typing.ArrayLike) -> jax.Array:
    """u + λ·θ in the operands' promoted dtype (float32 for a scheduled λ_t), rounded once."""
    return jnp.add(*promote(u, jnp.multiply(*promote(decay, theta)))).astype(u.dtype)


def _cautiously_decayed(u: jax.Array, theta: jax.Array, decay: jax.typing.ArrayLike) -> jax.Array:
    """u + 𝟙[u·θ >= 0]·λ·θ (Chen et al. 2025); elsewhere exactly u."""
    return jnp.where(alignment(u, theta) >= 0, _decayed(u, theta, decay), u)


# optax.tree_map_params calls init with this placeholder instead of params (optax.masked
# special-cases it the same way); () if a future optax moves it: isinstance(x, ()) is False.
_PLACEHOLDER = getattr(sys.modules.get(optax.tree_map_params.__module__), "_ParamsPlaceholder", ())
