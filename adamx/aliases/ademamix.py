"""Placeholder (issue 15): its owner replaces this module."""



def ademamix(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError


def simplified_ademamix(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError
