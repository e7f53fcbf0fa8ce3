"""Types shared by the stages: the moment record that travels between them."""

from typing import Any, NamedTuple

import jax

PyTree = Any


class Moments(NamedTuple):
    """One leaf of the moment tree (tree M).

    ``scale_by_moments`` turns each gradient leaf into a ``Moments`` record; the
    stages of the moment segment (``bias_correct``, ``scale_by_rsqrt``) read and
    rewrite it; ``scale_by_rsqrt`` turns it back into an update leaf.

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


def map_moments(fn, tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` over a moment tree, treating each ``Moments`` as a leaf."""
    return jax.tree.map(fn, tree, *rest, is_leaf=is_moments)
