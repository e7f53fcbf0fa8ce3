r"""Update clipping (StableAdamW): a leaf's whole step is divided by the RMS of g²/v̂ when it
exceeds 1.

Wortsman et al. (2023) divide the learning rate of each tensor by

.. math::
    \max(1, \mathrm{RMS}_t), \qquad
    \mathrm{RMS}_t = \sqrt{\operatorname{mean}\left(\frac{g_t^2}{\max(\hat v_t, \varepsilon^2)}
    \right)}

over the tensor's elements: a gradient far larger than its running second moment
(v̂ lagging behind, the "stuck-in-the-past" case of their paper) takes a proportionally
smaller step, so the step's RMS stays near that of a steady Adam step. The whole step is
divided, decoupled weight decay included (as both torch-optimi's and pytorch_optimizer's
StableAdamW do).

Two pieces, because RMS_t needs g and v̂, which only the moment segment sees, while the
decay joins the update after that segment closes:

* ``update_rms(eps)`` sits in the moment segment (after ``bias_correct``, before
  ``scale_by_rsqrt``), records RMS_t of each leaf in its state and hands the records on
  unchanged;
* ``clip_by_update_rms(tx)`` wraps a chain holding exactly one ``update_rms`` and divides
  the chain's updates, leaf by leaf, by :math:`\max(1, \mathrm{RMS}_t)` of this step.

Both are per-tensor: they refuse the mixed-leaf buckets of ``adamx.pack`` / ``multi_tensor``
and ``adamx.sparse_rows`` refuses a chain holding them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import InfNormMoments, Moments, PyTree, map_moments, promote, promoted_dtype
from .._validation import check_non_negative, check_transformation, require_moment_tree
from ._whole_leaf import refuse_buckets, whole_leaf_state

_STAGE = "update_rms"
_WRAPPER = "clip_by_update_rms"
_CHAIN = "chain(scale_by_moments, bias_correct, update_rms(eps), scale_by_rsqrt(eps), ...)"


@whole_leaf_state("update_rms (e.g. in adamx.stable_adamw)")
class UpdateRmsState(NamedTuple):
    """State of ``update_rms``: this step's RMS_t of each leaf (before the max with 1)."""

    rms: PyTree  # one scalar per parameter leaf, float32 (float64 for float64 leaves)


@whole_leaf_state("clip_by_update_rms (e.g. in adamx.stable_adamw)")
class ClipByUpdateRmsState(NamedTuple):
    """State of ``clip_by_update_rms``: the wrapped chain's state."""

    inner: optax.OptState


