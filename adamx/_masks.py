"""Masks from leaf paths: decide which parameters a stage touches by their names."""

import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._packed import PackedTree
from ._sparse import is_row_sparse
from ._types import PyTree
from ._validation import check_mask


def path_to_str(path: tuple) -> str:
    """A leaf's path as ``"encoder/layers/0/bias"``: dict keys, attribute names and indices."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def path_mask(predicate: Callable[[str, Any], bool]) -> Callable[[PyTree], PyTree]:
    """A mask callable from a predicate on each leaf's path and value.

    ``predicate(path, leaf)`` receives the leaf's path as a ``/``-joined string
    (``"encoder/0/bias"``) and the leaf itself (read its ``shape``/``ndim``/
    ``dtype``, never its values: a mask is static) and returns True where the
    stage applies.

    Args:
      predicate: ``(path: str, leaf) -> bool``.

    Returns:
      ``params -> pytree of bools``, for the ``mask`` of ``adamw`` and the weight
      decay stages (or ``optax.masked``). Given to adamx's ``mask=``, it sees the
      original paths of packed params (``adamx.pack``, ``multi_tensor``); handed a
      ``PackedTree`` directly (by ``optax.masked`` on packed params) it raises
      ValueError, as the buckets have no per-leaf paths.

    Example:
      >>> import adamx
      >>> no_decay_on_biases_and_norms = adamx.path_mask(
      ...     lambda path, x: x.ndim > 1 and "norm" not in path)
      >>> tx = adamx.adamw(1e-3, weight_decay=0.1, mask=no_decay_on_biases_and_norms)
    """
    if not callable(predicate):
        raise TypeError(f"path_mask takes a callable (path: str, leaf) -> bool, got {predicate!r}.")

    def mask_fn(params: PyTree) -> PyTree:
        if contains_packed(params):
            raise ValueError(_PACKED_INPUT)
        # A row-sparse gradient is one leaf (optax.masked computes a callable mask from the
        # gradients): the predicate sees it as its table, with .shape, .ndim and .dtype.
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: predicate(path_to_str(path), leaf), params, is_leaf=is_row_sparse
        )

    return mask_fn


_PACKED_INPUT = (
    "path_mask/exclude_paths was handed a PackedTree (optax.masked or optax.multi_transform "
    "applied to packed params, or inside adamx.multi_tensor): its buckets mix many leaves, so "
    "no per-leaf mask of them exists. Pass the mask to adamx instead "
    "(adamx.adamw(..., mask=...) or the weight-decay stages' mask=), which resolves it against "
    "the original paths, or apply optax.masked outside multi_tensor / to unpacked params."
)


def exclude_paths(*patterns: str) -> Callable[[PyTree], PyTree]:
    """A mask that is True everywhere except on leaves whose path matches a pattern.

    Each pattern is a regular expression searched (``re.search``) in the leaf's
    ``/``-joined path, e.g. ``exclude_paths(r"bias$", r"norm", r"(^|/)scale$")``.

    Args:
      *patterns: regular expressions; at least one.

    Returns:
      ``params -> pytree of bools``.

    Example:
      >>> import adamx
      >>> tx = adamx.adamw(1e-3, weight_decay=0.1, mask=adamx.exclude_paths("bias", "norm"))
    """
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"exclude_paths takes one or more regular expressions (str), got {patterns!r}."
        )
    compiled = [re.compile(p) for p in patterns]
    return path_mask(lambda path, _: not any(c.search(path) for c in compiled))


# ---------------------------------------------------------------------------
# Masks on packed trees: resolved against the tree that was packed.


def _is_packed(x: Any) -> bool:
    return isinstance(x, PackedTree)


def contains_packed(tree: PyTree) -> bool:
    """Whether ``tree`` is or holds a ``PackedTree`` (``adamx.pack``; inside ``multi_tensor``)."""
    return any(_is_packed(x) for x in jax.tree.leaves(tree, is_leaf=_is_packed))


def unpacked_view(tree: PyTree) -> PyTree:
    """``tree`` with each ``PackedTree`` replaced by the structure it packs, as abstract leaves.

    The leaves of a packed part are ``jax.ShapeDtypeStruct`` (shape and dtype of the
    original leaf, no values): a mask reads paths, shapes and dtypes, never values.
    """

    def view(x):
        if not _is_packed(x):
            return x
        dtypes: list[np.dtype | None] = [None] * len(x.spec.shapes)
        for i, leaf in zip(x.spec.layout.loose, x.loose, strict=True):
            dtypes[i] = jnp.result_type(leaf)
        for name, indices in x.spec.layout.buckets:
            for i in indices:
                dtypes[i] = jnp.result_type(x.buckets[name])
        leaves = [jax.ShapeDtypeStruct(s, d) for s, d in zip(x.spec.shapes, dtypes, strict=True)]
        return x.spec.treedef.unflatten(leaves)

    return jax.tree.map(view, tree, is_leaf=_is_packed)


def resolve_mask(stage: str, mask: Any, tree: PyTree) -> PyTree:
    r"""``mask`` (a bool pytree or a callable) as a tree of flags with ``tree``'s structure.

    On a plain tree each leaf gets the Python bool of the mask leaf above it (a mask
    may be a prefix of the tree). A ``PackedTree`` inside ``tree`` is seen as the tree
    it packs (``unpacked_view``): the mask is evaluated and checked against the
    model's paths, then laid out like the packed tree. A loose leaf gets its bool; a
    bucket gets one bool when all its (non-empty) leaves agree, otherwise a static
    NumPy bool array with one entry per element,

    .. math::
        \text{flags}[\text{bucket}] = \operatorname{concat}_i(\text{mask}_i \cdot 1_{n_i})

    Raises:
      ValueError / TypeError: the mask does not fit the (unpacked) tree, or its leaves
        are not Python bools (``check_mask``).
    """
    view = unpacked_view(tree)
    mask_tree = mask(view) if callable(mask) else mask
    check_mask(stage, mask_tree, view)
    mask_leaves, mask_def = jax.tree.flatten(mask_tree)
    subtrees = mask_def.flatten_up_to(view)
    flags = iter(
        [
            bool(m)
            for m, sub in zip(mask_leaves, subtrees, strict=True)
            for _ in jax.tree.leaves(sub)
        ]
    )
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_packed)
    resolved = []
    for leaf in leaves:
        if _is_packed(leaf):
            resolved.append(_packed_flags(leaf, [next(flags) for _ in leaf.spec.shapes]))
        else:
            resolved.append(next(flags))
    return treedef.unflatten(resolved)


def _packed_flags(packed: PackedTree, flags: list) -> PackedTree:
    """Per-leaf ``flags`` laid out like ``packed``: a bool per loose leaf and per uniform bucket."""
    spec = packed.spec

    def bucket(indices):
        sizes = [math.prod(spec.shapes[i]) for i in indices]
        present = {flags[i] for i, n in zip(indices, sizes, strict=True) if n}
        if len(present) <= 1:
            return present.pop() if present else False
        return np.repeat(np.array([flags[i] for i in indices]), sizes)

    return PackedTree(
        loose=tuple(flags[i] for i in spec.layout.loose),
        buckets={name: bucket(indices) for name, indices in spec.layout.buckets},
        spec=spec,
    )


def check_not_masked_packed(stage: str, tree: PyTree) -> None:
    """Refuse a ``PackedTree`` with masked-out parts: ``optax.masked`` masked the buckets.

    ``optax.masked`` (or ``optax.multi_transform``) evaluates its mask on the tree it is
    given; on packed params that is the buckets, not the model's leaves, so a bucket
    would be masked as a whole whatever the leaves in it say.
    """
    for packed in jax.tree.leaves(tree, is_leaf=_is_packed):
        parts = (packed.loose, packed.buckets) if _is_packed(packed) else ()
        if any(_is_masked_node(x) for x in jax.tree.leaves(parts, is_leaf=_is_masked_node)):
            raise ValueError(_MASKED_PACKED.format(stage=stage))


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


_MASKED_PACKED = (
    "{stage} was given a PackedTree with masked-out parts: an optax.masked (or "
    "optax.multi_transform) around it evaluated its mask on the packed buckets, not on your "
    "parameters, so whole buckets of unrelated leaves would be masked together. Pass the mask "
    "to adamx instead (adamx.adamw(..., mask=...), add_decoupled_weight_decay(..., mask=...), "
    "add_coupled_weight_decay(..., mask=...)), which resolves it against the packed tree's "
    "original paths, or apply the optax wrapper outside adamx.multi_tensor / to unpacked params."
)
