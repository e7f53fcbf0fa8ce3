"""Rates that are constants or schedules: the shared plumbing of decay and learning rate."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScheduleState(NamedTuple):
    """Step count of a scheduled rate."""

    count: jax.Array  # shape=(), int32: steps taken, saturating


def init_rate_state(rate: Any) -> Any:
    """A step count for a schedule; nothing for a constant."""
    return ScheduleState(count=jnp.zeros([], jnp.int32)) if callable(rate) else optax.EmptyState()


def current_rate(rate: Any, state: Any) -> tuple[Any, Any]:
    """The rate for this step and the next state."""
    if callable(rate):
        return rate(state.count), ScheduleState(count=optax.safe_increment(state.count))
    return rate, state


def like(s: Any, x: jax.Array) -> Any:
    """Scalar ``s`` in ``x``'s dtype, so that ``s * x`` keeps ``x``'s dtype.

    Python numbers are weakly typed and already do; an array (a schedule's value
    or an injected hyperparameter) is cast, as optax's ``scale_by_schedule`` does.
    """
    return s if isinstance(s, (int, float, complex)) else jnp.asarray(s, dtype=x.dtype)
