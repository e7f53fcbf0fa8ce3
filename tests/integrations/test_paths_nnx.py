"""``multi_tensor`` inside ``flax.nnx.Optimizer``, against the same optimizer run per leaf.

``nnx.Optimizer`` calls ``tx.init`` on an ``nnx.State`` of ``Variable`` wrappers and
``tx.update`` on bare arrays: the packed state must have one structure for both (it
failed at the first update before). Reference: the unwrapped optimizer in the same
nnx loop, held to the packed-path bound of ``tests/_paths.py``.
"""

import chex
import jax
import jax.numpy as jnp
import pytest
from _flax_models import NnxMLP, batch, loss, nnx
from _paths import assert_path_matches

import adamx

STEPS = 4
MIN_SIZE = 16  # the biases and the norm's scale and bias are packed, the kernels stay loose


def as_pure(tree):
    """The arrays inside nnx Variables (``nnx.as_pure`` exists from flax 0.12.7; floor: 0.12.0)."""

    def is_variable(x):
        return isinstance(x, nnx.Variable)

    return jax.tree.map(lambda x: x.value if is_variable(x) else x, tree, is_leaf=is_variable)


def train(tx, steps=STEPS):
    """``steps`` nnx.jit steps of ``nnx.Optimizer``: final params, state structures, losses."""
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = batch()

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model, x, y)
        optimizer.update(model, grads)
        return value

    structures = [jax.tree.structure(as_pure(optimizer.opt_state))]
    losses = []
    for _ in range(steps):
        losses.append(float(step(model, optimizer)))
        structures.append(jax.tree.structure(as_pure(optimizer.opt_state)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param)), structures, losses


CHAINS = {
    "adamw": lambda: adamx.adamw(1e-2, weight_decay=0.1),
    "adamw_exclude_paths": lambda: adamx.adamw(
        1e-2, weight_decay=0.5, mask=adamx.exclude_paths("bias", "norm")
    ),
    "adam_l2_callable_mask": lambda: adamx.adam(
        1e-2, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_multi_tensor_trains_inside_nnx_optimizer_like_the_per_leaf_chain(name):
    ours, structures, losses = train(adamx.multi_tensor(CHAINS[name](), min_size=MIN_SIZE))
    theirs, _, _ = train(CHAINS[name]())
    assert all(s == structures[0] for s in structures), "the state changed structure"
    assert_path_matches("multi_tensor", ours, theirs)
    assert losses[-1] < losses[0], "the model did not learn"


def test_the_nnx_state_is_packed_and_unpacks_to_the_bare_params():
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, adamx.multi_tensor(adamx.adam(1e-2), min_size=MIN_SIZE), wrt=nnx.Param
    )
    mu = as_pure(optimizer.opt_state).inner[0].mu
    assert isinstance(mu, adamx.PackedTree)
    assert mu.buckets["float32"].shape == (8 + 8 + 8 + 3,)  # hidden.bias, norm.*, out.bias
    zeros = jax.tree.map(jnp.zeros_like, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    chex.assert_trees_all_equal(nnx.to_pure_dict(mu.unpack()), zeros)
