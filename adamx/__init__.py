"""adamx: the Adam family as small, composable, pure optax transformations."""

from . import formats as formats
from . import sharding as sharding
from ._masks import exclude_paths as exclude_paths
from ._masks import path_mask as path_mask
from ._nbytes import TrainingBytes as TrainingBytes
from ._nbytes import state_nbytes as state_nbytes
from ._nbytes import training_nbytes as training_nbytes
from ._packed import PackedTree as PackedTree
from ._rates import ScheduleState as ScheduleState
from ._row_grad import value_and_row_grad as value_and_row_grad
from ._sparse import RowSparse as RowSparse
from ._sparse import row_sparse as row_sparse
from ._types import InfNormMoments as InfNormMoments
from ._types import Moments as Moments
from ._warmups import half_life_warmup as half_life_warmup
from ._warmups import linear_warmup as linear_warmup
from .aliases import adafactor as adafactor
from .aliases import adam as adam
from .aliases import adamax as adamax
from .aliases import adamaxw as adamaxw
from .aliases import adamw as adamw
from .aliases import ademamix as ademamix
from .aliases import adopt as adopt
from .aliases import amsgrad as amsgrad
from .aliases import cautious_adamw as cautious_adamw
from .aliases import laprop as laprop
from .aliases import nadam as nadam
from .aliases import nadamw as nadamw
from .aliases import radam as radam
from .aliases import simplified_ademamix as simplified_ademamix
from .aliases import stable_adamw as stable_adamw
from .formats import Blockwise8bit as Blockwise8bit
from .formats import Factored as Factored
from .formats import FactoredMoment as FactoredMoment
from .formats import FloatFormat as FloatFormat
from .formats import MomentFormat as MomentFormat
from .formats import QuantizedMoment as QuantizedMoment
from .formats import StochasticFloatFormat as StochasticFloatFormat
from .formats import StochasticFloatMoment as StochasticFloatMoment
from .formats import blockwise as blockwise
from .formats import blockwise_4bit as blockwise_4bit
from .formats import blockwise_8bit as blockwise_8bit
from .formats import factored as factored
from .formats import stochastic_float as stochastic_float
from .paths import MultiTensorState as MultiTensorState
from .paths import SparseRowsState as SparseRowsState
from .paths import multi_tensor as multi_tensor
from .paths import pack as pack
from .paths import sparse_rows as sparse_rows
from .stages import BiasCorrectState as BiasCorrectState
from .stages import BlockRmsState as BlockRmsState
from .stages import CautiousState as CautiousState
from .stages import ClipByUpdateRmsState as ClipByUpdateRmsState
from .stages import FactoredRmsState as FactoredRmsState
from .stages import KahanState as KahanState
from .stages import MomentumScheduleState as MomentumScheduleState
from .stages import MonitorState as MonitorState
from .stages import MonitorStats as MonitorStats
from .stages import PackedMaskedState as PackedMaskedState
from .stages import RunningMaxNuState as RunningMaxNuState
from .stages import ScaleByAdoptState as ScaleByAdoptState
from .stages import ScaleByLapropState as ScaleByLapropState
from .stages import ScaleByMomentsState as ScaleByMomentsState
from .stages import ScaleByRsqrtState as ScaleByRsqrtState
from .stages import ScaleBySimplifiedAdemamixState as ScaleBySimplifiedAdemamixState
from .stages import SlowEmaState as SlowEmaState
from .stages import StochasticRoundingState as StochasticRoundingState
from .stages import UpdateRmsState as UpdateRmsState
from .stages import add_coupled_weight_decay as add_coupled_weight_decay
from .stages import add_decoupled_weight_decay as add_decoupled_weight_decay
from .stages import add_slow_ema as add_slow_ema
from .stages import bias_correct as bias_correct
from .stages import cautious as cautious
from .stages import clip_by_block_rms as clip_by_block_rms
from .stages import clip_by_update_rms as clip_by_update_rms
from .stages import kahan_summation as kahan_summation
from .stages import monitor as monitor
from .stages import running_max_nu as running_max_nu
from .stages import scale_by_adopt as scale_by_adopt
from .stages import scale_by_factored_rms as scale_by_factored_rms
from .stages import scale_by_laprop as scale_by_laprop
from .stages import scale_by_lr as scale_by_lr
from .stages import scale_by_moments as scale_by_moments
from .stages import scale_by_param_block_rms as scale_by_param_block_rms
from .stages import scale_by_rsqrt as scale_by_rsqrt
from .stages import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from .stages import stochastic_rounding as stochastic_rounding
from .stages import update_rms as update_rms

__version__ = "0.1.0"


def __getattr__(name: str) -> type:
    """The renamed records (``QuantizedArray``, ``StochasticFloat``), deprecated for one release."""
    if name in formats.RENAMED:
        return formats.renamed(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BiasCorrectState",
    "BlockRmsState",
    "Blockwise8bit",
    "CautiousState",
    "ClipByUpdateRmsState",
    "Factored",
    "FactoredMoment",
    "FactoredRmsState",
    "FloatFormat",
    "InfNormMoments",
    "KahanState",
    "MomentFormat",
    "Moments",
    "MomentumScheduleState",
    "MonitorState",
    "MonitorStats",
    "MultiTensorState",
    "PackedMaskedState",
    "PackedTree",
    "QuantizedMoment",
    "RowSparse",
    "RunningMaxNuState",
    "ScaleByAdoptState",
    "ScaleByLapropState",
    "ScaleByMomentsState",
    "ScaleByRsqrtState",
    "ScaleBySimplifiedAdemamixState",
    "ScheduleState",
    "SlowEmaState",
    "SparseRowsState",
    "StochasticFloatFormat",
    "StochasticFloatMoment",
    "StochasticRoundingState",
    "TrainingBytes",
    "UpdateRmsState",
    "adafactor",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_coupled_weight_decay",
    "add_decoupled_weight_decay",
    "add_slow_ema",
    "ademamix",
    "adopt",
    "amsgrad",
    "bias_correct",
    "blockwise",
    "blockwise_4bit",
    "blockwise_8bit",
    "cautious",
    "cautious_adamw",
    "clip_by_block_rms",
    "clip_by_update_rms",
    "exclude_paths",
    "factored",
    "half_life_warmup",
    "kahan_summation",
    "laprop",
    "linear_warmup",
    "monitor",
    "multi_tensor",
    "nadam",
    "nadamw",
    "pack",
    "path_mask",
    "radam",
    "row_sparse",
    "running_max_nu",
    "scale_by_adopt",
    "scale_by_factored_rms",
    "scale_by_laprop",
    "scale_by_lr",
    "scale_by_moments",
    "scale_by_param_block_rms",
    "scale_by_rsqrt",
    "scale_by_simplified_ademamix",
    "sharding",
    "simplified_ademamix",
    "sparse_rows",
    "stable_adamw",
    "state_nbytes",
    "stochastic_float",
    "stochastic_rounding",
    "training_nbytes",
    "update_rms",
    "value_and_row_grad",
]
