"""The abstract trace every layout question is answered with: ``tx.init`` on typed params.

``jax.eval_shape(tx.init)`` runs on a copy of the mesh whose axes are ``Explicit``,
with each parameter's ``PartitionSpec`` in its type: JAX's sharding rules carry the
layout through whatever the state format computes, and each state leaf's spec is read
off its type. No FLOPs, no memory. A layout the state cannot follow makes the trace
raise one of ``LAYOUT_ERRORS``; the search below finds which parameters cause it.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax._src.core as _jax_core  # ShardingTypeError: no public module exports it (jax 0.10)
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from .._types import PyTree, PyTreeDef

REPLICATED = PartitionSpec()

# How a trace says "this layout does not fit": a state format's or a packing path's own
# refusal (ValueError), or JAX's sharding-in-types rules (e.g. a reshape that would move
# a split axis). Anything else is a bug, and propagates.
LAYOUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    getattr(_jax_core, "ShardingTypeError", ValueError),
)

Specs = Sequence[PartitionSpec]


def trace_init(
    tx: optax.GradientTransformation,
    leaves: Sequence[jax.ShapeDtypeStruct],
    treedef: PyTreeDef,
    mesh: Mesh | AbstractMesh,
    specs: Specs,
) -> PyTree:
    """``jax.eval_shape(tx.init)`` on an ``Explicit`` copy of ``mesh``, params typed ``specs``."""
    explicit = mesh.abstract_mesh if isinstance(mesh, Mesh) else mesh
    explicit = explicit.update_axis_types({name: AxisType.Explicit for name in mesh.axis_names})
    typed = [
        jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(explicit, spec))
        for leaf, spec in zip(leaves, specs, strict=True)
    ]
    with jax.sharding.use_abstract_mesh(explicit):
        return jax.eval_shape(tx.init, jax.tree.unflatten(treedef, typed))


def layout_fits(
    tx: optax.GradientTransformation,
    leaves: Sequence[jax.ShapeDtypeStruct],
    treedef: PyTreeDef,
    mesh: Mesh | AbstractMesh,
    specs: Specs,
    subset: Sequence[int],
) -> bool:
    """Whether ``tx.init`` traces with ``subset`` split by ``specs`` (the rest replicated)."""
    chosen = set(subset)
    trial = [spec if i in chosen else REPLICATED for i, spec in enumerate(specs)]
    try:
        trace_init(tx, leaves, treedef, mesh, trial)
    except LAYOUT_ERRORS:
        return False
    return True


def find_misfits(
    fits: Callable[[Sequence[int]], bool],
    leaves: Sequence[jax.ShapeDtypeStruct],
    specs: Specs,
) -> list[int]:
    """The split leaves whose layout makes ``tx.init`` fail ([] if the whole layout traces).

    One trial per distinct (shape, dtype, spec) first (a model has few: its layers
    repeat), split alone with the rest replicated; if no group fails alone, bisection.
    """
    split = [i for i, spec in enumerate(specs) if spec != REPLICATED]
    if fits(split):
        return []
    groups: dict[tuple, list[int]] = {}
    for i in split:
        groups.setdefault((leaves[i].shape, leaves[i].dtype, specs[i]), []).append(i)
    misfits = [i for group in groups.values() if not fits(group[:1]) for i in group]
    return misfits or _bisect(fits, split)


def _bisect(fits: Callable[[Sequence[int]], bool], candidates: Sequence[int]) -> list[int]:
    """The candidates that do not fit, by bisection (all of them if they only fail together)."""
    if not candidates or fits(candidates):
        return []
    if len(candidates) == 1:
        return list(candidates)
    mid = len(candidates) // 2
    found = _bisect(fits, candidates[:mid]) + _bisect(fits, candidates[mid:])
    return found or list(candidates)


def spec_of(aval: Any) -> PartitionSpec:
    """The spec in a traced state leaf's type (replicated if it has none)."""
    spec = list(getattr(getattr(aval, "sharding", None), "spec", None) or ())
    while spec and spec[-1] is None:  # P("x", None) is P("x"): the user's spelling
        spec.pop()
    return PartitionSpec(*spec)


def shape_dtype(leaf: Any) -> jax.ShapeDtypeStruct:
    """A leaf's shape and dtype (and weak type, as of a Python float), without its sharding."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type)
    aval = jax.typeof(leaf)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


def mesh_key(mesh: Any) -> tuple:
    """What makes two meshes the same: axis names, sizes and (concrete meshes) devices."""
    devices = tuple(np.asarray(mesh.device_ids).flat) if isinstance(mesh, Mesh) else ()
    return tuple(mesh.axis_names), tuple(mesh.axis_sizes), devices
