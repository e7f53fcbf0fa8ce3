"""adamx: the Adam family as small, composable, pure optax transformations."""

from . import sharding as sharding
from ._aliases import adam as adam
from ._aliases import adamw as adamw
from ._amsgrad import RunningMaxNuState as RunningMaxNuState
from ._amsgrad import running_max_nu as running_max_nu
from ._bias_correction import BiasCorrectState as BiasCorrectState
from ._bias_correction import MomentumScheduleState as MomentumScheduleState
from ._bias_correction import bias_correct as bias_correct
from ._coupled import add_coupled_weight_decay as add_coupled_weight_decay
from ._family import adamax as adamax
from ._family import adamaxw as adamaxw
from ._family import amsgrad as amsgrad
from ._family import nadam as nadam
from ._family import nadamw as nadamw
from ._family import radam as radam
from ._formats import Blockwise8bit as Blockwise8bit
from ._formats import FloatFormat as FloatFormat
from ._formats import MomentFormat as MomentFormat
from ._formats import StochasticFloat as StochasticFloat
from ._formats import StochasticFloatFormat as StochasticFloatFormat
from ._formats import StochasticFloatMoment as StochasticFloatMoment
from ._formats import blockwise_8bit as blockwise_8bit
from ._formats import stochastic_float as stochastic_float
from ._learning_rate import scale_by_lr as scale_by_lr
from ._low_precision import KahanState as KahanState
from ._low_precision import StochasticRoundingState as StochasticRoundingState
from ._low_precision import kahan_summation as kahan_summation
from ._low_precision import stochastic_rounding as stochastic_rounding
from ._masks import exclude_paths as exclude_paths
from ._masks import path_mask as path_mask
from ._moments import InfNormMoments as InfNormMoments
from ._moments import ScaleByMomentsState as ScaleByMomentsState
from ._moments import scale_by_moments as scale_by_moments
from ._multi_tensor import MultiTensorState as MultiTensorState
from ._multi_tensor import PackedTree as PackedTree
from ._multi_tensor import multi_tensor as multi_tensor
from ._multi_tensor import pack as pack
from ._nbytes import state_nbytes as state_nbytes
from ._quantization import QuantizedArray as QuantizedArray
from ._quantization import QuantizedMoment as QuantizedMoment
from ._rates import ScheduleState as ScheduleState
from ._rsqrt import ScaleByRsqrtState as ScaleByRsqrtState
from ._rsqrt import scale_by_rsqrt as scale_by_rsqrt
from ._types import Moments as Moments
from ._weight_decay import PackedMaskedState as PackedMaskedState
from ._weight_decay import add_decoupled_weight_decay as add_decoupled_weight_decay

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
