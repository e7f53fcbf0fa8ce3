"""``pack``: hold the small leaves of a pytree in flat per-dtype buckets.

A model with thousands of small leaves (biases, norms, small embedding tables) pays
per leaf: each is a buffer handed to the compiled step, a fused loop of its own, and
more HLO to compile. Packed, the step takes a handful of buffers; any elementwise
optax chain runs on the ``PackedTree`` directly.
"""

from typing import Any, NamedTuple

import jax

from .._packed import Layout, PackedTree, pack_leaves, plan_layout
from .._placement import check_packable
from .._types import PyTree, PyTreeDef
from .._validation import check_size

_MIN_SIZE_MEANS = "leaves smaller than it are packed"


def pack(tree: PyTree, *, min_size: int = 4096) -> PackedTree:
    r"""Pack the leaves of ``tree`` smaller than ``min_size`` into one flat bucket per dtype.

    Hold the parameters packed between steps and unpack them inside the jitted step:
    the step then takes and returns a handful of buffers instead of thousands, and
    the optimizer (any elementwise chain, unwrapped) runs on the packed tree. The
    gradient with respect to the packed tree is packed too:

    .. math::
        \nabla_{\operatorname{pack}(\theta)} L(\operatorname{unpack}(\cdot))
        = \operatorname{pack}(\nabla_\theta L)

    Args:
      tree: a pytree of arrays (concrete or traced).
      min_size: leaves with at least this many elements stay as they are.

    Returns:
      A ``PackedTree``; ``.unpack()`` returns ``tree``.

    Raises:
      ValueError: if ``min_size`` is not an int >= 0, or a leaf that would be packed is
        sharded over several devices (packing would gather it).

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {f"b{i}": jnp.zeros(64) for i in range(100)}
      >>> packed, tx = adamx.pack(params), adamx.adamw(1e-3)
      >>> state = tx.init(packed)
      >>> loss = lambda p: sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(p))
      >>> grads = jax.grad(lambda p: loss(p.unpack()))(packed)
      >>> updates, state = tx.update(grads, state, packed)
      >>> packed = optax.apply_updates(packed, updates)
      >>> packed.buckets["float32"].shape, packed.unpack()["b7"].shape
      ((6400,), (64,))
    """
    check_min_size("pack", min_size)
    flat = flatten_for_packing("pack", "leaf", tree, min_size)
    return pack_leaves(flat.leaves, flat.treedef, flat.layout)


def check_min_size(who: str, min_size: Any) -> None:
    """``min_size`` is an int >= 0 (the message names ``who``, the function given it)."""
    check_size(f"{who}: min_size", min_size, what=_MIN_SIZE_MEANS)


class Flat(NamedTuple):
    """A tree flattened for packing: leaf paths, leaves, structure and layout."""

    paths: list[tuple]
    leaves: list[Any]
    treedef: PyTreeDef
    layout: Layout


def flatten_for_packing(who: str, what: str, tree: PyTree, min_size: int) -> Flat:
    """``tree`` flattened, with the layout of its leaves; refuses to pack sharded leaves.

    ``who`` (the function) and ``what`` (the kind of leaf: "parameter", "gradient")
    name the refused leaf in the error.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [path for path, _ in paths_and_leaves]
    leaves = [leaf for _, leaf in paths_and_leaves]
    layout = plan_layout(leaves, min_size)
    check_packable(who, what, paths, leaves, layout)
    return Flat(paths, leaves, treedef, layout)
