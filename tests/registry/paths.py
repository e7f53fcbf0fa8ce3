"""Execution paths: the same optimizer run per leaf, packed, or sharded over 8 devices."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

import adamx

# ---------------------------------------------------------------------------
# Execution paths: the same optimizer run per leaf, packed, or sharded.

N_DEVICES = 8
PACK_MIN_SIZE = 4096  # the matrix tree's (64, 128) leaf stays unpacked, the rest is packed


def _mesh(explicit: bool):
    """A 1-D ``"data"`` mesh of 8 devices; ``explicit``: ``jax.make_mesh``'s default axes."""
    from jax.sharding import AxisType

    if explicit:
        return jax.make_mesh((N_DEVICES,), ("data",))
    return jax.make_mesh((N_DEVICES,), ("data",), (AxisType.Auto,))


def _on_mesh():
    """``jax.set_mesh`` of the Explicit mesh, as the README's recipes run."""
    return jax.set_mesh(_mesh(explicit=True))


def _split_first_divisible(mesh, leaf):
    """FSDP-style: split a leaf along its first dimension divisible by the mesh size."""
    from jax.sharding import NamedSharding, PartitionSpec

    for dim, size in enumerate(jnp.shape(leaf)):
        if size % N_DEVICES == 0:  # no trailing Nones: jit returns the spec without them
            return NamedSharding(mesh, PartitionSpec(*[None] * dim, "data"))
    return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass(frozen=True)
class Path:
    """How params are laid out (``prepare``/``finish``), how ``tx`` is wrapped, how its
    state is initialised, and whether the compiled step is the per-leaf program
    (``exact``: bit for bit) or another one (within ``MAX_ULP``, see ``_paths``)."""

    exact: bool
    wrap: Callable = lambda tx: tx
    prepare: Callable = lambda params: params
    finish: Callable = lambda params: params
    init: Callable | None = None  # (tx, params) -> state; None: tx.init, eagerly
    devices: int = 1
    packed: bool = False  # the training loop holds an ``adamx.PackedTree``
    context: Callable = contextlib.nullcontext  # () -> the context the loop runs in

    def make_init(self, tx):
        # On one device, eagerly: its few zeros_like ops are compiled once per shape for the
        # whole session. On a mesh under jit, so that every state leaf (step counts too) is
        # laid out as the jitted step returns it: an eager count on one device would make
        # step 2 retrace.
        if self.init is not None:
            return functools.partial(self.init, tx)
        return jax.jit(tx.init) if self.devices > 1 else tx.init


def _unpack(params):
    return params.unpack() if isinstance(params, adamx.PackedTree) else params


def _zero1(tx):
    import adamx.sharding

    return adamx.sharding.zero1(tx, _mesh(explicit=True))


def _replicate(params):
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(params, NamedSharding(_mesh(explicit=True), PartitionSpec()))


def _shard(explicit: bool):
    def prepare(params):
        mesh = _mesh(explicit)
        return jax.device_put(
            params, jax.tree.map(lambda x: _split_first_divisible(mesh, x), params)
        )

    return prepare


def _auto_init(tx, params):
    import adamx.sharding

    return jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(params)


PATHS: dict[str, Path] = {
    "per_leaf": Path(exact=True),
    "pack": Path(
        exact=False,
        prepare=lambda p: adamx.pack(p, min_size=PACK_MIN_SIZE),
        finish=_unpack,
        packed=True,
    ),
    "multi_tensor": Path(
        exact=False, wrap=lambda tx: adamx.multi_tensor(tx, min_size=PACK_MIN_SIZE)
    ),
    # ZeRO-1 as its docstring and the README show it: replicated params, make_mesh's axes.
    "zero1": Path(
        exact=False,
        wrap=_zero1,
        prepare=_replicate,
        devices=N_DEVICES,
        context=_on_mesh,
    ),
    "sharded_auto": Path(exact=False, prepare=_shard(False), init=_auto_init, devices=N_DEVICES),
    "sharded_explicit": Path(
        exact=False, prepare=_shard(True), devices=N_DEVICES, context=_on_mesh
    ),
}
