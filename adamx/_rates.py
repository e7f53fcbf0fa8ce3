"""Rates: constants or schedules (the learning rate, a decay), and the decay arithmetic the
stages share (β^t and the moving average), written out for strict dtype promotion."""

from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from ._types import is_python_number, promote


class ScheduleState(NamedTuple):
    """Step count of a scheduled rate."""

    # shape=(), int32: steps taken, saturating
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def init_rate_state(rate: optax.ScalarOrSchedule) -> ScheduleState | optax.EmptyState:
    """A step count for a schedule; nothing for a constant."""
    return ScheduleState(count=jnp.zeros([], jnp.int32)) if callable(rate) else optax.EmptyState()


def current_rate(
    rate: optax.ScalarOrSchedule, state: ScheduleState | optax.EmptyState
) -> tuple[float | jax.Array, ScheduleState | optax.EmptyState]:
    """The rate for this step and the next state."""
    if callable(rate):
        count = cast(ScheduleState, state).count  # a schedule's state: init_rate_state's
        return rate_at(rate, count), ScheduleState(count=increment(count))
    return rate, state


def rate_at(rate: optax.ScalarOrSchedule, count: jax.Array) -> float | jax.Array:
    """A schedule's value at ``count`` (optax types it ``ArrayLike``: a number or an array);
    a constant as it is."""
    return cast(float | jax.Array, rate(count)) if callable(rate) else rate


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum: ``optax.safe_increment`` typed for the
    array it is given (optax annotates it ``ArrayLike -> ArrayLike``)."""
    return cast(jax.Array, optax.safe_increment(count))


def like(s: float | jax.Array, x: jax.Array) -> float | jax.Array:
    """Scalar ``s`` in ``x``'s dtype, so that ``s * x`` keeps ``x``'s dtype.

    Python numbers are weakly typed and already do; an array (a schedule's value
    or an injected hyperparameter) is cast, as optax's ``scale_by_schedule`` does.
    """
    return s if is_python_number(s) else jnp.asarray(s, dtype=x.dtype)


def decay_power(decay: float | jax.Array, count: jax.Array) -> jax.Array:
    r""":math:`\beta^t` for an int32 step ``t``, as optax's ``decay ** count`` computes it.

    A Python β enters as a weakly typed default-float scalar and the power keeps the
    integer exponent (``lax.pow(float, int)``), as ``jnp.power`` does for optax under
    standard promotion; under strict promotion ``decay ** count`` itself is refused.
    """
    return jax.lax.pow(jnp.asarray(decay), count)


def ema(x: jax.Array, state: jax.Array, decay: float | jax.Array) -> jax.Array:
    r""":math:`(1 - \beta) x + \beta s`, as ``optax.tree.update_moment(x, s, β, 1)`` forms it.

    optax mixes the dtypes of x, s and β by implicit promotion (a moment stored in
    its own dtype, an injected float32 β), which strict promotion refuses; here
    each product is formed in the promoted dtype of its operands and the sum in
    theirs, the casts written out: standard promotion's arithmetic, optax's bits.
    """
    new = jnp.multiply(*promote(1 - decay, x))
    old = jnp.multiply(*promote(decay, state))
    return jnp.add(*promote(new, old))
