"""Optimizer state on a ``jax.sharding.Mesh``: ZeRO-1 and per-device memory.

Adam's update is elementwise, so its state is best kept sharded exactly like the
parameters, and a jitted step then needs no collectives. On a mesh with
``Explicit`` axes ``jax.jit(tx.init)(params)`` already does that (every moment
is a ``zeros_like`` of its parameter); on ``Auto`` axes pass
``out_shardings=state_shardings(tx, params)``.

ZeRO-1 (Rajbhandari et al. 2020) goes one step further for data-parallel
training, where every device holds the full parameters: it splits the optimizer
state across the data-parallel axis, so each device stores and updates only
``1/n`` of ``m`` and ``v``; the updates are then gathered so that the
parameters stay replicated. The memory for the state drops by ``n``, the maths is
unchanged (the numbers may differ in the last bit: XLA fuses and reduces each
layout's program in its own order)::

    per-device state bytes = bytes(m, v) / n + bytes(step counts)

Everything here is JAX's own machinery: ``NamedSharding``,
``jax.lax.with_sharding_constraint`` (``jax.sharding.reshard`` on ``Explicit``
axes); XLA inserts the collectives.

Example:
  >>> import adamx, adamx.sharding, jax
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
  >>> tx = adamx.sharding.zero1(adamx.adamw(1e-3), mesh, axis="data")

References:
  Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", arXiv:1910.02054.
"""

from collections.abc import Hashable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._types import PyTree

__all__ = ["state_bytes_per_device", "state_shardings", "zero1", "zero1_shardings"]


def state_shardings(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
    """The shardings of ``tx``'s state when each moment is laid out like its parameter.

    On a mesh with ``Explicit`` axes (``jax.make_mesh``'s default) the sharding
    is part of each array's type and ``jax.jit(tx.init)(params)`` already
    returns a state sharded like ``params``. On ``Auto`` axes, zeros carry no
    sharding, so say it: ``jax.jit(tx.init, out_shardings=state_shardings(tx,
    params))``.

    A state leaf gets the sharding of the parameter whose tree path it contains
    and whose shape it has (``mu["w"]`` is laid out like ``params["w"]``); any
    other leaf (step counts, leaves of other shapes) is replicated.

    Args:
      tx: the optimizer.
      params: the parameters, as sharded ``jax.Array`` or as
        ``jax.ShapeDtypeStruct`` with a ``sharding``.

    Returns:
      A pytree of shardings with the structure of ``tx.init(params)``.

    Example:
      >>> import adamx, adamx.sharding, jax, jax.numpy as jnp
      >>> params = {"w": jnp.ones((8, 4))}
      >>> tx = adamx.adam(1e-3)
      >>> state = jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(params)
    """
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    by_path = [(tuple(path), np.shape(p), p.sharding) for path, p in param_leaves]
    if not by_path:
        return jax.tree.map(lambda _: None, jax.eval_shape(tx.init, params))
    first = by_path[0][2]
    replicated = (
        NamedSharding(first.mesh, PartitionSpec()) if isinstance(first, NamedSharding) else first
    )

    def leaf_sharding(path, leaf):
        path = tuple(path)
        for param_path, shape, sharding in by_path:
            if np.shape(leaf) == shape and _contains(path, param_path):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(leaf_sharding, jax.eval_shape(tx.init, params))


def zero1_shardings(tree: PyTree, mesh: Mesh, axis: Hashable = "data") -> PyTree:
    """The ZeRO-1 layout of ``tree``: each leaf split along ``axis`` of ``mesh``.

    A leaf is split along its first dimension whose size is a multiple of the
    size of ``axis``. Leaves with no such dimension (scalars such as step
    counts, small biases) stay replicated.

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. an optimizer
        state, or ``jax.eval_shape(tx.init, params)``).
      mesh: the device mesh.
      axis: the name of the data-parallel mesh axis.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tree``, usable as
      ``out_shardings`` of ``jax.jit`` or with ``jax.device_put``.
    """
    n = _axis_size(mesh, axis)

    def leaf_sharding(leaf):
        shape = np.shape(leaf)
        spec = [None] * len(shape)
        for dim, size in enumerate(shape):
            if size % n == 0 and size >= n:
                spec[dim] = axis
                break
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(leaf_sharding, tree)


def zero1(
    tx: optax.GradientTransformation, mesh: Mesh, axis: Hashable = "data"
) -> optax.GradientTransformationExtraArgs:
    """ZeRO-1: ``tx`` with its state sharded across ``axis``, updates replicated.

    Wraps any optax transformation (adamx or not). ``init`` and ``update``
    constrain the state to :func:`zero1_shardings`, so under ``jax.jit`` each
    device keeps and updates ``1/n`` of every moment; the updates are
    constrained to be replicated, as the parameters they are added to. The
    maths is that of ``tx``, element by element (results may differ from the
    unsharded run in the last bit, from XLA's fusion and reduction order).

    Use it for data-parallel training with replicated parameters; when the
    parameters themselves are sharded (FSDP, tensor parallel), plain ``tx``
    already keeps the state sharded like them.

    Args:
      tx: the optimizer, e.g. ``adamx.adamw(...)``.
      mesh: the device mesh.
      axis: the name of the data-parallel mesh axis.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the state of ``tx``.

    Example:
      >>> import adamx, adamx.sharding, jax, optax
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> tx = adamx.sharding.zero1(adamx.adamw(1e-3), mesh)
      >>> params = {"w": jax.numpy.ones((8, 4))}
      >>> state = jax.jit(tx.init)(params)  # m and v split over "data"
    """
    _axis_size(mesh, axis)
    replicated = NamedSharding(mesh, PartitionSpec())

    def constrain_state(state):
        return _constrain(state, zero1_shardings(state, mesh, axis))

    def init_fn(params):
        return constrain_state(tx.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        updates, state = optax.with_extra_args_support(tx).update(
            updates, state, params, **extra_args
        )
        updates = _constrain(updates, jax.tree.map(lambda _: replicated, updates))
        return updates, constrain_state(state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def state_bytes_per_device(tree: PyTree) -> dict[Any, int]:
    """Bytes of ``tree`` stored on each device (only the shards a device holds).

    Args:
      tree: a pytree of ``jax.Array`` (e.g. an optimizer state).

    Returns:
      ``{device: bytes}`` over every device holding part of ``tree``.

    Example:
      >>> import adamx.sharding, jax.numpy as jnp
      >>> adamx.sharding.state_bytes_per_device({"m": jnp.zeros(4)})  # doctest: +SKIP
      {CpuDevice(id=0): 16}
    """
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            raise TypeError(
                f"state_bytes_per_device: expected a pytree of jax.Array, found a leaf of type "
                f"{type(leaf).__name__}. Pass the materialised state (after tx.init), not its "
                "shapes."
            )
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


def _contains(path: tuple, part: tuple) -> bool:
    """Whether ``part`` occurs in ``path`` as a contiguous run of keys."""
    n = len(part)
    return any(path[i : i + n] == part for i in range(len(path) - n + 1))


def _constrain(tree: PyTree, shardings: PyTree) -> PyTree:
    """Lay ``tree`` out as ``shardings``: a constraint on Auto mesh axes, a reshard on Explicit."""

    def one(x, sharding):
        explicit = any(t == AxisType.Explicit for t in sharding.mesh.axis_types)
        if explicit:
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(one, tree, shardings)


def _axis_size(mesh: Mesh, axis: Hashable) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}. "
            'Build one with jax.make_mesh((n_devices,), ("data",)).'
        )
    if axis not in mesh.shape:
        raise ValueError(
            f"axis {axis!r} is not an axis of the mesh, whose axes are {tuple(mesh.shape)}. "
            "Pass the name of the data-parallel axis, e.g. axis='data'."
        )
    return mesh.shape[axis]
