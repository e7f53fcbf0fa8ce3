"""The Adam family: each alias a visible ``optax.chain`` of stages."""

from .adam import adam as adam
from .adam import adamw as adamw
from .family import adamax as adamax
from .family import adamaxw as adamaxw
from .family import amsgrad as amsgrad
from .family import nadam as nadam
from .family import nadamw as nadamw
from .family import radam as radam
