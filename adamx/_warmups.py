"""The warm-up schedules of the AdEMAMix paper (Pagliardini et al. 2024, arXiv:2409.03137):
α rises linearly, β rises linearly in its half-life; both at the 1-based step t = count + 1,
as the paper's code and ``pytorch_optimizer.AdEMAMix`` count. Pass them as ``alpha`` / ``b3``
of ``adamx.ademamix`` / ``add_slow_ema`` (or ``b1`` of ``simplified_ademamix``)."""

import math

import jax
import jax.numpy as jnp
import optax

from ._validation import check_beta, check_positive_number, check_size


def linear_warmup(end: float, steps: int) -> optax.Schedule:
    r"""α_t = min(t·α/T, α) at step t = count + 1: AdEMAMix's α warm-up ``T_{α,β3}``.

    .. math::
        \alpha_t = \min\left(\frac{t}{T}\alpha, \alpha\right)

    The step is 1-based, as in the paper's code and ``pytorch_optimizer.AdEMAMix``
    (``optax.linear_schedule(0, α, T)`` starts at 0 instead). Pass it as ``alpha``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> alpha = adamx.linear_warmup(8.0, steps=100)
      >>> alpha(jnp.array([0, 49, 99, 500]))  # the step count, 0-based
      Array([0.08, 4.  , 8.  , 8.  ], dtype=float32)
      >>> tx = adamx.ademamix(1e-3, alpha=alpha)
    """
    _check_steps(steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = (jnp.asarray(count) + 1).astype(float)
        return jnp.minimum(t * end / steps, end)

    return schedule


def half_life_warmup(start: float, end: float, steps: int) -> optax.Schedule:
    r"""β_t from ``start`` to ``end`` over T steps, linear in the half-life 1/ln β.

    .. math::
        \beta_t = \min\left(\exp\frac{\ln\beta_s \ln\beta_e}
        {(1 - t/T)\ln\beta_e + (t/T)\ln\beta_s}, \beta_e\right),
        \qquad t = \text{count} + 1

    AdEMAMix's β3 warm-up (``start=b1, end=b3``: ``pytorch_optimizer.AdEMAMix``'s
    ``t_alpha_beta3``) and simplified AdEMAMix's β1 warm-up (the authors' code adds 1e-8
    to β inside the log, which moves β_t by ~1e-8). Pass it as ``b3`` (or ``b1``).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> b3 = adamx.half_life_warmup(0.9, 0.999, steps=100)
      >>> [round(float(b), 4) for b in b3(jnp.array([0, 49, 99, 500]))]  # count, 0-based
      [0.9497, 0.998, 0.999, 0.999]
      >>> tx = adamx.ademamix(1e-3, b3=b3)
    """
    _check_steps(steps)
    check_beta("start", start)
    check_beta("end", end)
    check_positive_number("start", start, "the warm-up is linear in 1/ln β, so β > 0.")
    log_start, log_end = math.log(start), math.log(end)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        a = (jnp.asarray(count) + 1).astype(float) / steps
        beta = jnp.exp(log_start * log_end / ((1.0 - a) * log_end + a * log_start))
        return jnp.minimum(beta, end)

    return schedule


def _check_steps(steps: int) -> None:
    check_size("steps", steps, minimum=1, what="the warm-up length T")
