"""Stages that read a statistic of a whole leaf, and how paths that hand a chain pieces of
leaves refuse them.

A per-tensor statistic (an RMS, the fraction of an update kept) is only right over the tensor.
``adamx.pack`` / ``multi_tensor`` hand a chain flat buckets that mix many leaves, and
``adamx.sparse_rows`` hands it a table's touched rows: over either, the statistic would be of
no tensor. Such a stage calls :func:`refuse_buckets` in its ``init`` and registers its state
type with :func:`whole_leaf_state`, so that ``sparse_rows`` finds it in a chain's state.
"""

from collections.abc import Callable

import jax

from .._packed import PackedTree
from .._types import PyTree

_STAGES: dict[type, str] = {}  # state type -> the stages it marks, as errors name them


def whole_leaf_state(stages: str) -> Callable[[type], type]:
    """Class decorator: mark a state type as that of a per-tensor stage (named ``stages``)."""

    def register(cls: type) -> type:
        _STAGES[cls] = stages
        return cls

    return register


def whole_leaf_stages(state: PyTree) -> list[str]:
    """The names of the per-tensor stages whose states ``state`` holds (empty: none)."""
    marked = jax.tree.leaves(state, is_leaf=lambda x: type(x) in _STAGES)
    return sorted({_STAGES[type(x)] for x in marked if type(x) in _STAGES})


def refuse_buckets(name: str, params: PyTree) -> None:
    """A ``PackedTree`` with buckets mixes leaves: a per-tensor statistic of a bucket is of
    no tensor, so ``name`` refuses it (raises ValueError)."""
    packed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, PackedTree))
    for tree in packed:
        if isinstance(tree, PackedTree) and tree.buckets:
            raise ValueError(
                f"{name} computes one statistic per parameter leaf, but it was handed the flat "
                "buckets of adamx.pack / multi_tensor, which mix many leaves: each bucket's "
                "statistic would act on every leaf in it. Keep these leaves out of the buckets "
                "(pack / multi_tensor min_size=0), or run this chain without packing (optax."
                "multi_transform can send the small leaves to an elementwise optimizer)."
            )
