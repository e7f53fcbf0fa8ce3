r"""Row-sparse gradients of a loss written for dense tables, without a table-sized gradient.

A loss that reads a table ``θ`` of shape ``(num_rows, *row)`` only at the rows ``u``
(``k`` distinct ids of a batch) depends on ``θ`` only through ``R = θ[u]``, so

.. math::
    \frac{\partial L}{\partial θ} = \sum_{j<k} e_{u_j} \otimes \frac{\partial L}{\partial R_j},

and ``∂L/∂R`` (``k`` rows) is all there is to compute. ``value_and_row_grad`` gathers
``R`` before differentiating, hands the loss a ``RowTable`` in the table's place (reading
``table[ids]`` gives ``R[j]`` where ``u_j = ids``) and returns the gradient as a coalesced
``adamx.RowSparse(u, ∂L/∂R, num_rows)``. No array of the table's size is formed: the
table is only read, at ``k`` rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ._masks import path_to_str
from ._row_ops import gather_rows, replicated
from ._row_table import RowTable
from ._sparse import RowSparse, distinct_rows, in_range
from ._validation import check_flag, check_row_ids, check_size

Rows = Callable[..., Mapping[str, jax.typing.ArrayLike]]


def value_and_row_grad(
    fun: Callable[..., Any],
    *,
    rows: Rows,
    size: int | Mapping[str, int] | None = None,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, optax.Updates]]:
    r"""``jax.value_and_grad`` of ``fun`` w.r.t. its first argument, row-sparse for tables.

    ``fun(params, *args, **kwargs)`` is the loss as written for dense params: it reads a
    table as ``params["emb"][ids]``. ``rows(*args, **kwargs)`` (the same arguments, without
    the params) says which ids of which tables the batch reads: ``{"emb": ids, ...}``,
    each key a table's path as ``"tower/embed"`` (``adamx.path_mask``'s strings), each value
    an integer array of any shape. For each table the ``k`` distinct ids ``u`` (sorted,
    padded with ``num_rows``) are gathered, ``fun`` runs with the table replaced by a
    ``RowTable`` that serves ``table[ids]`` from those rows, and the gradient is taken with
    respect to the ``k`` rows:

    .. math::
        g_θ = \mathrm{RowSparse}(u, \partial L / \partial θ[u], \mathrm{num\_rows}),

    equal to ``jax.grad``'s dense gradient at the rows ``u`` and zero elsewhere, with no
    table-sized array formed. Other leaves get ``jax.grad``'s dense gradient.

    Args:
      fun: the loss, ``(params, *args, **kwargs) -> scalar`` (or ``(scalar, aux)``).
      rows: ``(*args, **kwargs) -> {table path: integer ids}``.
      size: the number of entries ``k`` of each table's gradient (static: the step compiles
        once for all batches): an int for every table, a ``{path: int}``, or None for the
        number of ids ``rows`` gives (always enough). It must be at least the number of
        distinct ids of any batch.
      has_aux: as ``jax.value_and_grad``: ``fun`` returns ``(value, aux)``.

    Returns:
      ``(params, *args, **kwargs) -> (value, grads)`` (``((value, aux), grads)`` with
      ``has_aux``): ``grads`` has the params' structure, a coalesced ``adamx.RowSparse``
      at each table.

    Inside ``fun`` a table is a ``RowTable``: it has the dense table's ``shape``, ``dtype``
    and ``ndim``, and is read as ``table[ids]`` or ``table[ids, <basic index>]`` only (any
    number of lookups, ids of any shape, through ``jit``/``checkpoint``/``scan``). Any other
    use (``jnp.take``, ``@``, arithmetic, flax's ``nn.Embed`` / ``nnx.Embed``, which call
    ``jnp.take``) raises a TypeError naming the table. A linen ``self.param`` table does
    not work either (linen checks the stored shape): keep the lookup outside the module,
    ``model.apply(params["model"], params["emb"][ids])``. nnx ``Param`` tables read as
    ``self.embed[ids]`` work (their path ends in ``/value``).

    Raises:
      ValueError: a path of ``rows`` that is not a leaf of the params (the
        message lists them), or, when the ids are concrete, ids outside
        ``[0, num_rows)``, more distinct ids than ``size``, and a read in ``fun`` of a
        row that ``rows`` did not list. Under ``jit`` the ids cannot be checked: such a
        read gives NaN rows (an out-of-range id or a row beyond ``size`` is dropped
        from the gradient), never a wrong row.
      TypeError: ``fun`` or ``rows`` that is not a callable, ids that are not integers,
        or a table used other than by indexing with ids (see above).

    Example:
      >>> import adamx, jax, jax.numpy as jnp
      >>> def loss(params, users, items):
      ...     return jnp.mean(jnp.sum(params["user"][users] * params["item"][items], -1))
      >>> grad_fn = adamx.value_and_row_grad(
      ...     loss, rows=lambda users, items: {"user": users, "item": items})
      >>> params = {"user": jnp.ones((1000, 8)), "item": jnp.ones((500, 8))}
      >>> value, grads = grad_fn(params, jnp.array([3, 7]), jnp.array([1, 1]))
      >>> grads["item"].indices
      Array([  1, 500], dtype=int32)
    """
    if not callable(fun):
        raise TypeError(f"fun must be a callable (params, *args) -> loss, got {fun!r}.")
    if not callable(rows):
        raise TypeError(
            f"rows must be a callable (*args) -> {{table path: ids}} taking the loss's "
            f"arguments after params, got {rows!r}."
        )
    check_flag("has_aux", has_aux)
    if isinstance(size, Mapping):
        for path, n in size.items():
            check_size(f"size[{path!r}]", n, what="entries of the table's gradient")
    elif size is not None:
        check_size("size", size, what="entries of each table's gradient")

    def value_and_grad(params: optax.Params, *args: Any, **kwargs: Any):
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [path_to_str(p) for p, _ in flat]
        leaves = [x for _, x in flat]
        tables = _tables(rows(*args, **kwargs), paths, leaves, size)
        diff = [tables[i].rows if i in tables else x for i, x in enumerate(leaves)]

        def dense_loss(diff):
            inside = [
                dataclasses.replace(tables[i], rows=d) if i in tables else d
                for i, d in enumerate(diff)
            ]
            return fun(treedef.unflatten(inside), *args, **kwargs)

        value, grads = jax.value_and_grad(dense_loss, has_aux=has_aux)(diff)
        grads = [_row_sparse(tables[i], g) if i in tables else g for i, g in enumerate(grads)]
        return value, treedef.unflatten(grads)

    return value_and_grad


def _tables(wanted: Any, paths: list, leaves: list, size: Any) -> dict[int, RowTable]:
    """``{leaf index: RowTable}`` for the tables ``rows`` names, with their gathered rows."""
    if not isinstance(wanted, Mapping):
        raise TypeError(f"rows(...) must return a dict {{table path: ids}}, got {wanted!r}.")
    if isinstance(size, Mapping) and set(size) - set(wanted):
        raise ValueError(
            f"size names tables that rows(...) does not: {sorted(set(size) - set(wanted))}; "
            f"rows(...) gave {sorted(wanted)}."
        )
    index = {path: i for i, path in enumerate(paths)}
    tables = {}
    for path, ids in wanted.items():
        if path not in index:
            raise ValueError(
                f"rows(...) names a table {path!r} that is not a leaf of the params; their "
                f'paths are {paths}. Name tables as adamx.path_mask does ("tower/embed").'
            )
        i = index[path]
        table = leaves[i]
        if jnp.ndim(table) < 1:
            raise ValueError(f"params[{path!r}] must be a table (ndim >= 1), got a scalar.")
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"rows(...)[{path!r}] must be integer ids, got {ids.dtype}.")
        ids = replicated(ids.reshape(-1))
        n = size.get(path) if isinstance(size, Mapping) else size
        n = ids.shape[0] if n is None else n
        num_rows = table.shape[0]
        check_row_ids(f"rows(...)[{path!r}]", ids, num_rows, n)
        unique = distinct_rows(in_range(ids, num_rows), num_rows, n)
        gathered = gather_rows(table, unique)
        tables[i] = RowTable(gathered, unique, num_rows, path)
    return tables


def _row_sparse(table: RowTable, grad: jax.Array) -> RowSparse:
    return RowSparse(table.ids, grad, table.num_rows, coalesced=True)
