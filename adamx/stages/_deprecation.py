"""Renamed keywords: the old name keeps working for one release and warns, naming the new one."""

import warnings
from typing import Any

from .._validation import is_concrete_number


def renamed_keyword(
    stage: str, old: str, old_value: Any, new: str, new_value: Any, default: Any
) -> Any:
    """The value of keyword ``new``, taken from the deprecated ``old`` when the caller passed it.

    ``old_value`` is None when the caller did not pass ``old``; ``default`` is
    ``new``'s default. Passing both (``new`` not at its default) is a ``TypeError``.
    The warning points at the caller of ``stage`` (``stacklevel=3``).
    """
    if old_value is None:
        return new_value
    at_default = new_value is default or (
        is_concrete_number(new_value) and is_concrete_number(default) and new_value == default
    )
    if not at_default:
        raise TypeError(
            f"{stage}: {old}= is the deprecated name of {new}=; pass {new}= only, got both."
        )
    warnings.warn(
        f"{stage}({old}=...) is deprecated and will be removed in the next release: "
        f"use {stage}({new}=...), which means the same.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
