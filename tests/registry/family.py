"""The family's entries: nadam, nadamw, amsgrad, adamax, adamaxw, radam and their variants
(optax's aliases, torch's and Keras's flavours; test_parity_family_optax.py and the rest)."""

from __future__ import annotations

import optax

from .common import BF16, KERAS_LR, LR, PARITY_STEPS, SCHEDULE, matrices
from .optimizer import (
    ADAM_SLOTS,
    ADAM_STATE,
    FAMILY_TABLE,
    RADAM_FACTOR,
    RADAM_WHY,
    KerasRef,
    Optimizer,
    TorchRef,
    _adamw_amsgrad,
    _keras,
    _torch,
)

FAMILY: dict[str, Optimizer] = {
    # The family (optax.nadam, nadamw, amsgrad, adamax, adamaxw, radam; test_parity_family_optax).
    "nadam": Optimizer(
        "nadam", dict(learning_rate=LR), optax="nadam", suites=frozenset({FAMILY_TABLE})
    ),
    "nadam_schedule": Optimizer(
        "nadam",
        dict(learning_rate=SCHEDULE, b1=0.8, eps_root=1e-12),
        optax="nadam",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "nadam_momentum_decay": Optimizer(
        "nadam",
        dict(learning_rate=LR, momentum_decay=4e-3),
        torch=TorchRef(
            _torch("NAdam"), dict(ADAM_STATE, mu_product="mu_product")
        ),  # torch's NAdam: the ψ momentum schedule
    ),
    "nadam_momentum_decay_l2": Optimizer(
        "nadam",
        dict(learning_rate=LR, momentum_decay=2e-2, weight_decay=0.01),
        torch=TorchRef(_torch("NAdam", weight_decay=0.01, momentum_decay=2e-2), dict(ADAM_STATE)),
        matrix=False,
    ),
    "nadamw": Optimizer(
        "nadamw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices),
        optax="nadamw",
        suites=frozenset({FAMILY_TABLE, "bf16", "model"}),
    ),
    "nadamw_decay_schedule": Optimizer(
        "nadamw",
        dict(
            learning_rate=1e-3,
            weight_decay=optax.linear_schedule(0.2, 0.0, PARITY_STEPS),
        ),
        optax="nadamw",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "nadamw_momentum_decay": Optimizer(
        "nadamw",
        dict(learning_rate=LR, weight_decay=0.1, momentum_decay=4e-3),
        torch=TorchRef(
            _torch("NAdam", weight_decay=0.1, decoupled_weight_decay=True),
            dict(ADAM_STATE),
        ),
        matrix=False,
    ),
    "amsgrad": Optimizer(
        "amsgrad",
        dict(learning_rate=LR),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE, "model"}),
    ),
    "amsgrad_raw_paper": Optimizer(
        "amsgrad",
        dict(learning_rate=LR, bias_correction_mu=False, bias_correction_nu=False),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "amsgrad_nu_uncorrected": Optimizer(
        "amsgrad",
        dict(learning_rate=LR, bias_correction_nu=False),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "amsgrad_mu_bf16": Optimizer(
        "amsgrad",
        dict(learning_rate=SCHEDULE, mu_dtype=BF16),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE, "bf16"}),
        matrix=False,
    ),
    "amsgrad_max_of_raw": Optimizer(  # torch's flavour: the maximum of the raw v
        "amsgrad",
        dict(learning_rate=LR, max_of="raw", weight_decay=0.01),
        torch=TorchRef(
            _torch("Adam", amsgrad=True, weight_decay=0.01),
            dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
        ),
    ),
    "amsgrad_epsilon_hat": Optimizer(  # Keras's flavour
        "amsgrad",
        dict(learning_rate=KERAS_LR, eps=1e-7, max_of="raw", epsilon_hat=True),
        keras=KerasRef(_keras("Adam", amsgrad=True), dict(ADAM_SLOTS, velocity_hat="nu_max")),
        matrix=False,
    ),
    "adamw_amsgrad": Optimizer(
        "adamw_amsgrad",
        dict(learning_rate=LR),
        chain=_adamw_amsgrad,
        torch=TorchRef(
            _torch("AdamW", amsgrad=True, weight_decay=0.1),
            dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
        ),
        matrix=False,
    ),
    "adamax": Optimizer(
        "adamax",
        dict(learning_rate=LR),
        optax="adamax",
        suites=frozenset({FAMILY_TABLE}),
    ),
    "adamax_eps": Optimizer(
        "adamax",
        dict(learning_rate=SCHEDULE, b1=0.5, b2=0.99, eps=1e-3),
        optax="adamax",
        suites=frozenset({FAMILY_TABLE, "bf16"}),
        matrix=False,
    ),
    "adamax_l2": Optimizer(
        "adamax",
        dict(learning_rate=LR, weight_decay=0.01),
        torch=TorchRef(_torch("Adamax", weight_decay=0.01), {"exp_avg": "mu", "exp_inf": "nu"}),
        matrix=False,
    ),
    "adamax_eps_after_max": Optimizer(  # Keras's flavour
        "adamax",
        dict(learning_rate=KERAS_LR, eps=1e-7, eps_in_max=False),
        keras=KerasRef(_keras("Adamax"), {"momentum": "mu", "norm": "nu"}),
    ),
    "adamaxw": Optimizer(
        "adamaxw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices),
        optax="adamaxw",
        suites=frozenset({FAMILY_TABLE, "model"}),
    ),
    "adamaxw_decay_schedule": Optimizer(
        "adamaxw",
        dict(
            learning_rate=1e-3,
            weight_decay=optax.linear_schedule(0.2, 0.0, PARITY_STEPS),
        ),
        optax="adamaxw",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "radam": Optimizer(
        "radam", dict(learning_rate=LR), optax="radam", suites=frozenset({FAMILY_TABLE})
    ),
    "radam_nesterov": Optimizer(
        "radam",
        dict(learning_rate=SCHEDULE, nesterov=True),
        optax="radam",
        suites=frozenset({FAMILY_TABLE, "bf16", "model"}),
        matrix=False,
    ),
    "radam_threshold": Optimizer(
        "radam",
        dict(learning_rate=LR, threshold=3.0, eps_root=1e-10),
        optax="radam",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "radam_epsilon_hat": Optimizer(  # torch's RAdam
        "radam",
        dict(learning_rate=LR, epsilon_hat=True),
        torch=TorchRef(_torch("RAdam"), dict(ADAM_STATE), factor=RADAM_FACTOR, why=RADAM_WHY),
        matrix=False,
    ),
    "radam_decoupled": Optimizer(
        "radam",
        dict(
            learning_rate=LR,
            epsilon_hat=True,
            weight_decay=0.1,
            decoupled_weight_decay=True,
        ),
        torch=TorchRef(
            _torch("RAdam", weight_decay=0.1, decoupled_weight_decay=True),
            dict(ADAM_STATE),
            factor=RADAM_FACTOR,
            why=RADAM_WHY,
        ),
    ),
}
