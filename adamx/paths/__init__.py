"""Execution paths: the same chain run on another layout of the parameters.

``pack`` holds the small leaves in flat per-dtype buckets; ``multi_tensor`` wraps a
chain so that it runs on those buckets. Neither has maths of its own: an elementwise
chain computes the same numbers on any layout.
"""

from .multi_tensor import MultiTensorState as MultiTensorState
from .multi_tensor import multi_tensor as multi_tensor
from .pack import pack as pack
from .sparse_rows import sparse_rows as sparse_rows
