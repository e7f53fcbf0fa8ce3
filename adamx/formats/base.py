"""From ``mu_dtype`` / ``nu_dtype`` to a bound format, and a moment's state across leaves.

The stages (``scale_by_moments``, ``running_max_nu``) call four functions:

- ``as_format(spec, role)``: the ``MomentFormat`` (``protocol.py``) that stores
  the moment ``role``, from a format, a float dtype or None;
- ``init_moment``: the zero state of a moment: a tree of arrays shaped like the
  parameters (``fields is None``, as optax's ``mu``/``nu``), or a record of such
  trees, one per field, plus a rounding key and the format's ``describe()`` and layout
  version as a ``config`` key (``{"blockwise_8bit(signed=False, ...) v1": uint8[1]}``;
  ``versions.py``);
- ``read_moment``: each leaf's stored moment and rounding key, after checking that
  the state was made by this configuration (the ``config`` key is part of the tree
  structure, so this is a trace-time check, and of every checkpoint path, so a
  restore into another configuration is refused by the checkpointer);
- ``write_moment``: the new state from each leaf's encoded moment.

The record layout is transposed (parameter-shaped trees, not a tree of tuples) so
that hosts wrapping every state leaf at a parameter position (``flax.nnx``) wrap
plain arrays; a leaf's original shape is read from the gradient at update time.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import cast

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .._types import PyTree, PyTreeDef
from .._validation import _keystr, check_choice, check_float_dtype, flatten_like_updates
from .float import FloatFormat
from .leaves import bucket_members, leaf_ids
from .protocol import (
    ARGUMENTS,
    ROLES,
    MomentFormat,
    MomentRecord,
    Role,
    StoredLeaf,
    StoredT,
    format_gaps,
)
from .versions import mismatch, recorded


def as_format(spec: MomentFormat | DTypeLike | None, role: Role) -> MomentFormat:
    """The format that stores the moment ``role`` ("mu", "nu" or "nu_max").

    ``spec`` is a ``MomentFormat``, a float dtype, or None (the parameter's dtype).
    A dtype given for m stores and computes as ``optax.adam(mu_dtype=...)`` does
    (bit for bit). A dtype narrower than float32 given for v is decoded to float32
    before the update (``FloatFormat(dtype, upcast=True)``; otherwise β2 = 0.999
    would round to 1), but rounded to nearest v still cannot decay: a warning names
    the formats that can. A format is bound to the role (``bind``). Errors and
    warnings name the user's argument for ``role`` (``mu_dtype`` / ``nu_dtype``).
    """
    check_choice("role", role, tuple(ROLES), "(the moment a format stores: m, v, max v).")
    if isinstance(spec, MomentFormat):
        return spec.bind(role)
    _check_dtype_or_format(ARGUMENTS[role], spec)
    narrow = spec is not None and jnp.dtype(spec).itemsize < 4
    if role != "mu" and narrow:
        _warn_narrow_second_moment(role, jnp.dtype(spec))
    return FloatFormat(spec, upcast=role != "mu" and narrow)


def _check_dtype_or_format(argument: str, spec: object) -> None:
    """``spec`` must be a float dtype or None; an object with some of the Protocol's methods
    is told which members it lacks."""
    try:
        check_float_dtype(argument, spec)
    except TypeError:
        missing = None if isinstance(spec, (str, bytes)) else format_gaps(spec)
        if missing is None:
            raise
        raise TypeError(
            f"{argument}={spec!r} looks like a moment format but lacks {missing}; a format "
            "implements adamx.MomentFormat (see adamx.formats.float.FloatFormat, the simplest)."
        ) from None


def _warn_narrow_second_moment(role: Role, dtype: jnp.dtype) -> None:
    argument = ARGUMENTS[role]
    float16 = ""
    if dtype == jnp.float16:
        float16 = " (and float16 holds v = g² only for 2.4e-4 < |g| < 256)"
    warnings.warn(
        f"{argument}={dtype.name}: each step moves v by (1 - b2)·v = 0.1% of v, less "
        f"than half a {dtype.name} ulp, so rounded to nearest v can grow but never decay"
        f"{float16}. Use {argument}=adamx.stochastic_float(jnp.bfloat16) (unbiased rounding) "
        "or adamx.blockwise_8bit().",
        UserWarning,
        stacklevel=4,
    )


def init_moment(stage: str, fmt: MomentFormat, role: Role, params: PyTree) -> PyTree:
    """The zero state of moment ``role`` for ``params``: a tree, or ``fmt.record`` of trees."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    members = [None] * len(paths_and_leaves) if fmt.elementwise else bucket_members(params)
    rows = []
    for (path, leaf), packed in zip(paths_and_leaves, members, strict=True):
        try:
            rows.append(fmt.init(jnp.asarray(leaf), packed))
        except (TypeError, ValueError) as error:
            where = f"the parameter at {_keystr(path)}"
            raise type(error)(f"{stage}: {ARGUMENTS[role]} at {where}: {error}") from None
    key = None
    if fmt.stochastic:
        key = jax.random.key_data(jax.random.fold_in(jax.random.key(fmt.seed), ROLES[role]))
    config = {recorded(fmt): jnp.zeros((1,), jnp.uint8)}
    return _assemble(fmt, treedef, rows, key, config)


def read_moment(
    stage: str, fmt: MomentFormat[StoredT], role: Role, updates: PyTree, stored: PyTree
) -> tuple[Sequence[StoredT], Sequence[jax.Array | None], jax.Array | None]:
    """``(per-leaf stored moments, per-leaf keys, next key)`` of ``stored`` at ``updates``' leaves.

    Refuses a state made by another format configuration, naming the leaf and both.
    """
    _check_config(stage, fmt, role, updates, stored)
    if fmt.fields is None:
        leaves = flatten_like_updates(stage, updates, stored, "state")
        return leaves, [None] * len(leaves), None
    columns = [
        flatten_like_updates(stage, updates, getattr(stored, field), "state")
        for field in fmt.fields
    ]
    # a leaf's arrays, zipped back across the record's fields, are what fmt.init stored
    rows = cast(list[StoredT], list(zip(*columns, strict=True)))
    if not fmt.stochastic:
        return rows, [None] * len(rows), None
    next_key, step_key = jax.random.split(jax.random.wrap_key_data(stored.key))
    keys = [jax.random.fold_in(step_key, i) for i in leaf_ids(updates)]
    return rows, keys, jax.random.key_data(next_key)


def write_moment(
    fmt: MomentFormat,
    treedef: PyTreeDef,
    rows: Sequence[StoredLeaf],
    key: jax.Array | None,
    stored: PyTree,
) -> PyTree:
    """The new state of a moment from its per-leaf stored values (``read_moment``'s inverse)."""
    config = stored.config if isinstance(stored, MomentRecord) else None
    return _assemble(fmt, treedef, rows, key, config)


def update_moments(
    stage: str,
    mu_format: MomentFormat,
    nu_format: MomentFormat,
    updates: PyTree,
    stored_mu: PyTree,
    stored_nu: PyTree,
    leaf: Callable[..., tuple],
) -> tuple[PyTree, PyTree, PyTree]:
    """A stage's step over two stored moments: ``(output tree, new mu, new nu)``.

    Reads both moments through their formats (``read_moment``), calls
    ``leaf(path, g, mu_stored, nu_stored, mu_key, nu_key) -> (output, mu_row, nu_row)`` on
    each leaf (it decodes, computes and encodes), and writes both back (``write_moment``).
    """
    paths_and_grads, treedef = jax.tree_util.tree_flatten_with_path(updates)
    mus, mu_keys, mu_next = read_moment(stage, mu_format, "mu", updates, stored_mu)
    nus, nu_keys, nu_next = read_moment(stage, nu_format, "nu", updates, stored_nu)
    leaves = zip(paths_and_grads, mus, nus, mu_keys, nu_keys, strict=True)
    rows = [leaf(path, g, *rest) for (path, g), *rest in leaves]
    mu = write_moment(mu_format, treedef, [row[1] for row in rows], mu_next, stored_mu)
    nu = write_moment(nu_format, treedef, [row[2] for row in rows], nu_next, stored_nu)
    return treedef.unflatten([row[0] for row in rows]), mu, nu


def _assemble(
    fmt: MomentFormat,
    treedef: PyTreeDef,
    rows: Sequence[StoredLeaf],
    key: jax.Array | None,
    config: dict[str | None, jax.Array] | None,
) -> PyTree:
    """A tree of the rows (``fields is None``), or ``fmt.record`` of one tree per field."""
    if fmt.fields is None:
        return treedef.unflatten(rows)
    trees = {f: treedef.unflatten([row[i] for row in rows]) for i, f in enumerate(fmt.fields)}
    assert fmt.record is not None, "a format with fields has a record"
    return fmt.record(**trees, key=key, config=config)


def _check_config(
    stage: str, fmt: MomentFormat, role: Role, updates: PyTree, stored: PyTree
) -> None:
    """Refuse a state made by another format (or configuration) than ``fmt``."""
    got = stored.description if isinstance(stored, MomentRecord) else None
    want = recorded(fmt)
    if got == want and (want is not None or _float_dtypes_ok(fmt, stored)):
        return
    paths = jax.tree_util.tree_flatten_with_path(updates)[0]
    where = _keystr(paths[0][0]) if paths else "[]"
    if got is None:
        leaves = jax.tree.leaves(stored)
        got = f"a float moment ({jnp.result_type(leaves[0]).name})" if leaves else "empty"
    what = f"{stage}: the state's {role} at {where} (and the other leaves)"
    raise ValueError(mismatch(what, got, want or fmt.describe(), role, ARGUMENTS[role]))


def _float_dtypes_ok(fmt: MomentFormat, stored: PyTree) -> bool:
    """A float state: every leaf has the format's explicit dtype (any, for None)."""
    if not isinstance(fmt, FloatFormat):
        return True
    return all(fmt.stored_dtype_ok(leaf) for leaf in jax.tree.leaves(stored))
