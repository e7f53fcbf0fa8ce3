"""Execution paths: the same optimizer run per leaf, packed, sharded over 8 devices, or on the
touched rows of a table (``sparse_rows``)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

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
    # A transformation chained outside the host's wrapper, where the loop's gradient arrives
    # (sparse_rows: the table's gradient turned row-sparse, as a user's loop computes it).
    outer: Callable | None = None
    # The format's parameter-side stage goes inside ``wrap`` (sparse_rows: it must see rows).
    post_inside: bool = False
    # The path computes the gradient in another program (sparse_rows: rows gathered, duplicates
    # summed), so XLA contracts the moment update differently and a narrow stored moment may
    # land on its neighbouring value (test_matrix.assert_matches allows one storage ulp a step).
    regathers_gradient: bool = False
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


SPARSE_TABLE = "w"  # the matrix tree's (64, 128) leaf: its gradient arrives row-sparse
SPARSE_DUPLICATES = 8  # rows whose gradient arrives as two halves (duplicate indices)
SPARSE_PADDING = 4  # padding entries (index num_rows), carrying junk that must be ignored


def _all_rows_sparse(g):
    """The dense gradient of a table as an ``adamx.RowSparse`` touching every row: the rows in
    a scrambled order, the first ``SPARSE_DUPLICATES`` of them as two halves (exact: g/2 + g/2
    is g), and padding entries carrying ones. Coalesced, it is ``g`` again, so the lazy path
    must reproduce the dense run bit for bit."""
    n = g.shape[0]
    order = (jnp.arange(n) * 37 + 11) % n  # a permutation (37 is prime to 64)
    dup = jnp.arange(SPARSE_DUPLICATES)
    half = jnp.where((order < SPARSE_DUPLICATES)[:, None], jnp.asarray(0.5, g.dtype), 1)
    indices = jnp.concatenate([order, dup, jnp.full(SPARSE_PADDING, n)]).astype(jnp.int32)
    values = jnp.concatenate(
        [
            g[order] * half,
            g[dup] * jnp.asarray(0.5, g.dtype),
            jnp.ones((SPARSE_PADDING, *g.shape[1:]), g.dtype),
        ]
    )
    return adamx.row_sparse(indices, values, n)


def _table_row_sparse(path, leaf):
    """The table's leaf (found by its last key, wherever a host nests the tree: ``nnx.State``
    puts it under the module's attribute) made row-sparse; any other leaf as it is."""
    last = jax.tree_util.keystr(path[-1:], simple=True, separator="/") if path else ""
    return _all_rows_sparse(leaf) if last == SPARSE_TABLE and jnp.ndim(leaf) == 2 else leaf


def _as_row_sparse() -> optax.GradientTransformation:
    """The table's dense gradient becomes ``_all_rows_sparse`` of it (coalesced, as
    ``adamx.value_and_row_grad`` returns it)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(_table_row_sparse, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _sparse_rows(semantics: str) -> Path:
    """``adamx.sparse_rows(tx, semantics=...)``, the table's gradient made row-sparse outside
    the host's wrapper and the format's parameter stage inside the path."""
    return Path(
        exact=False,
        wrap=functools.partial(adamx.sparse_rows, semantics=semantics),
        outer=_as_row_sparse,
        post_inside=True,
        regathers_gradient=True,
    )


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
    # The lazy-rows path in each semantics, every row of the (64, 128) leaf touched (scrambled,
    # duplicated, padded): the per-leaf run's numbers (catch-up decays by β^0 = 1 each step,
    # with its own state and the skipped_steps argument through every host).
    "sparse_rows": _sparse_rows("lazy"),
    "sparse_rows_catch_up": _sparse_rows("catch_up"),
    "sparse_rows_dense_equivalent": _sparse_rows("dense_equivalent"),
}
