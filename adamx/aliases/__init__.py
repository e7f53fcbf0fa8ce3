"""The Adam family: each alias a visible ``optax.chain`` of stages, one file per family member.

The signatures mirror optax's aliases parameter for parameter (and torch's or Keras's
options after them), so each alias repeats its leading parameters on purpose: every
file reads alone. Shared pieces (``_parts.py``) return stages, never whole chains.
"""

from .adafactor import adafactor as adafactor
from .adam import adam as adam
from .adam import adamw as adamw
from .adamax import adamax as adamax
from .adamax import adamaxw as adamaxw
from .ademamix import ademamix as ademamix
from .ademamix import simplified_ademamix as simplified_ademamix
from .adopt import adopt as adopt
from .amsgrad import amsgrad as amsgrad
from .cautious import cautious_adamw as cautious_adamw
from .laprop import laprop as laprop
from .nadam import nadam as nadam
from .nadam import nadamw as nadamw
from .radam import radam as radam
from .stable_adamw import stable_adamw as stable_adamw
