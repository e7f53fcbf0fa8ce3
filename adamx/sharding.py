"""Optimizer state on a ``jax.sharding.Mesh``: its layout, ZeRO-1, per-device memory.

Adam's update is elementwise, so its state is best kept sharded exactly like the
parameters, and a jitted step then needs no collectives. On a mesh with
``Explicit`` axes ``jax.jit(tx.init)(params)`` already does that; on ``Auto``
axes pass ``out_shardings=state_shardings(tx, params)``.

How does a state leaf shard "like its parameter" when it is not shaped like it
(the 8-bit codes ``(*lead, n_blocks, block)`` and scales ``(*lead, n_blocks)``)?
:func:`state_shardings` does not guess from shapes or tree paths: it runs
``tx.init`` abstractly (``jax.eval_shape``, no FLOPs, no memory) on a copy of the
mesh whose axes are ``Explicit``, with each parameter's sharding in its type.
JAX's sharding rules then carry the layout through whatever the state format
does (a ``zeros_like`` keeps it, a reshape of a sharded last axis into blocks
splits the block-count axis), and each state leaf's spec is read off its type.
A leaf computed from no parameter (step counts, PRNG keys) comes out replicated.
A format whose arrays cannot follow the parameter's layout (a quantization
block longer than a shard) makes that trace fail, and the error names the leaf.

ZeRO-1 (Rajbhandari et al. 2020) goes one step further for data-parallel
training, where every device holds the full parameters: it splits the optimizer
state across the data-parallel axis, so each device stores and updates only
``1/n`` of ``m`` and ``v``; the updates are then gathered so that the
parameters stay replicated. The memory for the state drops by ``n``, the maths is
unchanged (the numbers may differ in the last bit: XLA fuses and reduces each
layout's program in its own order)::

    per-device state bytes = bytes(m, v) / n + bytes(step counts, keys)

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

import functools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ._types import PyTree

__all__ = [
    "abstract_state",
    "state_bytes_per_device",
    "state_shardings",
    "zero1",
    "zero1_shardings",
]

_REPLICATED = PartitionSpec()


def state_shardings(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
    """The shardings of ``tx``'s state when each moment is laid out like its parameter.

    On a mesh with ``Explicit`` axes (``jax.make_mesh``'s default) the sharding
    is part of each array's type and ``jax.jit(tx.init)(params)`` already
    returns a state sharded like ``params``. On ``Auto`` axes, zeros carry no
    sharding, so say it: ``jax.jit(tx.init, out_shardings=state_shardings(tx,
    params))``.

    The layout is read off an abstract trace of ``tx.init`` (see the module
    docstring), so it holds for any state format: a float moment is sharded
    exactly like its parameter, the 8-bit codes and scales of a parameter split
    along its last axis are split along their block-count axis (each device
    keeps whole blocks), and leaves derived from no parameter are replicated.

    Args:
      tx: the optimizer (any optax transformation, including :func:`zero1`).
      params: the parameters, as sharded ``jax.Array`` or as
        ``jax.ShapeDtypeStruct`` with a ``sharding`` (a leaf without one is
        taken as replicated).

    Returns:
      A pytree of ``NamedSharding`` on the parameters' mesh, with the structure of
      ``tx.init(params)``. Without any ``NamedSharding`` among the parameters (one
      device), every leaf gets the parameters' sharding.

    Raises:
      ValueError: a state leaf cannot be laid out like its parameter (e.g. an 8-bit
        block longer than the parameter's shard); the message names the leaf, its
        per-device shape and the fix.

    Example:
      >>> import adamx, adamx.sharding, jax, jax.numpy as jnp
      >>> params = {"w": jnp.ones((8, 4))}
      >>> tx = adamx.adam(1e-3)
      >>> state = jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(params)
    """
    return jax.tree.map(lambda s: s.sharding, abstract_state(tx, params))


def abstract_state(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
    """``tx.init(params)`` as ``ShapeDtypeStruct`` with concrete shardings: a restore target.

    ``jax.eval_shape(tx.init, params)`` under ``jax.set_mesh`` of an ``Explicit``
    mesh gives shardings on an *abstract* mesh, which orbax cannot restore onto
    (``_device_assignment is not implemented for AbstractMesh``), and on ``Auto``
    axes it gives none. This gives each state leaf its shape, dtype and the
    sharding of :func:`state_shardings` on the parameters' own mesh (for a
    :func:`zero1` optimizer, its split state), so a checkpoint restores straight
    into the layout the training step expects.

    Args:
      tx: the optimizer.
      params: the parameters, as sharded ``jax.Array`` or ``jax.ShapeDtypeStruct``.

    Returns:
      A pytree of ``jax.ShapeDtypeStruct`` with the structure of ``tx.init(params)``.

    Example:
      >>> import adamx, adamx.sharding, jax.numpy as jnp
      >>> target = adamx.sharding.abstract_state(adamx.adam(1e-3), {"w": jnp.ones(3)})
      >>> target[0].mu["w"].shape
      (3,)
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path for path, _ in flat]
    leaves = [_shape_dtype(leaf) for _, leaf in flat]
    mesh, specs, default = _params_layout(paths, [leaf for _, leaf in flat])
    if mesh is None:  # no mesh: one device, or no sharding given
        state = jax.eval_shape(tx.init, jax.tree.unflatten(treedef, leaves))
        return jax.tree.map(lambda s: _with_sharding(s, default), state)
    state = _checked_trace(tx, paths, leaves, treedef, mesh, specs)
    return jax.tree.map(lambda s: _with_sharding(s, NamedSharding(mesh, _spec(s))), state)


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
      >>> state = jax.jit(tx.init)(params)  # m and v split over "data"
    """
    n = _axis_size(mesh, axis)

    @functools.lru_cache(maxsize=64)
    def layout(treedef, leaves) -> list[PartitionSpec]:
        specs = _zero1_fit(tx, list(leaves), treedef, mesh, axis, n)
        state = _trace(tx, list(leaves), treedef, mesh, specs)
        return [_spec(s) for s in jax.tree.leaves(state)]

    def constrain_state(state, params):
        leaves, treedef = jax.tree.flatten(params)
        specs = layout(treedef, tuple(_shape_dtype(x) for x in leaves))
        state_leaves, state_def = jax.tree.flatten(state)
        if len(specs) != len(state_leaves):
            raise ValueError(
                f"zero1: the state has {len(state_leaves)} leaves, but tx.init on parameters "
                f"shaped like {'the params' if params is not None else 'the updates'} gives "
                f"{len(specs)}. Pass params to update (tx.update(grads, state, params))."
            )
        laid_out = [_lay_out(x, spec, mesh) for x, spec in zip(state_leaves, specs, strict=True)]
        return jax.tree.unflatten(state_def, laid_out)

    def init_fn(params):
        return constrain_state(tx.init(params), params)

    def update_fn(updates, state, params=None, **extra_args):
        like_params = params if params is not None else updates
        updates, state = optax.with_extra_args_support(tx).update(
            updates, state, params, **extra_args
        )
        updates = jax.tree.map(lambda u: _lay_out(u, _REPLICATED, mesh), updates)
        return updates, constrain_state(state, like_params)

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


def _zero1_specs(shape: tuple, axis: Hashable, n: int) -> list[PartitionSpec]:
    """The ZeRO-1 splits of a leaf to try, in order: each divisible dimension, then replicated."""
    specs = []
    for dim, size in enumerate(shape):
        if size % n == 0 and size >= n:
            specs.append(PartitionSpec(*[axis if d == dim else None for d in range(len(shape))]))
    return [*specs, _REPLICATED]


def _zero1_fit(tx, leaves, treedef, mesh, axis, n) -> list[PartitionSpec]:
    """The first ZeRO-1 split of each parameter whose state ``tx.init`` can lay out like it."""
    options = [_zero1_specs(leaf.shape, axis, n) for leaf in leaves]
    choice = [0] * len(leaves)
    while True:
        specs = [opts[k] for opts, k in zip(options, choice, strict=True)]
        misfits = _find_misfits(
            functools.partial(_fits, tx, leaves, treedef, mesh, specs), leaves, specs
        )
        if not misfits:
            return specs
        for i in misfits:
            choice[i] += 1


def _find_misfits(fits, leaves, specs) -> list[int]:
    """The split leaves whose layout makes ``tx.init`` fail ([] if the whole layout traces).

    One trial per distinct (shape, dtype, spec) first (a model has few: its layers
    repeat), split alone with the rest replicated; if no group fails alone, bisection.
    """
    split = [i for i, spec in enumerate(specs) if spec != _REPLICATED]
    if fits(split):
        return []
    groups: dict[tuple, list[int]] = {}
    for i in split:
        groups.setdefault((leaves[i].shape, leaves[i].dtype, specs[i]), []).append(i)
    misfits = [i for group in groups.values() if not fits(group[:1]) for i in group]
    return misfits or _misfits(fits, split)


def _fits(tx, leaves, treedef, mesh, specs, subset) -> bool:
    """Whether ``tx.init`` traces with ``subset`` split by ``specs`` (the rest replicated)."""
    chosen = set(subset)
    trial = [spec if i in chosen else _REPLICATED for i, spec in enumerate(specs)]
    try:
        _trace(tx, leaves, treedef, mesh, trial)
    except Exception:  # any failure means: this layout does not fit
        return False
    return True


def _misfits(fits: Callable[[Sequence[int]], bool], candidates: Sequence[int]) -> list[int]:
    """The candidates that do not fit, by bisection (all of them if they only fail together)."""
    if not candidates or fits(candidates):
        return []
    if len(candidates) == 1:
        return list(candidates)
    mid = len(candidates) // 2
    found = _misfits(fits, candidates[:mid]) + _misfits(fits, candidates[mid:])
    return found or list(candidates)


def _trace(tx, leaves, treedef, mesh, specs) -> PyTree:
    """``jax.eval_shape(tx.init)`` on an ``Explicit`` copy of ``mesh``, params typed ``specs``."""
    explicit = mesh.abstract_mesh if isinstance(mesh, Mesh) else mesh
    explicit = explicit.update_axis_types({name: AxisType.Explicit for name in mesh.axis_names})
    typed = [
        jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(explicit, spec))
        for leaf, spec in zip(leaves, specs, strict=True)
    ]
    with jax.sharding.use_abstract_mesh(explicit):
        return jax.eval_shape(tx.init, jax.tree.unflatten(treedef, typed))


def _checked_trace(tx, paths, leaves, treedef, mesh, specs) -> PyTree:
    """``_trace``, or a ValueError naming the parameter whose state cannot follow its layout."""
    try:
        return _trace(tx, leaves, treedef, mesh, specs)
    except Exception as err:
        fits = functools.partial(_fits, tx, leaves, treedef, mesh, specs)
        if not fits([]):  # fails replicated too: not a question of layout
            raise
        misfits = _find_misfits(fits, leaves, specs)
        culprit = next((i for i in misfits if not fits([i])), None)
        if culprit is None:  # only a combination fails: JAX's message is all there is
            raise
        message = _misfit_message(tx, paths, leaves, treedef, mesh, specs, culprit, err)
        raise ValueError(message) from err


def _misfit_message(tx, paths, leaves, treedef, mesh, specs, i, err) -> str:
    shape, spec = tuple(leaves[i].shape), specs[i]
    local = _per_device(shape, spec, mesh)
    where = f"params{jax.tree_util.keystr(paths[i])}"
    text = (
        f"the optimizer state of {where} (shape {shape}, sharded {spec}: {local} per device) "
        "cannot be laid out like the parameter: "
    )
    if isinstance(err, ValueError):  # the state format's own message
        return text + str(err)
    text += f"JAX says: {str(err).strip().splitlines()[0]}"
    if len(spec) == len(shape) and spec[-1] is not None:
        block = _block_size(tx, leaves, treedef, i)
        blocks = f"blocks of {block}" if block else "blocks of block_size elements"
        text += (
            f"\nA blockwise moment format (adamx.blockwise_8bit) cuts the last axis into {blocks}, "
            f"and a block must lie on one device, but each device holds {local[-1]} elements "
            f"of this last axis. Fix: a block_size that divides {local[-1]} (e.g. "
            f"blockwise_8bit(block_size={_pow2_divisor(local[-1])})), or shard another axis of "
            "this parameter (or leave it replicated)."
        )
    else:
        text += "\nShard another axis of this parameter, or leave it replicated."
    return text


def _block_size(tx, leaves, treedef, i) -> int | None:
    """The block of the state of leaf ``i`` (a leaf shaped ``(*lead, n_blocks, block)``), if any."""
    shape = tuple(leaves[i].shape)
    alone = [
        leaf if j == i else jax.ShapeDtypeStruct((), leaf.dtype) for j, leaf in enumerate(leaves)
    ]
    try:
        state = jax.eval_shape(tx.init, jax.tree.unflatten(treedef, alone))
    except Exception:  # only a hint for the message
        return None
    for s in jax.tree.leaves(state):
        blocked = s.ndim == len(shape) + 1 and s.shape[:-2] == shape[:-1] and s.shape[-1] > 1
        if blocked and (s.shape[-2] - 1) * s.shape[-1] < shape[-1] <= s.shape[-2] * s.shape[-1]:
            return s.shape[-1]
    return None


def _pow2_divisor(n: int) -> int:
    """The largest power of two dividing ``n`` (at most 256)."""
    return min(n & -n, 256) if n > 0 else 1


def _per_device(shape: tuple, spec: PartitionSpec, mesh) -> tuple:
    """The shape of one device's shard of an array of ``shape`` split by ``spec``."""
    local = list(shape)
    for dim, entry in enumerate(spec):
        names = entry if isinstance(entry, tuple) else () if entry is None else (entry,)
        local[dim] = -(-shape[dim] // math.prod(mesh.shape[name] for name in names))
    return tuple(local)


def _params_layout(paths, leaves) -> tuple[Any, list[PartitionSpec], Any]:
    """``(mesh, spec per leaf, a non-mesh sharding)`` of the parameters (mesh None: no mesh)."""
    mesh, specs, default = None, [], None
    for path, leaf in zip(paths, leaves, strict=True):
        sharding = _sharding_of(leaf)
        if isinstance(sharding, NamedSharding):
            if mesh is None:
                mesh = sharding.mesh
            elif _mesh_key(sharding.mesh) != _mesh_key(mesh):
                raise ValueError(
                    f"params{jax.tree_util.keystr(path)} lives on the mesh {sharding.mesh}, but "
                    f"other parameters on {mesh}. Put all parameters on one mesh."
                )
            specs.append(PartitionSpec(*sharding.spec))
        elif sharding is None or sharding.is_fully_replicated:
            specs.append(_REPLICATED)
            default = default if default is not None else sharding
        else:
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} has a {type(sharding).__name__}; "
                "adamx.sharding needs a jax.sharding.NamedSharding (jax.device_put the "
                "parameters with NamedSharding(mesh, PartitionSpec(...)))."
            )
    return mesh, specs, default


