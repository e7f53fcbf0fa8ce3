"""The version policy of state formats: what a moment's state records, and who refuses another.

A record format (``fields`` set: ``blockwise``, ``stochastic_float``, ``factored``) keeps
``config = {d: uint8[1]}`` in its state, with ``d = f"{fmt.describe()} v{fmt.version}"``:
the static configuration and the version of the stored layout (which arrays, dtypes, shapes,
and which value each code means), as a dict key, so part of the tree structure and of every
checkpoint path. Two states are interchangeable exactly when their ``d`` are equal.
``version`` is a class attribute of the format, bumped by every change that makes an old
state decode to other values (CHANGELOG.md, "State formats", says so);
``tests/formats/test_versions.py`` pins each layout to a digest of its bytes, so a change that
forgets the bump fails there.

Who compares it:

- ``tx.update`` (``base.read_moment``): the state's ``d`` against the optimizer's, at trace
  time (a different ``d`` is a different tree structure, so a jitted step retraces and checks
  again); a float moment (``FloatFormat``, no record) is checked by dtype when the optimizer
  names one.
- a checkpoint restore: orbax refuses a target whose paths the checkpoint lacks;
  :func:`check_checkpoint` says the same before it, naming the moment, both ``d`` and the fix.

A user-defined format may set ``version`` too; without it, ``d`` is ``describe()`` alone.
"""

from collections.abc import Iterable

import jax

from .._types import PyTree
from .._validation import _keystr
from .protocol import ARGUMENTS, MomentFormat, MomentRecord

__all__ = ["check_checkpoint"]  # and, for formats' own use, recorded / version_of / mismatch

DOCS = "docs/state_formats.md"
"""The page that shows how to convert a state between formats (for messages)."""


def recorded(fmt: MomentFormat) -> str | None:
    """The description a state of ``fmt`` records: ``describe()``, a space, ``v<version>``.

    None for a format without a record (``fields is None``: a float moment is a bare array).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> adamx.formats.versions.recorded(adamx.stochastic_float(jnp.bfloat16))
      'stochastic_float(bfloat16) v1'
      >>> adamx.formats.versions.recorded(adamx.FloatFormat(jnp.float32)) is None
      True
    """
    if fmt.fields is None:
        return None
    version = getattr(fmt, "version", None)
    return fmt.describe() if version is None else f"{fmt.describe()} v{version}"


def version_of(description: str) -> int | None:
    """The ``version`` a recorded description ends with, or None (none recorded)."""
    head, _, tail = description.rpartition(" v")
    return int(tail) if head and tail.isdigit() else None


def mismatch(what: str, got: str, want: str, moment: str, argument: str) -> str:
    """The message that refuses a state ``what`` stored as ``got`` where the optimizer stores
    ``moment`` (its role, "mu", "nu", ...) as ``want``, set by ``argument``."""
    why = "The layouts decode differently, so this state cannot be used"
    old, new = version_of(got), version_of(want)
    if _configuration(got) == _configuration(want) and old != new:
        why = (
            f"The same configuration in another layout version ({_version(old)} vs "
            f"{_version(new)}: the stored arrays mean other values), so it cannot be used"
        )
    return (
        f"{what} was stored as {got}, but this optimizer stores {moment} as {want} ({argument}). "
        f"{why}: build the optimizer with the format that made the state, re-encode the moment "
        f"(adamx.formats.convert; see {DOCS}), or start from tx.init(params)."
    )


def _configuration(description: str) -> str:
    """The description without its version."""
    return description if version_of(description) is None else description.rpartition(" v")[0]


def _version(version: int | None) -> str:
    return "none recorded" if version is None else f"v{version}"


def check_checkpoint(saved: PyTree, target: PyTree) -> None:
    """Refuse to restore ``saved`` into ``target`` if a moment's recorded format differs.

    ``saved``: the checkpoint's tree (orbax: ``checkpointer.metadata(path).item_metadata``),
    or any tree with its structure (the saved state itself); ``target``: the restore target
    (``adamx.sharding.abstract_state(tx, params)`` or ``jax.eval_shape``, inside any tree).
    Every moment record of ``target`` must find its recorded description under its path in
    ``saved``, and every description recorded in ``saved`` a record in ``target``. Paths are
    compared by their names (orbax saves a tuple's entries as "0", "1", ...). Float moments
    are not compared: a checkpointer casts a float array to the target's dtype (exact when
    widening, rounded to nearest when narrowing), which is what re-encoding it would do.

    Raises:
      ValueError: naming the moment's path, both descriptions and the fix.

    Example:
      >>> import adamx, jax, jax.numpy as jnp
      >>> params = {"w": jnp.zeros((64, 64))}
      >>> made = adamx.adam(1e-3, nu_dtype=adamx.blockwise_8bit(min_size=0))
      >>> used = adamx.adam(1e-3, nu_dtype=adamx.blockwise_8bit(min_size=0, block_size=64))
      >>> saved = made.init(params)  # or orbax: checkpointer.metadata(path).item_metadata
      >>> adamx.formats.versions.check_checkpoint(saved, jax.eval_shape(made.init, params))
      >>> adamx.formats.versions.check_checkpoint(saved, jax.eval_shape(used.init, params))
      Traceback (most recent call last):
      ...
      ValueError: the checkpoint's moment at [0].nu was stored as blockwise_8bit(...) v1, but ...
    """
    want = _records(target)
    saved_paths = {_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}
    target_paths = {_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    have: dict[tuple[str, ...], list[str]] = {}
    for names in sorted(saved_paths - target_paths):
        if len(names) >= 2 and names[-2] == "config":
            have.setdefault(names[:-2], []).append(names[-1])
    for where, (description, path) in want.items():
        if (*where, "config", description) not in saved_paths:
            got = have.get(where)
            if got is None:
                held = any(names[: len(where)] == where for names in saved_paths)
                got = ["a float moment" if held else "nothing (no state at this path)"]
            _refuse(_keystr(path), " or ".join(got), description, where[-1])
    for where, got in have.items():
        if where not in want:
            float_moment = "a float moment (no format record)"
            _refuse("/".join(where), " or ".join(got), float_moment, where[-1] if where else "")


def _refuse(where: str, got: str, want: str, role: str) -> None:
    what = f"the checkpoint's moment at {where}"
    argument = next((a for r, a in ARGUMENTS.items() if r == role), "mu_dtype / nu_dtype")
    raise ValueError(mismatch(what, got, want, "it", argument))


def _names(path: Iterable) -> tuple[str, ...]:
    """A key path as orbax names it: dict keys, field names and sequence indices as text."""
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def _records(tree: PyTree) -> dict[tuple[str, ...], tuple[str, tuple]]:
    """``{path names: (recorded description, key path)}`` of every moment record in ``tree``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_record)[0]
    return {
        _names(path): (node.description, tuple(path))
        for path, node in leaves
        if isinstance(node, MomentRecord)
    }


def _is_record(node: object) -> bool:
    return isinstance(node, MomentRecord)
