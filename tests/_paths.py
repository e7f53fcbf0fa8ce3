"""Execution paths the parity and property suites run over: name -> (tx -> tx).

Every path must give bit-identical results to the plain per-leaf chain, so the
same assertions hold for each.
"""

PATHS = {
    "per_leaf": lambda tx: tx,
}
