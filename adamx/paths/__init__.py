"""Execution paths: the same chain run on packed buckets of small leaves."""

from .multi_tensor import MultiTensorState as MultiTensorState
from .multi_tensor import multi_tensor as multi_tensor
from .multi_tensor import pack as pack
