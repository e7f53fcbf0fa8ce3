"""Execution paths the parity and property suites run over: name -> (tx -> tx).

``PATHS`` give bit-identical results to the plain per-leaf chain under ``jit``,
so the parity suite (bit-for-bit against optax) runs over each. ``PROPERTY_PATHS``
adds ``multi_tensor``, whose packed program XLA:CPU may round differently by an
ulp or two per step (tests/test_multi_tensor.py states and bounds that); the
property suite (no retracing, stable state under ``lax.cond``, extra arguments,
optax wrappers) runs over all of them.
"""

import chex

import adamx

PATHS = {
    "per_leaf": lambda tx: tx,
}
PROPERTY_PATHS = {
    **PATHS,
    # min_size=64 packs every leaf of the test trees but the largest, so both kinds occur.
    "multi_tensor": lambda tx: adamx.multi_tensor(tx, min_size=64),
}


def assert_path_matches(path: str, ours, theirs) -> None:
    """Bit equality for the exact paths; for the others, agreement to float32 rounding."""
    if path in PATHS:
        chex.assert_trees_all_equal(ours, theirs)
    else:
        chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)
