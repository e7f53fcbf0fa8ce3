"""``PackedTree``: a pytree whose small leaves are packed into flat per-dtype buckets.

The record and its packing maths, shared by every layer that meets a packed tree
(formats keep one state entry per bucket, masks resolve against the original paths,
``adamx.pack`` and ``multi_tensor`` build it).
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._types import PyTree, PyTreeDef


class Layout(NamedTuple):
    """Which leaf goes where: static, computed from shapes and dtypes alone."""

    loose: tuple[int, ...]  # indices of the leaves kept as they are
    buckets: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype name, indices packed in order)


class _Spec(NamedTuple):
    """How a tree was packed: static (shapes and dtypes only), so it is pytree metadata."""

    treedef: PyTreeDef
    shapes: tuple[tuple[int, ...], ...]  # every leaf's shape, in flattening order
    layout: Layout


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["loose", "buckets"], meta_fields=["spec"]
)
@dataclasses.dataclass(frozen=True)
class PackedTree:
    """A tree with its small leaves packed into flat per-dtype buckets (made by ``pack``).

    A pytree whose leaves are the large leaves, as they are, and one 1-D bucket per
    dtype; any elementwise optax chain runs on it directly. ``unpack()`` gives the
    original tree back, and differentiating through it packs the gradient (its VJP
    is a concatenation), so ``jax.grad(lambda p: loss(p.unpack()))(packed)`` is itself
    a ``PackedTree``.

    Attributes:
      loose: the large leaves, in the flattening order of the tree.
      buckets: dtype name -> 1-D array: that dtype's small leaves, ravelled and concatenated.
      spec: the static layout (tree structure, shapes, which leaf is where).
    """

    loose: tuple
    buckets: dict
    spec: _Spec

    def unpack(self) -> PyTree:
        """The tree that was packed: slices of the buckets, reshaped, in its structure."""
        return self.spec.treedef.unflatten(_unpack_leaves(self.spec, self.loose, self.buckets))

    def __contains__(self, key: Any) -> bool:
        """No key is "in" a PackedTree: hosts that probe params for a reserved key
        (flax's ``TrainState`` looks for ``OVERWRITE_WITH_GRADIENT``) find none."""
        del key
        return False


def plan_layout(leaves: Sequence[Any], min_size: int) -> Layout:
    """Which leaves to pack: those with fewer than ``min_size`` elements, grouped by dtype."""
    loose, buckets = [], {}
    for i, leaf in enumerate(leaves):
        if np.size(leaf) >= min_size:
            loose.append(i)
        else:
            buckets.setdefault(jnp.result_type(leaf).name, []).append(i)
    return Layout(tuple(loose), tuple((k, tuple(v)) for k, v in sorted(buckets.items())))


def pack_leaves(leaves: Sequence[Any], treedef: PyTreeDef, layout: Layout) -> PackedTree:
    """The ``PackedTree`` of ``leaves`` (flattened from ``treedef``) laid out by ``layout``."""

    def bucket(indices):
        return jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])

    return PackedTree(
        loose=tuple(leaves[i] for i in layout.loose),
        buckets={name: bucket(indices) for name, indices in layout.buckets},
        spec=_Spec(treedef, tuple(tuple(np.shape(x)) for x in leaves), layout),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unpack_leaves(spec: _Spec, loose: tuple, buckets: dict) -> list:
    out: list[jax.Array | None] = [None] * len(spec.shapes)
    for i, leaf in zip(spec.layout.loose, loose, strict=True):
        out[i] = leaf
    for name, indices in spec.layout.buckets:
        flat, offset = buckets[name], 0
        for i in indices:
            size = math.prod(spec.shapes[i])
            out[i] = jax.lax.slice(flat, (offset,), (offset + size,)).reshape(spec.shapes[i])
            offset += size
    return out


def _unpack_fwd(spec, loose, buckets):
    return _unpack_leaves(spec, loose, buckets), None


def _unpack_bwd(spec, _, cotangents):
    """The VJP of slicing the buckets is packing the cotangents: one concatenation."""
    packed = pack_leaves(list(cotangents), spec.treedef, spec.layout)
    return packed.loose, packed.buckets


_unpack_leaves.defvjp(_unpack_fwd, _unpack_bwd)
