r"""The stand-in for a table inside ``value_and_row_grad``'s loss: its gathered rows.

``RowTable(rows, ids, num_rows, path)`` holds ``R = θ[u]`` for the sorted distinct ids ``u``
(padded with ``num_rows``) and serves a dense table's lookup from them,

.. math::
    \mathrm{table}[i] = R_j \ \text{where} \ u_j = i,

found by ``searchsorted``. An id not among ``u`` has no row here: it raises when concrete
and reads NaN under ``jit``, never another row.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from ._row_ops import explicit_spec, replicated
from ._sparse import in_range


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["rows", "ids"], meta_fields=["num_rows", "path"]
)
@dataclasses.dataclass(frozen=True)
class RowTable:
    """A table inside ``value_and_row_grad``'s loss: the batch's rows, read as ``table[ids]``.

    Attributes:
      rows: ``(k, *row)``, the table's rows at ``ids`` (zeros at padding).
      ids: int32 ``(k,)``, sorted and distinct, padding (``num_rows``) last.
      num_rows: the dense table's number of rows (static).
      path: the table's path in the params (static, for messages).
    """

    rows: jax.Array
    ids: jax.Array
    num_rows: int
    path: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense table's shape, ``(num_rows, *row)``."""
        return (self.num_rows, *self.rows.shape[1:])

    @property
    def dtype(self) -> jnp.dtype:
        return self.rows.dtype

    @property
    def ndim(self) -> int:
        return self.rows.ndim

    def __getitem__(self, key: Any) -> jax.Array | RowTable:
        """``table[ids]`` (or ``table[ids, ...basic index]``): the rows, as the dense table's.

        An id that the ``rows`` callable did not list for this table (or dropped because
        ``size`` was too small) raises when the ids are concrete; under ``jit`` its row
        reads NaN, so that a wrong row never passes silently.
        """
        if key is Ellipsis:  # the whole table (nnx's variable[...]): still a RowTable
            return self
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if not _is_ids(first) or any(not _is_basic(k) for k in rest):
            raise TypeError(_INDEXING.format(path=self.path, key=key))
        ids = jnp.asarray(first)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(_INDEXING.format(path=self.path, key=f"{ids.dtype} array"))
        table, known = self.rows, self.ids
        if not known.shape[0]:  # size=0: no rows at all; one padding row to search
            known = jnp.full((1,), self.num_rows, jnp.int32)
            table = jnp.zeros((1, *table.shape[1:]), table.dtype)
        spec = explicit_spec(ids)  # ids split over a data axis: searched whole, then split
        wanted = in_range(replicated(ids), self.num_rows)
        pos = jnp.clip(jnp.searchsorted(known, wanted), 0, known.shape[0] - 1)
        found = (jnp.take(known, pos) == wanted) & (wanted < self.num_rows)
        _check_found(self.path, ids, found)
        got = jnp.take(table, pos, axis=0)
        nan = jnp.asarray(np.nan, table.dtype)
        got = jnp.where(found.reshape(*found.shape, *(1,) * (table.ndim - 1)), got, nan)
        if spec is not None:
            got = jax.sharding.reshard(got, PartitionSpec(*spec, *(None,) * (table.ndim - 1)))
        return got[(slice(None),) * ids.ndim + tuple(rest)] if rest else got

    def __jax_array__(self) -> jax.Array:
        raise TypeError(_AS_ARRAY.format(path=self.path))


_INDEXING = (
    "value_and_row_grad: the table {path!r} can only be read as table[ids] (an integer array "
    "of row ids, optionally followed by basic indices: table[ids, :8]), got table[{key!r}]. "
    "Gather the rows first and index the result."
)
_AS_ARRAY = (
    "value_and_row_grad: the table {path!r} was used as an array (jnp.take, @, arithmetic, "
    "a flax nn.Embed, ...). Inside the loss it holds only the rows the batch uses: read it as "
    "table[ids] (write a lookup as params[...][ids]), or leave it out of rows= to get its "
    "dense gradient."
)


def _is_ids(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, list, int, np.integer)) and not isinstance(x, bool)


def _is_basic(x: Any) -> bool:
    return x is None or x is Ellipsis or isinstance(x, (slice, int, np.integer))


def _check_found(path: str, ids: jax.Array, found: jax.Array) -> None:
    if isinstance(ids, jax.core.Tracer) or isinstance(found, jax.core.Tracer):
        return
    missing = np.asarray(ids)[~np.asarray(found)]
    if missing.size:
        raise ValueError(
            f"value_and_row_grad: the loss read rows {np.unique(missing)[:5].tolist()} of the "
            f"table {path!r} that rows() did not list for it (or that size= dropped). List every "
            "id the loss reads; under jit such a row reads NaN."
        )
