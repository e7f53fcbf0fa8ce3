"""Placeholder (issue 15): its owner replaces this module."""

from typing import NamedTuple


def add_slow_ema(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


class SlowEmaState(NamedTuple):
    """Placeholder."""


def scale_by_simplified_ademamix(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


class ScaleBySimplifiedAdemamixState(NamedTuple):
    """Placeholder."""
