"""The factored second-moment format (``adamx.factored``): being written (issue 14)."""

from typing import Any


def factored(*args: Any, **kwargs: Any) -> Any:
    """A factored second moment (placeholder until the format lands)."""
    raise NotImplementedError("adamx.factored is being written (issue 14)")


class Factored:
    """Placeholder."""


class FactoredMoment:
    """Placeholder."""
