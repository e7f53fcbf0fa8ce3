"""The default moment format: a float array per leaf, as optax's ``mu_dtype``.

The simplest ``MomentFormat`` (``protocol.py``), and the one to copy for a
format that keeps one array per parameter leaf.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .protocol import BucketMembers, FloatDType, Role


class FloatFormat(NamedTuple):
    """Store the moment as a float array of ``dtype`` (None: the parameter's dtype).

    ``decode`` is the identity (or a cast to float32, with ``upcast``) and ``encode``
    a cast, exactly as optax's ``mu_dtype``; the state is a tree of arrays shaped
    like the parameters, as optax's ``mu``/``nu``.

    With ``upcast=False`` (optax's ``mu_dtype`` semantics) the stored moment
    enters the moving average in its own dtype, so for bfloat16 the product
    β·m is rounded to bfloat16 and β itself is too: 0.9 becomes 0.8984 and
    0.999 becomes exactly 1.0. With ``upcast=True`` it is decoded to float32
    first: the average is computed in float32 and only the stored value is
    rounded (to nearest: a change below half an ulp, such as v's decay by
    1 - β2 = 0.001 per step, is still lost; ``stochastic_float`` keeps it).
    """

    dtype: FloatDType = None
    upcast: bool = False

    elementwise = True
    stochastic = False
    fields = None
    record = None
    seed = 0  # not stochastic: no rounding key

    def bind(self, role: Role) -> "FloatFormat":
        """Any moment can be stored as floats: the format is returned unchanged."""
        del role
        return self

    def init(self, param: jax.Array, packed: BucketMembers | None = None) -> jax.Array:
        """Zeros like ``param`` in ``dtype``; refuses a real dtype for a complex parameter."""
        del packed
        dtype = None if self.dtype is None else jax.dtypes.canonicalize_dtype(self.dtype)
        if (
            dtype is not None
            and jnp.iscomplexobj(param)
            and not jnp.issubdtype(dtype, jnp.complexfloating)
        ):
            raise TypeError(
                f"the parameter is {param.dtype} but the moment would be stored as real "
                f"{dtype}, which drops its imaginary part. Store it as a complex dtype "
                f"(e.g. jnp.complex64) or pass None (the parameter's dtype)."
            )
        return jnp.zeros_like(param, dtype=dtype)

    def decode(self, stored: jax.Array, like: jax.Array | None = None) -> jax.Array:
        """The stored array; with ``upcast``, a narrow one (bfloat16, float16) as float32."""
        del like
        if self.upcast and jnp.dtype(stored.dtype).itemsize < 4:  # promote_types(., float32)
            return stored.astype(jnp.float32)
        return stored

    def encode(
        self, value: jax.Array, stored: jax.Array, key: jax.Array | None = None
    ) -> jax.Array:
        """``value`` cast (to nearest) to the stored dtype."""
        del key
        return value.astype(stored.dtype)

    def describe(self) -> str:
        """``a float moment (<dtype>[, upcast])``."""
        dtype = "the parameter's dtype" if self.dtype is None else jnp.dtype(self.dtype).name
        return f"a float moment ({dtype}{', upcast' if self.upcast else ''})"

    def partition_specs(
        self, spec: tuple, shape: tuple[int, ...], axis_sizes: dict[str, int] | None = None
    ) -> tuple:
        """Elementwise: the moment shards exactly like its parameter."""
        del shape, axis_sizes
        return tuple(spec)

    def stored_dtype_ok(self, stored: jax.Array) -> bool:
        """False if ``stored`` has another dtype than this format's explicit one."""
        if self.dtype is None:
            return True
        return jnp.result_type(stored) == jax.dtypes.canonicalize_dtype(self.dtype)
