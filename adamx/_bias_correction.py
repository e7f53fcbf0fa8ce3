"""``bias_correct``: undo the zero initialisation of the moving averages."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._types import Moments, map_moments
from ._validation import check_beta, require_moment_tree


class BiasCorrectState(NamedTuple):
    """State of ``bias_correct``."""

    count: jax.Array  # shape=(), int32: steps taken, saturating at 2**31 - 1


def _correction(b: Any, t: jax.Array) -> jax.Array:
    """1 - b^t: the weight the moving average has put on real gradients after t steps."""
    return 1 - b**t


def _divide(x: jax.Array, c: jax.Array) -> jax.Array:
    # Divide in the moment's own dtype: computing b^t in low precision could round it to 1.
    return x / c.astype(x.dtype)


def bias_correct(
    b1: Any = 0.9,
    b2: Any = 0.999,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Divide the moments by :math:`1 - \beta^t`, so early steps are not too small.

    .. math::
        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}

    With ``nesterov=True`` the first moment looks one step ahead (Dozat 2016, as
    in ``optax.nadam``):

    .. math::
        \hat m_t = \beta_1 \frac{m_t}{1 - \beta_1^{t+1}} + (1 - \beta_1) \frac{g_t}{1 - \beta_1^t}

    Takes and returns the moment tree (place it between ``scale_by_moments`` and
    ``scale_by_rsqrt``). Keeps its own step count ``t`` (int32, saturating).

    Args:
      b1: the first-moment decay used by ``scale_by_moments``.
      b2: the second-moment decay used by ``scale_by_moments``.
      nesterov: use Nesterov momentum for the first moment.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``BiasCorrectState``.

    References:
      Kingma & Ba, arXiv:1412.6980, section 3; Dozat, "Incorporating Nesterov
      Momentum into Adam", ICLR 2016 workshop.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}.")

    def init_fn(params):
        del params
        return BiasCorrectState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree("bias_correct", updates)
        t = optax.safe_increment(state.count)
        c1, c2 = _correction(b1, t), _correction(b2, t)

        def correct(m: Moments) -> Moments:
            if nesterov:
                c1_next = _correction(b1, optax.safe_increment(t))
                mu_hat = b1 * _divide(m.mu, c1_next) + (1 - b1) * _divide(m.grad, c1)
            else:
                mu_hat = _divide(m.mu, c1)
            return m._replace(mu=mu_hat, nu=_divide(m.nu, c2))

        return map_moments(correct, updates), BiasCorrectState(count=t)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
