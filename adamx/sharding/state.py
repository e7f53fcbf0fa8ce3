"""``state_shardings`` and ``abstract_state``: the optimizer state laid out like the params."""

from collections.abc import Sequence
from typing import Any

import jax
import optax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec, Sharding

from .._placement import sharding_of
from .._types import PyTree
from ._misfit import checked_trace
from ._trace import REPLICATED, mesh_key, shape_dtype, spec_of

# Why not ``optax.tree.map_params``, which exists to give the state the params' partition
# specs? It calls ``tx.init`` on a placeholder and hands each state subtree that *is* the
# params tree the param's spec. That is right for a float moment only: the 8-bit codes
# ``(*lead, n_blocks, block)`` of a parameter split along its last axis must put that
# axis' entry on ``n_blocks`` (a spec the param's does not say), a block longer than a
# shard must be refused, and ``multi_tensor``'s packed state is no copy of the params
# tree (map_params fails on it). The abstract trace below answers all three with JAX's
# own sharding rules.


def state_shardings(tx: optax.GradientTransformation, params: optax.Params) -> PyTree:
    """The shardings of ``tx``'s state when each moment is laid out like its parameter.

    On a mesh with ``Explicit`` axes (``jax.make_mesh``'s default) the sharding
    is part of each array's type and ``jax.jit(tx.init)(params)`` already
    returns a state sharded like ``params``. On ``Auto`` axes, zeros carry no
    sharding, so say it: ``jax.jit(tx.init, out_shardings=state_shardings(tx,
    params))``.

    The layout is read off an abstract trace of ``tx.init`` (see ``adamx.sharding``),
    so it holds for any state format: a float moment is sharded exactly like its
    parameter, the 8-bit codes and scales of a parameter split along its last axis
    are split along their block-count axis (each device keeps whole blocks), and
    leaves derived from no parameter are replicated.

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
    return jax.tree.map(_sharding_field, abstract_state(tx, params))


def abstract_state(tx: optax.GradientTransformation, params: optax.Params) -> PyTree:
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
    leaves = [shape_dtype(leaf) for _, leaf in flat]
    mesh, specs, default = _params_layout(paths, [leaf for _, leaf in flat])
    if mesh is None:  # no mesh: one device, or no sharding given
        state = jax.eval_shape(tx.init, jax.tree.unflatten(treedef, leaves))
        return jax.tree.map(lambda s: _with_sharding(s, default), state)
    state = checked_trace(tx, paths, leaves, treedef, mesh, specs)
    return jax.tree.map(lambda s: _with_sharding(s, NamedSharding(mesh, spec_of(s))), state)


def _params_layout(
    paths: Sequence[tuple], leaves: Sequence[Any]
) -> tuple[Mesh | AbstractMesh | None, list[PartitionSpec], Sharding | None]:
    """``(mesh, spec per leaf, a non-mesh sharding)`` of the parameters (mesh None: no mesh)."""
    mesh, specs, default = None, [], None
    for path, leaf in zip(paths, leaves, strict=True):
        sharding = sharding_of(leaf)
        if isinstance(sharding, NamedSharding):
            if mesh is None:
                mesh = sharding.mesh
            elif mesh_key(sharding.mesh) != mesh_key(mesh):
                raise ValueError(
                    f"params{jax.tree_util.keystr(path)} lives on the mesh {sharding.mesh}, but "
                    f"other parameters on {mesh}. Put all parameters on one mesh."
                )
            specs.append(PartitionSpec(*sharding.spec))
        elif sharding is None or sharding.is_fully_replicated:
            specs.append(REPLICATED)
            default = default if default is not None else sharding
        else:
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} has a {type(sharding).__name__}; "
                "adamx.sharding needs a jax.sharding.NamedSharding (jax.device_put the "
                "parameters with NamedSharding(mesh, PartitionSpec(...)))."
            )
    return mesh, specs, default


def _sharding_field(aval: jax.ShapeDtypeStruct) -> Any:
    return aval.sharding


def _with_sharding(aval: Any, sharding: Sharding | None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=sharding)
