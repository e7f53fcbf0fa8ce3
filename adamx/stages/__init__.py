"""The stages: small pure gradient transformations that chain into the Adam family.

In chain order (brackets: optional), on the gradient tree G and the moment tree M
(one ``adamx.Moments`` record per leaf)::

    G -> [add_coupled_weight_decay] -> scale_by_moments (G -> M) -> [running_max_nu]
      -> bias_correct -> [running_max_nu] -> scale_by_rsqrt (M -> G)
      -> [add_decoupled_weight_decay] -> scale_by_lr -> [stochastic_rounding | kahan_summation]

A new stage is a file of its own here; docs/design.md ("How to add a stage") says what it
takes, returns and must keep.
"""

from .ademamix import ScaleBySimplifiedAdemamixState as ScaleBySimplifiedAdemamixState
from .ademamix import SlowEmaState as SlowEmaState
from .ademamix import add_slow_ema as add_slow_ema
from .ademamix import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from .adopt import ScaleByAdoptState as ScaleByAdoptState
from .adopt import scale_by_adopt as scale_by_adopt
from .amsgrad import RunningMaxNuState as RunningMaxNuState
from .amsgrad import running_max_nu as running_max_nu
from .bias_correction import BiasCorrectState as BiasCorrectState
from .bias_correction import MomentumScheduleState as MomentumScheduleState
from .bias_correction import bias_correct as bias_correct
from .block_rms import BlockRmsState as BlockRmsState
from .block_rms import clip_by_block_rms as clip_by_block_rms
from .block_rms import scale_by_param_block_rms as scale_by_param_block_rms
from .cautious import CautiousState as CautiousState
from .cautious import cautious as cautious
from .factored_rms import FactoredRmsState as FactoredRmsState
from .factored_rms import scale_by_factored_rms as scale_by_factored_rms
from .laprop import ScaleByLapropState as ScaleByLapropState
from .laprop import scale_by_laprop as scale_by_laprop
from .learning_rate import scale_by_lr as scale_by_lr
from .low_precision import KahanState as KahanState
from .low_precision import StochasticRoundingState as StochasticRoundingState
from .low_precision import kahan_summation as kahan_summation
from .low_precision import stochastic_rounding as stochastic_rounding
from .moments import ScaleByMomentsState as ScaleByMomentsState
from .moments import scale_by_moments as scale_by_moments
from .monitor import MonitorState as MonitorState
from .monitor import MonitorStats as MonitorStats
from .monitor import monitor as monitor
from .rsqrt import ScaleByRsqrtState as ScaleByRsqrtState
from .rsqrt import scale_by_rsqrt as scale_by_rsqrt
from .update_rms import ClipByUpdateRmsState as ClipByUpdateRmsState
from .update_rms import UpdateRmsState as UpdateRmsState
from .update_rms import clip_by_update_rms as clip_by_update_rms
from .update_rms import update_rms as update_rms
from .weight_decay import PackedMaskedState as PackedMaskedState
from .weight_decay import add_coupled_weight_decay as add_coupled_weight_decay
from .weight_decay import add_decoupled_weight_decay as add_decoupled_weight_decay
