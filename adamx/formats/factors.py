r"""The arithmetic of a factored second moment (Shazeer & Stern 2018), shared by the
``factored`` format and the ``scale_by_factored_rms`` stage of ``adamx.adafactor``.

A non-negative matrix V (n × m) is kept as its row and column means,

.. math::
    r = \operatorname{mean}_j V_{ij}, \qquad c = \operatorname{mean}_i V_{ij}, \qquad
    \hat V_{ij} = \frac{r_i \, c_j}{\operatorname{mean}_i r_i}

(O(n + m) numbers). Which two axes are factored follows optax exactly: the two
largest axes of the leaf, if the smaller of them has at least
``min_dim_size_to_factor`` elements (``factored_dims``); the others are kept. In
optax's naming ``d0`` is the largest axis and ``d1`` the second largest; "row"
statistics average over ``d0``, "column" statistics over ``d1``.
"""

import jax
import jax.numpy as jnp
import numpy as np


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """``(d1, d0)``: the second-largest and largest axes of ``shape`` (ties: the earlier
    axis first, as ``np.argsort``), or None when the leaf has fewer than two axes or its
    second-largest axis is shorter than ``min_dim_size_to_factor`` (optax's rule)."""
    if len(shape) < 2:
        return None
    sorted_dims = np.argsort(shape)
    if shape[sorted_dims[-2]] < min_dim_size_to_factor:
        return None
    return int(sorted_dims[-2]), int(sorted_dims[-1])


def factor_means(x: jax.Array, dims: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """``(row, col)``: the means of ``x`` over ``d0`` and over ``d1`` (``dims = (d1, d0)``)."""
    d1, d0 = dims
    return jnp.mean(x, axis=d0), jnp.mean(x, axis=d1)


def reduced_d1(dims: tuple[int, int]) -> int:
    """The axis of ``row`` (``x`` without ``d0``) that was ``d1`` in ``x``."""
    d1, d0 = dims
    return d1 - 1 if d1 > d0 else d1


def expand_factors(
    row: jax.Array, col: jax.Array, dims: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """``row`` and ``col`` with the averaged axis put back (size 1), to broadcast against x."""
    d1, d0 = dims
    return jnp.expand_dims(row, axis=d0), jnp.expand_dims(col, axis=d1)
