"""The Adafactor entries (optax.adafactor; the family table of test_parity_family_optax.py)."""

from __future__ import annotations

from .common import BF16, F32, LR, matrices
from .optimizer import FAMILY_TABLE, Optimizer

# Adafactor stores no moment in a format of the user's choosing (no mu_dtype / nu_dtype) and
# has no complex or float16 case in optax's tests: parity runs on float32 and bfloat16.
ADAFACTOR_DTYPES = (F32, BF16)

ADAFACTOR: dict[str, Optimizer] = {
    "adafactor": Optimizer(
        "adafactor",
        dict(learning_rate=LR),
        optax="adafactor",
        optax_dtypes=ADAFACTOR_DTYPES,
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    # Every stage in play, and factors on small leaves (the matrix tree's (64, 128) and (4, 8)
    # leaves, the optax suites' (5, 3) and (2, 4) ones): momentum, decayed weights with a mask.
    "adafactor_factored_momentum": Optimizer(
        "adafactor",
        dict(
            learning_rate=LR,
            min_dim_size_to_factor=2,
            momentum=0.9,
            weight_decay_rate=1e-3,
            weight_decay_mask=matrices,
            # The momentum in the parameters' dtype: optax's default float32 accumulator makes
            # the updates of bfloat16 parameters float32 (as optax's), which the matrix's
            # strict-promotion optax.apply_updates refuses to add to bfloat16.
            dtype_momentum=None,
        ),
        optax="adafactor",
        optax_dtypes=ADAFACTOR_DTYPES,
        # bfloat16 and 1000-step runs of every option: tests/aliases/test_adafactor.py.
        suites=frozenset({FAMILY_TABLE, "model"}),
    ),
}
