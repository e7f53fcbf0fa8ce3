"""adamx: the Adam family as small, composable, pure optax transformations."""

from ._aliases import adam as adam
from ._aliases import adamw as adamw
from ._bias_correction import BiasCorrectState as BiasCorrectState
from ._bias_correction import bias_correct as bias_correct
from ._formats import FloatFormat as FloatFormat
from ._formats import MomentFormat as MomentFormat
from ._learning_rate import scale_by_lr as scale_by_lr
from ._moments import ScaleByMomentsState as ScaleByMomentsState
from ._moments import scale_by_moments as scale_by_moments
from ._rates import ScheduleState as ScheduleState
from ._rsqrt import scale_by_rsqrt as scale_by_rsqrt
from ._types import Moments as Moments
from ._weight_decay import add_decoupled_weight_decay as add_decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
    "BiasCorrectState",
    "FloatFormat",
    "MomentFormat",
    "Moments",
    "ScaleByMomentsState",
    "ScheduleState",
    "adam",
    "adamw",
    "add_decoupled_weight_decay",
    "bias_correct",
    "scale_by_lr",
    "scale_by_moments",
    "scale_by_rsqrt",
]
