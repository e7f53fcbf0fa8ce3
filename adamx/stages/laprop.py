"""Placeholder (issue 15): its owner replaces this module."""

from typing import NamedTuple


def scale_by_laprop(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


class ScaleByLapropState(NamedTuple):
    """Placeholder."""
