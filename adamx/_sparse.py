r"""Row-sparse gradients of a table: the rows a batch touched, not a table-sized array.

A gradient (or an update) of a table ``θ`` of shape ``(num_rows, *row)`` that is zero
outside some rows is kept as

.. math::
    g = \sum_i e_{\mathrm{indices}_i} \otimes \mathrm{values}_i, \qquad
    \mathrm{indices} \in \mathbb{Z}^k, \ \mathrm{values} \in \mathbb{R}^{k \times \mathrm{row}},

with ``k`` static (the step compiles once for every batch). An entry whose index is not in
``[0, num_rows)`` is padding and contributes nothing: pad with ``num_rows``. Duplicate indices
add up. ``coalesce`` sorts the indices, sums duplicates and moves padding to the end; the
record then says so (``coalesced=True``), and whatever reads rows of a state by these
indices relies on it (``adamx.sparse_rows``).

``params + g`` (what ``optax.apply_updates`` computes) adds the rows in place, in the
promoted dtype and cast back to the parameter's, as the dense sum would.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TypeGuard

import jax
import jax.numpy as jnp
import numpy as np

from ._row_ops import gather_rows, replicated, scatter_rows
from ._types import promote
from ._validation import check_row_ids


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["indices", "values"],
    meta_fields=["num_rows", "coalesced"],
)
@dataclasses.dataclass(frozen=True)
class RowSparse:
    """A table's gradient or update at some rows: ``dense[indices[i]] += values[i]``.

    Attributes:
      indices: int32 ``(k,)``; an entry outside ``[0, num_rows)`` is padding.
      values: ``(k, *row)``; the rows' values, in the gradient's dtype.
      num_rows: the table's number of rows (static).
      coalesced: the indices are sorted and distinct, padding (``num_rows``) last
        (static; set by ``coalesce``).
    """

    indices: jax.Array
    values: jax.Array
    num_rows: int
    coalesced: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense table's shape, ``(num_rows, *row)``."""
        return (self.num_rows, *jnp.shape(self.values)[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.result_type(self.values)

    def todense(self) -> jax.Array:
        """The table-sized array (for references and small tables only)."""
        zeros = jnp.zeros(self.shape, self.dtype)
        return zeros.at[in_range(self.indices, self.num_rows)].add(self.values, mode="drop")

    def __radd__(self, table: jax.Array) -> jax.Array:
        """``table + self``: the touched rows, ``(θ_i + u_i)`` in the promoted dtype, cast
        back to ``table``'s dtype (as ``optax.apply_updates`` does for a dense update)."""
        g = self if self.coalesced else coalesce(self)
        new = jnp.add(*promote(gather_rows(table, g.indices), g.values)).astype(table.dtype)
        return scatter_rows(table, g.indices, new, indices_are_sorted=True)


def is_row_sparse(x: object) -> TypeGuard[RowSparse]:
    return isinstance(x, RowSparse)


def in_range(indices: jax.Array, num_rows: int) -> jax.Array:
    """``indices`` with every entry outside ``[0, num_rows)`` replaced by ``num_rows`` (padding):
    a negative index must not wrap around to the end of the table."""
    return jnp.where((indices >= 0) & (indices < num_rows), indices, num_rows).astype(jnp.int32)


def coalesce(g: RowSparse, size: int | None = None) -> RowSparse:
    """``g`` with sorted distinct indices (duplicates summed), padding last, ``size`` entries.

    ``size`` (default: ``g``'s) must be at least the number of distinct rows; under ``jit``
    entries of rows beyond it are dropped (never added to another row), so ``row_sparse``
    checks it when it can. One sort of the indices (``distinct_rows``), a binary search, a
    segment sum.
    """
    if g.coalesced and size in (None, g.indices.shape[0]):
        return g
    size = g.indices.shape[0] if size is None else size
    indices = replicated(in_range(g.indices, g.num_rows))
    unique = distinct_rows(indices, g.num_rows, size)
    found = jnp.searchsorted(unique, indices).astype(jnp.int32)
    kept = (indices < g.num_rows) & (jnp.take(unique, found, mode="clip") == indices)
    values = jax.ops.segment_sum(g.values, jnp.where(kept, found, size), num_segments=size)
    # Padding rows are zero already; the select keeps the sum out of the chain's first fusion,
    # so XLA:CPU contracts the rows' arithmetic as in the dense program (bit for bit, tested).
    touched = (unique < g.num_rows).reshape(-1, *(1,) * (values.ndim - 1))
    values = jnp.where(touched, values, jnp.zeros((), values.dtype))
    return RowSparse(unique, values, g.num_rows, coalesced=True)


def distinct_rows(indices: jax.Array, num_rows: int, size: int) -> jax.Array:
    """The distinct entries of ``indices`` (all in ``[0, num_rows]``), sorted, padded with
    ``num_rows`` to ``size`` entries (the first ``size`` if there are more). One sort and a
    scatter (``jnp.unique(..., size=)`` sorts index pairs: several times slower on CPU)."""
    ordered = jnp.sort(indices)
    first = jnp.concatenate([jnp.ones(min(1, ordered.size), bool), ordered[1:] != ordered[:-1]])
    slot = jnp.where(first, jnp.cumsum(first) - 1, size)  # each distinct row's position
    return jnp.full(size, num_rows, jnp.int32).at[slot].set(ordered, mode="drop")


def row_sparse(
    indices: jax.typing.ArrayLike,
    values: jax.typing.ArrayLike,
    num_rows: int,
    *,
    size: int | None = None,
) -> RowSparse:
    """The gradient of a ``(num_rows, *row)`` table that is ``values[i]`` at row ``indices[i]``.

    Duplicate indices are summed; entries whose index is ``num_rows`` are padding. The result
    is coalesced to ``size`` entries (default ``len(indices)``; a static number, so a step
    that takes it compiles once for every batch).

    Raises:
      ValueError: a shape that does not fit, or (when the indices are concrete) an index
        outside ``[0, num_rows]`` or more distinct rows than ``size``. Under ``jit`` such
        indices cannot be checked: they are treated as padding (their values are ignored).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> g = adamx.row_sparse(jnp.array([3, 0, 3]), jnp.ones((3, 2)), num_rows=5)
      >>> g.indices  # sorted, duplicates summed, padded with num_rows
      Array([0, 3, 5], dtype=int32)
      >>> jnp.zeros((5, 2)) + g  # adds the rows in place
      Array([[1., 1.],
             [0., 0.],
             [0., 0.],
             [2., 2.],
             [0., 0.]], dtype=float32)
    """
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 1:
        raise ValueError(f"num_rows must be an int >= 1, got {num_rows!r}.")
    indices, values = jnp.asarray(indices), jnp.asarray(values)
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(
            f"indices must be a 1-D integer array, got {indices.dtype} of shape {indices.shape}."
        )
    if values.ndim < 1 or values.shape[0] != indices.shape[0]:
        raise ValueError(
            f"values must have one row per index, shape ({indices.shape[0]}, *row), got "
            f"{values.shape}."
        )
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be an int >= 0, got {size!r}.")
    check_row_ids("indices", indices, int(num_rows), size, padding=True)
    return coalesce(RowSparse(indices.astype(jnp.int32), values, int(num_rows)), size)
