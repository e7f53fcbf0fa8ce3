"""Where a leaf lives: whether packing it into a flat bucket would move or retype it.

A leaf may be packed only if it is whole on every device (packing a split leaf would
gather it) and its type names no ``Explicit`` mesh axis (``jnp.concatenate`` cannot
join such leaves). These checks read shardings and axis sizes; they never catch an
exception to find out.
"""

import math
from collections.abc import Sequence
from typing import Any, TypeGuard

import jax
import jax.core
import numpy as np

from ._packed import Layout

Sharding = jax.sharding.Sharding


def sharding_of(leaf: Any) -> Sharding | None:
    """The leaf's sharding, or None for host values (NumPy arrays, Python numbers).

    A concrete array carries its own; a tracer's is in its type (``jax.typeof``), whose
    spec names the mesh axes of an Explicit mesh (all None under Auto axes, where only
    the compiler decides); an abstract ``jax.ShapeDtypeStruct`` may carry one.
    """
    if isinstance(leaf, jax.core.Tracer):
        return jax.typeof(leaf).sharding
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
        return leaf.sharding
    return None


def is_split(sharding: Sharding) -> bool:
    """Whether ``sharding`` puts different parts of the leaf on different devices.

    ``NamedSharding`` (concrete or abstract mesh): some dimension is split over mesh
    axes whose sizes multiply to more than 1. Any other ``jax.sharding.Sharding``
    (single device, GSPMD, positional): more than one device and not fully replicated.
    """
    if isinstance(sharding, jax.sharding.NamedSharding):
        sizes = dict(sharding.mesh.shape)
        return any(math.prod(sizes[axis] for axis in _axes(e)) > 1 for e in sharding.spec)
    return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def names_explicit_axes(sharding: Sharding) -> TypeGuard[jax.sharding.NamedSharding]:
    """Whether a ``NamedSharding``'s spec names an Explicit mesh axis (part of the array type)."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return False
    mesh = sharding.mesh
    explicit = {
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == jax.sharding.AxisType.Explicit
    }
    return any(set(_axes(entry)) & explicit for entry in sharding.spec)


def _axes(entry: Any) -> tuple:
    """The mesh axes of a ``PartitionSpec`` entry (none for None and UNCONSTRAINED, which
    under Auto axes leaves the choice to the compiler: not known to be split)."""
    if entry is None or entry is jax.sharding.PartitionSpec.UNCONSTRAINED:
        return ()
    return entry if isinstance(entry, tuple) else (entry,)


def check_packable(
    who: str, what: str, paths: Sequence[tuple], leaves: Sequence[Any], layout: Layout
) -> None:
    """Refuse to pack a leaf that is split over devices or typed with Explicit mesh axes.

    Split over several devices, packing would gather it; typed with an Explicit mesh
    axis (even one of size 1), ``jnp.concatenate`` cannot join it with other leaves.
    """
    for _, indices in layout.buckets:
        for i in indices:
            problem = _packing_problem(sharding_of(leaves[i]))
            if problem is None:
                continue
            where = f"the {what} at {jax.tree_util.keystr(tuple(paths[i]))}"
            raise ValueError(
                f"{who}: {where} (shape {np.shape(leaves[i])}) {problem}. Keep it out of the "
                "buckets: lower min_size below its size, replicate small leaves "
                "(PartitionSpec()), or apply the wrapped chain to this leaf without "
                "multi_tensor (optax.multi_transform with a label per group)."
            )


def _packing_problem(sharding: Sharding | None) -> str | None:
    """Why a leaf with ``sharding`` cannot join a bucket (None: it can)."""
    if sharding is None:
        return None
    if is_split(sharding):
        return (
            f"is sharded over several devices ({sharding}), and packing it into a "
            "flat bucket would gather it onto every device"
        )
    if names_explicit_axes(sharding):
        return (
            f"has a sharding over Explicit mesh axes in its type ({sharding}), which "
            "a flat bucket of several leaves cannot carry"
        )
    return None
