"""Adafactor's factored RMS scaling (``scale_by_factored_rms``): being written (issue 14)."""

from typing import Any


def scale_by_factored_rms(*args: Any, **kwargs: Any) -> Any:
    """Placeholder until the stage lands."""
    raise NotImplementedError("adamx.scale_by_factored_rms is being written (issue 14)")


class FactoredRmsState:
    """Placeholder."""
