r"""``monitor``: run a transformation unchanged and record what a practitioner logs about a step.

With :math:`g` the gradient the wrapper receives, :math:`u` the update ``tx`` returns, and
:math:`\theta` the parameters, every sum over the elements of the tree (or of one group of
leaves), in float32 (float64 leaves: float64, then cast), :math:`|x|^2 = \bar{x} x` for complex:

.. math::
    \text{update\_rms} = \sqrt{\textstyle\sum |u|^2 / N} \qquad
    \text{grad\_rms} = \sqrt{\textstyle\sum |g|^2 / N} \qquad
    \text{update\_param\_ratio} = \sqrt{\textstyle\sum |u|^2 / \sum |\theta|^2}

.. math::
    \text{effective\_lr}\ \eta = -\frac{\operatorname{Re}\langle u, g\rangle}{\|g\|^2}
    \qquad
    \text{descent\_cosine} = -\frac{\operatorname{Re}\langle u, g\rangle}{\|u\|\,\|g\|}

:math:`\eta` is the least-squares fit of :math:`u \approx -\eta g` (SGD: the learning rate);
:math:`\eta = \text{descent\_cosine} \cdot \|u\| / \|g\|` separates the step's direction
(the cosine: 1 along :math:`-g`, < 0 uphill) from its length. A ratio with a zero denominator
is 0, except ``update_param_ratio`` of a nonzero update to all-zero parameters: +inf.

``cautious_masked_fraction`` and ``clipped_fraction`` are read from ``tx``'s new state: the
``masked_fraction`` of ``adamx.cautious``, and the fraction of elements in leaves whose
``rms`` (of the ``update_rms`` stage inside ``adamx.clip_by_update_rms``) is > 1, the leaves
that clipping scaled down; 0 where ``tx`` has no such stage. ``nonfinite_grads`` counts the
elements of :math:`g` that are NaN or infinite (int32).

Per leaf by nature, it refuses the buckets of ``adamx.pack`` / ``multi_tensor`` (wrap those
instead: ``monitor(multi_tensor(tx))``); ``adamx.sparse_rows`` refuses it inside.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._sparse import is_row_sparse
from .._types import PyTree, promote, promoted_dtype, without_variables
from .._validation import check_transformation, flatten_like_updates, require_params
from ._whole_leaf import refuse_buckets, whole_leaf_state
from .cautious import CautiousState
from .update_rms import ClipByUpdateRmsState, UpdateRmsState

_STAGE = "monitor"
ROOT_LABEL = "params"  # the one group of a tree that is a single array

Groups = PyTree | Callable[[optax.Params], PyTree] | None
Label = Any  # a group's label: hashable and sortable (a key of the params, or the user's)


class MonitorStats(NamedTuple):
    """One step's statistics (zeros before the first step); formulas in the module docstring."""

    update_rms: jax.Array  # float32 []: RMS(u) over every element
    group_update_rms: dict[Label, jax.Array]  # float32 []: RMS(u) over each group's elements
    update_param_ratio: jax.Array  # float32 []: RMS(u) / RMS(θ) = ‖u‖ / ‖θ‖
    group_update_param_ratio: dict[Label, jax.Array]  # label -> float32 []: the same over the group
    grad_rms: jax.Array  # float32 []: RMS(g), g the gradient the wrapper received
    effective_lr: jax.Array  # float32 []: η = -Re⟨u, g⟩ / ‖g‖²
    descent_cosine: jax.Array  # float32 []: -Re⟨u, g⟩ / (‖u‖ ‖g‖)
    cautious_masked_fraction: jax.Array  # float32 []: elements adamx.cautious zeroed
    clipped_fraction: jax.Array  # float32 []: elements in leaves clipping scaled down
    nonfinite_grads: jax.Array  # int32 []: NaN or infinite elements of g


@whole_leaf_state("monitor")
class MonitorState(NamedTuple):
    """``tx``'s state, untouched, and the statistics of the last step."""

    inner: optax.OptState
    stats: MonitorStats


class _Sums(NamedTuple):
    """The reductions of a set of leaves (float32 sums; int32 count)."""

    uu: jax.Array  # Σ |u|²
    gg: jax.Array  # Σ |g|²
    pp: jax.Array  # Σ |θ|²
    ug: jax.Array  # Σ Re(conj(g) u)
    size: int  # N, the number of elements
    nonfinite: jax.Array  # Σ [g not finite]

    def rms(self, sum_of_squares: jax.Array) -> jax.Array:
        return jnp.sqrt(sum_of_squares / max(self.size, 1))

    def param_ratio(self) -> jax.Array:
        """√(Σ|u|² / Σ|θ|²); +inf for a nonzero update to all-zero parameters, 0 for none."""
        return jnp.where(
            self.pp > 0, jnp.sqrt(_ratio(self.uu, self.pp)), jnp.where(self.uu > 0, jnp.inf, 0.0)
        )


def monitor(
    tx: optax.GradientTransformation, *, groups: Groups = None
) -> optax.GradientTransformationExtraArgs:
    r"""Wrap ``tx``: the same updates and inner state, bit for bit, plus a step's statistics.

    Each statistic is a field of ``MonitorState.stats`` (a ``MonitorStats``), readable with
    ``optax.tree.get(state, "update_rms")`` and so on; the formulas are in this module's
    docstring. A few reductions a leaf, no host sync: log them from the returned state.

    Args:
      tx: any gradient transformation (an adamx alias, a chain, ``multi_tensor(...)``).
      groups: how leaves are grouped for ``group_update_rms`` / ``group_update_param_ratio``:
        None, one group per top-level key of the params (a list's index, a dict's key, an
        attribute's name; a single array: "params"); or a tree of labels shaped like the
        params (or a prefix of them), or a function params -> such a tree, as
        ``optax.multi_transform``'s ``param_labels``. The labels are the keys of the dicts.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state ``MonitorState(inner, stats)``;
      ``update`` needs the params (for the update/parameter ratios).

    Example:
      >>> import adamx, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> tx = adamx.monitor(optax.sgd(0.5))
      >>> _, state = tx.update({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, tx.init(params), params)
      >>> float(optax.tree.get(state, "effective_lr")), float(optax.tree.get(state, "update_rms"))
      (0.5, 0.5)
    """
    check_transformation("tx", tx, "the optimizer to monitor")
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        refuse_buckets(_STAGE, params)
        labels = sorted(set(_leaf_labels(groups, without_variables(params))))
        return MonitorState(inner=tx.init(params), stats=_zero_stats(labels))

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, inner = tx.update(updates, state.inner, params, **extra_args)
        return new_updates, MonitorState(
            inner, _stats(groups, updates, new_updates, params, state, inner)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _stats(groups: Groups, grads, updates, params, state: MonitorState, inner) -> MonitorStats:
    """The statistics of a step (``grads`` in, ``updates`` out of ``tx``)."""
    require_params(f"{_STAGE} (for update_param_ratio)", params)
    _refuse_row_sparse(grads)
    paths_and_grads = jax.tree_util.tree_flatten_with_path(grads)[0]
    sums = [
        _leaf_sums(g, u, p)
        for (_, g), u, p in zip(
            paths_and_grads,
            flatten_like_updates(_STAGE, grads, updates, "updates"),
            flatten_like_updates(_STAGE, grads, params, "params"),
            strict=True,
        )
    ]
    groups_sums = _group_sums(groups, grads, sums, list(state.stats.group_update_rms))
    total = _add(sums)
    sizes = {tuple(path): jnp.size(g) for path, g in paths_and_grads}
    return MonitorStats(
        update_rms=total.rms(total.uu),
        group_update_rms={k: s.rms(s.uu) for k, s in groups_sums.items()},
        update_param_ratio=total.param_ratio(),
        group_update_param_ratio={k: s.param_ratio() for k, s in groups_sums.items()},
        grad_rms=total.rms(total.gg),
        effective_lr=_ratio(-total.ug, total.gg),
        descent_cosine=_ratio(-total.ug, jnp.sqrt(total.uu) * jnp.sqrt(total.gg)),
        cautious_masked_fraction=_fraction(
            inner, CautiousState, "masked_fraction", sizes, total.size
        ),
        clipped_fraction=_fraction(
            _nodes(inner, ClipByUpdateRmsState), UpdateRmsState, "rms", sizes, total.size, True
        ),
        nonfinite_grads=total.nonfinite,
    )


def _group_sums(groups: Groups, grads: PyTree, sums: list[_Sums], expected: list) -> dict:
    """label -> the reductions of its leaves; the labels must be those found at init."""
    labels = _leaf_labels(groups, grads)
    if sorted(set(labels)) != expected:
        raise ValueError(
            f"monitor: the groups of the gradients are {sorted(set(labels))}, but init was given "
            f"params whose groups are {expected}. Hand update gradients shaped like the params "
            "given to init."
        )
    return {k: _add([s for s, lab in zip(sums, labels, strict=True) if lab == k]) for k in expected}


def _zero_stats(labels: list[Label]) -> MonitorStats:
    """The statistics before the first step: zeros, so the state's structure never changes."""
    zero = jnp.zeros((), jnp.float32)
    stats: dict[str, Any] = dict.fromkeys(MonitorStats._fields, zero)
    stats["group_update_rms"] = dict.fromkeys(labels, zero)
    stats["group_update_param_ratio"] = dict.fromkeys(labels, zero)
    return MonitorStats(**{**stats, "nonfinite_grads": jnp.zeros((), jnp.int32)})


def _leaf_sums(g: jax.Array, u: jax.Array, p: jax.Array) -> _Sums:
    """One leaf's reductions: at least float32 wide (float64 stays), returned as float32."""

    def wide(x: jax.Array) -> jax.Array:
        return jnp.asarray(x).astype(promoted_dtype(jnp.result_type(x), jnp.float32))

    def total(x: jax.Array, y: jax.Array) -> jax.Array:  # Σ Re(conj(x) y)
        x, y = promote(wide(x), wide(y))
        return jnp.sum(jnp.real(jnp.conj(x) * y) if jnp.iscomplexobj(x) else x * y).astype(
            jnp.float32
        )

    nonfinite = jnp.sum(~jnp.isfinite(g), dtype=jnp.int32)
    return _Sums(total(u, u), total(g, g), total(p, p), total(g, u), jnp.size(g), nonfinite)


def _add(sums: list[_Sums]) -> _Sums:
    """The reductions of a set of leaves from those of each (zeros for none)."""
    zero = jnp.zeros((), jnp.float32)
    out = _Sums(zero, zero, zero, zero, 0, jnp.zeros((), jnp.int32))
    for s in sums:
        out = _Sums._make(a + b for a, b in zip(out, s, strict=True))
    return out


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, 0 where den == 0 (no NaN is ever computed, so jax_debug_nans stays quiet)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _fraction(
    inner: PyTree, state_type: type, field: str, sizes: dict, total: int, above_one: bool = False
) -> jax.Array:
    """The mean of ``field`` (``above_one``: of ``field > 1``) over the ``state_type`` states in
    ``inner``, 0 if none: a leaf at a parameter's path weighs its size, any other (a scalar
    for the whole tree) the whole tree."""
    num, den = jnp.zeros((), jnp.float32), 0
    for node in _nodes(inner, state_type):
        for path, value in jax.tree_util.tree_flatten_with_path(getattr(node, field))[0]:
            value = (value > 1) if above_one else value
            weight = sizes.get(tuple(path), total)
            num, den = num + jnp.asarray(value).astype(jnp.float32) * weight, den + weight
    return num / den if den else num


def _nodes(tree: PyTree, state_type: type) -> list:
    """The ``state_type`` states in ``tree`` (outermost first)."""
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, state_type))
    return [n for n in nodes if isinstance(n, state_type)]


