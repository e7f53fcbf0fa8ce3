"""Placeholder (issue 15): its owner replaces this module."""



def laprop(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError
