"""ZeRO-1: the optimizer state split across the data-parallel axis, updates replicated."""

import functools
from collections.abc import Hashable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .._types import PyTree, PyTreeDef
from ._trace import (
    REPLICATED,
    find_misfits,
    layout_fits,
    mesh_key,
    shape_dtype,
    spec_of,
    trace_init,
)


def zero1_shardings(tree: PyTree, mesh: Mesh, axis: Hashable = "data") -> PyTree:
    """The ZeRO-1 split of each leaf of ``tree``: its first dimension divisible by ``axis``.

    A leaf is split along its first dimension whose size is a multiple of the
    size of ``axis``. Leaves with no such dimension (scalars such as step
    counts, small biases) stay replicated. This is a rule on shapes alone:
    :func:`zero1` applies it to the *parameters* and lays the state out like
    them; for the state of a ``zero1`` optimizer, whatever its format, use
    ``state_shardings(zero1(tx, mesh, axis), params)``.

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. the parameters).
      mesh: the device mesh.
      axis: the name of the data-parallel mesh axis.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tree``, usable as
      ``out_shardings`` of ``jax.jit`` or with ``jax.device_put``.

    Example:
      >>> import adamx.sharding, jax, jax.numpy as jnp
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> tree = {"w": jnp.ones((8, 4)), "step": jnp.zeros((), jnp.int32)}
      >>> shardings = adamx.sharding.zero1_shardings(tree, mesh, "data")
      >>> shardings["w"].spec, shardings["step"].spec
      (P('data', None), P())
    """
    n = _axis_size(mesh, axis)
    return jax.tree.map(lambda x: NamedSharding(mesh, _zero1_specs(np.shape(x), axis, n)[0]), tree)


def zero1(
    tx: optax.GradientTransformation, mesh: Mesh, axis: Hashable = "data"
) -> optax.GradientTransformationExtraArgs:
    """ZeRO-1: ``tx`` with its state sharded across ``axis``, updates replicated.

    Wraps any optax transformation (adamx or not). Each parameter gets a ZeRO-1
    split (its first dimension divisible by the size of ``axis``; see
    :func:`zero1_shardings`), and the state is laid out like the parameters
    would be under that split (as :func:`state_shardings` does), so every state
    format follows: float moments split like the parameter, 8-bit codes and
    scales keep whole blocks on each device. ``init`` and ``update`` constrain
    the state to that layout, so under ``jax.jit`` each device keeps and updates
    ``1/n`` of every moment; the updates are constrained to be replicated, as the
    parameters they are added to. The maths is that of ``tx``, element by element
    (results may differ from the unsharded run in the last bit, from XLA's fusion
    and reduction order).

    A parameter whose state cannot be split along a dimension (a quantization
    block longer than the shard of the last axis, a leaf ``multi_tensor`` packs)
    is tried on its next divisible dimension, and keeps a replicated state if
    none fits; :func:`state_bytes_per_device` shows the result.

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
      >>> with jax.set_mesh(mesh):  # make_mesh's axes are Explicit: jit needs the mesh
      ...     state = jax.jit(tx.init)(params)  # m and v split over "data"
    """
    n = _axis_size(mesh, axis)

    @functools.lru_cache(maxsize=64)
    def layout(treedef, leaves: tuple) -> list[PartitionSpec]:
        specs = _zero1_fit(tx, list(leaves), treedef, mesh, axis, n)
        return [spec_of(s) for s in jax.tree.leaves(trace_init(tx, leaves, treedef, mesh, specs))]

    def constrain_state(state, params):
        leaves, treedef = jax.tree.flatten(params)
        specs = layout(treedef, tuple(shape_dtype(x) for x in leaves))
        state_leaves, state_def = jax.tree.flatten(state)
        if len(specs) != len(state_leaves):
            raise ValueError(
                f"zero1: the state has {len(state_leaves)} leaves, but tx.init on parameters "
                f"shaped like {'the params' if params is not None else 'the updates'} gives "
                f"{len(specs)}. Pass params to update (tx.update(grads, state, params))."
            )
        laid_out = [lay_out(x, spec, mesh) for x, spec in zip(state_leaves, specs, strict=True)]
        return jax.tree.unflatten(state_def, laid_out)

    def init_fn(params):
        return constrain_state(tx.init(params), params)

    def update_fn(updates, state, params=None, **extra_args):
        like_params = params if params is not None else updates
        updates, state = optax.with_extra_args_support(tx).update(
            updates, state, params, **extra_args
        )
        updates = jax.tree.map(lambda u: lay_out(u, REPLICATED, mesh), updates)
        return updates, constrain_state(state, like_params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lay_out(x: jax.Array, spec: PartitionSpec, mesh: Mesh) -> jax.Array:
    """Lay ``x`` out as ``spec``: a reshard on Explicit axes, a sharding constraint on Auto ones.

    Inside an abstract trace on an Explicit copy of ``mesh`` (``trace_init``), the
    context mesh is used, so the layout shows in the traced types.
    """
    context = jax.sharding.get_abstract_mesh()
    same = not context.empty and mesh_key(context)[:2] == mesh_key(mesh)[:2]
    if same and all(t == AxisType.Explicit for t in context.axis_types):
        return jax.sharding.reshard(x, spec)
    sharding = NamedSharding(mesh, spec)
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def _zero1_specs(shape: tuple, axis: Hashable, n: int) -> list[PartitionSpec]:
    """The ZeRO-1 splits of a leaf to try, in order: each divisible dimension, then replicated."""
    specs = []
    for dim, size in enumerate(shape):
        if size % n == 0 and size >= n:
            specs.append(PartitionSpec(*[axis if d == dim else None for d in range(len(shape))]))
    return [*specs, REPLICATED]


def _zero1_fit(
    tx: optax.GradientTransformation,
    leaves: Sequence[jax.ShapeDtypeStruct],
    treedef: PyTreeDef,
    mesh: Mesh,
    axis: Hashable,
    n: int,
) -> list[PartitionSpec]:
    """The first ZeRO-1 split of each parameter whose state ``tx.init`` can lay out like it."""
    options = [_zero1_specs(leaf.shape, axis, n) for leaf in leaves]
    choice = [0] * len(leaves)
    while True:
        specs = [opts[k] for opts, k in zip(options, choice, strict=True)]
        fits = functools.partial(layout_fits, tx, leaves, treedef, mesh, specs)
        misfits = find_misfits(fits, leaves, specs)
        if not misfits:
            return specs
        for i in misfits:
            choice[i] += 1


def _axis_size(mesh: Mesh, axis: Hashable) -> int:
    """The size of ``axis``; a TypeError/ValueError that names the fix for a wrong mesh or axis."""
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
