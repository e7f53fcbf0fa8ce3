"""Where each leaf of a (possibly packed) tree sits in the tree the user built.

A format that is not elementwise needs two facts the tree itself hides when
``adamx.pack`` / ``multi_tensor`` have packed it into a ``PackedTree``: which
parameters a bucket holds (to refuse a bucket it would store differently), and
each leaf's index in the unpacked tree (its rounding key, so random bits do not
depend on packing).
"""

import jax
import numpy as np

from .._packed import PackedTree
from .._types import PyTree
from .._validation import _keystr
from .protocol import BucketMembers


def _is_packed(node: object) -> bool:
    return isinstance(node, PackedTree)


def leaf_ids(tree: PyTree) -> list[int]:
    """Each leaf's index in the tree as the user built it (a ``PackedTree`` is looked through:
    a loose leaf keeps its index in the unpacked tree, and bucket j of a packed tree with n
    parameters gets n + j)."""
    ids, offset = [], 0
    for node in jax.tree.leaves(tree, is_leaf=_is_packed):
        if isinstance(node, PackedTree):
            n, buckets = len(node.spec.shapes), len(node.spec.layout.buckets)
            ids += [offset + i for i in node.spec.layout.loose]
            ids += [offset + n + j for j in range(buckets)]
            offset += n + buckets
        else:
            ids.append(offset)
            offset += 1
    return ids


def bucket_members(tree: PyTree) -> list[BucketMembers | None]:
    """For each leaf of ``tree``: None, or ``((path, size), ...)`` of the leaves packed in it."""
    out: list[BucketMembers | None] = []
    for prefix, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_packed)[0]:
        if not isinstance(node, PackedTree):
            out.append(None)
            continue
        spec = node.spec
        dummy = spec.treedef.unflatten(range(len(spec.shapes)))
        inner = jax.tree_util.tree_flatten_with_path(dummy)[0]
        paths = [tuple(prefix) + tuple(path) for path, _ in inner]
        out += [None] * len(spec.layout.loose)
        for _, indices in spec.layout.buckets:
            out.append(tuple((_keystr(paths[i]), int(np.prod(spec.shapes[i]))) for i in indices))
    return out
