"""Execution paths: the same chain run on another layout of the parameters.

``pack`` holds the small leaves in flat per-dtype buckets; ``multi_tensor`` wraps a
chain so that it runs on those buckets; ``sparse_rows`` runs it on the touched rows of
tables with row-sparse gradients. None has maths of its own: an elementwise chain computes
the same numbers on any layout (``sparse_rows``' catch-up and dense-equivalent semantics
decide what happens at the rows it does not touch).
"""

from ._catch_up import SparseRowsState as SparseRowsState
from .multi_tensor import MultiTensorState as MultiTensorState
from .multi_tensor import multi_tensor as multi_tensor
from .pack import pack as pack
from .sparse_rows import sparse_rows as sparse_rows
