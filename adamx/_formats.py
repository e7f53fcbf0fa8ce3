"""How ``scale_by_moments`` stores a moment between steps.

A format turns the moment computed this step into what the optimizer state
keeps, and back: ``decode`` before the update, ``encode`` after it. Stages
downstream only ever see the decoded, freshly updated moment, so a low-memory
format is a choice of ``scale_by_moments`` alone.

The default, ``FloatFormat``, stores the moment in a float dtype (the parameter's
own dtype unless told otherwise): ``decode`` is the identity and ``encode`` a cast,
exactly as optax's ``mu_dtype``.
"""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from ._validation import check_float_dtype


class MomentFormat(Protocol):
    """What a state format provides (see ``FloatFormat`` for the simplest one)."""

    def init(self, param: jax.Array) -> Any:
        """The stored zero moment for a parameter leaf."""

    def decode(self, stored: Any) -> jax.Array:
        """The moment as an array shaped like the parameter."""

    def encode(self, value: jax.Array, stored: Any) -> Any:
        """``value`` in the layout and dtypes of ``stored`` (which it replaces)."""


class FloatFormat(NamedTuple):
    """Store the moment as a float array of ``dtype`` (None: the parameter's dtype)."""

    dtype: Any = None

    def init(self, param):
        dtype = None if self.dtype is None else jax.dtypes.canonicalize_dtype(self.dtype)
        return jnp.zeros_like(param, dtype=dtype)

    def decode(self, stored):
        return stored

    def encode(self, value, stored):
        return value.astype(stored.dtype)


def as_format(name: str, spec: Any) -> MomentFormat:
    """A ``MomentFormat`` from a format, a float dtype, or None (the parameter's dtype)."""
    if all(hasattr(spec, m) for m in ("init", "decode", "encode")):
        return spec
    check_float_dtype(name, spec)
    return FloatFormat(spec)
