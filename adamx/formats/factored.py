"""A factored second moment: row and column means per matrix (``factored``, Adafactor's v).

The arithmetic (which axes, the means) is ``factors``, shared with ``adamx.adafactor``.
"""

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .._types import promote
from .._validation import check_real_float_dtype, check_size
from .factors import expand_factors, factor_means, factored_dims, reduced_d1
from .protocol import BucketMembers, FloatDType, MomentRecord, Role


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["row", "col", "key", "config"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class FactoredMoment(MomentRecord):
    """A second moment stored by ``factored``: parameter-shaped trees of row and column means.

    Attributes:
      row: per leaf, the mean of v over its largest axis ``d0`` (the leaf's shape
        without ``d0``); or the full v where the leaf is not factored.
      col: per leaf, the mean of v over its second-largest axis ``d1`` (the shape
        without ``d1``); None where the leaf is not factored.
      key: None (the format rounds to nearest).
      config: ``{description: uint8[1]}`` (``MomentRecord``).
    """

    row: Any
    col: Any
    key: Any
    config: Any


StoredFactors = tuple[jax.Array, jax.Array | None]  # (row, col), or (full v, None)


class Factored(NamedTuple):
    """Store a second moment as its row and column means (make it with :func:`factored`).

    Besides the ``MomentFormat`` Protocol it offers ``dims(shape)`` (which axes a
    leaf factors) and ``accumulate(stored, y, decay)`` (the moving average on the
    factors themselves, as ``optax.scale_by_factored_rms`` computes it).
    """

    min_dim_size_to_factor: int = 128
    dtype: FloatDType = None
    widen: bool = True  # dtype None: the parameter's, widened to float32 if narrower

    elementwise = False  # a mean is shared by a whole row or column
    stochastic = False
    fields = ("row", "col")
    record = FactoredMoment
    version = 1  # of the stored layout (which axes, the means): bump on any change (versions.py)
    seed = 0  # not stochastic: no rounding key

    def dims(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``(d1, d0)``, the second-largest and largest axes of a leaf of ``shape`` (optax's
        rule, ``factors.factored_dims``), or None when the leaf keeps its full v."""
        return factored_dims(tuple(shape), self.min_dim_size_to_factor)

    def bind(self, role: Role) -> "Factored":
        r"""v and AMSGrad's maximum of v: unchanged. m is refused (ValueError): it is signed,
        and :math:`r_i c_j / \bar r` estimates a non-negative matrix."""
        if role == "mu":
            raise ValueError(
                f"mu_dtype={self.describe()}: a factored moment estimates a non-negative "
                "matrix (the second moment v) from its row and column means, but the first "
                "moment m is signed. Pass it as nu_dtype, and store m as a float dtype, "
                "adamx.stochastic_float() or adamx.blockwise_8bit() (mu_dtype)."
            )
        return self

    def init(self, param: jax.Array, packed: BucketMembers | None = None) -> StoredFactors:
        """Zero factors in ``dtype`` (None: the parameter's), laid out like the parameter
        without the averaged axis; a zero full v for a leaf that does not factor and for a
        bucket of packed leaves (refused if a member could factor)."""
        if jnp.iscomplexobj(param):
            raise TypeError(
                f"factored stores a real second moment, but got a {param.dtype} parameter of "
                f"shape {param.shape}. Use a float dtype (jnp.complex64) for complex "
                "parameters, or keep them out of this optimizer with optax.partition."
            )
        dtype = self._dtype(param.dtype)
        if packed:
            self._check_bucket(packed)
        dims = None if packed else self.dims(param.shape)
        if dims is None:
            return jnp.zeros_like(param, dtype=dtype), None
        d1, d0 = dims
        return _zeros_without_axis(param, d0, dtype), _zeros_without_axis(param, d1, dtype)

    def decode(self, stored: StoredFactors, like: jax.Array) -> jax.Array:
        r""":math:`\hat V = r c^\top / \operatorname{mean}_i r_i` (0 where the mean is 0),
        shaped like ``like``; a narrow dtype (bfloat16) is decoded to float32."""
        row, col = stored
        if jnp.dtype(row.dtype).itemsize < 4:  # promote_types(., float32), as FloatFormat
            row = row.astype(jnp.float32)
            col = None if col is None else col.astype(jnp.float32)
        if col is None:
            return row
        dims = self.dims(tuple(jnp.shape(like)))
        assert dims is not None, "a leaf with a column factor factors"
        mean = jnp.mean(row, axis=reduced_d1(dims), keepdims=True)
        zero = mean == 0  # all-zero rows: 0, not NaN (a NaN or inf factor still propagates)
        ratio = jnp.where(zero, 0, row / jnp.where(zero, 1, mean))
        expanded_row, expanded_col = expand_factors(ratio, col, dims)
        return expanded_row * expanded_col

    def encode(
        self, value: jax.Array, stored: StoredFactors, key: jax.Array | None = None
    ) -> StoredFactors:
        """The row and column means of ``value`` in the stored dtypes (the full ``value``
        for a leaf that does not factor)."""
        del key
        row, col = stored
        if col is None:
            return value.astype(row.dtype), None
        dims = self.dims(value.shape)
        assert dims is not None, "a leaf with a column factor factors"
        new_row, new_col = factor_means(value, dims)
        return new_row.astype(row.dtype), new_col.astype(col.dtype)

    def accumulate(
        self, stored: StoredFactors, y: jax.Array, decay: jax.typing.ArrayLike
    ) -> StoredFactors:
        r"""The moving average of ``y`` (e.g. |g|² + ε) on the stored factors, in optax's
        order of operations (``optax.scale_by_factored_rms``):

        .. math::
            r' = \beta r + (1 - \beta) \operatorname{mean}_{d_0} y, \qquad
            c' = \beta c + (1 - \beta) \operatorname{mean}_{d_1} y

        each cast back to its stored dtype; a leaf that does not factor gets
        :math:`v' = \beta v + (1 - \beta) y`. Equal to ``encode`` of the moving average
        of ``decode(stored)`` (see :func:`factored`), without forming the full matrix.
        """
        row, col = stored
        if col is None:
            return _ema(row, y, decay), None
        dims = self.dims(y.shape)
        assert dims is not None, "a leaf with a column factor factors"
        new_row, new_col = factor_means(y, dims)
        return _ema(row, new_row, decay), _ema(col, new_col, decay)

    def describe(self) -> str:
        """``factored(min_dim_size_to_factor=..., dtype=...)``."""
        dtype = None if self.dtype is None else jnp.dtype(self.dtype).name
        widen = ", widen=False" if self.dtype is None and not self.widen else ""
        return (
            f"factored(min_dim_size_to_factor={self.min_dim_size_to_factor}, dtype={dtype}{widen})"
        )

    def _dtype(self, param_dtype: jnp.dtype) -> jnp.dtype:
        """The factors' dtype: ``dtype``, or the parameter's (widened to float32 if narrower,
        unless ``widen=False``, optax.adafactor's choice)."""
        if self.dtype is not None:
            return jax.dtypes.canonicalize_dtype(self.dtype)
        if self.widen and jnp.dtype(param_dtype).itemsize < 4:
            return jnp.dtype(jnp.float32)
        return jnp.dtype(param_dtype)

    def partition_specs(
        self, spec: tuple, shape: tuple[int, ...], axis_sizes: dict[str, int] | None = None
    ) -> tuple:
        """``row`` shards like the parameter without ``d0``'s entry, ``col`` without
        ``d1``'s; a leaf that does not factor keeps its full v, sharded like the parameter."""
        del axis_sizes  # a mean over a split axis is an all-reduce: any layout fits
        spec = tuple(spec) + (None,) * (len(shape) - len(spec))
        dims = self.dims(tuple(shape))
        if dims is None:
            return (spec, None)
        d1, d0 = dims
        return (spec[:d0] + spec[d0 + 1 :], spec[:d1] + spec[d1 + 1 :])

    def _check_bucket(self, packed: BucketMembers) -> None:
        """A bucket is 1-D, so it keeps its full v: refuse a member that could factor alone
        (at least ``min_dim_size_to_factor²`` elements)."""
        least = max(self.min_dim_size_to_factor, 1) ** 2
        big = [(path, size) for path, size in packed if size >= least]
        if big:
            path, size = big[0]
            raise ValueError(
                f"factored keeps the row and column means of a leaf whose two largest axes "
                f"are >= min_dim_size_to_factor={self.min_dim_size_to_factor}, but the leaf at "
                f"{path} ({size} elements) was packed into a flat bucket (adamx.pack / "
                f"multi_tensor min_size > {size}), which keeps its full v. Give pack / "
                f"multi_tensor a min_size <= {least} (min_dim_size_to_factor²), so that every "
                "leaf that can be factored stays unpacked (the defaults do: 4096 <= 128²)."
            )


def _zeros_without_axis(param: jax.Array, axis: int, dtype: DTypeLike) -> jax.Array:
    """Zeros shaped (and, on a mesh, sharded) like ``param`` summed over ``axis``, without
    forming anything of ``param``'s size (optax's ``_zeros_like_no_axis``)."""
    target = jax.eval_shape(functools.partial(jnp.sum, axis=axis), param)
    return jnp.zeros_like(target, dtype=dtype)


def _ema(state: jax.Array, y: jax.Array, decay: jax.typing.ArrayLike) -> jax.Array:
    """``(decay * state + (1 - decay) * y).astype(state.dtype)``, the casts of standard
    promotion written out (strict-clean, optax's bits). Not ``_rates.ema``: that one adds
    the terms the other way round (optax's ``update_moment``), and XLA:CPU contracts the
    two orders into different FMAs, so Adafactor's parity with optax needs this order."""
    old = jnp.multiply(*promote(decay, state))
    new = jnp.multiply(*promote(1 - decay, y))
    return jnp.add(*promote(old, new)).astype(state.dtype)


def factored(min_dim_size_to_factor: int = 128, *, dtype: FloatDType = None) -> Factored:
    r"""A second-moment format: v kept as its row and column means (Shazeer & Stern 2018).

    For a leaf whose two largest axes ``d0`` (the largest) and ``d1`` are both at
    least ``min_dim_size_to_factor`` long (optax's rule; for a matrix V, n × m),
    the state holds

    .. math::
        r_i = \operatorname{mean}_j V_{ij}, \qquad c_j = \operatorname{mean}_i V_{ij},
        \qquad \hat V_{ij} = \frac{r_i\, c_j}{\operatorname{mean}_i r_i}

    (:math:`\hat V = 0` where the mean is 0), O(n + m) numbers instead of n·m; a 3-D or
    larger leaf factors its two largest axes, the others kept. Each step the stage
    decodes :math:`\hat V`, forms :math:`V' = \beta \hat V + (1 - \beta) Y` with
    :math:`Y = |g|^2`, and stores the means of V'. That is exactly Adafactor's factored
    update :math:`r' = \beta r + (1-\beta) \operatorname{mean}_j Y_{ij}` (and likewise
    c'), because :math:`\hat V` has the stored means: :math:`\operatorname{mean}_j c_j =
    \operatorname{mean}(V) = \operatorname{mean}_i r_i`, so

    .. math::
        \operatorname{mean}_j \hat V_{ij} = r_i \frac{\operatorname{mean}_j c_j}
        {\operatorname{mean}_i r_i} = r_i, \qquad \operatorname{mean}_i \hat V_{ij} = c_j,

    and the mean is linear: :math:`\operatorname{mean}_j(\beta \hat V + (1-\beta) Y) =
    \beta r + (1-\beta) \operatorname{mean}_j Y`. (``Factored.accumulate`` computes it
    that way, without the full matrix.) So Adam with a factored v keeps Adafactor's
    state, with momentum, Adam's β2, bias correction and ε; its step divides by the dense
    :math:`v_t = \beta \hat V_{t-1} + (1-\beta) g_t^2` the stage computed (whose means
    are :math:`r_t, c_t`), where ``adamx.adafactor`` divides by :math:`\hat V_t`.

    Fallback: a leaf with fewer than two axes, or whose second-largest axis is shorter
    than ``min_dim_size_to_factor``, and every bucket of packed leaves (``adamx.pack``,
    ``multi_tensor``), keeps its full v in the same dtype (stored ``(v, None)``), as
    Adafactor does. As AMSGrad's maximum (``amsgrad(nu_dtype=factored())``), the state
    keeps the means of :math:`\max(\hat V^{max}_{t-1}, v_t)`: the moment handed on is
    that dense maximum (never below :math:`v_t`), and the stored means never decrease
    (up to rounding).

    Args:
      min_dim_size_to_factor: a leaf is factored when its two largest axes both have
        at least this many entries (optax.adafactor's default, 128).
      dtype: the factors' dtype; None (default) is the parameter's, widened to float32
        when narrower: a stored bfloat16 factor rounded to nearest cannot decay by
        (1 - β2) = 0.1% a step (half a bfloat16 ulp is 0.2%), and the factors cost only
        O(n + m) (a warning says so for an explicit narrow dtype). ``adamx.adafactor``
        keeps optax's choice, the parameter's own dtype (``Factored(widen=False)``).

    Returns:
      A ``Factored`` format for ``nu_dtype`` (m is signed: ``mu_dtype`` refuses it).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> tx = adamx.adam(1e-3, nu_dtype=adamx.factored())
      >>> state = tx.init({"w": jnp.zeros((256, 512)), "b": jnp.zeros(512)})
      >>> state[0].nu.row["w"].shape, state[0].nu.col["w"].shape, state[0].nu.col["b"]
      ((256,), (512,), None)

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, arXiv:1804.04235.
    """
    check_size("min_dim_size_to_factor", min_dim_size_to_factor, minimum=0, what="an axis length")
    check_real_float_dtype("dtype", dtype)
    if dtype is not None and jnp.dtype(dtype).itemsize < 4:
        warnings.warn(
            f"factored(dtype={jnp.dtype(dtype).name}): each step moves a factor by "
            f"(1 - b2) = 0.1%, less than half a {jnp.dtype(dtype).name} ulp, so rounded to "
            "nearest the factors can grow but never decay. The factors are O(n + m) numbers: "
            "use dtype=jnp.float32.",
            UserWarning,
            stacklevel=2,
        )
    return Factored(min_dim_size_to_factor, dtype)
