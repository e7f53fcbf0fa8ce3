"""Every optimizer of the registry, by name: the adam entries, the family's, Adafactor's, the
modern variants'."""

from __future__ import annotations

import adamx

from .adafactor import ADAFACTOR
from .adam import ADAM
from .family import FAMILY
from .optimizer import Optimizer
from .variants import VARIANTS

OPTIMIZERS: dict[str, Optimizer] = {**ADAM, **FAMILY, **ADAFACTOR, **VARIANTS}


def with_reference(kind: str) -> list[str]:
    """Names of the optimizers that declare a ``kind`` reference ("optax", "torch", "keras")."""
    return [name for name, opt in OPTIMIZERS.items() if getattr(opt, kind) is not None]


def in_suite(suite: str) -> list[str]:
    return [name for name, opt in OPTIMIZERS.items() if suite in opt.suites]


def aliases() -> list[str]:
    """Names of the entries that are an adamx alias with its plain arguments (``"nadam"``:
    ``adamx.nadam(learning_rate=LR)``), one per alias: not a variant, not a chain."""
    return [
        name
        for name, opt in OPTIMIZERS.items()
        if name == opt.alias and opt.chain is None and hasattr(adamx, name)
    ]
