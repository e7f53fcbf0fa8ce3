"""``scale_by_rsqrt``: the adaptive, per-parameter step m̂ / (sqrt(v̂) + eps)."""

from typing import Any

import jax.numpy as jnp
import optax

from ._types import Moments, map_moments
from ._validation import check_non_negative, require_moment_tree


def scale_by_rsqrt(eps: Any = 1e-8, eps_root: Any = 0.0) -> optax.GradientTransformationExtraArgs:
    r"""Scale the first moment by the inverse root of the second.

    .. math::
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon}

    Each parameter gets its own step size, and multiplying the loss by a
    constant leaves :math:`u_t` unchanged (up to ``eps``). Closes the moment
    segment: takes the moment tree, returns updates with the gradients' dtype.

    Args:
      eps: added to the root, bounds the step where v̂ is tiny (>= 0).
      eps_root: added under the root; a small positive value keeps the
        derivative of the update finite when differentiating through it (>= 0).

    Returns:
      A stateless ``optax.GradientTransformationExtraArgs``.
    """
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)

    def step(m: Moments):
        u = m.mu / (jnp.sqrt(m.nu + eps_root) + eps)
        return u.astype(m.grad.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree("scale_by_rsqrt", updates)
        return map_moments(step, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