def _sharding_of(leaf) -> Any:
    try:
        return getattr(leaf, "sharding", None)
    except Exception:  # a tracer: its type carries the sharding
        return getattr(jax.typeof(leaf), "sharding", None)


def _mesh_key(mesh) -> tuple:
    devices = tuple(np.asarray(mesh.device_ids).flat) if isinstance(mesh, Mesh) else ()
    return tuple(mesh.axis_names), tuple(mesh.axis_sizes), devices


def _shape_dtype(leaf) -> jax.ShapeDtypeStruct:
    """A leaf's shape and dtype (and weak type, as of a Python float), without its sharding."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type)
    aval = jax.typeof(leaf)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


def _spec(aval) -> PartitionSpec:
    """The spec in a traced state leaf's type (replicated if it has none)."""
    spec = list(getattr(getattr(aval, "sharding", None), "spec", None) or ())
    while spec and spec[-1] is None:  # P("x", None) is P("x"): the user's spelling
        spec.pop()
    return PartitionSpec(*spec)


def _with_sharding(aval, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=sharding)


def _lay_out(x: jax.Array, spec: PartitionSpec, mesh: Mesh) -> jax.Array:
    """Lay ``x`` out as ``spec``: a reshard on Explicit axes, a sharding constraint on Auto ones.

    Inside an abstract trace on an Explicit copy of ``mesh`` (``_trace``), the
    context mesh is used, so the layout shows in the traced types.
    """
    context = jax.sharding.get_abstract_mesh()
    same = not context.empty and _mesh_key(context)[:2] == _mesh_key(mesh)[:2]
    if same and all(t == AxisType.Explicit for t in context.axis_types):
        return jax.sharding.reshard(x, spec)
    sharding = NamedSharding(mesh, spec)
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


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
