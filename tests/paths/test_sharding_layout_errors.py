"""How ``adamx.sharding`` tells "this layout does not fit" from a bug.

The abstract trace of ``tx.init`` on typed params fails for a layout the state cannot
follow with a state format's own ValueError or JAX's sharding-type error: those are
searched for the parameter at fault and reported by name (``state_shardings``), or make
``zero1`` try the next split. Any other exception is a bug and propagates as raised.
"""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx.sharding


@pytest.fixture
def mesh(eight_devices):
    return jax.make_mesh((8,), ("data",), devices=eight_devices)


def _init_tx(init):
    return optax.GradientTransformation(init, optax.identity().update)


def _split_last(mesh, shape=(4, 24)):
    return {
        "w": jax.device_put(jnp.ones(shape), NamedSharding(mesh, P(None, "data"))),
        "b": jax.device_put(jnp.ones(3), NamedSharding(mesh, P())),
    }


def _is_split(x) -> bool:
    return any(entry is not None for entry in jax.typeof(x).sharding.spec)


def test_a_format_refusal_names_the_parameter(mesh):
    def init(params):
        if _is_split(params["w"]):
            raise ValueError("blocks would straddle devices")
        return jax.tree.map(jnp.zeros_like, params)

    with pytest.raises(ValueError, match=r"params\['w'\] \(shape \(4, 24\).*straddle devices"):
        adamx.sharding.state_shardings(_init_tx(init), _split_last(mesh))


def test_a_jax_sharding_type_error_names_the_parameter(mesh):
    def init(params):  # a reshape that would move the split last axis
        return jax.tree.map(lambda x: x.reshape(*x.shape[:-1], 2, -1) if x.ndim == 2 else x, params)

    with pytest.raises(ValueError, match=r"params\['w'\] .*\(4, 3\) per device.*JAX says"):
        adamx.sharding.state_shardings(_init_tx(init), _split_last(mesh))


def test_other_errors_propagate_as_raised(mesh):
    def init(params):
        if _is_split(params["w"]):
            raise NotImplementedError("a bug, not a layout")
        return jax.tree.map(jnp.zeros_like, params)

    with pytest.raises(NotImplementedError, match="a bug, not a layout"):
        adamx.sharding.state_shardings(_init_tx(init), _split_last(mesh))
    replicated = jax.device_put(_split_last(mesh), NamedSharding(mesh, P()))
    with pytest.raises(NotImplementedError, match="a bug, not a layout"):
        jax.jit(adamx.sharding.zero1(_init_tx(init), mesh).init)(replicated)


def test_zero1_tries_the_next_split_when_a_layout_does_not_fit(mesh):
    def init(params):  # refuses a split first axis, accepts a split last axis
        w = params["w"]
        if jax.typeof(w).sharding.spec[:1] == ("data",):
            raise ValueError("not along the first axis")
        return jax.tree.map(jnp.zeros_like, params)

    replicated = jax.device_put({"w": jnp.ones((8, 16))}, NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        state = jax.jit(adamx.sharding.zero1(_init_tx(init), mesh).init)(replicated)
    assert state["w"].sharding.spec == P(None, "data")
