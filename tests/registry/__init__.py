"""Every optimizer, state format, execution path and host of adamx, each declared once.

The suites read their cases from here: the parity suites (optax bit for bit, torch
and Keras within their own float32 rounding), the checkpoint, flax and property
suites, and the composition matrix (``matrix/test_matrix.py``), which runs every
combination optimizer x format x path x host and holds it to the per-leaf plain
``jit`` loop of the same optimizer and format (or to a refusal, see ``RULES``).

To add a member, add ONE entry:

* an optimizer: ``"name": Optimizer("alias", dict(kwargs), optax=..., torch=..., keras=...,
  suites=...)`` in ``adam.py`` (adam / adamw) or ``family.py`` (the rest of the family; a new
  family may take a file of its own, joined in ``optimizers.py``). It joins the matrix
  automatically (``matrix=False`` for hyperparameter variants that add no new code path), and
  every reference it names joins that reference's parity suite; ``optimizer.py`` says what an
  entry is;
* a state format: ``"name": Format(dict(mu_dtype=..., nu_dtype=...), param_dtype=..., post=...)``
  in ``formats.py``;
* an execution path: ``"name": Path(...)`` in ``paths.py`` (how params are laid out, how ``tx``
  is wrapped, how the state is initialised, whether its program is XLA-identical);
* a host: ``"name": Host(run, wrap=...)`` in ``hosts.py`` (``run``, from ``runs.py``, trains
  ``steps`` steps and returns the final params, the state after each step and the number of
  traces).

and, if some combination must be refused, a ``Rule`` in ``rules.RULES`` with the message it
must raise; a combination that fails today although it should work goes in ``rules.PENDING``
(an expected failure, strict: delete the entry when the fix lands).

References that are not strict-clean under the run's dtype promotion (optax's aliases and
cosine schedules, MultiSteps, Keras) are wrapped where they are declared (``_promotion.py``).
"""

from .common import (
    ALL,
    BF16,
    C64,
    DECAY_SCHEDULE,
    F16,
    F32,
    KERAS_LR,
    LR,
    PARITY_STEPS,
    SCHEDULE,
    matrices,
    pytree_mask,
)
from .formats import FORMATS, Format
from .hosts import HOSTS, Host
from .optimizer import ADAM_TABLE, FAMILY_TABLE, KerasRef, Optimizer, TorchRef
from .optimizers import OPTIMIZERS, aliases, in_suite, with_reference
from .paths import N_DEVICES, PACK_MIN_SIZE, PATHS, Path
from .rules import (
    INEXPRESSIBLE,
    PENDING,
    REFUSALS,
    RULES,
    Cell,
    Rule,
    compose,
    pending,
    rule_for,
)
from .runs import ENSEMBLE, Run, ensemble_member

__all__ = [
    "ADAM_TABLE",
    "ALL",
    "BF16",
    "C64",
    "DECAY_SCHEDULE",
    "ENSEMBLE",
    "F16",
    "F32",
    "FAMILY_TABLE",
    "FORMATS",
    "HOSTS",
    "INEXPRESSIBLE",
    "KERAS_LR",
    "LR",
    "N_DEVICES",
    "OPTIMIZERS",
    "PACK_MIN_SIZE",
    "PARITY_STEPS",
    "PATHS",
    "PENDING",
    "REFUSALS",
    "RULES",
    "SCHEDULE",
    "Cell",
    "Format",
    "Host",
    "KerasRef",
    "Optimizer",
    "Path",
    "Rule",
    "Run",
    "TorchRef",
    "aliases",
    "compose",
    "ensemble_member",
    "in_suite",
    "matrices",
    "pending",
    "pytree_mask",
    "rule_for",
    "with_reference",
]
