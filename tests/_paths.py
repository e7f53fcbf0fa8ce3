"""Execution paths the parity and property suites run over.

``per_leaf`` is the plain chain. ``multi_tensor`` runs the same chain with the
small leaves packed into flat buckets (``min_size=64`` packs every leaf of the
test trees but the largest, so both kinds occur). Under ``jit`` XLA:CPU compiles
the packed program differently (FMA contraction, reassociation of the bias
correction), so its numbers agree with the per-leaf chain to a few ulps per step
rather than bit for bit: ``assert_path_matches`` holds it to ``MAX_ULP`` units in
the last place of each dtype, at the scale of each leaf. Any packing mistake (a
leaf in the wrong place, the wrong dtype, a missed element) is off by ~2^20 ulps
or more.
"""

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

import adamx

MAX_ULP = 256  # measured worst case over the optax parity table, 1000 steps: 109


class Path(NamedTuple):
    wrap: Callable  # tx -> tx
    exact: bool  # bit-identical to the per-leaf chain under jit

    def __call__(self, tx):
        return self.wrap(tx)


PATHS = {
    "per_leaf": Path(lambda tx: tx, exact=True),
    "multi_tensor": Path(lambda tx: adamx.multi_tensor(tx, min_size=64), exact=False),
}
EXACT_PATHS = [name for name, path in PATHS.items() if path.exact]


def unpacked(tree):
    """A tree with any ``PackedTree`` inside it unpacked (states of the multi_tensor path)."""

    def is_packed(x):
        return isinstance(x, adamx.PackedTree)

    return jax.tree.map(lambda x: x.unpack() if is_packed(x) else x, tree, is_leaf=is_packed)


def assert_path_matches(path: str, ours, theirs) -> None:
    """Bit equality on exact paths; otherwise within ``MAX_ULP`` ulps (see the module doc)."""
    ours, theirs = unpacked(ours), unpacked(theirs)
    if PATHS[path].exact:
        chex.assert_trees_all_equal(ours, theirs)
        return
    chex.assert_trees_all_equal_structs(ours, theirs)
    for (where, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs), strict=True
    ):
        worst = _ulps(np.asarray(a), np.asarray(b))
        assert worst <= MAX_ULP, f"{jax.tree_util.keystr(where)}: {worst} ulps apart"


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| in ulps of b's dtype, at magnitudes no smaller than max|b| / 16."""
    if a.size == 0:
        return 0.0
    if np.iscomplexobj(b):
        return max(_ulps(a.real, b.real), _ulps(a.imag, b.imag))
    mantissa = jnp.finfo(b.dtype).nmant
    a, b = a.astype(np.float64), b.astype(np.float64)
    magnitude = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.max(np.abs(b)) / 16)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(magnitude, 1e-300))) - mantissa)
    return float(np.max(np.abs(a - b) / ulp))
