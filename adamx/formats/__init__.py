"""Moment formats: how a moment is kept between steps (float, stochastic float, 8-bit)."""

from .base import Blockwise8bit as Blockwise8bit
from .base import FloatFormat as FloatFormat
from .base import MomentFormat as MomentFormat
from .base import StochasticFloat as StochasticFloat
from .base import StochasticFloatFormat as StochasticFloatFormat
from .base import StochasticFloatMoment as StochasticFloatMoment
from .base import blockwise_8bit as blockwise_8bit
from .base import stochastic_float as stochastic_float
from .codec import QuantizedArray as QuantizedArray
from .codec import QuantizedMoment as QuantizedMoment
