"""Optimizer state on a ``jax.sharding.Mesh``: its layout, ZeRO-1, per-device memory.

Adam's update is elementwise, so its state is best kept sharded exactly like the
parameters, and a jitted step then needs no collectives. On a mesh with
``Explicit`` axes ``jax.jit(tx.init)(params)`` already does that; on ``Auto``
axes pass ``out_shardings=state_shardings(tx, params)``.

How does a state leaf shard "like its parameter" when it is not shaped like it
(the 8-bit codes ``(*lead, n_blocks, block)`` and scales ``(*lead, n_blocks)``)?
:func:`state_shardings` does not guess from shapes or tree paths: it runs
``tx.init`` abstractly (``jax.eval_shape``, no FLOPs, no memory) on a copy of the
mesh whose axes are ``Explicit``, with each parameter's sharding in its type.
JAX's sharding rules then carry the layout through whatever the state format
does (a ``zeros_like`` keeps it, a reshape of a sharded last axis into blocks
splits the block-count axis), and each state leaf's spec is read off its type.
A leaf computed from no parameter (step counts, PRNG keys) comes out replicated.
A format whose arrays cannot follow the parameter's layout (a quantization
block longer than a shard) makes that trace fail, and the error names the leaf.

ZeRO-1 (Rajbhandari et al. 2020) goes one step further for data-parallel
training, where every device holds the full parameters: it splits the optimizer
state across the data-parallel axis, so each device stores and updates only
``1/n`` of ``m`` and ``v``; the updates are then gathered so that the
parameters stay replicated. The memory for the state drops by ``n``, the maths is
unchanged (the numbers may differ in the last bit: XLA fuses and reduces each
layout's program in its own order)::

    per-device state bytes = bytes(m, v) / n + bytes(step counts, keys)

Everything here is JAX's own machinery: ``NamedSharding``,
``jax.lax.with_sharding_constraint`` (``jax.sharding.reshard`` on ``Explicit``
axes); XLA inserts the collectives.

Example:
  >>> import adamx, adamx.sharding, jax
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
  >>> tx = adamx.sharding.zero1(adamx.adamw(1e-3), mesh, axis="data")

References:
  Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", arXiv:1910.02054.
"""

from .memory import state_bytes_per_device as state_bytes_per_device
from .state import abstract_state as abstract_state
from .state import state_shardings as state_shardings
from .zero1 import zero1 as zero1
from .zero1 import zero1_shardings as zero1_shardings

__all__ = [
    "abstract_state",
    "state_bytes_per_device",
    "state_shardings",
    "zero1",
    "zero1_shardings",
]
