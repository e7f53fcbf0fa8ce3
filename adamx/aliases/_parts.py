"""Small pieces the aliases share: each returns a stage (or None for "no stage"), never a chain.

An alias reads as the ``chain(...)`` of its stages; an option that adds no stage (no
weight decay) gives ``None`` there, and :func:`chain` leaves it out, so the chain and
its state are exactly those of the optimizer without the option.
"""

import optax

from .._types import Mask
from .._validation import is_zero
from ..stages.weight_decay import add_coupled_weight_decay, add_decoupled_weight_decay


def chain(
    *stages: optax.GradientTransformation | None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` of the stages that are not None."""
    return optax.chain(*(stage for stage in stages if stage is not None))


def l2_penalty(
    weight_decay: optax.ScalarOrSchedule | None, mask: Mask | None
) -> optax.GradientTransformationExtraArgs | None:
    """``add_coupled_weight_decay(weight_decay, mask)``; None (no stage) for None or 0.

    No stage at all keeps the chain, and its state, exactly Adam's (optax's). None,
    unlike 0.0, also stays static under ``optax.inject_hyperparams``.
    """
    if weight_decay is None or is_zero(weight_decay):
        return None
    return add_coupled_weight_decay(weight_decay, mask)


def decoupled(
    weight_decay: optax.ScalarOrSchedule | None,
    mask: Mask | None,
    learning_rate: optax.ScalarOrSchedule,
    fully_decoupled: bool,
    peak_learning_rate: float | None,
    cautious: bool = False,
) -> optax.GradientTransformationExtraArgs | None:
    """``add_decoupled_weight_decay`` with an alias's arguments; None (no stage) for None.

    The alias's learning rate goes along as the default α̂ of fully decoupled decay;
    ``cautious`` is the alias's ``cautious_weight_decay``; the stage checks the options and
    names the argument at fault. A decay of 0.0 keeps its stage, as ``optax.adamw`` keeps
    ``add_decayed_weights``.
    """
    if weight_decay is None:
        if fully_decoupled or peak_learning_rate is not None or cautious:
            raise ValueError(
                "fully_decoupled, peak_learning_rate and cautious_weight_decay shape the "
                "decoupled weight decay, but weight_decay=None adds none: pass "
                "weight_decay=λ, or drop them."
            )
        return None
    return add_decoupled_weight_decay(
        weight_decay,
        mask,
        fully_decoupled=fully_decoupled,
        peak_learning_rate=peak_learning_rate,
        learning_rate=learning_rate,
        cautious=cautious,
    )
