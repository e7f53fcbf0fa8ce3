r"""Cautious updates (Liang et al. 2024): keep only the part of a direction that agrees with g.

``cautious(tx)`` wraps the part of a chain that turns the gradient g into a direction u
(for Adam: the moment segment, up to ``scale_by_rsqrt``); per element it keeps u where u
and g agree in sign, and per leaf it rescales what is kept by a per-tensor statistic s:

.. math::
    \phi = \mathbb{1}[u \odot g > 0], \qquad u \leftarrow s \, (u \odot \phi)

with two conventions for s (``rescale``), n being the leaf's number of elements:

.. math::
    \text{"count"}:\; s = \frac{n}{\sum_i \phi_i + 1} \qquad\qquad
    \text{"mean"}:\; s = \frac{1}{\max(\operatorname{mean}(\phi),\, 10^{-3})}

For complex leaves the agreement of two elements is that of the vectors of
:math:`\mathbb{R}^2` they are: :math:`\phi = \mathbb{1}[\operatorname{Re}(\bar u\, g) > 0]`.
``alignment`` (the real inner product, element by element) is shared with cautious
weight decay (``add_decoupled_weight_decay(cautious=True)``).
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import PyTree, is_moments, promote, promoted_dtype
from .._validation import check_choice, check_transformation
from ._whole_leaf import refuse_buckets, whole_leaf_state

Rescale = Literal["count", "mean"]
_RESCALES = ("count", "mean")
_MEAN_FLOOR = 1e-3  # timm's clamp of mean(φ)


@whole_leaf_state("cautious")
class CautiousState(NamedTuple):
    """State of :func:`cautious`: the wrapped chain's state and this step's masked fraction."""

    inner: optax.OptState  # the state of the wrapped chain
    masked_fraction: jax.Array  # float32 scalar: Σ(1 - φ) / Σ n over all leaves, this step


def cautious(
    tx: optax.GradientTransformation, *, rescale: Rescale = "count"
) -> optax.GradientTransformationExtraArgs:
    r"""Mask the direction of ``tx`` where it disagrees with the gradient, and rescale it.

    .. math::
        u = \mathrm{tx}(g), \qquad \phi = \mathbb{1}[u \odot g > 0], \qquad
        u \leftarrow s \,(u \odot \phi)

    per leaf, with :math:`s = n / (\sum\phi + 1)` (``rescale="count"``: the authors'
    first release, kyleliang919/C-Optim, and ``pytorch_optimizer``'s ``apply_cautious``)
    or :math:`s = 1 / \max(\operatorname{mean}\phi, 10^{-3})` (``rescale="mean"``: timm's
    ``caution=True``, which the authors' ``c_adamw.py`` later adopted; the paper's
    one-line listing, Algorithm 1, divides by :math:`\operatorname{mean}\phi + \varepsilon`
    instead). Both keep the update's
    size when most elements agree: with all n kept, "mean" gives s = 1 and "count"
    s = n / (n + 1). g is the tree the wrapper receives (after any stage before it);
    u is compared with it before the learning rate, so wrap the part of the chain
    that produces the direction, *before* weight decay and ``scale_by_lr``
    (``scale_by_lr`` negates u: wrapped, every element would be masked)::

        optax.chain(
            adamx.cautious(optax.chain(adamx.scale_by_moments(b1, b2),
                                       adamx.bias_correct(b1, b2), adamx.scale_by_rsqrt(eps))),
            adamx.add_decoupled_weight_decay(weight_decay),
            adamx.scale_by_lr(learning_rate),
        )

    Complex leaves: :math:`\phi = \mathbb{1}[\operatorname{Re}(\bar u g) > 0]` (each
    element as a vector of :math:`\mathbb{R}^2`; ``pytorch_optimizer`` masks the real
    and imaginary parts separately instead).

    s is a statistic of each whole leaf: on the flat buckets of ``adamx.pack`` /
    ``multi_tensor`` (which mix leaves) ``init`` refuses, and ``adamx.sparse_rows``
    refuses a chain holding this stage. The state, :class:`CautiousState`, keeps the
    wrapped chain's state as ``inner`` and ``masked_fraction``, the fraction of all
    elements (every leaf together) that the mask zeroed this step (0 before the first).

    Args:
      tx: the chain producing the direction u (any optax transformation).
      rescale: "count" or "mean" (see above).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; extra arguments go to ``tx``.

    Example:
      >>> import adamx, jax.numpy as jnp, optax
      >>> tx = adamx.cautious(optax.identity())
      >>> u, state = tx.update(jnp.array([1.0, -2.0, 0.0, 3.0]), tx.init(jnp.zeros(4)))
      >>> u.tolist(), float(state.masked_fraction)  # u = g: 3 of 4 agree, s = 4 / (3 + 1)
      ([1.0, -2.0, 0.0, 3.0], 0.25)

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line
      of Code", arXiv:2411.16085.
    """
    check_choice(
        "rescale",
        rescale,
        _RESCALES,
        'It is the per-tensor rescale of what the mask keeps: "count" n / (Σφ + 1) '
        '(pytorch_optimizer, the authors\' first release), "mean" 1 / max(mean φ, 1e-3) '
        "(timm, the authors' current c_adamw.py).",
    )
    check_transformation("tx", tx, "the chain that produces the direction u")
    inner_tx = optax.with_extra_args_support(tx)

    def init_fn(params: optax.Params) -> CautiousState:
        refuse_buckets("cautious", params)
        return CautiousState(inner_tx.init(params), jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
        directions, inner = inner_tx.update(updates, state.inner, params, **extra_args)
        _require_direction(directions)
        leaves, treedef = jax.tree.flatten(directions)
        grads = treedef.flatten_up_to(updates)
        results = [_caution_leaf(u, g, rescale) for u, g in zip(leaves, grads, strict=True)]
        return treedef.unflatten([u for u, _ in results]), CautiousState(
            inner, _masked_fraction([kept for _, kept in results], leaves)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _require_direction(directions: PyTree) -> None:
    """The wrapped chain must close the moment segment: u is a plain update tree.

    (A validator of this stage's own; ``_validation.require_update_tree`` words it for a
    stage that is *given* a moment tree.)
    """
    if any(is_moments(x) for x in jax.tree.leaves(directions, is_leaf=is_moments)):
        raise TypeError(
            "cautious: the chain it wraps returned the moment tree of scale_by_moments "
            "(Moments records), not a direction u to compare with the gradient. Close the "
            "moment segment inside the wrapper: cautious(optax.chain(scale_by_moments(...), "
            "bias_correct(...), scale_by_rsqrt(...)))."
        )


def alignment(u: jax.Array, x: jax.typing.ArrayLike) -> jax.Array:
    r"""Element by element :math:`\operatorname{Re}(\bar u\, x)` (``u * x`` for real leaves),
    in the operands' promoted dtype (real)."""
    a, b = promote(u, x)
    if jnp.iscomplexobj(a):
        return a.real * b.real + a.imag * b.imag
    return a * b


def _caution_leaf(u: jax.Array, g: jax.Array, rescale: Rescale) -> tuple[jax.Array, jax.Array]:
    """(s·(u ⊙ φ) in u's dtype, Σφ as an int32 count) for one leaf.

    s and the count are computed in float32 (float64 for a float64 u): a bfloat16 sum of
    0s and 1s would stop counting at 256. u is multiplied by φ·s, not selected, so a NaN
    in u stays NaN where the mask is 0 (as ``pytorch_optimizer``'s ``update.mul_(mask)``).
    """
    agree = alignment(u, g) > 0
    kept = jnp.sum(agree, dtype=jnp.int32)
    stat = promoted_dtype(jnp.finfo(u.dtype).dtype, jnp.float32)
    if rescale == "count":
        scale = u.size / (kept.astype(stat) + 1)
    else:
        scale = 1 / jnp.maximum(kept.astype(stat) / max(u.size, 1), _MEAN_FLOOR)
    factor = jnp.where(agree, scale, jnp.zeros([], stat))
    return jnp.multiply(*promote(u, factor)).astype(u.dtype), kept


def _masked_fraction(kept: list[jax.Array], leaves: list[jax.Array]) -> jax.Array:
    """Σ(n - Σφ) / Σn over all leaves, a float32 scalar (0 for no elements)."""
    total = sum(leaf.size for leaf in leaves)
    if total == 0:
        return jnp.zeros([], jnp.float32)
    kept_all = sum((k.astype(jnp.float32) for k in kept), jnp.zeros([], jnp.float32))
    return (float(total) - kept_all) / float(total)
