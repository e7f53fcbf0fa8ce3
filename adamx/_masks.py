"""Masks from leaf paths: decide which parameters a stage touches by their names."""

import re
from collections.abc import Callable
from typing import Any

import jax

from ._types import PyTree


def path_to_str(path: tuple) -> str:
    """A leaf's path as ``"encoder/layers/0/bias"``: dict keys, attribute names and indices."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def path_mask(predicate: Callable[[str, Any], bool]) -> Callable[[PyTree], PyTree]:
    """A mask callable from a predicate on each leaf's path and value.

    ``predicate(path, leaf)`` receives the leaf's path as a ``/``-joined string
    (``"encoder/0/bias"``) and the leaf itself (read its ``shape``/``ndim``/
    ``dtype``, never its values: a mask is static) and returns True where the
    stage applies.

    Args:
      predicate: ``(path: str, leaf) -> bool``.

    Returns:
      ``params -> pytree of bools``, for the ``mask`` of ``adamw`` and the weight
      decay stages (or ``optax.masked``).

    Example:
      >>> import adamx
      >>> no_decay_on_biases_and_norms = adamx.path_mask(
      ...     lambda path, x: x.ndim > 1 and "norm" not in path)
      >>> tx = adamx.adamw(1e-3, weight_decay=0.1, mask=no_decay_on_biases_and_norms)
    """
    if not callable(predicate):
        raise TypeError(f"path_mask takes a callable (path: str, leaf) -> bool, got {predicate!r}.")

    def mask_fn(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: predicate(path_to_str(path), leaf), params
        )

    return mask_fn


def exclude_paths(*patterns: str) -> Callable[[PyTree], PyTree]:
    """A mask that is True everywhere except on leaves whose path matches a pattern.

    Each pattern is a regular expression searched (``re.search``) in the leaf's
    ``/``-joined path, e.g. ``exclude_paths(r"bias$", r"norm", r"(^|/)scale$")``.

    Args:
      *patterns: regular expressions; at least one.

    Returns:
      ``params -> pytree of bools``.

    Example:
      >>> import adamx
      >>> tx = adamx.adamw(1e-3, weight_decay=0.1, mask=adamx.exclude_paths("bias", "norm"))
    """
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"exclude_paths takes one or more regular expressions (str), got {patterns!r}."
        )
    compiled = [re.compile(p) for p in patterns]
    return path_mask(lambda path, _: not any(c.search(path) for c in compiled))
