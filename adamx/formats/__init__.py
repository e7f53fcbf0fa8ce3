"""Moment formats: how a moment is kept between steps (float, stochastic float, 8-bit).

- ``protocol``: ``MomentFormat``, what a format implements, and ``MomentRecord``,
  the base of a multi-array state record;
- ``float``: ``FloatFormat``, one float array per leaf (the default; optax's ``mu_dtype``);
- ``stochastic``: ``stochastic_float``, a narrow float rounded stochastically;
- ``blockwise`` / ``blockwise_options``: ``blockwise_8bit``, 8-bit codes and block scales;
- ``blockwise`` / ``blockwise_options``: also ``blockwise_4bit`` (two codes a byte);
- ``factored`` (``factored``: a second moment kept as row and column means) over
  ``factors`` (the arithmetic it shares with ``adamx.adafactor``);
- ``codec`` (blocks and scales) and ``qmaps`` (the 8- and 4-bit maps): the blockwise arithmetic;
- ``rounding`` and ``random_bits``: stochastic rounding and its cheap random bits;
- ``base``: what the stages call (``as_format``, ``init_moment``, ``read_moment``,
  ``write_moment``); ``leaves``: leaf positions through ``adamx.pack``.
"""

import warnings

from .blockwise import Blockwise8bit as Blockwise8bit
from .blockwise import QuantizedMoment as QuantizedMoment
from .blockwise_options import blockwise as blockwise
from .blockwise_options import blockwise_4bit as blockwise_4bit
from .blockwise_options import blockwise_8bit as blockwise_8bit
from .factored import Factored as Factored
from .factored import FactoredMoment as FactoredMoment
from .factored import factored as factored
from .float import FloatFormat as FloatFormat
from .protocol import MomentFormat as MomentFormat
from .protocol import MomentRecord as MomentRecord
from .stochastic import StochasticFloatFormat as StochasticFloatFormat
from .stochastic import StochasticFloatMoment as StochasticFloatMoment
from .stochastic import stochastic_float as stochastic_float

RENAMED = {"QuantizedArray": "QuantizedMoment", "StochasticFloat": "StochasticFloatMoment"}
"""Deprecated public names (one release) and the names that replace them."""


def renamed(name: str, *, stacklevel: int = 2) -> type:
    """The class once public as ``name``, after a DeprecationWarning naming its new name.

    ``stacklevel`` counts from the caller of ``renamed`` (a module ``__getattr__``: 2
    points at the code that read the old name).
    """
    new = RENAMED[name]
    warnings.warn(
        f"adamx.{name} is deprecated and will be removed in the next release: it is now "
        f"adamx.{new} (the same class; only the name changed).",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
    return globals()[new]


def __getattr__(name: str) -> type:
    if name in RENAMED:
        return renamed(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
