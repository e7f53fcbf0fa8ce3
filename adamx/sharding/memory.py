"""``state_bytes_per_device``: the bytes of a pytree that each device stores."""

import jax

from .._nbytes import leaf_nbytes
from .._types import Device, PyTree


def state_bytes_per_device(tree: PyTree) -> dict[Device, int]:
    """Bytes of ``tree`` stored on each device (only the shards a device holds).

    The per-device view of ``adamx.state_nbytes``: each shard is counted with the same
    rule (``size * itemsize``; a typed PRNG key by its key data), on the device that
    holds it, so a replicated leaf counts once on every device.

    Args:
      tree: a pytree of ``jax.Array`` (e.g. an optimizer state).

    Returns:
      ``{device: bytes}`` over every device holding part of ``tree``.

    Example:
      >>> import adamx.sharding, jax.numpy as jnp
      >>> adamx.sharding.state_bytes_per_device({"m": jnp.zeros(4)})  # doctest: +SKIP
      {CpuDevice(id=0): 16}
    """
    totals: dict[Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            raise TypeError(
                f"state_bytes_per_device: expected a pytree of jax.Array, found a leaf of type "
                f"{type(leaf).__name__}. Pass the materialised state (after tx.init), not its "
                "shapes."
            )
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + leaf_nbytes(shard.data)
    return totals
