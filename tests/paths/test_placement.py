"""Which leaves may be packed: read from shardings and axis sizes, never from an exception.

``adamx.paths._placement`` decides for ``pack`` and ``multi_tensor`` whether a leaf is
whole on every device and typed without Explicit mesh axes. Abstract meshes give every
case (split, size-1 axis, Explicit or Auto, UNCONSTRAINED) without devices; the last
tests use the run's 8 CPU devices where they exist.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx._placement import is_split, names_explicit_axes, sharding_of
from adamx.paths.pack import flatten_for_packing

EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto


def _mesh(*types):
    return AbstractMesh((8, 1), ("data", "model"), axis_types=types)


@pytest.mark.parametrize(
    "spec, split",
    [
        (P(), False),
        (P("data"), True),
        (P(None, "data"), True),
        (P("model"), False),  # a size-1 axis: every device holds the whole leaf
        (P(("data", "model")), True),
        (P(P.UNCONSTRAINED), False),  # the compiler's choice: not known to be split
    ],
)
def test_a_leaf_is_split_when_its_axes_multiply_to_more_than_one(spec, split):
    assert is_split(NamedSharding(_mesh(AUTO, AUTO), spec)) is split


@pytest.mark.parametrize(
    "types, spec, named",
    [
        ((EXPLICIT, EXPLICIT), P("model"), True),  # even an axis of size 1 is in the type
        ((AUTO, AUTO), P("data"), False),
        ((AUTO, EXPLICIT), P("data"), False),
        ((AUTO, EXPLICIT), P(None, "model"), True),
        ((EXPLICIT, EXPLICIT), P(), False),
    ],
)
def test_explicit_axes_are_read_from_the_mesh_axis_types(types, spec, named):
    assert names_explicit_axes(NamedSharding(_mesh(*types), spec)) is named


def test_host_values_have_no_sharding_and_arrays_their_own():
    assert sharding_of(np.ones(3)) is None
    assert sharding_of(1.0) is None
    array = jnp.ones(3)
    assert sharding_of(array) == array.sharding
    typed = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=array.sharding)
    assert sharding_of(typed) == array.sharding


def test_a_tracer_sharding_comes_from_its_type():
    seen = []
    jax.jit(lambda x: seen.append(sharding_of(x)) or x)(jnp.ones(3))
    assert isinstance(seen[0], NamedSharding)  # on the abstract mesh of the trace


def test_a_split_or_explicitly_typed_small_leaf_is_refused_by_name():
    split = jax.ShapeDtypeStruct(
        (8,), jnp.float32, sharding=NamedSharding(_mesh(AUTO, AUTO), P("data"))
    )
    typed = jax.ShapeDtypeStruct(
        (8,), jnp.float32, sharding=NamedSharding(_mesh(EXPLICIT, EXPLICIT), P("model"))
    )
    with pytest.raises(ValueError, match=r"pack: the leaf at \['b'\] \(shape \(8,\)\) is sharded"):
        flatten_for_packing("pack", "leaf", {"b": split}, 64)
    with pytest.raises(ValueError, match=r"at \['b'\] .* Explicit mesh axes in its type"):
        flatten_for_packing("multi_tensor", "parameter", {"b": typed}, 64)
    # Large enough to stay loose: nothing to refuse.
    assert flatten_for_packing("pack", "leaf", {"b": split}, 8).layout.loose == (0,)


def test_split_leaves_on_devices_are_refused_and_replicated_ones_packed(eight_devices):
    mesh = jax.make_mesh((8,), ("data",), (AUTO,), devices=eight_devices)
    split = jax.device_put(jnp.ones(8), NamedSharding(mesh, P("data")))
    whole = jax.device_put(jnp.ones(8), NamedSharding(mesh, P()))
    with pytest.raises(ValueError, match=r"pack: the leaf at \['s'\].*gather it onto every"):
        adamx.pack({"s": split, "w": whole}, min_size=64)
    assert adamx.pack({"w": whole}, min_size=64).buckets["float32"].shape == (8,)
