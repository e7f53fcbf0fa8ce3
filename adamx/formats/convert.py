r"""A moment between its stored form and floats: read a state for logging, or re-encode it.

.. math::
    x = \operatorname{decode}_A(s_A), \qquad s_B = \operatorname{encode}_B(x)

``decode_moment`` gives the float moment a stage would see (an 8-bit or factored v as a
dense float32 array per leaf); ``encode_moment`` stores a float moment in another format, as
``tx.init`` would have stored it had training reached those values. Together they carry a
state across a change of format, configuration or layout version (``versions.py``;
docs/state_formats.md shows the recipe with a checkpoint).
"""

import jax
from jax.typing import DTypeLike

from .._types import PyTree
from .base import as_format, init_moment, read_moment, write_moment
from .protocol import MomentFormat, Role

__all__ = ["decode_moment", "encode_moment"]


def decode_moment(
    fmt: MomentFormat | DTypeLike | None, role: Role, stored: PyTree, like: PyTree
) -> PyTree:
    """The moment ``stored`` (a state's ``mu``, ``nu`` or ``nu_max``) as float arrays.

    Args:
      fmt: the format that made ``stored`` (as given to ``mu_dtype`` / ``nu_dtype``: a
        format, a float dtype or None); its recorded description must match the state's.
      role: "mu", "nu" or "nu_max" (which moment: a format binds to it).
      stored: the stored moment, e.g. ``state[0].nu`` of ``adamx.adam``.
      like: the parameters (or gradients): each leaf's shape.

    Returns:
      A tree shaped like ``like``: each leaf's moment as the stage decodes it (float32 for
      the blockwise, stochastic and factored formats; the stored dtype for a float moment).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> params = {"w": jnp.ones((64, 64))}
      >>> tx = adamx.adam(0.1, nu_dtype=adamx.blockwise_8bit(min_size=0))
      >>> _, state = tx.update(params, tx.init(params), params)
      >>> nu = adamx.formats.convert.decode_moment(adamx.blockwise_8bit(min_size=0), "nu",
      ...                                          state[0].nu, params)
      >>> nu["w"].dtype, float(nu["w"][0, 0])
      (dtype('float32'), 0.0009765625)
    """
    fmt = as_format(fmt, role)
    rows = read_moment("decode_moment", fmt, role, like, stored)[0]
    leaves, treedef = jax.tree.flatten(like)
    moments = [fmt.decode(row, leaf) for row, leaf in zip(rows, leaves, strict=True)]
    return treedef.unflatten(moments)


def encode_moment(
    fmt: MomentFormat | DTypeLike | None,
    role: Role,
    moment: PyTree,
    params: PyTree | None = None,
) -> PyTree:
    """The float ``moment`` stored by ``fmt`` as the moment ``role``: what ``tx.init(params)``
    puts at that moment's place (the record, its description, a fresh rounding key), holding
    ``moment`` instead of zeros (rounded as the format rounds: stochastically, with the key
    ``init`` holds, if the format is ``stochastic``).

    ``params`` (default: ``moment``) give the dtypes a format takes from the parameters
    (``mu_dtype=None``; ``factored()``'s factors).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> nu = {"w": jnp.full((64, 64), 0.25)}
      >>> stored = adamx.formats.convert.encode_moment(adamx.blockwise_8bit(min_size=0), "nu", nu)
      >>> stored.codes["w"].dtype, stored.description.endswith(" v1")
      (dtype('uint8'), True)
    """
    fmt = as_format(fmt, role)
    zero = init_moment("encode_moment", fmt, role, moment if params is None else params)
    rows, keys, next_key = read_moment("encode_moment", fmt, role, moment, zero)
    values, treedef = jax.tree.flatten(moment)
    encoded = [fmt.encode(x, row, k) for x, row, k in zip(values, rows, keys, strict=True)]
    return write_moment(fmt, treedef, encoded, next_key, zero)