def update_rms(eps: float | jax.Array = 1e-6) -> optax.GradientTransformationExtraArgs:
    r"""Record, per leaf, the RMS of :math:`g_t^2 / \max(\hat v_t, \varepsilon^2)`.

    .. math::
        \mathrm{RMS}_t = \sqrt{\frac{1}{n} \sum_{i=1}^{n}
        \frac{g_{t,i}^2}{\max(\hat v_{t,i}, \varepsilon^2)}}

    A stage of the moment segment: place it after ``bias_correct`` (it reads v̂, the
    corrected second moment) and before ``scale_by_rsqrt``. It hands the moment records on
    unchanged and keeps RMS_t (before the max with 1) in its state, where
    :func:`clip_by_update_rms` (and ``adamx.monitor``) read it. Computed in float32 at least
    (float64 for float64 leaves), whatever the leaf's dtype; :math:`|g|^2` for complex g.

    Args:
      eps: ε; v̂ is floored at ε² inside the RMS (both references use the eps of their
        denominator √v̂ + ε here: pass the same value as ``scale_by_rsqrt``'s).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``UpdateRmsState``.

    Raises:
      TypeError: (at update) an infinity-norm record (AdaMax's u is no mean square).
      ValueError: (at init) the buckets of ``adamx.pack`` / ``multi_tensor``.

    Example:
      >>> import adamx, jax.numpy as jnp, optax
      >>> tx = optax.chain(adamx.scale_by_moments(0.9, 0.99), adamx.bias_correct(0.9, 0.99),
      ...                  adamx.update_rms(1e-6), adamx.scale_by_rsqrt(1e-6))
      >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}))
      >>> round(float(optax.tree.get(state, "rms")["w"]), 4)  # step 1: v̂ = g²
      1.0

    References:
      Wortsman et al., "Stable and low-precision training for large-scale vision-language
      models", arXiv:2304.13013, Algorithm 2.
    """
    check_non_negative("eps", eps)

    def init_fn(params: optax.Params) -> UpdateRmsState:
        refuse_buckets(_STAGE, params)
        return UpdateRmsState(rms=jax.tree.map(lambda p: jnp.zeros([], _rms_dtype(p)), params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree(_STAGE, updates)
        rms = map_moments(_leaf_rms, updates, state.rms)
        return updates, UpdateRmsState(rms=rms)

    def _leaf_rms(record: Moments, previous: jax.Array) -> jax.Array:
        if isinstance(record, InfNormMoments):
            raise TypeError(
                f"{_STAGE} reads the mean square v̂ of the moment records, but was given "
                "AdaMax's infinity norm (scale_by_moments(infinity_norm=True)), which is no "
                "mean square: use update clipping with Adam's second moment."
            )
        return _mean_ratio_root(record.grad, record.nu, eps, previous.dtype)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _rms_dtype(x: jax.typing.ArrayLike) -> jnp.dtype:
    """float32, or float64 for float64 (complex128) leaves: a reduction is not done in bf16."""
    real = jnp.finfo(jnp.asarray(x).dtype).dtype  # the real dtype of a complex one
    return promoted_dtype(jnp.float32, real)


def _mean_ratio_root(
    g: jax.Array, nu: jax.Array, eps: float | jax.Array, dtype: jnp.dtype
) -> jax.Array:
    r""":math:`\sqrt{\operatorname{mean}(|g|^2 / \max(\hat v, \varepsilon^2))}`, computed in
    ``dtype`` or wider and returned in ``dtype`` (0 for a leaf with no elements)."""
    if g.size == 0:
        return jnp.zeros([], dtype)
    wide = promoted_dtype(dtype, _rms_dtype(g), _rms_dtype(nu))
    squared = (g.conj() * g).real if jnp.iscomplexobj(g) else jnp.square(g.astype(wide))
    floor = jnp.maximum(*promote(nu.astype(wide), eps * eps))
    return jnp.sqrt(jnp.mean(squared.astype(wide) / floor)).astype(dtype)


def clip_by_update_rms(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    r"""Divide ``tx``'s updates, leaf by leaf, by :math:`\max(1, \mathrm{RMS}_t)` of this step.

    .. math::
        u_t \leftarrow \frac{u_t}{\max(1, \mathrm{RMS}_t)}

    ``tx`` must hold exactly one :func:`update_rms` stage (anywhere in its state): its
    record of this step's update gives RMS_t. Everything ``tx`` adds after the moment
    segment (decoupled weight decay, the learning rate) is divided too, so with
    ``scale_by_lr`` last the effective learning rate is :math:`\alpha_t/\max(1,
    \mathrm{RMS}_t)` for the whole step: StableAdamW. A leaf with RMS_t ≤ 1 gets ``tx``'s
    update bit for bit. Updates keep their dtype.

    Args:
      tx: the chain to clip, e.g. ``optax.chain(scale_by_moments, bias_correct,
        update_rms(eps), scale_by_rsqrt(eps), add_decoupled_weight_decay, scale_by_lr)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``ClipByUpdateRmsState(inner)``.

    Raises:
      TypeError: ``tx`` is not an optax transformation.
      ValueError: (at init) ``tx`` holds no ``update_rms`` or several; the buckets of
        ``adamx.pack`` / ``multi_tensor``.

    Example:
      >>> import adamx, optax
      >>> stable = adamx.clip_by_update_rms(optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.99), adamx.bias_correct(0.9, 0.99),
      ...     adamx.update_rms(1e-6), adamx.scale_by_rsqrt(1e-6),
      ...     adamx.add_decoupled_weight_decay(1e-2), adamx.scale_by_lr(1e-3)))

    References:
      Wortsman et al., arXiv:2304.13013, Algorithm 2.
    """
    check_transformation("tx", tx, "the chain to clip, holding one update_rms stage")
    tx = optax.with_extra_args_support(tx)

    def init_fn(params: optax.Params) -> ClipByUpdateRmsState:
        refuse_buckets(_WRAPPER, params)
        inner = tx.init(params)
        _the_record(inner)
        return ClipByUpdateRmsState(inner=inner)

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner = tx.update(updates, state.inner, params, **extra_args)
        rms = _the_record(inner).rms
        if jax.tree.structure(rms) != jax.tree.structure(updates):
            raise ValueError(
                f"{_WRAPPER}: update_rms recorded one RMS per leaf of "
                f"{jax.tree.structure(rms)}, but the wrapped chain's updates are "
                f"{jax.tree.structure(updates)}. Put update_rms in the chain that sees every "
                "leaf (not inside optax.masked / multi_transform)."
            )
        return jax.tree.map(_divide, updates, rms), ClipByUpdateRmsState(inner=inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _divide(u: jax.Array, rms: jax.Array) -> jax.Array:
    """u / max(1, RMS), in their promoted dtype, returned in u's dtype."""
    scale = jnp.maximum(jnp.ones([], rms.dtype), rms)
    return jnp.divide(*promote(u, scale)).astype(u.dtype)


def _the_record(inner: optax.OptState) -> UpdateRmsState:
    """The one ``UpdateRmsState`` in ``inner`` (raises ValueError for none or several)."""
    found = [
        x
        for x in jax.tree.leaves(inner, is_leaf=lambda x: isinstance(x, UpdateRmsState))
        if isinstance(x, UpdateRmsState)
    ]
    if len(found) != 1:
        what = "no update_rms stage" if not found else f"{len(found)} update_rms stages"
        raise ValueError(
            f"{_WRAPPER} divides the step by max(1, RMS) recorded by one update_rms stage in "
            f"the wrapped chain, but it holds {what}. Wrap a chain with exactly one, placed "
            f"in the moment segment: {_CHAIN}."
        )
    return found[0]
