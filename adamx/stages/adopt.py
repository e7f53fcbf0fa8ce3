"""Placeholder (issue 15): its owner replaces this module."""

from typing import NamedTuple


def scale_by_adopt(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


class ScaleByAdoptState(NamedTuple):
    """Placeholder."""
