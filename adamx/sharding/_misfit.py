"""The error for a state that cannot be laid out like its parameter: which leaf, and the fix."""

import functools
import math
from collections.abc import Sequence

import jax
import optax
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from .._types import PyTree, PyTreeDef
from ._trace import LAYOUT_ERRORS, Specs, find_misfits, layout_fits, trace_init


def checked_trace(
    tx: optax.GradientTransformation,
    paths: Sequence[tuple],
    leaves: Sequence[jax.ShapeDtypeStruct],
    treedef: PyTreeDef,
    mesh: Mesh | AbstractMesh,
    specs: Specs,
) -> PyTree:
    """``trace_init``, or a ValueError naming the parameter whose state cannot follow its layout.

    An error that the replicated layout raises too is not about layout, and one that only
    a combination of split parameters raises has no single culprit: both propagate as JAX
    raised them.
    """
    try:
        return trace_init(tx, leaves, treedef, mesh, specs)
    except LAYOUT_ERRORS as err:
        fits = functools.partial(layout_fits, tx, leaves, treedef, mesh, specs)
        if not fits([]):
            raise
        culprit = next((i for i in find_misfits(fits, leaves, specs) if not fits([i])), None)
        if culprit is None:
            raise
        message = _message(tx, paths, leaves, treedef, mesh, specs, culprit, err)
        raise ValueError(message) from err


def _message(tx, paths, leaves, treedef, mesh, specs, i: int, err: Exception) -> str:
    shape, spec = tuple(leaves[i].shape), specs[i]
    local = _per_device(shape, spec, mesh)
    text = (
        f"the optimizer state of params{jax.tree_util.keystr(paths[i])} (shape {shape}, "
        f"sharded {spec}: {local} per device) cannot be laid out like the parameter: "
    )
    if isinstance(err, ValueError):  # the state format's own message
        return text + str(err)
    text += f"JAX says: {str(err).strip().splitlines()[0]}"
    if len(spec) != len(shape) or spec[-1] is None:
        return text + "\nShard another axis of this parameter, or leave it replicated."
    block = _block_size(tx, leaves, treedef, i)
    blocks = f"blocks of {block}" if block else "blocks of block_size elements"
    return text + (
        f"\nA blockwise moment format (adamx.blockwise_8bit / blockwise_4bit) cuts the last "
        f"axis into {blocks}, "
        f"and a block must lie on one device, but each device holds {local[-1]} elements "
        f"of this last axis. Fix: a block_size that divides {local[-1]} (e.g. "
        f"block_size={_pow2_divisor(local[-1])}), or shard another axis of "
        "this parameter (or leave it replicated)."
    )


def _block_size(tx, leaves, treedef, i: int) -> int | None:
    """The block of the state of leaf ``i`` (a leaf shaped ``(*lead, n_blocks, block)``), if any.

    Only a hint for the message: None when the state has no such leaf or will not trace.
    """
    shape = tuple(leaves[i].shape)
    alone = [
        leaf if j == i else jax.ShapeDtypeStruct((), leaf.dtype) for j, leaf in enumerate(leaves)
    ]
    try:
        state = jax.eval_shape(tx.init, jax.tree.unflatten(treedef, alone))
    except (*LAYOUT_ERRORS, TypeError):
        return None
    for s in jax.tree.leaves(state):
        if not (s.ndim == len(shape) + 1 and s.shape[:-2] == shape[:-1] and s.shape[-1] > 1):
            continue
        for block in (s.shape[-1], 2 * s.shape[-1]):  # 8-bit codes; 4-bit: two codes a byte
            if (s.shape[-2] - 1) * block < shape[-1] <= s.shape[-2] * block:
                return block
    return None


def _pow2_divisor(n: int) -> int:
    """The largest power of two dividing ``n`` (at most 256)."""
    return min(n & -n, 256) if n > 0 else 1


def _per_device(shape: tuple, spec: PartitionSpec, mesh: Mesh | AbstractMesh) -> tuple:
    """The shape of one device's shard of an array of ``shape`` split by ``spec``."""
    local = list(shape)
    for dim, entry in enumerate(spec):
        names = entry if isinstance(entry, tuple) else () if entry is None else (entry,)
        local[dim] = -(-shape[dim] // math.prod(mesh.shape[name] for name in names))
    return tuple(local)
