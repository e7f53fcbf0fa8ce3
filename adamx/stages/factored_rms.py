r"""``scale_by_factored_rms``: Adafactor's scaling by a factored root mean square (Shazeer &
Stern 2018), the first stage of ``adamx.adafactor``; bit-identical to
``optax.scale_by_factored_rms``.

Its second moment is a moment format like any other: ``adamx.factored(...)`` (row and column
means, ``adamx.FactoredMoment``), or a plain float tree with ``factored=False``, so
``adamx.state_nbytes``, ``adamx.sharding`` and checkpoints treat it as Adam's v.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._rates import increment
from .._types import PyTree, as_arrays, promote
from .._validation import (
    check_flag,
    check_float_leaves,
    check_integer,
    check_non_negative,
    require_update_tree,
)
from ..formats import Factored, MomentFormat
from ..formats import factored as factored_format
from ..formats.base import as_format, init_moment, read_moment, write_moment
from ..formats.factors import expand_factors, reduced_d1

_STAGE = "scale_by_factored_rms"


class FactoredRmsState(NamedTuple):
    """State of ``scale_by_factored_rms``."""

    # shape=(), int32: steps taken, saturating (optax's FactoredState.count)
    # (named as in optax's states, so it shadows tuple.count)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    nu: PyTree  # v: an adamx.FactoredMoment (row/col means; the full v where a leaf does not
    # factor), in the params' dtype; with factored=False a tree of full v shaped like the params


def decay_rate_pow(step: jax.typing.ArrayLike, exponent: jax.typing.ArrayLike = 0.8) -> jax.Array:
    r"""Adafactor's decay schedule :math:`\hat\beta_{2,t} = 1 - (t + 1)^{-c}` for step
    :math:`t` (counted from 0) and exponent :math:`c` (``decay_rate``), computed in float32
    as optax's ``_decay_rate_pow``: 0 at the first step (v = the first |g|²), then slowly
    towards 1."""
    t = jnp.array(step + 1, jnp.float32)
    return 1.0 - t ** (-jnp.asarray(exponent))


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: jax.typing.ArrayLike = 0.8,
    step_offset: jax.typing.ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: jax.typing.ArrayLike = 1e-30,
    decay_rate_fn: Callable[
        [jax.typing.ArrayLike, jax.typing.ArrayLike], jax.typing.ArrayLike
    ] = decay_rate_pow,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale the gradient by a factored estimate of its root mean square (Adafactor).

    With :math:`\hat\beta_t` = ``decay_rate_fn(t - step_offset, decay_rate)`` (by default
    :math:`1 - (t + 1)^{-0.8}`) and :math:`Y = |g_t|^2 + \varepsilon_1`, a leaf whose two
    largest axes ``d0`` (largest) and ``d1`` are both at least ``min_dim_size_to_factor``
    long keeps the row and column means of its second moment,

    .. math::
        r_t = \hat\beta_t r_{t-1} + (1 - \hat\beta_t) \operatorname{mean}_{d_0} Y, \qquad
        c_t = \hat\beta_t c_{t-1} + (1 - \hat\beta_t) \operatorname{mean}_{d_1} Y, \\
        u_t = g_t \cdot \Big(\frac{r_t}{\operatorname{mean}_{d_1} r_t}\Big)^{-1/2}
        \cdot c_t^{-1/2}

    (the factors broadcast back over the averaged axis), i.e. :math:`u = g / \sqrt{\hat V}`
    with :math:`\hat V = r c^\top / \operatorname{mean}(r)`. Any other leaf (fewer than two
    axes, a short axis, or ``factored=False``) keeps its full
    :math:`v_t = \hat\beta_t v_{t-1} + (1 - \hat\beta_t) Y` and :math:`u_t = g_t v_t^{-1/2}`.
    Each new moment is rounded to the parameter's dtype before it is used, as optax does;
    complex parameters need ``factored=False`` (the factors are real);
    ``Factored.accumulate`` (``adamx.formats.factored``) forms :math:`r_t, c_t`, and the
    state is that format's record (``factored=False``: a float tree, ``nu_dtype=None``).

    The same operations in the same order as ``optax.scale_by_factored_rms``, so the
    same bits; the state holds the same arrays without optax's (1,)-shaped placeholders.

    Args:
      factored: factor the second moment of leaves that can be (else keep every full v).
      decay_rate: the exponent :math:`c` of the decay schedule, >= 0.
      step_offset: subtracted from the step count before the schedule (fine-tuning from a
        restored count). Note :math:`\hat\beta` is undefined for
        ``count - step_offset < 0`` (optax's schedule returns NaN or -inf there).
      min_dim_size_to_factor: factor a leaf only if its two largest axes are at least
        this long.
      epsilon: :math:`\varepsilon_1`, added to :math:`|g|^2` (>= 0).
      decay_rate_fn: ``(step, decay_rate) -> β̂`` (e.g. a schedule capped below 1, Zhai et
        al. 2021).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``FactoredRmsState``; ``update``
      does not need ``params``.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.scale_by_factored_rms(min_dim_size_to_factor=2)
      >>> state = tx.init({"w": jnp.zeros((2, 3))})
      >>> state.nu.row["w"].shape, state.nu.col["w"].shape
      ((2,), (3,))
      >>> updates, state = tx.update({"w": jnp.full((2, 3), 2.0)}, state)
      >>> updates["w"]  # g / sqrt(v) with v = g² (β̂ = 0 at the first step)
      Array([[1., 1., 1.],
             [1., 1., 1.]], dtype=float32)

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, arXiv:1804.04235. Zhai et al., "Scaling Vision Transformers", 2021,
      arXiv:2106.04560.
    """
    check_flag("factored", factored)
    _check_options(decay_rate, step_offset, epsilon, decay_rate_fn)
    # optax keeps the factors in the parameter's dtype (bfloat16 too): not widened.
    factors = factored_format(min_dim_size_to_factor)._replace(widen=False)
    fmt: MomentFormat = factors if factored else as_format(None, "nu")

    def init_fn(params):
        params = as_arrays(params)
        check_float_leaves(_STAGE, "parameter", params)
        if factored:
            _refuse_complex(params)
        nu = init_moment(_STAGE, fmt, "nu", params)
        return FactoredRmsState(count=jnp.zeros([], jnp.int32), nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        require_update_tree(_STAGE, updates)
        updates = as_arrays(updates)
        check_float_leaves(_STAGE, "gradient", updates)
        decay = decay_rate_fn(state.count - step_offset, decay_rate)
        grads, treedef = jax.tree.flatten(updates)
        stored, _, _ = read_moment(_STAGE, fmt, "nu", updates, state.nu)
        scaled, moments = [], []
        for g, s in zip(grads, stored, strict=True):
            u, (row, col) = _update_leaf(factors, g, s, decay, epsilon)
            scaled.append(u)
            moments.append((row, col) if fmt.fields else fmt.encode(row, s, None))
        nu = write_moment(fmt, treedef, moments, None, state.nu)
        count = increment(state.count)
        return treedef.unflatten(scaled), FactoredRmsState(count=count, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _update_leaf(
    factors: Factored,
    g: jax.Array,
    stored: jax.Array | tuple[jax.Array, jax.Array | None],
    decay: jax.typing.ArrayLike,
    epsilon: jax.typing.ArrayLike,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array | None]]:
    """One leaf: ``(u, (r, c))`` for a factored leaf, ``(u, (v, None))`` for a full one
    (``stored`` is a float format's plain array, or the factored format's pair)."""
    pair = stored if isinstance(stored, tuple) else (stored, None)
    y = jnp.add(*promote((g.conj() * g).real, epsilon))  # optax: abs_sq(grad) + epsilon
    row, col = factors.accumulate(pair, y, decay)
    if col is None:
        return jnp.multiply(*promote(g, row**-0.5)), (row, None)
    dims = factors.dims(g.shape)
    assert dims is not None, "a leaf with a column factor factors"
    row_col_mean = jnp.mean(row, axis=reduced_d1(dims), keepdims=True)
    row_factor, col_factor = expand_factors((row / row_col_mean) ** -0.5, col**-0.5, dims)
    return jnp.multiply(*promote(jnp.multiply(*promote(g, row_factor)), col_factor)), (row, col)


def _refuse_complex(params: PyTree) -> None:
    """The factors are real (``adamx.factored``); optax keeps complex-typed ones instead."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.iscomplexobj(leaf):
            raise TypeError(
                f"{_STAGE}: the parameter at {jax.tree_util.keystr(path)} is {leaf.dtype}, but "
                "factored=True keeps real row and column means. Pass factored=False (a full v "
                "for every leaf, complex leaves included), or keep complex leaves out of this "
                "optimizer (optax.partition)."
            )


def _check_options(decay_rate, step_offset, epsilon, decay_rate_fn) -> None:
    check_non_negative("decay_rate", decay_rate)
    check_non_negative("epsilon", epsilon)
    check_integer("step_offset", step_offset)
    if not callable(decay_rate_fn):
        raise TypeError(
            "decay_rate_fn must be a callable (step, decay_rate) -> decay, such as "
            f"adamx.stages.factored_rms.decay_rate_pow, got {decay_rate_fn!r}."
        )
