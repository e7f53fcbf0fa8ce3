r"""The bookkeeping of ``sparse_rows(..., semantics="catch_up")``: when was each row last updated.

The state keeps, beside the wrapped chain's, the step count t and for every parameter leaf
of one or more dimensions an int32 per row: the count after the row's last update. At step
t a touched row r has been skipped for

.. math::
    k_r = t - \mathrm{last}_r

steps (0 if it was updated at the previous step). These k reach ``scale_by_moments`` as the
extra argument ``skipped_steps``, which decays the stored moments by :math:`\beta^{k_r}`
before the step's update; afterwards :math:`\mathrm{last}_r = t + 1` for the touched rows
(every row of a leaf with a dense gradient).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import increment
from .._types import PyTree, without_variables
from .._validation import _keystr
from ..stages import ScaleByMomentsState
from ._rows import Grads

_STAGE = "sparse_rows"


class SparseRowsState(NamedTuple):
    """State of ``sparse_rows(..., semantics="catch_up")``."""

    inner: PyTree  # the wrapped chain's state: exactly inner.init(params)
    # int32 (): the steps taken; named as in optax's states, so it shadows tuple.count
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    last_step: dict[str, jax.Array]  # {keystr(path): int32 (rows,)}: count after last update


def init_catch_up(inner: optax.GradientTransformation, params: PyTree) -> SparseRowsState:
    """The wrapped chain's state, a zero count, and a zero last step for every row."""
    state = inner.init(params)
    if not any(
        isinstance(s, ScaleByMomentsState) for s in jax.tree.leaves(state, is_leaf=_moments)
    ):
        raise ValueError(
            f"{_STAGE}(semantics='catch_up') decays the stored moments of adamx's "
            "scale_by_moments, but the wrapped chain has none (its state holds no "
            "ScaleByMomentsState): wrap an adamx optimizer (adamx.adam, adamw, nadam, radam, "
            "amsgrad, adamax, ...) or a chain built on adamx.scale_by_moments, or use "
            "semantics='lazy'."
        )
    last = {
        _keystr(path): jnp.zeros(jnp.shape(leaf)[:1], jnp.int32)
        for path, leaf in jax.tree_util.tree_flatten_with_path(without_variables(params))[0]
        if jnp.ndim(leaf) >= 1
    }
    return SparseRowsState(inner=state, count=jnp.zeros((), jnp.int32), last_step=last)


def _moments(x: Any) -> bool:
    return isinstance(x, ScaleByMomentsState)


def skipped_steps(state: SparseRowsState, grads: Grads) -> dict[str, jax.Array]:
    r"""For each table, :math:`k_r = t - \mathrm{last}_r` at its entries (0 at padding)."""
    out = {}
    for i, g in grads.tables.items():
        key = _keystr(grads.paths[i])
        last = jnp.take(state.last_step[key], g.indices, mode="fill", fill_value=-1)
        out[key] = jnp.where(last < 0, 0, state.count - last)  # padding: -1
    return out


def advance(state: SparseRowsState, grads: Grads, inner_state: PyTree) -> SparseRowsState:
    """The next state: the count + 1, recorded as the last step of every updated row."""
    count = increment(state.count)
    tables = {_keystr(grads.paths[i]): g for i, g in grads.tables.items()}
    last = {}
    for key, rows in state.last_step.items():
        g = tables.get(key)
        if g is None:  # a dense gradient: every row was updated
            last[key] = jnp.full_like(rows, count)
        else:
            last[key] = rows.at[g.indices].set(count, mode="drop", indices_are_sorted=True)
    return SparseRowsState(inner=inner_state, count=count, last_step=last)
