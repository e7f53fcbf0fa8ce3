"""What the registry's entries share: dtypes, the parity horizon, schedules, rates, masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from _promotion import reference_schedule

F32, BF16, F16, C64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64
ALL = (F32, BF16, F16, C64)
PARITY_STEPS = 1000  # length of the schedules below (the optax parity suites' horizon)
# optax's cosine schedule is not strict-clean (π * count / steps, count int32): see _promotion.
SCHEDULE = reference_schedule(
    optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, PARITY_STEPS, end_value=1e-4)
)
DECAY_SCHEDULE = optax.linear_schedule(0.1, 0.0, PARITY_STEPS)
LR = 3e-3
KERAS_LR = 2.0**-8  # Keras stores the rate as a float32 variable: 2**-8 is exact in both widths


def matrices(params):
    """A callable weight-decay mask: decay the matrices, not vectors or scalars."""
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def pytree_mask(params):
    """A literal bool pytree over the optax suites' trees (``_streams.make_mixed_params``)."""
    return {
        group: {"w": True, "b": False, "scale": False, "block": {"k": True}} for group in params
    }
