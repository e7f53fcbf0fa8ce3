"""``running_max_nu``: AMSGrad's running maximum of the second moment."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ._formats import as_format
from ._moments import InfNormMoments
from ._types import Moments, PyTree, is_moments, map_moments
from ._validation import check_float_leaves, flatten_like_updates, require_moment_tree


class RunningMaxNuState(NamedTuple):
    """State of ``running_max_nu``."""

    nu_max: PyTree  # max_{i<=t} of the second moment it sees, in its state format


def running_max_nu(nu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
    r"""Replace the second moment by its running maximum (AMSGrad).

    .. math::
        v^{\max}_t = \max(v^{\max}_{t-1}, v_t), \qquad v^{\max}_0 = 0

    so the effective step size never grows. Where it sits in the moment segment
    decides which AMSGrad it is:

    - *before* ``bias_correct``: the maximum of the raw :math:`v_t`, then
      corrected (``torch.optim.Adam(amsgrad=True)``, Keras ``amsgrad=True``);
    - *after* ``bias_correct``: the maximum of :math:`\hat v_t` (``optax.amsgrad``).

    Args:
      nu_dtype: storage of the maximum: a float dtype, a moment format, or None
        for the parameters' dtype (as ``scale_by_moments``' ``nu_dtype``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``RunningMaxNuState``.

    Raises:
      TypeError: at trace time, given an infinity-norm second moment (AdaMax's
        u_t is already a running maximum) or plain gradients.

    Example:
      >>> import adamx, optax
      >>> torch_amsgrad = optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.999), adamx.running_max_nu(),
      ...     adamx.bias_correct(0.9, 0.999), adamx.scale_by_rsqrt(1e-8), adamx.scale_by_lr(1e-3))

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", arXiv:1904.09237.
    """
    nu_format = as_format("nu_dtype", nu_dtype)
    stage = "running_max_nu"

    def init_fn(params):
        check_float_leaves(stage, "parameter", params)
        return RunningMaxNuState(nu_max=jax.tree.map(nu_format.init, params))

    def update_leaf(m: Moments, stored):
        if isinstance(m, InfNormMoments):
            raise TypeError(
                f"{stage}: the second moment is AdaMax's infinity norm "
                "(scale_by_moments(infinity_norm=True)), which is already a running maximum; "
                "AMSGrad has nothing to add. Drop running_max_nu (or amsgrad) from this chain."
            )
        nu_max = jnp.maximum(nu_format.decode(stored), m.nu)
        return m._replace(nu=nu_max), nu_format.encode(nu_max, stored)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree(stage, updates)
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_moments)
        grads = map_moments(lambda m: m.grad, updates)
        stored = flatten_like_updates(stage, grads, state.nu_max, "state")
        rows = [update_leaf(m, s) for m, s in zip(leaves, stored, strict=True)]
        moments, nu_max = (treedef.unflatten([row[i] for row in rows]) for i in range(2))
        return moments, RunningMaxNuState(nu_max=nu_max)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
