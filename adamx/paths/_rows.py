"""The machinery of ``sparse_rows``: which state arrays belong to which parameter, and the
row views of a step (gather before the inner chain, scatter after it).

A state array "belongs" to parameter leaf ``i`` when the inner transformation's ``init`` puts
a copy of the parameter tree there (``optax.tree_utils.tree_map_params``): moments, their
8-bit codes and scales, AMSGrad's maximum, Kahan compensations. Everything else (step
counts, schedule state, rounding keys, format configs) is not per parameter and is taken
from the inner chain's new state as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .._masks import path_to_str
from .._packed import PackedTree
from .._row_ops import gather_rows, scatter_rows
from .._sparse import RowSparse, coalesce, is_row_sparse
from .._types import PyTree, PyTreeDef
from ..formats.factored import FactoredMoment

_STAGE = "sparse_rows"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Label of a state leaf that belongs to the parameter leaf ``leaf`` (not a pytree)."""

    leaf: int


NOT_PER_PARAMETER = object()
"""Label of a state leaf that belongs to no parameter (a count, a key, a config)."""


@dataclasses.dataclass(frozen=True)
class Grads:
    """The gradient tree split for a step: the paths of its leaves (a ``RowSparse`` is one
    leaf), its structure, and each leaf (tables coalesced)."""

    paths: list[tuple]
    treedef: PyTreeDef
    leaves: list[Any]

    @property
    def tables(self) -> dict[int, RowSparse]:
        """The row-sparse leaves, by leaf index."""
        return {i: g for i, g in enumerate(self.leaves) if is_row_sparse(g)}


def split_grads(grads: PyTree) -> Grads:
    """``grads`` flattened with each ``RowSparse`` as one leaf, coalesced (sorted, distinct
    rows, padding last) unless it already is."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(grads, is_leaf=is_row_sparse)
    for path, g in paths_and_leaves:
        _check_indices(path, g)
    leaves = [_coalesced(g) for _, g in paths_and_leaves]
    return Grads([tuple(p) for p, _ in paths_and_leaves], treedef, leaves)


def _check_indices(path: tuple, g: Any) -> None:
    """A ``RowSparse``'s indices are a pytree leaf, so a transformation chained before
    ``sparse_rows`` treats them as gradient numbers: optax.clip / scale turn them into floats
    (a global-norm clip or MultiSteps refuse them outright). Refuse such a gradient."""
    if is_row_sparse(g) and not jnp.issubdtype(jnp.result_type(g.indices), jnp.integer):
        raise ValueError(
            f"sparse_rows: the RowSparse gradient at {path_to_str(path)!r} has "
            f"{jnp.result_type(g.indices)} indices: a transformation chained before sparse_rows "
            "computed with them as numbers. Chain gradient transformations (clipping, scaling, "
            "noise) inside adamx.sparse_rows, where they see the touched rows."
        )


def _coalesced(g: Any) -> Any:
    return coalesce(g) if is_row_sparse(g) and not g.coalesced else g


def _is_empty(x: Any) -> bool:
    """A parameter position that holds no array in a state (None: an 8-bit float32 leaf's
    scales; ``optax.MaskedNode``: a leaf a stage skips, e.g. Kahan's float32 leaves)."""
    return x is None or isinstance(x, optax.MaskedNode)


def state_owners(inner: optax.GradientTransformation, state: PyTree, grads: Grads) -> list:
    """One label per leaf of ``state`` (its ``jax.tree.leaves`` order): ``Owner(i)`` for an
    array that is a copy of parameter leaf ``i``, else ``NOT_PER_PARAMETER``.

    Raises:
      ValueError: the state holds packed buckets (``adamx.multi_tensor`` inside), which have
        no per-parameter arrays to take rows of.
    """
    _refuse_packed(state, grads)
    ids = grads.treedef.unflatten([Owner(i) for i in range(len(grads.leaves))])

    def owner(leaf: Any, label: Owner) -> Any:
        return leaf if _is_empty(leaf) else label

    def other(value: Any) -> Any:
        return jax.tree.map(_not_per_parameter, value)

    labels = optax.tree_utils.tree_map_params(
        inner, owner, state, ids, transform_non_params=other, is_leaf=_is_empty
    )
    return jax.tree.leaves(labels)


def _not_per_parameter(_: Any) -> object:
    return NOT_PER_PARAMETER


def _refuse_packed(tree: PyTree, grads: Grads) -> None:
    if not any(isinstance(x, PackedTree) for x in jax.tree.leaves(tree, is_leaf=_is_packed)):
        return
    i = next(iter(grads.tables))
    raise ValueError(
        f"{_STAGE}: the gradient at {path_to_str(grads.paths[i])} is a RowSparse, but the "
        "wrapped chain keeps its state in packed buckets (adamx.multi_tensor / adamx.pack "
        "inside sparse_rows), which have no per-row arrays to update lazily. Keep the tables "
        "out of the buckets: route them to their own optimizer, e.g. optax.multi_transform("
        "{'tables': adamx.sparse_rows(adamx.adamw(lr)), 'rest': adamx.multi_tensor("
        "adamx.adamw(lr))}, labels)."
    )


def _is_packed(x: Any) -> bool:
    return isinstance(x, PackedTree)


def check_rows_aligned(state: PyTree, owners: list, grads: Grads) -> None:
    """Every state array of a table must hold one entry per row: leading dimension
    ``num_rows`` (float moments, ``stochastic_float``, ``blockwise_8bit`` with blocks inside
    a row). Anything else is refused, naming the table, the state array and the fix."""
    tables = grads.tables
    _refuse_factored_tables(state, owners, grads)
    state_paths = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, leaf), label in zip(state_paths, owners, strict=True):
        if not isinstance(label, Owner) or label.leaf not in tables:
            continue
        g = tables[label.leaf]
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != g.num_rows:
            raise ValueError(
                f"{_STAGE}: the table at {path_to_str(grads.paths[label.leaf])} has "
                f"{g.num_rows} rows, but its optimizer state at {path_to_str(path)} has shape "
                f"{jnp.shape(leaf)}, not ({g.num_rows}, ...): the state format does not store "
                "one entry per row, so the touched rows cannot be read and written alone. Use "
                "a row-aligned format for this table's mu_dtype / nu_dtype (a float dtype, "
                "adamx.stochastic_float(), adamx.blockwise_8bit() on a table of 2 or more "
                "dimensions: its blocks lie inside a row), or give this table a dense gradient."
            )


