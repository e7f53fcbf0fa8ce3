"""Placeholder (issue 15): its owner replaces this module."""



def stable_adamw(*args, **kwargs):
    """Placeholder."""
    raise NotImplementedError
