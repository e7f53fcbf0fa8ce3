"""Types shared by every layer: the moment records that travel between stages, type aliases,
and the one dtype rule (standard promotion, written out)."""

import sys
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# jaxlib ships no type stubs for its compiled module, so to pyright these two public jax
# classes are variables of unknown type; each is named here once, with the one ignore.
PyTreeDef: TypeAlias = jax.tree_util.PyTreeDef  # pyright: ignore[reportInvalidTypeForm]
Device: TypeAlias = jax.Device  # pyright: ignore[reportInvalidTypeForm]

# Which leaves a transformation applies to: a tree of Python bools shaped like the params (or a
# prefix of them), or a function params -> such a tree (as optax.masked takes it).
Mask = PyTree | Callable[[PyTree], PyTree]


class Moments(NamedTuple):
    """One leaf of the moment tree (tree M).

    ``scale_by_moments`` turns each gradient leaf into a ``Moments`` record; the
    stages of the moment segment (``bias_correct``, ``running_max_nu``,
    ``scale_by_rsqrt``) read and rewrite it; ``scale_by_rsqrt`` turns it back
    into an update leaf.

    Attributes:
      mu: first moment m_t (or m̂_t once bias-corrected).
      nu: second moment v_t (or v̂_t once bias-corrected).
      grad: the raw gradient g_t, for stages that need it (Nesterov) and to give
        the final update the gradient's dtype.
    """

    mu: jax.Array
    nu: jax.Array
    grad: jax.Array


class InfNormMoments(Moments):
    """A ``Moments`` record whose ``nu`` is the infinity norm u_t (AdaMax), not a mean square.

    ``bias_correct`` leaves such a ``nu`` uncorrected and ``scale_by_rsqrt``
    divides by it without a root; stages that assume a mean square reject it.
    """


def is_moments(x: Any) -> bool:
    return isinstance(x, Moments)


def map_moments(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` over a moment tree, treating each ``Moments`` as a leaf."""
    return jax.tree.map(fn, tree, *rest, is_leaf=is_moments)


def is_python_number(x: Any) -> bool:
    """A Python int, float or complex: weakly typed, it takes the dtype of the array it meets.

    How JAX types a value, not whether a hyperparameter can be checked at construction
    (that is ``_validation.is_concrete_number``: real, not bool, NumPy scalars too).
    """
    return isinstance(x, (int, float, complex))


def promoted_dtype(*operands: Any) -> np.dtype:
    """The dtype JAX's standard promotion gives ``operands`` (arrays, dtypes or Python numbers).

    bfloat16 with float32 is float32; a Python number is weakly typed and takes
    the array's dtype. adamx computes under strict promotion, so wherever two
    dtypes meet on purpose it asks for this dtype and casts to it explicitly.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*operands)


def promote(*operands: Any) -> tuple:
    """``operands`` cast to their ``promoted_dtype``; Python numbers are left weakly typed.

    Standard promotion casts each operand in exactly this way before an operation,
    so ``a * b`` on the results has the bits optax computes from ``a * b`` under
    standard promotion, and strict promotion accepts it.
    """
    dtype = promoted_dtype(*operands)
    return tuple(x if is_python_number(x) else x.astype(dtype) for x in operands)


def as_arrays(tree: PyTree) -> PyTree:
    """``tree`` with Python numbers as JAX arrays (optax accepts ``{"a": 1.0}`` params)."""
    return jax.tree.map(lambda x: x if hasattr(x, "dtype") else jnp.asarray(x), tree)


def without_variables(tree: PyTree) -> PyTree:
    """``tree`` with flax ``nnx.Variable`` wrappers replaced by their values.

    ``nnx.Optimizer`` calls ``init`` on an ``nnx.State`` of Variables but ``update`` on
    the bare arrays (``nnx.as_pure``): a path that builds its state from the structure or
    the paths of the params (``multi_tensor``'s buckets, ``sparse_rows``' per-table step
    records) reads them here, as ``update`` will see them.
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree

    def is_variable(x: Any) -> bool:
        return isinstance(x, nnx.Variable)

    def value(x: Any) -> Any:
        if not is_variable(x):
            return x
        return x.get_value() if hasattr(x, "get_value") else x.value

    return jax.tree.map(value, tree, is_leaf=is_variable)
