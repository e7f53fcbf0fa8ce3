"""Placeholder (issue 15): its owner replaces this module."""

from typing import NamedTuple


def monitor(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


class MonitorState(NamedTuple):
    """Placeholder."""


class MonitorStats(NamedTuple):
    """Placeholder."""
