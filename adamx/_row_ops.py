r"""Reading and writing rows of a table that may be split over a mesh: ``x[i]``, ``x.at[i].set``.

.. math::
    \mathrm{gather}(x, I)_j = x_{I_j} \ (0 \text{ if } I_j \notin [0, n)), \qquad
    \mathrm{scatter}(x, I, R)_r = R_j \text{ if } r = I_j \text{ else } x_r

Under Auto axes (or on one device) these are ``jnp`` indexing as usual. On a mesh with
``Explicit`` axes the layout is part of the array's type, and JAX has no rule for the layout
of a gather from (or a scatter into) a row-split table: it asks for ``out_sharding=``. The
``k`` gathered rows come out whole along axis 0 (their other dimensions split as in ``x``),
which is what a step does with them next; a scatter keeps ``x``'s own layout. XLA then
reads each row on the device that holds it and combines the ``k`` rows (an all-reduce of
``k`` rows, never an all-gather of the table).
"""

import jax
import jax.numpy as jnp

from ._placement import names_explicit_axes, sharding_of


def explicit_spec(x: jax.Array) -> tuple | None:
    """``x``'s PartitionSpec entries (one per dimension) if it names Explicit axes, else None."""
    sharding = sharding_of(x)
    if sharding is None or not names_explicit_axes(sharding):
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (jnp.ndim(x) - len(spec))


def replicated(x: jax.Array) -> jax.Array:
    """``x`` whole on every device if its type names Explicit axes (a batch's ids split over
    a data axis, before they are sorted: a sort cannot run on a split axis), else ``x``."""
    if explicit_spec(x) is None:
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def gather_rows(x: jax.Array, indices: jax.Array) -> jax.Array:
    """``x[indices]`` along axis 0, zeros where an index lies outside ``[0, len(x))``."""
    spec = explicit_spec(x)
    out = None if spec is None else jax.sharding.PartitionSpec(None, *spec[1:])
    return x.at[indices].get(mode="fill", fill_value=0, out_sharding=out)


def scatter_rows(
    x: jax.Array, indices: jax.Array, rows: jax.Array, *, indices_are_sorted: bool = False
) -> jax.Array:
    """``x`` with row ``indices[j]`` replaced by ``rows[j]``; out-of-range indices dropped."""
    spec = explicit_spec(x)
    out = None if spec is None else jax.sharding.PartitionSpec(*spec)
    return x.at[indices].set(
        rows, mode="drop", indices_are_sorted=indices_are_sorted, out_sharding=out
    )