def _leaf_labels(groups: Groups, tree: PyTree) -> list[Label]:
    """The group label of each leaf of ``tree``, in ``jax.tree.leaves`` order."""
    if groups is None:
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        return [_key_label(path[0]) if path else ROOT_LABEL for path in paths]
    labels = groups(tree) if callable(groups) else groups
    label_leaves, label_def = jax.tree.flatten(labels)
    try:
        subtrees = label_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"monitor: groups must be a tree of labels shaped like the params (or a prefix of "
            f"them), or a function params -> such a tree, got labels "
            f"{jax.tree.structure(labels)} for params {jax.tree.structure(tree)}."
        ) from None
    out = []
    for label, subtree in zip(label_leaves, subtrees, strict=True):
        out += [label] * len(jax.tree.leaves(subtree))
    try:
        sorted(set(out))
    except TypeError:
        raise TypeError(
            f"monitor: group labels must be hashable and of one sortable kind (str or int: they "
            f"are dict keys), got {sorted(set(map(repr, out)))}."
        ) from None
    return out


def _key_label(key: object) -> Label:
    """A dict's key, a sequence's index, an attribute's name."""
    return next((getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)), str(key))


def _refuse_row_sparse(grads: PyTree) -> None:
    if any(is_row_sparse(x) for x in jax.tree.leaves(grads, is_leaf=is_row_sparse)):
        raise ValueError(
            "monitor sums dense leaves, but a gradient leaf is an adamx.RowSparse (a table's "
            "touched rows): monitor(sparse_rows(...)) is not supported; monitor a dense run."
        )