def _refuse_factored_tables(state: PyTree, owners: list, grads: Grads) -> None:
    """A table whose second moment ``adamx.factored`` keeps as row and column means has no
    per-row state: each column mean averages every row. Its shapes can pass the row check
    (a square table's column means have num_rows entries), so the record is recognised."""
    tables, offset = grads.tables, 0
    for node in jax.tree.leaves(state, is_leaf=_is_factored):
        if not isinstance(node, FactoredMoment):
            offset += 1
            continue
        start = offset + len(jax.tree.leaves(node.row))  # the data fields' order: row, col, ...
        offset += len(jax.tree.leaves(node))
        for label in owners[start : start + len(jax.tree.leaves(node.col))]:
            if isinstance(label, Owner) and label.leaf in tables:
                raise ValueError(
                    f"{_STAGE}: the table at {path_to_str(grads.paths[label.leaf])} has its "
                    f"second moment stored by nu_dtype={node.description}, as row and column "
                    "means: every column mean averages all rows, so the touched rows cannot "
                    "be read and written alone. Give this table a row-aligned nu_dtype (a "
                    "float dtype, adamx.stochastic_float(), adamx.blockwise_8bit()), e.g. "
                    "through optax.multi_transform, or keep it unfactored with a "
                    "min_dim_size_to_factor above its second-largest dimension."
                )


def _is_factored(x: Any) -> bool:
    return isinstance(x, FactoredMoment)


def check_table_shapes(grads: Grads, params: PyTree | None) -> list | None:
    """The params' leaves (None without params); each table's gradient must have its
    table's shape."""
    if params is None:
        return None
    try:
        thetas = grads.treedef.flatten_up_to(params)
    except (ValueError, TypeError):
        raise ValueError(
            f"{_STAGE}: the gradient tree does not match the params: gradients "
            f"{grads.treedef}, params {jax.tree.structure(params)}. Gradients must have the "
            "params' structure, with a RowSparse where a table's gradient is row-sparse."
        ) from None
    for i, g in grads.tables.items():
        if tuple(g.shape) != tuple(jnp.shape(thetas[i])):
            raise ValueError(
                f"{_STAGE}: the RowSparse gradient at {path_to_str(grads.paths[i])} stands for "
                f"a table of shape {tuple(g.shape)} (num_rows={g.num_rows}, rows of "
                f"{tuple(g.shape[1:])}), but the parameter there has shape "
                f"{tuple(jnp.shape(thetas[i]))}. Build it with num_rows = the table's first "
                "dimension and values of shape (k, *table.shape[1:])."
            )
    return thetas


def take_rows(x: jax.Array, g: RowSparse) -> jax.Array:
    """``x[indices]``, zeros at padding entries (a row-split ``x`` on Explicit axes too)."""
    return gather_rows(x, g.indices)


def put_rows(x: jax.Array, g: RowSparse, rows: jax.Array) -> jax.Array:
    """``x`` with its touched rows replaced by ``rows`` (padding entries are dropped)."""
    return scatter_rows(x, g.indices, rows, indices_are_sorted=True)


def view_state(state_leaves: list, owners: list, tables: dict[int, RowSparse]) -> list:
    """The state's leaves with each table's arrays cut down to the touched rows."""
    return [
        take_rows(leaf, tables[label.leaf]) if _of_table(label, tables) else leaf
        for leaf, label in zip(state_leaves, owners, strict=True)
    ]


def merge_state(old: list, new: list, owners: list, tables: dict[int, RowSparse]) -> list:
    """The full state after the step: each table's arrays with the new rows written in, and
    every other leaf (dense leaves' moments, counts, keys) as the inner chain returned it."""
    return [
        put_rows(o, tables[label.leaf], n) if _of_table(label, tables) else n
        for o, n, label in zip(old, new, owners, strict=True)
    ]


def _of_table(label: Any, tables: dict[int, RowSparse]) -> bool:
    return isinstance(label, Owner) and label.leaf in tables


def sparse_updates(grads: Grads, updates: PyTree) -> PyTree:
    """The inner chain's updates with each table's rows as a coalesced ``RowSparse``.

    The rows at padding entries are what the chain makes of a zero row (0 for Adam with
    ε > 0) and are never applied. They are not masked to 0: a select between the update's
    last multiply and ``apply_updates``' add would change how XLA contracts the two into an
    FMA, and so the compiled update's rounding against the dense step's."""
    leaves = grads.treedef.flatten_up_to(updates)
    tables = grads.tables
    for i, g in tables.items():
        u = leaves[i]
        rows = u
        leaves[i] = RowSparse(g.indices, rows, g.num_rows, coalesced=True)
    return grads.treedef.unflatten(leaves)
