"""``running_max_nu``: AMSGrad's running maximum of the second moment."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._types import InfNormMoments, Moments, PyTree, as_arrays, is_moments, map_moments, promote
from .._validation import check_float_leaves, require_moment_tree
from ..formats import MomentFormat
from ..formats.base import as_format, init_moment, read_moment, write_moment


class RunningMaxNuState(NamedTuple):
    """State of ``running_max_nu``."""

    nu_max: PyTree  # max_{i<=t} of the second moment it sees, in its state format


def running_max_nu(
    nu_dtype: jax.typing.DTypeLike | MomentFormat | None = None,
) -> optax.GradientTransformationExtraArgs:
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
    nu_format = as_format(nu_dtype, "nu_max")
    stage = "running_max_nu"

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(stage, "parameter", params)
        return RunningMaxNuState(nu_max=init_moment(stage, nu_format, "nu_max", params))

    def update_leaf(m: Moments, stored, key):
        if isinstance(m, InfNormMoments):
            raise TypeError(
                f"{stage}: the second moment is AdaMax's infinity norm "
                "(scale_by_moments(infinity_norm=True)), which is already a running maximum; "
                "AMSGrad has nothing to add. Drop running_max_nu (or amsgrad) from this chain."
            )
        nu_max = jnp.maximum(*promote(nu_format.decode(stored, m.grad), m.nu))
        return m._replace(nu=nu_max), nu_format.encode(nu_max, stored, key)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_moment_tree(stage, updates)
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_moments)
        grads = map_moments(lambda m: m.grad, updates)
        stored, keys, next_key = read_moment(stage, nu_format, "nu_max", grads, state.nu_max)
        rows = [update_leaf(m, s, k) for m, s, k in zip(leaves, stored, keys, strict=True)]
        moments = treedef.unflatten([row[0] for row in rows])
        nu_max = write_moment(nu_format, treedef, [row[1] for row in rows], next_key, state.nu_max)
        return moments, RunningMaxNuState(nu_max=nu_max)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
