"""One rule counts bytes: ``adamx.state_nbytes`` in all, ``state_bytes_per_device`` per device.

``state_bytes_per_device`` is the per-device view of the same count (``_nbytes.leaf_nbytes``
on each shard): on one device the two agree; on a mesh a split leaf's shards add up to
``state_nbytes`` and a replicated leaf counts in full on every device.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
import adamx.sharding

STATE = {
    "m": jnp.zeros((3, 4)),
    "codes": jnp.zeros(5, jnp.int8),
    "key": jax.random.key(0),  # a typed key: its key data (2 x uint32 for threefry)
    "keys": jax.random.split(jax.random.key(1), 3),
    "count": jnp.zeros([], jnp.int32),
}
BYTES = 12 * 4 + 5 + 8 + 3 * 8 + 4


def test_state_nbytes_counts_size_times_itemsize_and_key_data():
    assert adamx.state_nbytes(STATE) == BYTES
    assert adamx.state_nbytes({"host": np.zeros(2, np.float64), "python": 1.0}) == 16


def test_shapes_are_measured_without_allocating():
    assert adamx.state_nbytes(jax.eval_shape(lambda: STATE)) == BYTES


def test_on_one_device_both_views_agree():
    one = jax.device_put(STATE, jax.devices()[0])
    assert adamx.sharding.state_bytes_per_device(one) == {jax.devices()[0]: BYTES}


def test_on_a_mesh_shards_add_up_and_replicas_count_on_every_device(eight_devices):
    mesh = jax.make_mesh((8,), ("data",), devices=eight_devices)
    split = jax.device_put(jnp.zeros((16, 4)), NamedSharding(mesh, P("data")))
    whole = jax.device_put(STATE, NamedSharding(mesh, P()))
    per_device = adamx.sharding.state_bytes_per_device({"split": split, "whole": whole})
    assert len(per_device) == 8
    assert set(per_device.values()) == {16 * 4 * 4 // 8 + BYTES}
    assert adamx.state_nbytes({"split": split, "whole": whole}) == 16 * 4 * 4 + BYTES
