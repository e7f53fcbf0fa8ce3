"""adamx: the Adam family as small, composable, pure optax transformations."""

from . import sharding as sharding
from ._masks import exclude_paths as exclude_paths
from ._masks import path_mask as path_mask
from ._nbytes import state_nbytes as state_nbytes
from ._packed import PackedTree as PackedTree
from ._rates import ScheduleState as ScheduleState
from ._types import InfNormMoments as InfNormMoments
from ._types import Moments as Moments
from .aliases.adam import adam as adam
from .aliases.adam import adamw as adamw
from .aliases.family import adamax as adamax
from .aliases.family import adamaxw as adamaxw
from .aliases.family import amsgrad as amsgrad
from .aliases.family import nadam as nadam
from .aliases.family import nadamw as nadamw
from .aliases.family import radam as radam
from .formats.base import Blockwise8bit as Blockwise8bit
from .formats.base import FloatFormat as FloatFormat
from .formats.base import MomentFormat as MomentFormat
from .formats.base import StochasticFloat as StochasticFloat
from .formats.base import StochasticFloatFormat as StochasticFloatFormat
from .formats.base import StochasticFloatMoment as StochasticFloatMoment
from .formats.base import blockwise_8bit as blockwise_8bit
from .formats.base import stochastic_float as stochastic_float
from .formats.codec import QuantizedArray as QuantizedArray
from .formats.codec import QuantizedMoment as QuantizedMoment
from .paths.multi_tensor import MultiTensorState as MultiTensorState
from .paths.multi_tensor import multi_tensor as multi_tensor
from .paths.multi_tensor import pack as pack
from .stages.amsgrad import RunningMaxNuState as RunningMaxNuState
from .stages.amsgrad import running_max_nu as running_max_nu
from .stages.bias_correction import BiasCorrectState as BiasCorrectState
from .stages.bias_correction import MomentumScheduleState as MomentumScheduleState
from .stages.bias_correction import bias_correct as bias_correct
from .stages.coupled import add_coupled_weight_decay as add_coupled_weight_decay
from .stages.learning_rate import scale_by_lr as scale_by_lr
from .stages.low_precision import KahanState as KahanState
from .stages.low_precision import StochasticRoundingState as StochasticRoundingState
from .stages.low_precision import kahan_summation as kahan_summation
from .stages.low_precision import stochastic_rounding as stochastic_rounding
from .stages.moments import ScaleByMomentsState as ScaleByMomentsState
from .stages.moments import scale_by_moments as scale_by_moments
from .stages.rsqrt import ScaleByRsqrtState as ScaleByRsqrtState
from .stages.rsqrt import scale_by_rsqrt as scale_by_rsqrt
from .stages.weight_decay import PackedMaskedState as PackedMaskedState
from .stages.weight_decay import add_decoupled_weight_decay as add_decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
    "BiasCorrectState",
    "Blockwise8bit",
    "FloatFormat",
    "InfNormMoments",
    "KahanState",
    "MomentFormat",
    "Moments",
    "MomentumScheduleState",
    "MultiTensorState",
    "PackedMaskedState",
    "PackedTree",
    "QuantizedArray",
    "QuantizedMoment",
    "RunningMaxNuState",
    "ScaleByMomentsState",
    "ScaleByRsqrtState",
    "ScheduleState",
    "StochasticFloat",
    "StochasticFloatFormat",
    "StochasticFloatMoment",
    "StochasticRoundingState",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_coupled_weight_decay",
    "add_decoupled_weight_decay",
    "amsgrad",
    "bias_correct",
    "blockwise_8bit",
    "exclude_paths",
    "kahan_summation",
    "multi_tensor",
    "nadam",
    "nadamw",
    "pack",
    "path_mask",
    "radam",
    "running_max_nu",
    "scale_by_lr",
    "scale_by_moments",
    "scale_by_rsqrt",
    "sharding",
    "state_nbytes",
    "stochastic_float",
    "stochastic_rounding",
]
