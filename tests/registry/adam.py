"""The adam / adamw entries (optax.adam, optax.adamw; the adam table of test_parity_optax.py)."""

from __future__ import annotations

from .common import BF16, DECAY_SCHEDULE, KERAS_LR, LR, SCHEDULE, matrices
from .optimizer import (
    ADAM_SLOTS,
    ADAM_STATE,
    ADAM_TABLE,
    DECAY_SCHEDULE_DTYPES,
    MU_BF16_DTYPES,
    KerasRef,
    Optimizer,
    TorchRef,
    _keras,
    _maximize,
    _torch,
)

ADAM: dict[str, Optimizer] = {
    # adam / adamw (optax.adam, optax.adamw; test_parity_optax.py).
    "adam": Optimizer(
        "adam",
        dict(learning_rate=LR),
        optax="adam",
        suites=frozenset({ADAM_TABLE, "x64", "model"}),
    ),
    "adam_schedule": Optimizer(
        "adam",
        dict(learning_rate=SCHEDULE, eps_root=1e-12),
        optax="adam",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,
    ),
    "adam_nesterov": Optimizer(
        "adam",
        dict(learning_rate=LR, nesterov=True),
        optax="adam",
        suites=frozenset({ADAM_TABLE, "x64"}),
    ),
    "adam_no_momentum": Optimizer(
        "adam",
        dict(learning_rate=1e-3, b1=0.0),
        optax="adam",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,
    ),
    "adam_mu_bf16": Optimizer(
        "adam",
        dict(learning_rate=1e-3, mu_dtype=BF16),
        optax="adam",
        optax_dtypes=MU_BF16_DTYPES,
        suites=frozenset({ADAM_TABLE}),
        matrix=False,  # the format axis covers mu_dtype
    ),
    "adam_coupled_decay": Optimizer(
        "adam",
        dict(learning_rate=LR, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
        torch=TorchRef(
            _torch("Adam", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
            dict(ADAM_STATE),
        ),
    ),
    "adam_epsilon_hat": Optimizer(
        "adam",
        dict(learning_rate=KERAS_LR, b1=0.8, b2=0.99, eps=1e-6, epsilon_hat=True),
        keras=KerasRef(_keras("Adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6), dict(ADAM_SLOTS)),
    ),
    "adam_maximize": Optimizer(
        "adam",
        dict(learning_rate=LR),
        chain=_maximize,
        torch=TorchRef(_torch("Adam", maximize=True), dict(ADAM_STATE), sign=-1.0),
        matrix=False,  # optax.scale(-1) before adam: no new code path
    ),
    "adamw": Optimizer(
        "adamw",
        dict(learning_rate=LR, weight_decay=0.1),
        optax="adamw",
        suites=frozenset({ADAM_TABLE}),
        torch=TorchRef(_torch("AdamW", weight_decay=0.1), dict(ADAM_STATE)),
        matrix=False,  # adamw_schedule_mask and adamw_fully_decoupled cover its code
    ),
    "adamw_schedule_mask": Optimizer(
        "adamw",
        dict(learning_rate=SCHEDULE, weight_decay=0.05, mask=matrices, nesterov=True),
        optax="adamw",
        suites=frozenset({ADAM_TABLE, "x64", "model"}),
    ),
    "adamw_pytree_mask": Optimizer(
        "adamw",
        dict(learning_rate=1e-3, weight_decay=0.3, mask="pytree"),
        optax="adamw",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,  # the mask is a literal tree of the optax suites' params
    ),
    "adamw_decay_schedule": Optimizer(
        "adamw",
        dict(learning_rate=1e-3, weight_decay=DECAY_SCHEDULE),
        optax="adamw",
        optax_dtypes=DECAY_SCHEDULE_DTYPES,
        suites=frozenset({ADAM_TABLE, "x64"}),
        matrix=False,
    ),
    "adamw_fully_decoupled": Optimizer(
        "adamw",
        dict(
            learning_rate=SCHEDULE,
            weight_decay=0.1,
            fully_decoupled=True,
            peak_learning_rate=1e-2,
        ),
    ),
    "adamw_epsilon_hat": Optimizer(
        "adamw",
        dict(learning_rate=KERAS_LR, eps=1e-7, weight_decay=0.1, epsilon_hat=True),
        keras=KerasRef(_keras("AdamW", weight_decay=0.1), dict(ADAM_SLOTS)),
        matrix=False,  # adam_epsilon_hat covers the option
    ),
}
