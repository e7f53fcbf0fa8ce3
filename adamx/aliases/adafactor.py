"""``adamx.adafactor``: being written (issue 14)."""

from typing import Any


def adafactor(*args: Any, **kwargs: Any) -> Any:
    """Placeholder until the alias lands."""
    raise NotImplementedError("adamx.adafactor is being written (issue 14)")
